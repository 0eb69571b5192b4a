# SPDX-License-Identifier: Apache-2.0
"""The oracle checked without TF: against the gather form, summed term by term.

The reference scatters input pixels into a full result and crops it; this test
instead sums, for each output element, the terms of the definition directly
(as the OpenCL kernel does), so the two share no code but the pads.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from atrous_cl import geometry, reference


def _gather(value, filters, output_shape, rate, padding):
    n, h, w, cin = value.shape
    kh, kw, cout, _ = filters.shape
    top, left, _, _ = geometry.pads((kh, kw), rate, padding)
    out = np.zeros(output_shape)
    for b, p, q, c in itertools.product(*map(range, output_shape)):
        for a, bb, o in itertools.product(range(kh), range(kw), range(cin)):
            i, j = p + top - a * rate, q + left - bb * rate
            if 0 <= i < h and 0 <= j < w:
                out[b, p, q, c] += value[b, i, j, o] * filters[a, bb, c, o]
    return out


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("n, h, w, cin, cout, kh, kw, rate", [
    (1, 4, 5, 2, 3, 3, 3, 2),
    (2, 3, 3, 1, 2, 2, 2, 3),
    (1, 5, 2, 3, 1, 4, 1, 1),
    (1, 1, 1, 2, 2, 3, 2, 5),
])
def test_reference_equals_gather_form(n, h, w, cin, cout, kh, kw, rate, padding):
    rng = np.random.default_rng()
    value = rng.standard_normal((n, h, w, cin))
    filters = rng.standard_normal((kh, kw, cout, cin))
    output_shape = (n, *geometry.transpose_output_hw((h, w), (kh, kw), rate, padding), cout)
    got = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)
    np.testing.assert_allclose(got, _gather(value, filters, output_shape, rate, padding),
                               rtol=1e-12, atol=1e-12)


def test_reference_keeps_dtype_and_sums_in_float64():
    # 2048 + 1 + 1 = 2050 is a float16, but a float16 running sum rounds
    # 2048 + 1 back to 2048 (ties to even) twice and ends at 2048.
    value = np.array([2048, 1, 1, 0], np.float16).reshape(1, 1, 1, 4)
    filters = np.ones((1, 1, 1, 4), np.float16)
    got = reference.atrous_conv2d_transpose(value, filters, [1, 1, 1, 1], 1, "SAME")
    assert got.dtype == np.float16
    assert got[0, 0, 0, 0] == 2050
