# SPDX-License-Identifier: Apache-2.0
"""Tensors past 2**31 elements: the kernel's 64-bit offsets reach their far end.

Opt-in (``ATROUS_CL_LARGE=1``): each case moves about 4 GB of float16 and
needs a device that can allocate that much (Intel's CPU runtime here; PoCL
3.0 caps a buffer at 2 GB). Elements beyond 2**31 are checked against the
definition summed term by term, point by point.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import atrous_cl
from atrous_cl import geometry

pytestmark = pytest.mark.skipif(os.environ.get("ATROUS_CL_LARGE") != "1",
                                reason="4 GB cases: set ATROUS_CL_LARGE=1 to run them")


def _gather_point(value, filters, rate, padding, n, p, q):
    """out[n, p, q, :] from the definition, in float64."""
    kh, kw, cout, _ = filters.shape
    pads = geometry.pads((kh, kw), rate, padding)
    acc = np.zeros(cout)
    for a in range(kh):
        for b in range(kw):
            i, j = p + pads.top - a * rate, q + pads.left - b * rate
            if 0 <= i < value.shape[1] and 0 <= j < value.shape[2]:
                acc += filters[a, b].astype(np.float64) @ value[n, i, j].astype(np.float64)
    return acc


# (value shape, out channels): the input past 2**31 elements, then the output.
CASES = [((1, 2049, 2048, 512), 1), ((1, 2049, 2048, 1), 512)]


@pytest.mark.parametrize("value_shape, cout", CASES, ids=["large-value", "large-output"])
def test_offsets_past_int32(queue, value_shape, cout):
    n, h, w, cin = value_shape
    need = 2 * (n * h * w * max(cin, cout)) + 2**28
    if queue.device.max_mem_alloc_size < need:
        pytest.skip(f"{queue.device.name} allocates at most {queue.device.max_mem_alloc_size} bytes")
    rng = np.random.default_rng()
    value = rng.standard_normal(value_shape, dtype=np.float32).astype(np.float16)
    filters = (rng.standard_normal((3, 3, cout, cin), dtype=np.float32) / np.sqrt(cin)).astype(np.float16)
    got = atrous_cl.atrous_conv2d_transpose(value, filters, (n, h, w, cout), 2, "SAME", queue=queue)
    assert max(value.size, got.size) > 2**31
    for p, q in [(0, 0), (h // 2, w // 3), (h - 1, w - 5), (h - 1, w - 1), (h - 3, 7)]:
        want = _gather_point(value, filters, 2, "SAME", 0, p, q)
        scale = max(np.max(np.abs(want)), 1.0)
        err = np.max(np.abs(got[0, p, q].astype(np.float64) - want)) / scale
        assert err < 4e-3, f"pixel ({p}, {q}): relative error {err:.2e}"
