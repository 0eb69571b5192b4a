# SPDX-License-Identifier: Apache-2.0
"""Training support: the forward ``atrous_conv2d`` and the gradients of both ops.

The two ops are adjoint for the same ``filters`` array. With ``filters`` of
shape ``[kh, kw, C_y, C_x]``, ``x`` with ``C_x`` channels and ``y`` with ``C_y``,
and the same ``rate`` and ``padding``::

    <atrous_conv2d_transpose(x, filters, y.shape), y> == <x, atrous_conv2d(y, filters)>

(the transpose reads ``filters`` as ``[kh, kw, out_channels, in_channels]``,
the forward op as ``[kh, kw, in_channels, out_channels]``; both name C_y
first). So each op's gradient with respect to its input is the other op, and
that is how it is computed here. The forward op itself runs on the transpose
op's kernel with flipped taps (:func:`forward_as_transpose`), so it shares its
tuned tiles; the filter gradients of both come from one kernel
(``kernels/atrous_conv2d.cl``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from atrous_cl import geometry, ops, runtime, tuning
from atrous_cl.errors import DeviceError
from atrous_cl.validation import (ConvArgs, TransposeArgs, check_conv_args, check_dtypes, check_dy,
                                  check_transpose_args)

_KERNEL_FILE = "atrous_conv2d.cl"

#: Work-items the filter gradient's first stage aims for. The reduction is
#: split into chunks of rows until there are about this many; the count
#: depends on the shapes alone, so results do not vary from run to run.
_FILTER_GRAD_ITEMS = 4096

def grad_dilation(args: ConvArgs) -> tuple[int, int, int, int] | None:
    """``(rate_h, crop_top, rate_w, crop_left)`` the filter gradient is built with.

    As :func:`atrous_cl.ops.kernel_dilation`, for the forward conv's reading
    ``x[i - top + a * rate]`` of output row ``i``: the offsets that reach ``x``
    lie in ``[-(HD - 1), HX - 1]``. None when no tap lands inside ``x``.
    """
    return geometry.kernel_dilations(args.filters_shape[:2], args.rate, args.pads,
                                     args.value_shape[1:3], args.output_shape[1:3])


def build_options(dtype: np.dtype, args: ConvArgs, tile: tuning.Tile, gc: int) -> tuple[str, ...]:
    """``-D`` options for ``atrous_conv2d.cl``: dtype, problem and the filter gradient's tile.

    Its tile is ``gc`` input channels x ``tile.channels`` output channels. The
    problem must have a live tap (:func:`grad_dilation`).
    """
    kh, kw, cin, cout = args.filters_shape
    return ops.TYPE_OPTIONS[np.dtype(dtype).type] + (
        f"-DBC={tile.channels}", f"-DGC={gc}",
        f"-DCIN={cin}", f"-DCOUT={cout}", f"-DCOUTP={tile.padded_channels(cout)}",
        f"-DKH={kh}", f"-DKW={kw}") + ops.dilation_options(*grad_dilation(args))


def tiles(device: cl.Device, dtype, filters_shape) -> tuple[tuning.Tile, int]:
    """The filter gradient's tile: ``(tile, gc)``, ``gc`` input x ``tile.channels`` output channels.

    Derived from the transpose kernel's untuned default ``tile`` (as many
    accumulators per work-item); the filter gradient is not tuned.
    """
    cin, cout = filters_shape[2:]
    tile = tuning.default_tile(device, dtype, cout)
    return tile, max(1, min(tile.pixels, cin))


def filter_grad_chunks(rows: int, tiles_per_chunk: int) -> tuple[int, int]:
    """``(chunks, rows_per_chunk)``: how the filter gradient splits its ``rows = N * OH`` rows.

    Enough chunks for about ``_FILTER_GRAD_ITEMS`` work-items, none empty (none at all
    without rows).
    """
    if rows == 0:
        return 0, 0
    chunks = max(1, min(rows, -(-_FILTER_GRAD_ITEMS // max(1, tiles_per_chunk))))
    rows_per_chunk = -(-rows // chunks)
    return -(-rows // rows_per_chunk), rows_per_chunk


def filter_grad_geometry(filters_shape, tile: tuning.Tile, gc: int,
                         chunks: int) -> tuple[tuple[int, int, int], None]:
    """``(global_size, local_size)`` of ``filter_grad_partial``: one work-item per tile and chunk.

    Axis 0 covers output channels in vectors of ``tile.channels``, axis 1
    input channels in groups of ``gc``, axis 2 the taps times the chunks.
    """
    kh, kw, cin, cout = filters_shape
    return (tile.padded_channels(cout) // tile.channels, -(-cin // gc), kh * kw * chunks), None


def _device_error(queue: cl.CommandQueue, what: str, e: cl.Error, options) -> DeviceError:
    return DeviceError(f"launching {what} on {runtime.describe(queue.device)} failed: {e}",
                       status=runtime.status_name(e), source=_KERNEL_FILE, options=options)


def forward_as_transpose(args: ConvArgs) -> TransposeArgs:
    """The forward conv as a problem of the transpose kernel, which then runs it.

    ``out[p] = sum_a padded[p - top + a*rate] f[a]`` (TF's forward op, per
    axis) is the transpose kernel's ``out[p] = sum_a' value[p + top' -
    a'*rate] g[a']`` with the taps flipped, ``g[a'] = f[k - 1 - a']``, and the
    crop pad ``top' = (k - 1) * rate - top``. The filters keep their
    ``[kh, kw, in, out]`` layout: the kernel's repack reads them flipped
    (``forward_filters``), so the result's shape names them ``[kh, kw, out, in]``.
    """
    kh, kw, cin, cout = args.filters_shape
    eh, ew = (kh - 1) * args.rate, (kw - 1) * args.rate
    p = args.pads
    return TransposeArgs(args.value_shape, (kh, kw, cout, cin), args.output_shape, args.rate,
                         args.padding, geometry.Pads(eh - p.top, ew - p.left, eh - p.bottom,
                                                     ew - p.right))


def _launch_filter_grad(queue: cl.CommandQueue, x: cl_array.Array, d: cl_array.Array,
                        out: cl_array.Array, args: ConvArgs) -> cl.Event | None:
    """``out[a, b, c, o] = sum x[n, i - top + a*rate, j - left + b*rate, c] * d[n, i, j, o]``.

    ``args`` describes the forward conv from ``x`` (its value) to ``d`` (its
    output); ``out`` has ``args.filters_shape``. Events as for
    :func:`atrous_cl.ops._launch`.
    """
    if out.size == 0:
        return None
    wait = [*x.events, *d.events, *out.events]
    # No pixels, or no tap landing inside x: every entry is an empty sum.
    if x.size == 0 or d.size == 0 or grad_dilation(args) is None:
        return runtime.fill(queue, out, 0, wait)
    tile, gc, chunks, rows_per_chunk, count = _grad_layout(queue.device, out.dtype, args)
    options = build_options(out.dtype, args, tile, gc)
    kernels, lock = runtime.get_kernels(queue.context, _KERNEL_FILE, options)
    kh, kw, cin, cout = args.filters_shape
    n, hd, wd, _ = args.output_shape
    # Partial sums stay in the accumulation type: float32 for float16 storage (count has it).
    partial = runtime.scratch(queue, count * out.dtype.itemsize)
    try:
        with lock:
            summed = kernels["filter_grad_partial"](
                queue, *filter_grad_geometry(args.filters_shape, tile, gc, chunks),
                x.base_data, np.int64(ops._element_offset(x)),
                d.base_data, np.int64(ops._element_offset(d)), partial,
                np.int32(args.value_shape[1]), np.int32(args.value_shape[2]),
                np.int32(hd), np.int32(wd), np.int64(n * hd), np.int64(rows_per_chunk),
                wait_for=wait)
            done = kernels["filter_grad_sum"](queue, (cout, cin, kh * kw), None, partial,
                                              np.int32(chunks), out.base_data,
                                              np.int64(ops._element_offset(out)),
                                              wait_for=[summed, *wait])
    except cl.Error as e:
        raise _device_error(queue, "the filter gradient", e, options) from e
    out.add_event(done)
    return done


def _adjoint(args):
    """The other op's arguments for the adjoint problem: same filters, value and output swapped.

    The pads are the same function of kernel, rate and padding for both ops.
    """
    kind = TransposeArgs if isinstance(args, ConvArgs) else ConvArgs
    return kind(args.output_shape, args.filters_shape, args.value_shape, args.rate, args.padding,
                args.pads)


def _check_device(device: cl.Device, dtype: np.dtype, shapes: dict[str, tuple[int, ...]],
                  temporaries: dict[str, int] | None = None) -> None:
    """Refuse, by name and size, what the device cannot run or hold, before allocating anything.

    ``temporaries``: the launches' own buffers, in ``dtype``'s elements.
    """
    runtime.check_dtype_support(device, dtype)
    runtime.check_fits(device, dtype, {**{what: math.prod(shape) for what, shape in shapes.items()},
                                       **(temporaries or {})})


class _GradLayout(NamedTuple):
    """How the filter gradient runs a problem: its tile (``gc`` input x ``tile.channels``
    output channels), how it splits the rows, and how many partial sums it keeps, in
    the dtype's elements (float16 keeps them in float32, which counts twice)."""

    tile: tuning.Tile
    gc: int
    chunks: int
    rows_per_chunk: int
    partials: int


