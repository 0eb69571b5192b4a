# SPDX-License-Identifier: Apache-2.0
"""Geometry of the transposed atrous convolution, as pure functions on ints.

Every other part of the project (the NumPy reference, the OpenCL launcher, the
ONNX exporter) takes its pads and sizes from here and redoes none of the
arithmetic.

Conventions:
    * The canonical pad form is ONNX's ``(top, left, bottom, right)``: how many
      rows/columns are *cropped* from the full transposed-convolution result.
    * Dilation enters once, through the effective kernel size ``(k - 1) * rate + 1``.
"""

from __future__ import annotations

from typing import NamedTuple

SAME = "SAME"
VALID = "VALID"
PADDINGS = (SAME, VALID)

#: TensorFlow's layouts for this op: activations NHWC, filters
#: ``[kh, kw, out_channels, in_channels]``.
VALUE_LAYOUT = "NHWC"
FILTERS_LAYOUT = "HWOI"


class Pads(NamedTuple):
    """Crop pads in ONNX order. ``bottom``/``right`` carry TF's odd remainder."""

    top: int
    left: int
    bottom: int
    right: int


def effective_kernel_size(k: int, rate: int) -> int:
    """Extent of a ``k``-tap kernel dilated by ``rate``: ``(k - 1) * rate + 1``."""
    return (k - 1) * rate + 1


def split_pad(total: int) -> tuple[int, int]:
    """Split a total pad TF's way: ``(total // 2, total - total // 2)``.

    The odd remainder goes to the end (bottom/right). ONNX's ``auto_pad`` and
    its ``output_shape`` attribute put it at the start instead, which is why the
    exporter always writes explicit pads from this function.
    """
    return total // 2, total - total // 2


def pads(kernel_hw: tuple[int, int], rate: int, padding: str) -> Pads:
    """Crop pads ``(top, left, bottom, right)`` for TF's ``padding`` mode.

    SAME crops ``(k - 1) * rate`` per axis, split by :func:`split_pad`; VALID
    crops nothing.
    """
    if padding == VALID:
        return Pads(0, 0, 0, 0)
    top, bottom = split_pad(effective_kernel_size(kernel_hw[0], rate) - 1)
    left, right = split_pad(effective_kernel_size(kernel_hw[1], rate) - 1)
    return Pads(top, left, bottom, right)


def transpose_output_hw(input_hw: tuple[int, int], kernel_hw: tuple[int, int],
                        rate: int, padding: str) -> tuple[int, int]:
    """Spatial size of ``atrous_conv2d_transpose``'s output for an input size.

    The full (uncropped) result is ``in + (k - 1) * rate`` per axis; the pads
    are cropped from it. SAME gives ``in``, VALID ``in + (k - 1) * rate``.
    """
    p = pads(kernel_hw, rate, padding)
    full_h = input_hw[0] + effective_kernel_size(kernel_hw[0], rate) - 1
    full_w = input_hw[1] + effective_kernel_size(kernel_hw[1], rate) - 1
    return full_h - p.top - p.bottom, full_w - p.left - p.right


def conv_output_hw(input_hw: tuple[int, int], kernel_hw: tuple[int, int],
                   rate: int, padding: str) -> tuple[int, int]:
    """Spatial size of the forward ``atrous_conv2d`` output (the adjoint's).

    SAME gives ``in``; VALID ``in - (k - 1) * rate``, which may be negative
    when the dilated kernel is larger than the input (the caller rejects it).
    """
    p = pads(kernel_hw, rate, padding)
    return (input_hw[0] + p.top + p.bottom - effective_kernel_size(kernel_hw[0], rate) + 1,
            input_hw[1] + p.left + p.right - effective_kernel_size(kernel_hw[1], rate) + 1)
