# SPDX-License-Identifier: Apache-2.0
"""Write ``training.npz``: TensorFlow's own forward ``atrous_conv2d`` and the gradients of both ops.

Needs TensorFlow (never a dependency of atrous-cl); run from anywhere:
``python tests/golden/make_golden_training.py``. For every case it stores the
inputs, a random cotangent ``dy``, TF's output and the gradients that
``tf.GradientTape`` gives with respect to ``value`` and ``filters`` for that
``dy``. ``tests/test_training.py`` checks the OpenCL ops and the reference
against them.

Layout of the file: ``cases`` is a JSON list of ``{"op", "key", "rate",
"padding", "output_shape"}`` (``output_shape`` is the op's, and ``dy``'s);
each case's arrays are ``{key}/value``, ``{key}/filters``, ``{key}/dy``,
``{key}/y``, ``{key}/d_value`` and ``{key}/d_filters``; ``tf_version`` is the ``tf.__version__`` that wrote it
(2.21.0, CPU). The seed is fixed, so a rerun writes the same inputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

OUT = Path(__file__).with_name("training.npz")

# Each case is a pair, as in tests/test_training.py: x of (batch, height,
# width, cx) and y of the transpose's output size with cy channels; filters
# [kh, kw, cy, cx] fit both ops (the transpose maps x to y, atrous_conv2d y to
# x). Channels, kernel, rate, padding and dtype are those of rows of that
# file's table, so the tests build no extra kernels for them; batch and sizes
# are smaller where needed to keep the file small. Even kernels with odd
# rates make TF's asymmetric pads; rate 1 is where TF skips its own checks.
# (batch, height, width, cx, cy, kh, kw, rate, padding, dtype)
CASES = [
    (1, 5, 5, 1, 1, 1, 1, 1, "SAME", "float32"),
    (1, 5, 5, 1, 1, 1, 1, 1, "VALID", "float64"),
    (2, 6, 7, 3, 4, 3, 3, 1, "SAME", "float32"),
    (1, 6, 7, 3, 4, 3, 3, 1, "VALID", "float64"),
    (1, 7, 8, 4, 6, 2, 2, 3, "SAME", "float32"),
    (1, 5, 6, 4, 6, 2, 2, 3, "VALID", "float64"),
    (1, 8, 6, 2, 5, 4, 4, 1, "SAME", "float64"),
    (1, 8, 6, 2, 5, 4, 4, 1, "VALID", "float32"),
    (1, 10, 9, 3, 3, 2, 5, 5, "SAME", "float64"),
    (1, 6, 5, 3, 3, 2, 5, 5, "VALID", "float32"),
    (1, 12, 7, 6, 2, 5, 3, 4, "SAME", "float32"),
    (1, 4, 5, 6, 2, 5, 3, 4, "VALID", "float64"),
    (2, 1, 5, 2, 2, 3, 4, 6, "SAME", "float64"),
    (2, 1, 5, 2, 2, 3, 4, 6, "VALID", "float32"),
    (1, 1, 1, 3, 2, 3, 3, 2, "SAME", "float32"),
    (1, 1, 1, 3, 2, 3, 3, 2, "VALID", "float64"),
    (1, 3, 4, 2, 3, 3, 3, 8, "SAME", "float64"),
    (1, 3, 4, 2, 3, 3, 3, 8, "VALID", "float32"),
    (1, 5, 5, 4, 4, 6, 7, 7, "SAME", "float32"),
    (1, 3, 4, 17, 11, 3, 2, 3, "SAME", "float32"),
]


def _y_hw(h, w, kh, kw, rate, padding):
    """The transpose's output size (and atrous_conv2d's input size) for x of h x w."""
    if padding == "SAME":
        return h, w
    return h + (kh - 1) * rate, w + (kw - 1) * rate


def _run(op, value, filters, dy):
    """The op's output and ``GradientTape``'s gradients w.r.t. value and filters for ``dy``."""
    value, filters = tf.constant(value), tf.constant(filters)
    with tf.GradientTape() as tape:
        tape.watch([value, filters])
        y = op(value, filters)
    d_value, d_filters = tape.gradient(y, [value, filters], output_gradients=tf.constant(dy))
    return y.numpy(), d_value.numpy(), d_filters.numpy()


def main():
    rng = np.random.default_rng(20240605)
    arrays, index = {}, []
    for i, (n, h, w, cx, cy, kh, kw, rate, padding, dtype) in enumerate(CASES):
        x_shape, y_shape = [n, h, w, cx], [n, *_y_hw(h, w, kh, kw, rate, padding), cy]
        for op, key, value_shape, dy_shape, fn in [
                ("atrous_conv2d", f"conv{i}", y_shape, x_shape,
                 lambda v, f: tf.nn.atrous_conv2d(v, f, rate, padding)),
                ("atrous_conv2d_transpose", f"transpose{i}", x_shape, y_shape,
                 lambda v, f: tf.nn.atrous_conv2d_transpose(v, f, y_shape, rate, padding))]:
            value = rng.standard_normal(value_shape).astype(dtype)
            filters = rng.standard_normal((kh, kw, cy, cx)).astype(dtype)
            dy = rng.standard_normal(dy_shape).astype(dtype)
            y, d_value, d_filters = _run(fn, value, filters, dy)
            assert list(y.shape) == dy_shape, (key, y.shape, dy_shape)
            index.append({"op": op, "key": key, "rate": rate, "padding": padding,
                          "output_shape": dy_shape})
            arrays.update({f"{key}/{k}": v for k, v in dict(
                value=value, filters=filters, dy=dy, y=y, d_value=d_value, d_filters=d_filters).items()})
    arrays["cases"] = np.array(json.dumps(index))
    arrays["tf_version"] = np.array(tf.__version__)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {len(index)} cases to {OUT} ({OUT.stat().st_size} bytes), TF {tf.__version__}")


if __name__ == "__main__":
    main()