def _grad_layout(device: cl.Device, dtype: np.dtype, args: ConvArgs) -> _GradLayout:
    tile, gc = tiles(device, dtype, args.filters_shape)
    kh, kw, cin, cout = args.filters_shape
    n, hd = args.output_shape[:2]
    geometry_one = filter_grad_geometry(args.filters_shape, tile, gc, 1)[0]
    chunks, rows_per_chunk = filter_grad_chunks(n * hd, math.prod(geometry_one))
    widened = 2 if np.dtype(dtype) == np.float16 else 1
    return _GradLayout(tile, gc, chunks, rows_per_chunk,
                       widened * chunks * kh * kw * cin * tile.padded_channels(cout))


def _outputs(out, shapes, dtype, queue, on_device, in_place, inputs):
    """The vjps' ``out`` pair, checked (also apart from the ``inputs`` by name), or two new arrays."""
    if out is None:
        return [ops._result(shape, dtype, queue, on_device, in_place) for shape in shapes]
    if not on_device:
        raise TypeError("out is for device arrays; the host path returns new NumPy arrays")
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"out must be a pair (d_value, d_filters) of pyopencl.array.Array, "
                        f"got {type(out).__name__}")
    for o, shape in zip(out, shapes):
        ops._check_out(o, shape, dtype, queue)
    ops.check_apart({"d_value": out[0], "d_filters": out[1]}, inputs)
    return list(out)


