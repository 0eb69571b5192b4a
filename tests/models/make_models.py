# SPDX-License-Identifier: Apache-2.0
"""Convert small TF graphs holding ``tf.nn.atrous_conv2d_transpose`` with tf2onnx.

Writes ``<name>.onnx`` (tf2onnx's lowering, unchanged) and ``<name>.npz``
(inputs and TF's outputs for a few batch sizes, keys ``x<batch>`` and
``y<batch>``; the height for ``dynamic_height``) for every model in :data:`MODELS`
(or those named) next to this file. TensorFlow and tf2onnx are needed only here,
never by the package or its tests::

    python3 -m venv /tmp/venv-tf && /tmp/venv-tf/bin/pip install tensorflow-cpu tf2onnx
    /tmp/venv-tf/bin/python tests/models/make_models.py [NAME ...]

Written with TensorFlow 2.21 and tf2onnx 1.17.0 at opset 17.
"""

from __future__ import annotations

import pathlib

import numpy as np
import tensorflow as tf
import tf2onnx

HERE = pathlib.Path(__file__).parent
OPSET = 17
rng = np.random.default_rng(20261203)


def weights(*shape):
    """Random float32 weights, NumPy so that they become constants of the graph, not inputs."""
    scale = np.sqrt(np.prod(shape[:-1]))
    return (rng.standard_normal(shape) / scale).astype(np.float32)


def single_b1():
    """One op at batch 1: k3, rate 2, SAME, static shapes."""
    f = weights(3, 3, 8, 6)

    def fn(x):
        return tf.nn.atrous_conv2d_transpose(x, f, [1, 16, 16, 8], 2, "SAME")
    return fn, [1, 16, 16, 6], [1]


def single_b3_valid():
    """One op at a static batch of 3: k5, rate 4, VALID (the issue's measured layer, smaller)."""
    f = weights(5, 5, 8, 8)

    def fn(x):
        return tf.nn.atrous_conv2d_transpose(x, f, [3, 28, 28, 8], 4, "VALID")
    return fn, [3, 12, 12, 8], [3]


def dynamic_even_odd():
    """Dynamic batch with ``tf.stack`` output shapes; even kernels with odd rates."""
    f1, f2 = weights(4, 4, 8, 4), weights(2, 2, 6, 8)

    def fn(x):
        n = tf.shape(x)[0]
        h = tf.nn.atrous_conv2d_transpose(x, f1, tf.stack([n, 11, 9, 8]), 3, "SAME")
        return tf.nn.atrous_conv2d_transpose(h, f2, tf.stack([n, 16, 14, 6]), 5, "VALID")
    return fn, [None, 11, 9, 4], [1, 2, 3]


def decoder():
    """A small decoder: dilated forward convs, biases, ReLUs, two transposed atrous convs."""
    c1, b1 = weights(3, 3, 16, 32), weights(32)
    t1, bt1 = weights(3, 3, 32, 32), weights(32)
    c2, b2 = weights(3, 3, 32, 32), weights(32)
    t2, bt2 = weights(4, 4, 8, 32), weights(8)

    def fn(x):
        n = tf.shape(x)[0]
        h = tf.nn.relu(tf.nn.atrous_conv2d(x, c1, 2, "SAME") + b1)
        h = tf.nn.atrous_conv2d_transpose(h, t1, tf.stack([n, 32, 32, 32]), 2, "SAME")
        h = tf.nn.relu(h + bt1)
        h = tf.nn.relu(tf.nn.atrous_conv2d(h, c2, 4, "SAME") + b2)
        h = tf.nn.atrous_conv2d_transpose(h, t2, tf.stack([n, 41, 41, 8]), 3, "VALID")
        return h + bt2
    return fn, [None, 32, 32, 16], [1, 2, 3]


def dynamic_height():
    """A static batch and a dynamic height (audio's ``[1, T, F, C]``): k4x3, rate 3, SAME,
    whose output height follows the input's. Not the batch: its chain must not fold."""
    f = weights(4, 3, 3, 2)

    def fn(x):
        return tf.nn.atrous_conv2d_transpose(x, f, tf.stack([1, tf.shape(x)[1], 8, 3]), 3, "SAME")
    return fn, [1, None, 8, 2], [1, 2, 5, 7]


MODELS = {"single_b1": single_b1, "single_b3_valid": single_b3_valid,
          "dynamic_even_odd": dynamic_even_odd, "decoder": decoder,
          "dynamic_height": dynamic_height}


def main(names=None):
    """Write the models named (all by default: the weights come from one generator in
    turn, so a model written alone has others than in a full run)."""
    for name, make in MODELS.items():
        if names and name not in names:
            continue
        fn, shape, sizes = make()
        spec = [tf.TensorSpec(shape, tf.float32, name="x")]
        tf_fn = tf.function(fn, input_signature=spec)
        model, _ = tf2onnx.convert.from_function(tf_fn, input_signature=spec, opset=OPSET)
        model.producer_version = f"{tf2onnx.__version__} (TF {tf.__version__})"
        (HERE / f"{name}.onnx").write_bytes(model.SerializeToString())
        data = {}
        dynamic = shape.index(None) if None in shape else 0
        for b in sizes:  # of the dynamic dim: the batch but in dynamic_height
            x_shape = [*shape]
            x_shape[dynamic] = b
            x = rng.standard_normal(x_shape).astype(np.float32)
            data[f"x{b}"], data[f"y{b}"] = x, tf_fn(tf.constant(x)).numpy()
        np.savez_compressed(HERE / f"{name}.npz", **data)
        print(f"{name}: {len(model.graph.node)} nodes, sizes {sizes}, "
              f"output {data[f'y{sizes[0]}'].shape}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
