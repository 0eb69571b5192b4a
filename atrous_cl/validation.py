# SPDX-License-Identifier: Apache-2.0
"""Argument checks shared by the OpenCL op, the NumPy reference and the exporter.

Everything is checked up front, for every rate (TF skips its checks when
``rate == 1`` and never checks spatial sizes in Python). A wrong value raises
``ValueError``, a wrong type ``TypeError``; each message names the argument,
what was expected and what came.
"""

from __future__ import annotations

import numbers
import operator
from typing import NamedTuple

import numpy as np

from atrous_cl import geometry

SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


class TransposeArgs(NamedTuple):
    """Normalised arguments of ``atrous_conv2d_transpose``."""

    value_shape: tuple[int, int, int, int]
    filters_shape: tuple[int, int, int, int]
    output_shape: tuple[int, int, int, int]
    rate: int
    padding: str
    pads: geometry.Pads


def check_int(x, what: str) -> int:
    """``x`` as a Python int; bools and floats are refused (``2.0`` is not a rate).

    Raises:
        TypeError: ``x`` is not an integer; the message names it as ``what``.
    """
    if type(x) is int:  # the common case, without the slower ABC checks below
        return x
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {x!r} of type {type(x).__name__}")
    return operator.index(x)


def check_rate(rate) -> int:
    rate = check_int(rate, "rate")
    if rate < 1:
        raise ValueError(f"rate must be a positive integer (>= 1), got {rate}")
    return rate


def check_padding(padding) -> str:
    if not isinstance(padding, str):
        raise TypeError(f"padding must be the string 'SAME' or 'VALID', got {padding!r} "
                        f"of type {type(padding).__name__}")
    if padding not in geometry.PADDINGS:
        hint = " (TF's padding strings are upper case)" if padding.upper() in geometry.PADDINGS else ""
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}{hint}")
    return padding


def check_shape4(shape, what: str, layout: str) -> tuple[int, int, int, int]:
    """A 4-D shape given as list, tuple or 1-D integer array, each entry >= 0."""
    if isinstance(shape, np.ndarray):
        if shape.ndim != 1:
            raise ValueError(f"{what} must be a 1-D sequence of 4 ints ({layout}), "
                             f"got an array of shape {shape.shape}")
        shape = shape.tolist()
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__"):
        raise TypeError(f"{what} must be a list, tuple or 1-D array of 4 ints ({layout}), "
                        f"got {type(shape).__name__}")
    if len(shape) != 4:
        raise ValueError(f"{what} must have 4 entries ({layout}), got {len(shape)}: {list(shape)}")
    dims = tuple(check_int(d, f"{what}[{i}]") for i, d in enumerate(shape))
    if any(d < 0 for d in dims):
        raise ValueError(f"{what} must be non-negative ({layout}), got {list(dims)}")
    return dims


def check_array_shape(shape, what: str, layout: str) -> tuple[int, int, int, int]:
    if len(shape) != 4:
        raise ValueError(f"{what} must be 4-D ({layout}), got {len(shape)}-D with shape {tuple(shape)}")
    return tuple(int(d) for d in shape)


def check_dtypes(value_dtype, filters_dtype) -> np.dtype:
    """The common dtype of ``value`` and ``filters``; both must be the same float type."""
    value_dtype, filters_dtype = np.dtype(value_dtype), np.dtype(filters_dtype)
    for what, dt in (("value", value_dtype), ("filters", filters_dtype)):
        if not dt.isnative and dt.newbyteorder("=") in SUPPORTED_DTYPES:
            # The kernels read native floats; a byte-swapped array (N5, some Zarr
            # stores) read in place would be garbage, so it is refused, not guessed.
            raise TypeError(f"{what} has dtype {dt.name} in non-native byte order ({dt.str}); "
                            f"convert it first: {what}.astype({what}.dtype.newbyteorder('='))")
        if dt not in SUPPORTED_DTYPES:
            names = ", ".join(d.name for d in SUPPORTED_DTYPES)
            raise TypeError(f"{what} must have dtype {names}; got {dt.name}")
    if value_dtype != filters_dtype:
        raise TypeError(f"value and filters must have the same dtype, got value {value_dtype.name} "
                        f"and filters {filters_dtype.name}")
    return value_dtype


def _check_filters_fit_value(value_shape, filters_shape, in_axis: int) -> None:
    """A kernel of at least 1x1 whose input channels, ``filters_shape[in_axis]``, are value's."""
    kh, kw = filters_shape[:2]
    if kh < 1 or kw < 1:
        raise ValueError(f"filters must have a spatial size of at least 1x1, got {kh}x{kw} "
                         f"(filters shape {filters_shape})")
    cin = filters_shape[in_axis]
    if value_shape[3] != cin:
        raise ValueError(f"value's channels (value.shape[3] = {value_shape[3]}) must equal filters' "
                         f"in_channels (filters.shape[{in_axis}] = {cin})")