def atrous_conv2d(value, filters, rate, padding, name=None, *,
                  queue: cl.CommandQueue | None = None, context: cl.Context | None = None,
                  device: cl.Device | str | None = None, out: cl_array.Array | None = None):
    """Atrous 2-D convolution, exactly ``tf.nn.atrous_conv2d``.

    Stride 1, dilation ``rate``, no bias. ``value`` is zero-padded by TF's
    pads (:func:`atrous_cl.geometry.pads`: SAME pads ``(k - 1) * rate`` per
    axis, ``total // 2`` top/left and the odd remainder bottom/right; VALID
    none) and ``out[n, i, j, :] = sum_{a, b} padded[n, i + a*rate, j + b*rate, :]
    @ filters[a, b]``. The output's spatial size is ``value``'s for SAME and
    ``value``'s ``- (k - 1) * rate`` for VALID.

    It is the adjoint of :func:`atrous_cl.atrous_conv2d_transpose` for the same
    ``filters`` array: for ``filters`` of shape ``[kh, kw, C_y, C_x]``,
    ``<atrous_conv2d_transpose(x, filters, y.shape), y> = <x, atrous_conv2d(y, filters)>``.

    Args:
        value: NHWC input, a NumPy array (or array-like) or a ``pyopencl.array.Array``.
        filters: ``[kh, kw, in_channels, out_channels]``, same dtype as ``value``.
        rate: dilation, a positive integer.
        padding: ``'SAME'`` or ``'VALID'``.
        name: ignored; accepted for TF compatibility.
        queue, context, device, out: as for :func:`atrous_cl.atrous_conv2d_transpose`.

    Returns:
        A NumPy array for host inputs; a ``pyopencl.array.Array`` on the same
        queue when either input is a device array. The dtype is the inputs'.

    Raises:
        ValueError: inconsistent shapes, a bad rate or padding, VALID with a
            dilated kernel larger than ``value``, or arrays in another context.
            :class:`~atrous_cl.errors.DeviceCapabilityError` (a ``ValueError``)
            when the device cannot run the request.
        TypeError: a wrong type or dtype, or mixed dtypes.
        DeviceError: the OpenCL driver failed.

    Differences from TF: every check also runs for ``rate == 1``; VALID with a
    dilated kernel larger than ``value`` is refused (TF 2.21 returns a result
    of the wrong shape); float16 is summed in float32.
    """
    del name
    value, filters = ops._host_or_device(value), ops._host_or_device(filters)
    dtype = check_dtypes(value.dtype, filters.dtype)
    args = check_conv_args(value.shape, filters.shape, rate, padding)
    ops._check_limits(args)
    on_device, queue = ops._queue_for((value, filters), queue, context, device)
    as_transpose = forward_as_transpose(args)  # it runs on the transpose op's kernel and tiles
    _check_device(queue.device, dtype, {"value": args.value_shape, "filters": args.filters_shape,
                                        "the output": args.output_shape},
                  ops.launch_temporaries(queue.device, dtype, as_transpose))
    if out is not None:
        if not on_device:
            raise TypeError("out is for device arrays; the host path returns a new NumPy array")
        ops._check_out(out, args.output_shape, dtype, queue)
        ops.check_apart({"out": out}, {"value": value, "filters": filters})
    in_place = ops._in_place(queue, on_device)
    value_d = ops._device_array(queue, "value", value, dtype, in_place)
    filters_d = ops._device_array(queue, "filters", filters, dtype, in_place, apart_from=(value_d,))
    if out is None:
        out = ops._result(args.output_shape, dtype, queue, on_device, in_place)
    with runtime.draining(queue):
        ops._launch(queue, value_d, filters_d, out, as_transpose, forward_filters=True)
        return out if on_device else out.get(queue)


