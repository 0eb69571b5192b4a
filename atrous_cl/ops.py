# SPDX-License-Identifier: Apache-2.0
"""The public op: validate, compute the geometry, launch the OpenCL kernel."""

from __future__ import annotations

import functools
import math
import threading
from typing import NamedTuple

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from atrous_cl import geometry, runtime, tuning
from atrous_cl.errors import DeviceError
from atrous_cl.validation import TransposeArgs, check_dtypes, check_transpose_args

_KERNEL_FILE = "atrous_conv2d_transpose.cl"

_INT32_MAX = 2**31 - 1


#: Storage and accumulation types per dtype (float16 is storage only, summed in float32).
TYPE_OPTIONS = {np.float16: ("-DT=half", "-DACC=float", "-DUSE_HALF"),
                np.float32: ("-DT=float", "-DACC=float"),
                np.float64: ("-DT=double", "-DACC=double", "-DUSE_FP64")}


def widens_inputs(device: cl.Device, dtype) -> bool:
    """Whether float16 inputs are widened to float32 before the main kernel.

    On CPUs: converting every half in the inner loop held float16 to 70
    GFLOP/s on Intel's runtime (float32 181) and 16 on PoCL (141); one
    widening pass costs about as much as copying the input. GPUs convert
    halves in hardware as they load them.
    """
    return np.dtype(dtype) == np.float16 and bool(runtime.facts(device).type & cl.device_type.CPU)


def kernel_dilation(args: TransposeArgs) -> tuple[int, int, int, int] | None:
    """``(rate_h, crop_top, rate_w, crop_left)`` the transpose kernel is built with.

    The problem's rate and crop pads, or, for a rate so large that a tap
    could land outside the image and past 64-bit arithmetic, the small
    equivalent of :func:`atrous_cl.geometry.equivalent_dilation` (output
    pixel ``p`` reads input ``p + crop - a * rate``, so the offsets that reach
    an input lie in ``[-(H - 1), OH - 1]``). None when no tap lands inside
    ``value`` at all: the output is an empty sum. Needs non-empty images.
    """
    return geometry.kernel_dilations(args.filters_shape[:2], args.rate, args.pads,
                                     args.output_shape[1:3], args.value_shape[1:3])


def dilation_options(rate_h: int, crop_top: int, rate_w: int, crop_left: int) -> tuple[str, ...]:
    """The kernels' per-axis rate and crop pads, as long literals (see the kernel files)."""
    return (f"-DRATE_H={rate_h}L", f"-DRATE_W={rate_w}L", f"-DPAD_TOP={crop_top}L",
            f"-DPAD_LEFT={crop_left}L")


def build_options(dtype: np.dtype, args: TransposeArgs, tile: tuning.Tile,
                  forward_filters: bool = False, wide: bool = False) -> tuple[str, ...]:
    """``-D`` options specialising the kernel for a dtype, a problem and a tile.

    Channel counts, kernel size, rate and pads are baked in so the compiler can
    unroll; spatial sizes stay run-time arguments, so one build serves every
    image size. ``forward_filters``: see :func:`_launch`; ``wide``:
    :func:`widens_inputs`. The problem must have a live tap (:func:`kernel_dilation`).
    """
    kh, kw, cout, cin = args.filters_shape
    return TYPE_OPTIONS[np.dtype(dtype).type] + (f"-DBW={tile.pixels}", f"-DBC={tile.channels}",
                    f"-DCIN={cin}", f"-DCOUT={cout}", f"-DCOUTP={tile.padded_channels(cout)}",
                    f"-DKH={kh}", f"-DKW={kw}") + dilation_options(*kernel_dilation(args)) + \
        (("-DFORWARD_FILTERS",) if forward_filters else ()) + (("-DWIDE_INPUTS",) if wide else ())


