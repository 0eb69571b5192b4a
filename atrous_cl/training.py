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
op's kernel with flipped taps (:func:`atrous_cl.launch.forward_as_transpose`),
so it shares its tuned tiles; the filter gradients of both come from one
kernel (``kernels/atrous_conv2d.cl``, :mod:`atrous_cl.filter_grad`). Each op
reads as validate -> geometry -> one host call (:func:`atrous_cl.calls.run`).
"""

from __future__ import annotations

import pyopencl as cl
import pyopencl.array as cl_array

from atrous_cl import calls, launch
from atrous_cl.validation import (ConvArgs, TransposeArgs, check_conv_args, check_dtypes, check_dy,
                                  check_transpose_args)


def _adjoint(args):
    """The other op's arguments for the adjoint problem: same filters, value and output swapped.

    The pads are the same function of kernel, rate and padding for both ops.
    """
    kind = TransposeArgs if isinstance(args, ConvArgs) else ConvArgs
    return kind(args.output_shape, args.filters_shape, args.value_shape, args.rate, args.padding,
                args.pads)


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
    value, filters = calls.host_or_device(value), calls.host_or_device(filters)
    dtype = check_dtypes(value.dtype, filters.dtype)
    args = check_conv_args(value.shape, filters.shape, rate, padding)
    launch.check_limits(args)
    # It runs on the transpose op's kernel and tiles, with flipped taps.
    step = calls.Transpose(launch.forward_as_transpose(args), forward_filters=True)
    return calls.run({"value": value, "filters": filters}, {"out": args.output_shape}, dtype,
                     (step,), queue=queue, context=context, device=device, out=out)


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
    value, filters, dy = (calls.host_or_device(x) for x in (value, filters, dy))
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
    value, filters, dy = (calls.host_or_device(x) for x in (value, filters, dy))
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
    launch.check_limits(args)
    adjoint = _adjoint(args)
    forward = isinstance(args, ConvArgs)
    # d_value runs on the transpose kernel (the forward op as one with flipped
    # taps); d_filters is the forward op's filter gradient.
    d_value = calls.Transpose(adjoint if forward else launch.forward_as_transpose(adjoint),
                              value="dy", out="d_value", forward_filters=not forward)
    d_filters = calls.FilterGrad(args, "value", "dy", "d_filters") if forward else \
        calls.FilterGrad(adjoint, "dy", "value", "d_filters")
    return calls.run({"value": value, "filters": filters, "dy": dy},
                     {"d_value": args.value_shape, "d_filters": args.filters_shape}, dtype,
                     (d_value, d_filters), queue=queue, context=context, device=device, out=out)
