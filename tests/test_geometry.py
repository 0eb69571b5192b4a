# SPDX-License-Identifier: Apache-2.0
"""The pure geometry functions, against TF's padding rule worked by hand."""

from __future__ import annotations

import pytest

from atrous_cl import geometry


@pytest.mark.parametrize("k, rate, effective", [(1, 5, 1), (3, 1, 3), (3, 2, 5), (2, 3, 4), (7, 8, 49)])
def test_effective_kernel_size(k, rate, effective):
    assert geometry.effective_kernel_size(k, rate) == effective


# (kh, kw, rate, expected SAME pads (top, left, bottom, right))
SAME_PADS = [
    (1, 1, 4, (0, 0, 0, 0)),
    (3, 3, 1, (1, 1, 1, 1)),
    (3, 3, 2, (2, 2, 2, 2)),
    (2, 2, 1, (0, 0, 1, 1)),   # odd total: the extra row/column goes bottom/right
    (2, 2, 3, (1, 1, 2, 2)),   # even kernel, odd rate: total 3
    (4, 2, 3, (4, 1, 5, 2)),   # totals 9 and 3
    (2, 4, 2, (1, 3, 1, 3)),   # even kernel, even rate: symmetric
    (5, 3, 4, (8, 4, 8, 4)),
]


@pytest.mark.parametrize("kh, kw, rate, want", SAME_PADS)
def test_same_pads_follow_tf(kh, kw, rate, want):
    assert geometry.pads((kh, kw), rate, "SAME") == want


@pytest.mark.parametrize("kh, kw, rate", [(3, 3, 2), (2, 5, 3), (1, 1, 1)])
def test_valid_pads_are_zero(kh, kw, rate):
    assert geometry.pads((kh, kw), rate, "VALID") == (0, 0, 0, 0)


@pytest.mark.parametrize("total, split", [(0, (0, 0)), (1, (0, 1)), (4, (2, 2)), (9, (4, 5))])
def test_split_pad(total, split):
    assert geometry.split_pad(total) == split


@pytest.mark.parametrize("hw, khw, rate, padding, want", [
    ((5, 6), (3, 2), 2, "SAME", (5, 6)),
    ((5, 6), (3, 2), 2, "VALID", (9, 8)),
    ((1, 1), (7, 7), 8, "VALID", (49, 49)),
    ((0, 0), (3, 3), 2, "VALID", (4, 4)),
])
def test_transpose_output_hw(hw, khw, rate, padding, want):
    assert geometry.transpose_output_hw(hw, khw, rate, padding) == want


@pytest.mark.parametrize("hw, khw, rate, padding, want", [
    ((9, 8), (3, 2), 2, "VALID", (5, 6)),
    ((5, 6), (3, 2), 2, "SAME", (5, 6)),
    ((3, 3), (3, 3), 2, "VALID", (-1, -1)),
])
def test_conv_output_hw_inverts_transpose(hw, khw, rate, padding, want):
    assert geometry.conv_output_hw(hw, khw, rate, padding) == want


# The direct and Winograd kernels' work along an axis, against counting every pixel and
# tap: output pixel p reads input p + crop - a * rate through tap a.
def _reads(p, a, read, rate, crop):
    return 0 <= p + crop - a * rate < read


AXES = [(out, read, k, rate, crop, tile) for out, read, k, rate in
        [(1, 1, 1, 1), (8, 8, 3, 2), (33, 33, 3, 18), (33, 33, 3, 12), (65, 65, 3, 36), (13, 7, 5, 3),
         (7, 13, 2, 9), (40, 4, 3, 41), (19, 19, 7, 1)]
        for crop in sorted({0, (k - 1) * rate // 2, (k - 1) * rate, -2, (k - 1) * rate + 3})
        for tile in (1, 3, 4, 8)]


@pytest.mark.parametrize("out, read, k, rate, crop, tile", AXES)
def test_kernel_work_counts_what_the_tiles_compute(out, read, k, rate, crop, tile):
    """The counts tiles.default_for and launch.consecutive_pixels compare: live terms and
    consecutive tiles' taps counted pixel by pixel, phase tiles and Winograd blocks as
    many as their launches' work-items compute (launch_geometry, winograd_geometry)."""
    from atrous_cl import launch
    from atrous_cl.tiles import Tile

    live = sum(_reads(p, a, read, rate, crop) for p in range(out) for a in range(k))
    assert geometry.live_pixel_taps(out, read, k, rate, crop) == live
    wide = min(tile, out)  # plan's clamp: no wider than the image
    consecutive = sum(wide for q0 in range(0, out, wide) for a in range(k)
                      if any(_reads(q, a, read, rate, crop) for q in range(q0, q0 + wide)))
    assert geometry.consecutive_tile_taps(out, read, k, rate, crop, tile) == consecutive >= live
    width = min(tile, -(-out // rate))  # plan's clamp: no wider than a phase
    (_, items, _), _ = launch.launch_geometry((1, 1, out, 1), Tile(width, 1), rate)
    assert geometry.phase_tile_taps(out, k, rate, tile) == items * width * k
    blocks = -(-(-(-out // rate)) // 2)  # phase 0's 2-pixel blocks, the most any phase has
    group = min(tile, blocks)  # _winograd_plan's clamp
    (_, along, down), _ = launch.winograd_geometry((1, out, out, 1), Tile(group, 1, 1, True),
                                                   rate, rate)
    assert geometry.winograd_blocks(out, rate, tile) == along * group
    assert geometry.winograd_blocks(out, rate, 1) == down
