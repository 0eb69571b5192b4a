# SPDX-License-Identifier: Apache-2.0
"""The NumPy oracle, written plainly from the definition. Never optimise it.

The transposed convolution scatters every input pixel: ``value[n, i, j, :]``
adds ``filters[a, b] @ value[n, i, j, :]`` at position ``(i + a * rate,
j + b * rate)`` of the full result, which has ``(k - 1) * rate`` more rows and
columns than the input. The output is that full result with the pads of
:mod:`atrous_cl.geometry` cropped off. Sums are taken in float64 and the result
is cast back to the input dtype.
"""

from __future__ import annotations

import numpy as np

from atrous_cl.validation import check_dtypes, check_transpose_args


def atrous_conv2d_transpose(value, filters, output_shape, rate, padding, name=None):
    """NumPy reference for ``tf.nn.atrous_conv2d_transpose``; same arguments."""
    del name  # accepted for TF compatibility
    value, filters = np.asarray(value), np.asarray(filters)
    dtype = check_dtypes(value.dtype, filters.dtype)
    args = check_transpose_args(value.shape, filters.shape, output_shape, rate, padding)
    n, h, w, _ = value.shape
    kh, kw, cout, _ = filters.shape
    r = args.rate
    full = np.zeros((n, h + (kh - 1) * r, w + (kw - 1) * r, cout), np.float64)
    for a in range(kh):
        for b in range(kw):
            tap = filters[a, b].astype(np.float64)  # [out_channels, in_channels]
            full[:, a * r:a * r + h, b * r:b * r + w, :] += value.astype(np.float64) @ tap.T
    oh, ow = args.output_shape[1:3]
    return full[:, args.pads.top:args.pads.top + oh, args.pads.left:args.pads.left + ow].astype(dtype)
