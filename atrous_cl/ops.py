# SPDX-License-Identifier: Apache-2.0
"""The public op, ``atrous_conv2d_transpose``: validate, geometry, one host call."""

from __future__ import annotations

import functools

import pyopencl as cl
import pyopencl.array as cl_array

from atrous_cl import calls, launch
from atrous_cl.validation import TransposeArgs, check_dtypes, check_transpose_args


@functools.lru_cache(maxsize=256)
def _checked_args(value_shape, filters_shape, output_shape, rate, padding) -> TransposeArgs:
    args = check_transpose_args(value_shape, filters_shape, output_shape, rate, padding)
    launch.check_limits(args)
    return args


def _transpose_args(value_shape, filters_shape, output_shape, rate, padding) -> TransposeArgs:
    """:func:`~atrous_cl.validation.check_transpose_args` and the 32-bit limits
    (:func:`atrous_cl.launch.check_limits`).

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
    host_key = None
    if out is None and context is None and device is None:
        host_key = calls.host_key(value, filters, output_shape, rate, padding)
    if host_key is not None:
        # A host call this queue ran before, repeated as one launch.
        got = calls.transpose_host(host_key, value, filters, queue)
        if got is not None:
            return got
    value, filters = calls.host_or_device(value), calls.host_or_device(filters)
    dtype = check_dtypes(value.dtype, filters.dtype)
    args = _transpose_args(value.shape, filters.shape, output_shape, rate, padding)
    return calls.run({"value": value, "filters": filters}, {"out": args.output_shape}, dtype,
                     (calls.Transpose(args),), queue=queue, context=context, device=device,
                     out=out, host_key=host_key)
