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