def atrous_conv2d_vjp(value, filters, rate, padding, dy, *,
                      queue: cl.CommandQueue | None = None, context: cl.Context | None = None,
                      device: cl.Device | str | None = None, out=None):
    """Gradients of ``atrous_conv2d(value, filters, rate, padding)`` for the cotangent ``dy``.

    ``d_value`` is ``atrous_conv2d_transpose(dy, filters, value.shape, rate,
    padding)`` (the adjoint) and ``d_filters[a, b, c, o] = sum_{n, i, j}
    padded[n, i + a*rate, j + b*rate, c] * dy[n, i, j, o]``, the same as TF's
    ``GradientTape`` gives for ``tf.nn.atrous_conv2d``.

    Args:
        value, filters, rate, padding: as for :func:`atrous_conv2d`.
        dy: the cotangent, of the op's output shape and the inputs' dtype.
        queue, context, device: as for :func:`atrous_conv2d`.
        out: device path only: a pair ``(d_value, d_filters)`` of device
            arrays to write into.

    Returns:
        ``(d_value, d_filters)`` with the shapes of ``value`` and ``filters``:
        NumPy arrays for host inputs, ``pyopencl.array.Array`` on the same
        queue when any input is a device array.

    Raises:
        As :func:`atrous_conv2d`; also ``ValueError`` when ``dy``'s shape is
        not the op's output shape and ``TypeError`` when its dtype differs.

    Differences from TF: the filter gradient sums in a fixed order without
    atomics, so it is bit-identical from run to run; float16 sums in float32.
    """
    value, filters, dy = ops._host_or_device(value), ops._host_or_device(filters), ops._host_or_device(dy)
    dtype = check_dtypes(value.dtype, filters.dtype)
    args = check_conv_args(value.shape, filters.shape, rate, padding)
    return _vjp(args, dtype, value, filters, dy, queue, context, device, out)


