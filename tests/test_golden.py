# SPDX-License-Identifier: Apache-2.0
"""The reference and the OpenCL op against TensorFlow's own ``atrous_conv2d_transpose``.

The expected outputs were computed by ``tf.nn.atrous_conv2d_transpose`` and
stored in ``golden/tf_atrous_conv2d_transpose.npz`` by
``golden/make_golden.py`` (whose docstring describes the keys), so these tests
need no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import atrous_cl
from atrous_cl import reference

GOLDEN = Path(__file__).parent / "golden" / "tf_atrous_conv2d_transpose.npz"

_FIELDS = ("value", "filters", "output_shape", "rate", "padding", "expected")

#: Bound on max |got - expected| / max |expected| per dtype. TF 2.21's float16
#: CPU kernel (Eigen) seems to round its partial sums to half precision: it
#: differs from the reference's single rounding in about half the elements,
#: by up to 7.6e-4 of the largest output. In float32 and float64 the reference
#: and PoCL stay within 2.3e-7 and 4.7e-16 of TF. The bounds leave room for
#: another device's summation order (a few ulps), not for a wrong element.
RTOL = {np.dtype(np.float16): 3e-3, np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-14}


def _load(path: Path) -> dict[str, np.ndarray]:
    # Read everything once: NpzFile decompresses a member on every access.
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


_ARRAYS = _load(GOLDEN)


def _case_keys() -> list[str]:
    """``caseNNN`` prefixes, in index order (the ``_expected`` key marks a case)."""
    return sorted(k[:-len("_expected")] for k in _ARRAYS if k.endswith("_expected"))


def _case(key: str) -> dict:
    """One case's arrays and attributes, the attributes as plain Python values."""
    a = {f: _ARRAYS[f"{key}_{f}"] for f in _FIELDS}
    a["output_shape"] = [int(d) for d in a["output_shape"]]
    a["rate"] = int(a["rate"])
    a["padding"] = str(a["padding"])
    return a


def _case_id(key: str) -> str:
    a = _case(key)
    kh, kw = a["filters"].shape[:2]
    return f"{key}-{a['padding']}-r{a['rate']}-k{kh}x{kw}-{a['value'].dtype.name}"


CASES = [pytest.param(key, id=_case_id(key)) for key in _case_keys()]


def relative_error(got, expected) -> float:
    """``max |got - expected| / max |expected|``, in float64.

    The scale is floored at the smallest normal float64 so an all-zero
    expected output compares absolutely instead of dividing by zero.
    """
    got64, expected64 = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if expected64.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(expected64))), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(got64 - expected64))) / scale


def assert_matches_tf(got, expected) -> None:
    """``got`` has TF's shape and dtype and lies within :data:`RTOL` of it."""
    got = np.asarray(got)
    assert got.shape == expected.shape, f"shape {got.shape} != TF's {expected.shape}"
    assert got.dtype == expected.dtype, f"dtype {got.dtype} != TF's {expected.dtype}"
    # NaN compares false with everything, so an unwritten NaN would pass the bound.
    assert np.all(np.isfinite(got)), "non-finite elements where TF's output is finite"
    err, tol = relative_error(got, expected), RTOL[expected.dtype]
    assert err <= tol, f"relative error {err:.3g} > {tol:.0e} ({expected.dtype.name})"


def test_golden_file_has_enough_cases():
    """The parametrised tests must not pass by finding (almost) no cases."""
    keys = _case_keys()
    assert len(keys) >= 40
    # Indices are contiguous and every case has all its fields.
    assert keys == [f"case{i:03d}" for i in range(len(keys))]
    assert all(f"{key}_{f}" in _ARRAYS for key in keys for f in _FIELDS)
    assert str(_ARRAYS["tf_version"])


@pytest.mark.parametrize("key", CASES)
def test_reference_matches_tf(key):
    a = _case(key)
    got = reference.atrous_conv2d_transpose(a["value"], a["filters"], a["output_shape"], a["rate"],
                                            a["padding"])
    assert_matches_tf(got, a["expected"])


@pytest.mark.parametrize("key", CASES)
def test_opencl_matches_tf(queue, key):
    a = _case(key)
    if a["value"].dtype == np.float64 and "cl_khr_fp64" not in queue.device.extensions.split():
        pytest.skip(f"{queue.device.name} lacks cl_khr_fp64")
    # Looked up at call time, so the reference test runs even where the op is missing.
    got = atrous_cl.atrous_conv2d_transpose(a["value"], a["filters"], a["output_shape"], a["rate"],
                                            a["padding"], queue=queue)
    assert_matches_tf(got, a["expected"])