def launch_geometry(output_shape: tuple[int, int, int, int],
                    tile: tuning.Tile) -> tuple[tuple[int, int, int], None]:
    """``(global_size, local_size)`` of the main kernel: one work-item per register tile.

    Axis 0 covers output channels in tiles, axis 1 output columns in tiles,
    axis 2 the ``N * OH`` output rows. The local size is left to the driver.
    """
    n, oh, ow, cout = output_shape
    return (tile.padded_channels(cout) // tile.channels, -(-ow // tile.pixels), n * oh), None


def repack_geometry(filters_shape: tuple[int, int, int, int],
                    tile: tuning.Tile) -> tuple[tuple[int, int, int], None]:
    """``(global_size, local_size)`` of ``repack_filters``: one work-item per packed weight."""
    kh, kw, cout, cin = filters_shape
    return (tile.padded_channels(cout), cin, kh * kw), None


def _check_limits(args: TransposeArgs) -> None:
    """Dimensions travel to the kernel as 32-bit ints; offsets are 64-bit."""
    for what, shape in (("value", args.value_shape), ("filters", args.filters_shape),
                        ("output_shape", args.output_shape)):
        if max(shape) > _INT32_MAX:
            raise ValueError(f"{what} dimensions must be below 2**31, got {list(shape)}")
    if args.output_shape[0] * args.output_shape[1] > 2**63 - 1:
        raise ValueError(f"output_shape batch * height is too large: {list(args.output_shape)}")


@functools.lru_cache(maxsize=256)
def _checked_args(value_shape, filters_shape, output_shape, rate, padding) -> TransposeArgs:
    args = check_transpose_args(value_shape, filters_shape, output_shape, rate, padding)
    _check_limits(args)
    return args


def _transpose_args(value_shape, filters_shape, output_shape, rate, padding) -> TransposeArgs:
    """:func:`~atrous_cl.validation.check_transpose_args` and the 32-bit limits.

    Memoised when ``output_shape`` is a tuple or list of ints, ``rate`` an int
    and ``padding`` a str (the types themselves, not subclasses): equal
    arguments of those types pass or fail alike, and a model calls the op with
    a few shapes over and over. Anything else (NumPy ints, floats, arrays) is
    checked afresh: ``2.0 == 2``, so it could match an int's entry.
    """
    if (type(rate) is int and type(padding) is str and type(output_shape) in (tuple, list)
            and all(type(d) is int for d in output_shape)):
        return _checked_args(tuple(value_shape), tuple(filters_shape), tuple(output_shape),
                             rate, padding)
    return _checked_args.__wrapped__(value_shape, filters_shape, output_shape, rate, padding)


#: The (device facts, dtype, problem, widening) that passed :func:`_device_checks`.
_passed_device_checks: set = set()


def _device_checks(device: cl.Device, dtype: np.dtype, args: TransposeArgs) -> None:
    """Refuse a dtype or a problem size the device cannot take. A pass is remembered
    for the device's facts (which never change for a device), so equal calls skip it."""
    key = (runtime.facts(device), dtype, args, widens_inputs(device, dtype))
    if key in _passed_device_checks:
        return
    runtime.check_dtype_support(device, dtype)
    _check_device_memory(device, args, dtype)
    if len(_passed_device_checks) >= 1024:
        _passed_device_checks.clear()
    _passed_device_checks.add(key)


def launch_temporaries(device: cl.Device, dtype: np.dtype, args: TransposeArgs) -> dict[str, int]:
    """The buffers :func:`_launch` allocates besides its arrays, by name, in ``dtype``'s
    elements: widened (float16 -> float32) buffers count twice."""
    kh, kw, cout, cin = args.filters_shape
    widened = 2 if widens_inputs(device, dtype) else 1
    counts = {"the packed filters": widened * kh * kw * cin * -(-cout // 16) * 16}  # widest tile
    if widened > 1:
        counts["the widened value"] = 2 * math.prod(args.value_shape)
    return counts


def _check_device_memory(device: cl.Device, args: TransposeArgs, dtype: np.dtype) -> None:
    """Refuse, by name and size, what the device cannot hold, before allocating anything."""
    counts = {"value": math.prod(args.value_shape), "filters": math.prod(args.filters_shape),
              "the output": math.prod(args.output_shape),
              **launch_temporaries(device, dtype, args)}
    runtime.check_fits(device, dtype, counts, together="value, filters and output")


def _device_array(queue: cl.CommandQueue, what: str, x, dtype: np.dtype,
                  in_place: bool = False, apart_from=()) -> cl_array.Array | runtime.HostArray:
    """``x`` as a C-contiguous device array in ``queue``'s context.

    With ``in_place`` (see :func:`_in_place`), a host ``x`` is used where it
    lies, copied on the host only if it is not C-contiguous and aligned, or
    for system SVM not writeable (pyopencl's SVM wrapper takes only writeable
    memory; the kernels never write an input). In a host-pointer buffer, it is
    also copied if it may overlap one of the :class:`~atrous_cl.runtime.HostArray`
    ``apart_from``: OpenCL leaves commands on buffers over overlapping host
    memory undefined.
    """
    if in_place:
        svm = runtime.uses_system_svm(queue.device)
        if not (type(x) is np.ndarray and x.dtype == dtype and x.flags.c_contiguous
                and x.flags.aligned and (x.flags.writeable or not svm)):
            x = np.require(x, dtype, ["C_CONTIGUOUS", "ALIGNED"] + (["WRITEABLE"] if svm else []))
        if not svm and any(np.may_share_memory(x, other.array) for other in apart_from):
            x = x.copy()
        return runtime.HostArray(x, queue)
    if isinstance(x, cl_array.Array):
        if x.context != queue.context:
            raise ValueError(f"{what} lives in another OpenCL context than the queue it runs on "
                             f"({runtime.describe(x.context.devices[0])} vs "
                             f"{runtime.describe(queue.device)})")
        if not x.flags.c_contiguous:
            raise ValueError(f"{what} must be C-contiguous on the device, got strides {x.strides} "
                             f"for shape {x.shape}")
        return x
    return cl_array.to_device(queue, np.ascontiguousarray(x, dtype=dtype),
                              allocator=runtime.memory_pool(queue))


def _host_or_device(x):
    """A device array as it is; anything else as a NumPy array."""
    return x if isinstance(x, cl_array.Array) else np.asarray(x)


def _queue_for(arrays, queue, context, device) -> tuple[bool, cl.CommandQueue]:
    """``(on_device, queue)``: whether any input is a device array, and the queue to run on.

    Without a queue, context or device named, a device input's own queue.
    """
    on_device = any(isinstance(x, cl_array.Array) for x in arrays)
    if on_device and queue is None and context is None and device is None:
        queue = next(x for x in arrays if isinstance(x, cl_array.Array)).queue
    return on_device, runtime.get_queue(queue, context, device)


def _in_place(queue: cl.CommandQueue, on_device: bool) -> bool:
    """Whether a host-path call hands its NumPy arrays to the kernels in place
    (:func:`atrous_cl.runtime.works_in_host_memory`) rather than copying them."""
    return not on_device and runtime.works_in_host_memory(queue.device)


#: Allocates a host-path result that kernels write in place; tests swap in
#: one that fills it with NaN, so elements the kernels miss show up.
_host_result = np.empty


def _result(shape, dtype, queue: cl.CommandQueue, on_device: bool,
            in_place: bool = False) -> cl_array.Array | runtime.HostArray:
    """A new result array. Only a host-path result, fetched and dropped by the
    op, comes from the pool: a device result is the caller's, to use on any queue.
    With ``in_place``, a new NumPy array the kernels write directly."""
    if in_place:
        return runtime.HostArray(_host_result(shape, dtype), queue, written=True)
    return cl_array.empty(queue, shape, dtype,
                          allocator=None if on_device else runtime.memory_pool(queue))


def _element_offset(x: cl_array.Array) -> int:
    return x.offset // x.dtype.itemsize


class _Plan(NamedTuple):
    """What launching the op takes besides its arrays, fixed by context, device,
    dtype, problem and tile: the kernels, their geometry and scalar arguments."""

    kernels: dict
    lock: threading.Lock
    options: tuple[str, ...]
    wide: bool
    packed_nbytes: int
    repack: tuple
    main: tuple
    sizes: tuple  # value's height and width, the output's, as np.int32


@functools.lru_cache(maxsize=256)
def _plan(context: cl.Context, device: cl.Device, dtype: np.dtype, args: TransposeArgs,
          tile: tuning.Tile, forward_filters: bool, wide: bool) -> _Plan | None:
    """The :class:`_Plan` of a launch, built (and its program compiled) once; None
    when no tap lands inside ``value`` (:func:`kernel_dilation`).

    Like pyopencl's own program caches, the entries keep their contexts alive.
    """
    if kernel_dilation(args) is None:
        return None
    options = build_options(dtype, args, tile, forward_filters, wide)
    kernels, lock = runtime.get_kernels(context, _KERNEL_FILE, options)
    kh, kw, cout, cin = args.filters_shape
    itemsize = 4 if wide else np.dtype(dtype).itemsize
    _, oh, ow, _ = args.output_shape
    return _Plan(kernels, lock, options, wide, kh * kw * cin * tile.padded_channels(cout) * itemsize,
                 repack_geometry(args.filters_shape, tile), launch_geometry(args.output_shape, tile),
                 (np.int32(args.value_shape[1]), np.int32(args.value_shape[2]), np.int32(oh),
                  np.int32(ow)))


def _launch(queue: cl.CommandQueue, value: cl_array.Array, filters: cl_array.Array,
            out: cl_array.Array, args: TransposeArgs, tile: tuning.Tile | None = None,
            forward_filters: bool = False) -> cl.Event | None:
    """Run the op on device arrays; ``tile`` overrides the tuned or default tile.

    Follows pyopencl's array conventions, so it is right on any queue: the
    launches wait for the events of ``value`` and ``filters`` (their producers,
    on any queue of the context) and of ``out`` (its earlier users), each
    kernel waits for the one before it (out-of-order queues), and ``out``
    gets the last event, which is returned (None when nothing was enqueued).

    With ``forward_filters``, ``filters`` are laid out ``[kh, kw, in, out]`` and
    applied with flipped taps (``args.filters_shape`` still names them
    ``[kh, kw, out, in]``): the forward ``atrous_conv2d`` as
    :func:`atrous_cl.training.forward_as_transpose` describes it.
    """
    if out.size == 0:
        return None
    wait = [*value.events, *filters.events, *out.events]
    device = queue.device
    # An empty sum (no input, no input channels, or no tap landing inside
    # value) is zero everywhere.
    p = None if value.size == 0 or filters.size == 0 else _plan(
        queue.context, device, out.dtype, args, tile or tuning.tile_for(device, out.dtype, args),
        forward_filters, widens_inputs(device, out.dtype))
    if p is None:
        return runtime.fill(queue, out, 0, wait)
    kernels = p.kernels
    packed = runtime.scratch(queue, p.packed_nbytes)
    value_data, value_off = value.base_data, _element_offset(value)
    try:
        with p.lock:  # setting a kernel's arguments and enqueueing it must not interleave
            if p.wide:
                value_data = runtime.scratch(queue, value.size * 4)
                widened = kernels["widen"](queue, (value.size,), None, value.base_data,
                                           np.int64(value_off), value_data, wait_for=wait)
                value_off = 0
            repacked = kernels["repack_filters"](queue, *p.repack, filters.base_data,
                                                 np.int64(_element_offset(filters)), packed,
                                                 wait_for=wait)
            done = kernels["atrous_conv2d_transpose"](
                queue, *p.main, value_data, np.int64(value_off), packed, out.base_data,
                np.int64(_element_offset(out)), *p.sizes,
                wait_for=[repacked, widened] if p.wide else [repacked, *wait])
    except cl.Error as e:
        raise DeviceError(f"launching atrous_conv2d_transpose on {runtime.describe(device)} "
                          f"failed: {e}", status=runtime.status_name(e), source=_KERNEL_FILE,
                          options=p.options) from e
    out.add_event(done)
    return done


def atrous_conv2d_transpose(value, filters, output_shape, rate, padding, name=None, *,
                            queue: cl.CommandQueue | None = None, context: cl.Context | None = None,
                            device: cl.Device | str | None = None, out: cl_array.Array | None = None):
    """Transposed atrous 2-D convolution, exactly ``tf.nn.atrous_conv2d_transpose``.

    Stride 1, dilation ``rate``. Each input pixel ``value[n, i, j, :]`` adds
    ``filters[a, b] @ value[n, i, j, :]`` at ``(i + a * rate, j + b * rate)`` of
    a full result ``(k - 1) * rate`` larger than the input per axis; the output
    is that result cropped by the pads of :func:`atrous_cl.geometry.pads`.

    Args:
        value: NHWC input, a NumPy array (or array-like) or a ``pyopencl.array.Array``.
        filters: ``[kh, kw, out_channels, in_channels]``, same dtype as ``value``.
        output_shape: 4 ints, NHWC: ``value``'s batch, ``out_channels`` and for
            SAME ``value``'s height and width, for VALID those plus ``(k - 1) * rate``.
        rate: dilation, a positive integer.
        padding: ``'SAME'`` or ``'VALID'``.
        name: ignored; accepted for TF compatibility.
        queue: run on this command queue. Without ``queue``, ``context`` or
            ``device``, a device array's own queue is used, else the default
            device (``PYOPENCL_CTX`` or the first GPU, else the first CPU).
        context: run on a queue of this context.
        device: run on this device (a ``pyopencl.Device`` or a ``'P:D'`` selector).
        out: device output array to write into (device path only; C-contiguous,
            right shape and dtype).

    Returns:
        A NumPy array when ``value`` and ``filters`` are host arrays; a
        ``pyopencl.array.Array`` on the same queue when either is a device
        array (the other is uploaded). The dtype is the inputs'.

    Raises:
        ValueError: inconsistent shapes, a bad rate or padding, or arrays in
            another context than the queue. A
            :class:`~atrous_cl.errors.DeviceCapabilityError` (a ``ValueError``)
            when the device lacks ``cl_khr_fp64`` for float64 or cannot
            allocate a tensor this large.
        TypeError: a wrong type or dtype, or mixed dtypes.
        DeviceError: the OpenCL driver failed.

    Differences from TF: every check also runs for ``rate == 1``, spatial sizes
    are checked, and float16 is summed in float32.
    """
    del name
    value, filters = _host_or_device(value), _host_or_device(filters)
    dtype = check_dtypes(value.dtype, filters.dtype)
    args = _transpose_args(value.shape, filters.shape, output_shape, rate, padding)
    on_device, queue = _queue_for((value, filters), queue, context, device)
    _device_checks(queue.device, dtype, args)
    if out is not None:
        if not on_device:
            raise TypeError("out is for device arrays; the host path returns a new NumPy array")
        _check_out(out, args.output_shape, dtype, queue)
        check_apart({"out": out}, {"value": value, "filters": filters})
    in_place = _in_place(queue, on_device)
    value_d = _device_array(queue, "value", value, dtype, in_place)
    filters_d = _device_array(queue, "filters", filters, dtype, in_place, apart_from=(value_d,))
    if out is None:
        out = _result(args.output_shape, dtype, queue, on_device, in_place)
    with runtime.draining(queue):
        _launch(queue, value_d, filters_d, out, args)
        return out if on_device else out.get(queue)


def _check_out(out, output_shape, dtype, queue) -> None:
    if not isinstance(out, cl_array.Array):
        raise TypeError(f"out must be a pyopencl.array.Array, got {type(out).__name__}")
    if tuple(out.shape) != tuple(output_shape) or out.dtype != dtype:
        raise ValueError(f"out must have shape {tuple(output_shape)} and dtype {dtype.name}, "
                         f"got shape {tuple(out.shape)} and dtype {out.dtype.name}")
    if not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous, got strides {out.strides}")
    if out.context != queue.context:
        raise ValueError("out lives in another OpenCL context than the queue the op runs on")


def _memory_span(x: cl_array.Array) -> tuple[int, int, int]:
    """``(memory, first byte, end byte)`` of a device array's elements.

    ``memory`` names the allocation: a sub-buffer is resolved to its parent
    (with its offset added), an SVM allocation is named by its address.
    """
    data, start = x.base_data, x.offset
    if isinstance(data, cl.MemoryObjectHolder):
        parent = data.get_info(cl.mem_info.ASSOCIATED_MEMOBJECT)
        if parent is not None:
            start += data.get_info(cl.mem_info.OFFSET)
            data = parent
        return data.int_ptr, start, start + x.nbytes
    address = getattr(data, "svm_ptr", None) or getattr(data, "int_ptr", id(data))
    return 0, address + start, address + start + x.nbytes  # one address space for all SVM


def check_apart(outputs: dict, inputs: dict) -> None:
    """Refuse results that share device memory with an input or with each other.

    The kernels read their inputs while they write their results, so a
    result over an input (``out=value``) would be garbage, not an in-place
    update. Only device arrays are compared: host inputs reach the device
    as copies.

    Raises:
        ValueError: naming the two arrays that overlap.
    """
    spans = {name: _memory_span(x) for name, x in {**outputs, **inputs}.items()
             if isinstance(x, cl_array.Array) and x.nbytes}
    names = list(spans)  # the outputs first: each pair with an output in it once
    for i, out_name in enumerate(names):
        if out_name not in outputs:
            break
        for other in names[i + 1:]:
            (mem_a, lo_a, hi_a), (mem_b, lo_b, hi_b) = spans[out_name], spans[other]
            if mem_a == mem_b and lo_a < hi_b and lo_b < hi_a:
                raise ValueError(f"{out_name} shares device memory with {other}: the kernels "
                                 f"read {other} while they write {out_name}, so the op cannot "
                                 f"work in place; pass a separate array")
