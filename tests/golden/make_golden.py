# SPDX-License-Identifier: Apache-2.0
"""Write golden vectors from TensorFlow's own ``tf.nn.atrous_conv2d_transpose``.

Needs TensorFlow, which is never a dependency of atrous-cl; run it from
anywhere with a Python that has TensorFlow and NumPy::

    python tests/golden/make_golden.py

It writes ``tests/golden/tf_atrous_conv2d_transpose.npz`` (``np.savez_compressed``),
which ``tests/test_golden.py`` checks the NumPy reference and the OpenCL op
against. The inputs come from a fixed seed, so a rerun with the same
TensorFlow and NumPy writes the same arrays.

Layout of ``tf_atrous_conv2d_transpose.npz``, with ``NNN`` the zero-padded,
contiguous case index (``000``, ``001``, ...):

    ``tf_version``              0-d str: ``tf.__version__`` of the run that wrote the file.
    ``caseNNN_value``           NHWC input.
    ``caseNNN_filters``         ``[kh, kw, out_channels, in_channels]``, ``value``'s dtype.
    ``caseNNN_output_shape``    int64 ``[4]``, NHWC, from :func:`atrous_cl.geometry.transpose_output_hw`.
    ``caseNNN_rate``            0-d int64.
    ``caseNNN_padding``         0-d str, ``'SAME'`` or ``'VALID'``.
    ``caseNNN_expected``        TensorFlow's output, ``value``'s dtype.

The dtype of a case is that of its ``value``. Written with TensorFlow 2.21.0
(CPU, oneDNN on, its default). float16 works with this op on TF's CPU kernels
(oneDNN declines half without AVX-512 and TF falls back to Eigen), so a few
float16 cases are included.

Only the transpose op is generated here. Another op gets another generator
function returning its arrays and one more entry in :data:`GENERATORS`, which
writes one file per op. (The forward ``atrous_conv2d`` and the gradients of
both ops already have their own file, from ``make_golden_training.py``.)

``TF_CPP_MIN_LOG_LEVEL=2`` is set before TensorFlow is imported; TF 2.21 still
prints a few absl lines (``oneDNN custom operations are on``, the half-precision
fallback) that it emits before its log level applies. They are harmless.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# Before TensorFlow is imported: its C++ logging reads this once, at load time.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent


def _load_geometry():
    """``atrous_cl.geometry`` loaded from its file, not through the package.

    ``import atrous_cl.geometry`` would run ``atrous_cl/__init__.py``, which
    imports pyopencl and looks for OpenCL drivers; a TensorFlow venv needs
    neither. ``geometry.py`` imports only the standard library.
    """
    path = REPO_ROOT / "atrous_cl" / "geometry.py"
    spec = importlib.util.spec_from_file_location("_atrous_cl_geometry", path)
    module = importlib.util.module_from_spec(spec)
    # Registered as the importlib recipe does, so that whatever looks the module
    # up by name (pickle, typing's NamedTuple machinery) finds it.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


geometry = _load_geometry()

SEED = 20240606

# One row per geometry; each row yields a SAME and a VALID case, one float32
# and one float64 (alternating by row, so every dtype sees both paddings).
# Sizes are kept small so the file stays far below 300 KB: a VALID output has
# (k - 1) * rate more rows and columns than the input.
# (batch, height, width, in_channels, out_channels, kh, kw, rate)
TRANSPOSE_GEOMETRIES = [
    (1, 5, 5, 1, 1, 1, 1, 1),     # 1x1 kernel, single channels
    (2, 4, 6, 3, 2, 1, 1, 4),     # 1x1 kernel: the rate has nothing to dilate
    (1, 6, 7, 3, 4, 3, 3, 1),     # rate 1: TF skips its atrous checks and calls conv2d_transpose
    (3, 5, 4, 3, 5, 2, 2, 3),     # even kernel, odd rate: asymmetric pads; batch 3
    (1, 8, 6, 2, 5, 4, 4, 1),     # even kernel, rate 1: asymmetric pads
    (2, 4, 6, 3, 2, 2, 5, 5),     # kh != kw, odd rate
    (1, 6, 5, 4, 2, 5, 3, 4),     # kh != kw, even rate
    (1, 5, 4, 8, 2, 7, 7, 2),     # largest kernel, 8 channels in
    (1, 1, 1, 3, 2, 3, 3, 2),     # 1x1 spatial input
    (2, 1, 5, 2, 2, 3, 4, 6),     # 1 x W input, rate 6
    (1, 4, 1, 5, 3, 4, 2, 3),     # H x 1 input, even kernel, odd rate; SAME's output is all
                                  # zeros (both column taps miss the one input column)
    (1, 3, 4, 2, 3, 3, 3, 8),     # rate 8: dilated kernel (17) far larger than the input
    (1, 3, 4, 3, 1, 6, 7, 4),     # 6x7 kernel at rate 4 spans 21x25 over a 3x4 input
    (1, 5, 3, 1, 8, 2, 3, 7),     # one channel in, eight out; even kh, odd rate
    (2, 5, 4, 7, 1, 3, 2, 5),     # seven channels in, one out; even kw, odd rate
    (1, 7, 4, 2, 3, 6, 4, 3),     # both even, odd rate
    (3, 3, 3, 3, 5, 2, 1, 1),     # 2x1 kernel, rate 1
    (1, 5, 6, 4, 2, 1, 3, 2),     # 1x3 kernel
    (1, 2, 2, 3, 2, 5, 5, 4),     # 2x2 input, 17x17 dilated kernel
    (2, 6, 5, 5, 4, 4, 3, 2),     # even kernel, even rate: symmetric pads again
    (1, 1, 3, 2, 6, 7, 1, 1),     # 7x1 kernel taller than the 1-row input
    (1, 4, 4, 6, 5, 3, 5, 3),
    (1, 5, 6, 2, 2, 2, 2, 8),     # even kernel at rate 8: 9x9 over a 5x6 input
    (1, 3, 2, 3, 4, 7, 2, 5),     # 7x2 kernel, rate 5; SAME's output is all zeros (no tap
                                  # lands on the 3x2 input): TF does not refuse it
]

# A few float16 cases: (row of TRANSPOSE_GEOMETRIES, padding). Half's only own
# code in the kernel is its loads and stores, so a handful covers it.
FLOAT16_CASES = [(3, "SAME"), (5, "VALID"), (8, "VALID"), (11, "SAME"), (13, "VALID"), (19, "SAME")]


def _transpose_cases():
    """``(geometry row, padding, dtype)`` of every case, in file order."""
    cases = []
    for row in range(len(TRANSPOSE_GEOMETRIES)):
        dtypes = (np.float32, np.float64) if row % 2 == 0 else (np.float64, np.float32)
        for padding, dtype in zip((geometry.SAME, geometry.VALID), dtypes):
            cases.append((row, padding, dtype))
    cases += [(row, padding, np.float16) for row, padding in FLOAT16_CASES]
    return cases


def make_transpose_golden(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The arrays of ``tf_atrous_conv2d_transpose.npz``, in the layout of the module docstring."""
    arrays = {}
    for i, (row, padding, dtype) in enumerate(_transpose_cases()):
        n, h, w, cin, cout, kh, kw, rate = TRANSPOSE_GEOMETRIES[row]
        output_shape = [n, *geometry.transpose_output_hw((h, w), (kh, kw), rate, padding), cout]
        # Drawn in float64 and rounded: the inputs are exactly representable in
        # the case's dtype, so both sides of a comparison see the same numbers.
        value = rng.standard_normal((n, h, w, cin)).astype(dtype)
        filters = rng.standard_normal((kh, kw, cout, cin)).astype(dtype)
        expected = tf.nn.atrous_conv2d_transpose(value, filters, output_shape, rate, padding).numpy()
        # TF computes its own output size; a mismatch here means our geometry is wrong.
        assert list(expected.shape) == output_shape, (i, expected.shape, output_shape)
        assert expected.dtype == value.dtype, (i, expected.dtype, value.dtype)
        key = f"case{i:03d}"
        arrays.update({
            f"{key}_value": value,
            f"{key}_filters": filters,
            f"{key}_output_shape": np.array(output_shape, np.int64),
            f"{key}_rate": np.array(rate, np.int64),
            f"{key}_padding": np.array(padding),
            f"{key}_expected": expected,
        })
    return arrays


#: Output file name -> generator. Each generator gets its own seeded
#: generator, so adding or changing one op's cases leaves the others' files as they are.
GENERATORS = {
    "tf_atrous_conv2d_transpose.npz": make_transpose_golden,
}


def main() -> None:
    for filename, make in GENERATORS.items():
        arrays = make(np.random.default_rng(SEED))
        arrays["tf_version"] = np.array(tf.__version__)
        path = HERE / filename
        np.savez_compressed(path, **arrays)
        count = sum(k.endswith("_expected") for k in arrays)
        print(f"wrote {count} cases to {path} ({path.stat().st_size} bytes), TF {tf.__version__}")


if __name__ == "__main__":
    main()