def check_transpose_args(value_shape, filters_shape, output_shape, rate, padding) -> TransposeArgs:
    """Check the shapes and attributes of ``atrous_conv2d_transpose``.

    Args:
        value_shape: shape of ``value``, NHWC.
        filters_shape: shape of ``filters``, ``[kh, kw, out_channels, in_channels]``.
        output_shape: the requested output shape, NHWC.
        rate: dilation rate, a positive integer.
        padding: ``'SAME'`` or ``'VALID'``.

    Returns:
        The normalised arguments with the crop pads.

    Raises:
        ValueError: a shape or value is inconsistent.
        TypeError: an argument has the wrong type.
    """
    value_shape = check_array_shape(value_shape, "value", "NHWC")
    filters_shape = check_array_shape(filters_shape, "filters", "[kh, kw, out_channels, in_channels]")
    output_shape = check_shape4(output_shape, "output_shape", "NHWC")
    rate = check_rate(rate)
    padding = check_padding(padding)
    kh, kw, cout, cin = filters_shape
    _check_filters_fit_value(value_shape, filters_shape, in_axis=3)
    if output_shape[3] != cout:
        raise ValueError(f"output_shape[3] (channels) must equal filters' out_channels "
                         f"(filters.shape[2] = {cout}), got {output_shape[3]}")
    if output_shape[0] != value_shape[0]:
        raise ValueError(f"output_shape[0] (batch) must equal value's batch ({value_shape[0]}), "
                         f"got {output_shape[0]}")
    expected_hw = geometry.transpose_output_hw(value_shape[1:3], (kh, kw), rate, padding)
    if tuple(output_shape[1:3]) != expected_hw:
        rule = ("equal value's" if padding == geometry.SAME
                else f"be value's + (k - 1) * rate = {value_shape[1:3]} + ({kh - 1}, {kw - 1}) * {rate}")
        raise ValueError(f"output_shape[1:3] (height, width) must {rule} for padding {padding!r}: "
                         f"expected {list(expected_hw)}, got {list(output_shape[1:3])}")
    return TransposeArgs(value_shape, filters_shape, output_shape, rate, padding,
                         geometry.pads((kh, kw), rate, padding))


class ConvArgs(NamedTuple):
    """Normalised arguments of the forward ``atrous_conv2d``."""

    value_shape: tuple[int, int, int, int]
    filters_shape: tuple[int, int, int, int]
    output_shape: tuple[int, int, int, int]
    rate: int
    padding: str
    pads: geometry.Pads  # TF's zero padding of value: (top, left, bottom, right)


def check_conv_args(value_shape, filters_shape, rate, padding) -> ConvArgs:
    """Check the shapes and attributes of the forward ``atrous_conv2d``.

    Args:
        value_shape: shape of ``value``, NHWC.
        filters_shape: shape of ``filters``, ``[kh, kw, in_channels, out_channels]``.
        rate: dilation rate, a positive integer.
        padding: ``'SAME'`` or ``'VALID'``.

    Returns:
        The normalised arguments with the output shape and TF's pads.

    Raises:
        ValueError: a shape or value is inconsistent, or for ``'VALID'`` the
            dilated kernel is larger than ``value`` (TF 2.21 returns a result
            of the wrong shape there instead of refusing).
        TypeError: an argument has the wrong type.
    """
    value_shape = check_array_shape(value_shape, "value", "NHWC")
    filters_shape = check_array_shape(filters_shape, "filters", "[kh, kw, in_channels, out_channels]")
    rate = check_rate(rate)
    padding = check_padding(padding)
    kh, kw, cin, cout = filters_shape
    _check_filters_fit_value(value_shape, filters_shape, in_axis=2)
    ekh, ekw = geometry.effective_kernel_size(kh, rate), geometry.effective_kernel_size(kw, rate)
    h, w = value_shape[1:3]
    if padding == geometry.VALID and (ekh > h or ekw > w):
        raise ValueError(f"filters dilated by rate {rate} span {ekh}x{ekw} ((k - 1) * rate + 1 for a "
                         f"{kh}x{kw} kernel), more than value's {h}x{w}: padding 'VALID' has no "
                         f"output; use 'SAME', a smaller rate or a larger value")
    output_hw = geometry.conv_output_hw((h, w), (kh, kw), rate, padding)
    return ConvArgs(value_shape, filters_shape, (value_shape[0], *output_hw, cout), rate, padding,
                    geometry.pads((kh, kw), rate, padding))


def check_dy(dy_shape, dy_dtype, output_shape, dtype) -> None:
    """Check the cotangent ``dy`` a vector-Jacobian product is given.

    Raises:
        TypeError: ``dy``'s dtype differs from ``value``'s and ``filters'``.
        ValueError: ``dy``'s shape is not the op's output shape.
    """
    if np.dtype(dy_dtype) != np.dtype(dtype):
        raise TypeError(f"dy must have the dtype of value and filters ({np.dtype(dtype).name}), "
                        f"got {np.dtype(dy_dtype).name}")
    if tuple(dy_shape) != tuple(output_shape):
        raise ValueError(f"dy must have the op's output shape {tuple(output_shape)}, "
                         f"got {tuple(dy_shape)}")