def atrous_conv2d_transpose_vjp(value, filters, output_shape, rate, padding, dy, *,
                                queue: cl.CommandQueue | None = None,
                                context: cl.Context | None = None,
                                device: cl.Device | str | None = None, out=None):
    """Gradients of ``atrous_conv2d_transpose(value, filters, output_shape, rate, padding)``.

    For the cotangent ``dy`` (of shape ``output_shape``): ``d_value`` is
    ``atrous_conv2d(dy, filters, rate, padding)`` (the adjoint) and
    ``d_filters[a, b, c, o] = sum_{n, p, q} dy[n, p, q, c] *
    value[n, p + top - a*rate, q + left - b*rate, o]`` over the pixels inside
    ``value``, the same as TF's ``GradientTape`` gives for
    ``tf.nn.atrous_conv2d_transpose``.

    Args:
        value, filters, output_shape, rate, padding: as for
            :func:`atrous_cl.atrous_conv2d_transpose`.
        dy: the cotangent, of shape ``output_shape`` and the inputs' dtype.
        queue, context, device: as for :func:`atrous_cl.atrous_conv2d_transpose`.
        out: device path only: a pair ``(d_value, d_filters)`` of device
            arrays to write into.

    Returns:
        ``(d_value, d_filters)`` with the shapes of ``value`` and ``filters``:
        NumPy arrays for host inputs, ``pyopencl.array.Array`` on the same
        queue when any input is a device array.

    Raises:
        As :func:`atrous_cl.atrous_conv2d_transpose`; also ``ValueError`` when
        ``dy``'s shape is not ``output_shape`` and ``TypeError`` when its dtype
        differs.

    Differences from TF: the filter gradient sums in a fixed order without
    atomics, so it is bit-identical from run to run; float16 sums in float32.
    """
    value, filters, dy = ops._host_or_device(value), ops._host_or_device(filters), ops._host_or_device(dy)
    dtype = check_dtypes(value.dtype, filters.dtype)
    args = check_transpose_args(value.shape, filters.shape, output_shape, rate, padding)
    return _vjp(args, dtype, value, filters, dy, queue, context, device, out)


def _vjp(args, dtype, value, filters, dy, queue, context, device, out):
    """Both vjps once their own op's arguments ``args`` are checked.

    ``d_value`` is the other op applied to ``dy`` (the adjoint); ``d_filters``
    is the forward op's filter-gradient sum, over (value, dy) for the forward
    op and over (dy, value) for the transpose, whose adjoint is the forward op.
    """
    check_dy(dy.shape, dy.dtype, args.output_shape, dtype)
    ops._check_limits(args)
    on_device, queue = ops._queue_for((value, filters, dy), queue, context, device)
    # d_value runs on the transpose kernel (the forward op as one with flipped taps,
    # forward_as_transpose); d_filters is the forward op's filter gradient.
    adjoint = _adjoint(args)
    forward = isinstance(args, ConvArgs)
    d_value_args = adjoint if forward else forward_as_transpose(adjoint)
    grad_args = args if forward else adjoint
    _check_device(queue.device, dtype, {"value": args.value_shape, "filters": args.filters_shape,
                                        "dy": args.output_shape, "d_value": args.value_shape,
                                        "d_filters": args.filters_shape},
                  {**ops.launch_temporaries(queue.device, dtype, d_value_args),
                   "the filter gradient's partial sums":
                       _grad_layout(queue.device, dtype, grad_args).partials})
    in_place = ops._in_place(queue, on_device)
    d_value, d_filters = _outputs(out, (args.value_shape, args.filters_shape), dtype, queue,
                                  on_device, in_place, {"value": value, "filters": filters, "dy": dy})
    value_d = ops._device_array(queue, "value", value, dtype, in_place)
    filters_d = ops._device_array(queue, "filters", filters, dtype, in_place, apart_from=(value_d,))
    dy_d = ops._device_array(queue, "dy", dy, dtype, in_place, apart_from=(value_d, filters_d))
    with runtime.draining(queue):
        ops._launch(queue, dy_d, filters_d, d_value, d_value_args, forward_filters=not forward)
        _launch_filter_grad(queue, *((value_d, dy_d) if forward else (dy_d, value_d)), d_filters,
                            grad_args)
        return (d_value, d_filters) if on_device else (d_value.get(queue), d_filters.get(queue))
