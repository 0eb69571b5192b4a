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


def live_taps(k: int, rate: int, crop: int, lo: int, hi: int) -> tuple[int, int] | None:
    """The taps ``a`` in ``range(k)`` whose offset ``a * rate - crop`` lies in ``[lo, hi]``.

    Returns ``(first, last)`` (the live taps form one run, since the offset
    grows with ``a``), or None when no tap is live.
    """
    first = max(0, -(-(lo + crop) // rate))
    last = min(k - 1, (hi + crop) // rate)
    return (first, last) if first <= last else None


def equivalent_dilation(k: int, rate: int, crop: int, lo: int, hi: int) -> tuple[int, int] | None:
    """``(rate, crop)`` with small values that land the same taps at the same offsets.

    One axis of a kernel that reads tap ``a`` at offset ``a * rate - crop``
    from its output pixel, where only offsets in ``[lo, hi]`` ever reach an
    input pixel (``lo <= 0 <= hi``; ``hi - lo`` is below the sum of the input
    and output sizes). A rate larger than ``hi - lo`` leaves at most one live
    tap, and any rate above ``hi - lo`` keeps the others outside, so such a
    rate is replaced by ``hi - lo + 1`` and the crop moved with it: the same
    result from numbers that fit the kernels' 64-bit index arithmetic, for
    any rate (TF accepts any). Returns None when no tap is live at all: the
    output along this axis is an empty sum.
    """
    live = live_taps(k, rate, crop, lo, hi)
    if live is None:
        return None
    if rate <= hi - lo:  # then crop < k * rate - lo: as small as the problem itself
        return rate, crop
    tap = live[0]
    offset = tap * rate - crop
    rate = hi - lo + 1
    return rate, tap * rate - offset


def outside_dilation(k: int, lo: int, hi: int) -> tuple[int, int]:
    """``(rate, crop)`` putting every tap's offset ``a * rate - crop`` below ``lo``: all
    outside the image, in small numbers (as :func:`equivalent_dilation`'s)."""
    rate = hi - lo + 1
    return rate, (k - 1) * rate - lo + 1


def kernel_dilations(kernel_hw: tuple[int, int], rate: int, pads: Pads, reader_hw: tuple[int, int],
                     read_hw: tuple[int, int],
                     padding_reads: bool = False) -> tuple[int, int, int, int] | None:
    """``(rate_h, crop_top, rate_w, crop_left)`` for a kernel that reads tap ``a`` of
    pixel ``p`` of an image of ``reader_hw`` at ``p - (a * rate - crop)`` of an image of
    ``read_hw``: :func:`equivalent_dilation` per axis, on the offsets that can reach it,
    ``[1 - read, reader - 1]``. None when no tap reaches the read image along an axis
    (every sum is then empty). Needs non-empty images.

    ``padding_reads``: the kernel reads TF's zero padding where a tap lands outside
    the image and adds ``0 * w`` (the forward conv, the filter gradients): an axis
    where no tap lands then gets :func:`outside_dilation`, never None, since those
    terms are NaN for an Inf or NaN ``w`` (TF's, and the reference's, result), not
    an empty sum.
    """
    axes = []
    for k, crop, reader, read in zip(kernel_hw, (pads.top, pads.left), reader_hw, read_hw):
        lo, hi = _reaching(reader, read)
        axis = equivalent_dilation(k, rate, crop, lo, hi)
        if axis is None and padding_reads:
            axis = outside_dilation(k, lo, hi)
        if axis is None:
            return None
        axes.append(axis)
    return (*axes[0], *axes[1])


def kernel_live_taps(kernel_hw: tuple[int, int], dilation: tuple[int, int, int, int],
                     reader_hw: tuple[int, int],
                     read_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(first_a, last_a, first_b, last_b)``: the taps that land inside the read image
    for some pixel, per axis, for :func:`kernel_dilations`' ``dilation`` and images (an
    empty range, first above last, where none does)."""
    taps = []
    for k, rate, crop, reader, read in zip(kernel_hw, dilation[::2], dilation[1::2], reader_hw,
                                           read_hw):
        live = live_taps(k, rate, crop, *_reaching(reader, read))
        taps += live if live is not None else (1, 0)
    return tuple(taps)


def _reaching(reader: int, read: int) -> tuple[int, int]:
    """``(lo, hi)``: the offsets ``a * rate - crop`` by which some pixel of an axis of
    ``reader`` pixels reads one of ``read`` (pixel ``p`` reads ``p - offset``)."""
    return 1 - read, reader - 1


# The direct and Winograd kernels' work along one axis, in multiplies per input
# and output channel, for choosing between them (atrous_cl.tiles.default_for,
# atrous_cl.tiles.consecutive_pixels). Output pixel ``p`` reads input ``p + crop -
# a * rate`` through tap ``a``; ``out`` and ``read`` are the output and input sizes.

def live_pixel_taps(out: int, read: int, k: int, rate: int, crop: int) -> int:
    """The pairs of output pixel and tap whose input lies inside ``[0, read)``: the
    terms of the sum along an axis (the direct kernels skip rows outside)."""
    return sum(max(0, min(out, read - crop + a * rate) - max(0, a * rate - crop))
               for a in range(k))


def phase_tile_taps(out: int, k: int, rate: int, tile: int) -> int:
    """Pixel-taps the direct kernel's phase tiles compute along a row: tiles of ``tile``
    outputs ``rate`` apart (no wider than a phase), every tap of every slot."""
    per_phase = -(-out // rate)
    width = min(tile, per_phase)
    return min(rate, out) * -(-per_phase // width) * width * k


def consecutive_tile_taps(out: int, read: int, k: int, rate: int, crop: int, tile: int) -> int:
    """Pixel-taps the direct kernel's tiles of ``tile`` consecutive outputs (no more than
    ``out``) compute along a row: per tile, the taps whose inputs reach ``[0, read)`` for
    one of its pixels."""
    tile = min(tile, out)
    tiles = -(-out // tile)
    total = 0
    for a in range(k):
        shift = crop - a * rate  # tile t reaches iff -tile < t * tile + shift < read
        first = max(0, (-tile - shift) // tile + 1)
        last = min(tiles - 1, -(-(read - shift) // tile) - 1)
        total += max(0, last - first + 1) * tile
    return total


def phase_blocks(out: int, rate: int) -> int:
    """2-output blocks along an output axis of ``out`` in phase 0 (which has the most)
    at ``rate``: the Winograd kernel's blocks per phase."""
    return -(-(-(-out // rate)) // 2)


def winograd_blocks(out: int, rate: int, group: int) -> int:
    """2-output blocks the Winograd kernel computes along an axis, in groups of up to
    ``group`` blocks along one phase (1 down the columns)."""
    blocks = phase_blocks(out, rate)
    group = min(group, blocks)
    return min(rate, out) * -(-blocks // group) * group
