# SPDX-License-Identifier: Apache-2.0
"""Fit the filters of both ops by gradient descent, on the default OpenCL device.

For each op, random images go through random "true" filters; starting from
zero filters, plain gradient descent on the squared error recovers them. The
gradient comes from the op's vjp and is first checked against a central
finite difference of the loss. Run: ``python examples/fit_filters.py``.
"""

import numpy as np

from atrous_cl import (atrous_conv2d, atrous_conv2d_transpose, atrous_conv2d_transpose_vjp,
                       atrous_conv2d_vjp)

rng = np.random.default_rng(0)
rate, padding = 2, "SAME"
x = rng.standard_normal((4, 16, 16, 3)).astype(np.float32)  # NHWC images
problems = {  # name: (op(filters), vjp(filters, dy) -> (d_value, d_filters), filters shape)
    "atrous_conv2d": (lambda f: atrous_conv2d(x, f, rate, padding),
                      lambda f, dy: atrous_conv2d_vjp(x, f, rate, padding, dy), (3, 3, 3, 2)),
    "atrous_conv2d_transpose": (lambda f: atrous_conv2d_transpose(x, f, (4, 16, 16, 2), rate, padding),
                                lambda f, dy: atrous_conv2d_transpose_vjp(x, f, (4, 16, 16, 2), rate,
                                                                          padding, dy), (3, 3, 2, 3)),
}
for name, (op, vjp, shape) in problems.items():
    true = rng.standard_normal(shape).astype(np.float32)
    target = op(true)

    def loss(f):
        return 0.5 * np.sum((op(f) - target).astype(np.float64) ** 2)

    def grad(f):
        return vjp(f, op(f) - target)[1]  # d loss / d y is the residual

    filters = np.zeros(shape, np.float32)
    u = rng.standard_normal(shape).astype(np.float32)  # a random direction
    eps = 1e-2  # the loss is quadratic in the filters: central differences are exact but for rounding
    fd = (loss(filters + eps * u) - loss(filters - eps * u)) / (2 * eps)
    np.testing.assert_allclose(np.vdot(grad(filters), u), fd, rtol=1e-4)

    # Random images make the loss's Hessian about (pixels) x identity: this step
    # size takes a near-Newton step, and the error shrinks geometrically.
    lr = 0.9 / (x.shape[0] * x.shape[1] * x.shape[2])
    for step in range(12):
        filters -= lr * grad(filters)
    print(f"{name}: loss {loss(filters):.3g} after {step + 1} steps")
    np.testing.assert_allclose(filters, true, atol=1e-3)
