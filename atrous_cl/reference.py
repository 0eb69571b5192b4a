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

from atrous_cl.validation import check_conv_args, check_dtypes, check_dy, check_transpose_args


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


def atrous_conv2d(value, filters, rate, padding, name=None):
    """NumPy reference for ``tf.nn.atrous_conv2d``; same arguments.

    ``value`` is zero-padded by TF's pads; then every output pixel is
    ``sum_{a, b} padded[n, i + a * rate, j + b * rate, :] @ filters[a, b]``,
    with ``filters`` ``[kh, kw, in_channels, out_channels]``.
    """
    del name
    value, filters = np.asarray(value), np.asarray(filters)
    dtype = check_dtypes(value.dtype, filters.dtype)
    args = check_conv_args(value.shape, filters.shape, rate, padding)
    n, oh, ow, cout = args.output_shape
    kh, kw = filters.shape[:2]
    r = args.rate
    padded = _zero_pad(value.astype(np.float64), args.pads)
    out = np.zeros((n, oh, ow, cout), np.float64)
    for a in range(kh):
        for b in range(kw):
            out += padded[:, a * r:a * r + oh, b * r:b * r + ow, :] @ filters[a, b].astype(np.float64)
    return out.astype(dtype)


def atrous_conv2d_vjp(value, filters, rate, padding, dy):
    """NumPy reference for the gradients of ``atrous_conv2d``: ``(d_value, d_filters)``.

    For ``y = atrous_conv2d(value, filters)`` and the cotangent ``dy`` (the
    shape of ``y``): ``d_value = d<y, dy>/d value``, ``d_filters = d<y, dy>/d
    filters``, from the definition in :func:`atrous_conv2d`: each window
    ``padded[:, a*r:a*r+oh, b*r:b*r+ow]`` receives ``dy @ filters[a, b].T`` and
    contributes ``window^T dy`` to ``d_filters[a, b]``. The padding is then
    cropped off ``d padded``.
    """
    value, filters, dy = np.asarray(value), np.asarray(filters), np.asarray(dy)
    dtype = check_dtypes(value.dtype, filters.dtype)
    args = check_conv_args(value.shape, filters.shape, rate, padding)
    check_dy(dy.shape, dy.dtype, args.output_shape, dtype)
    _, oh, ow, _ = args.output_shape
    kh, kw = filters.shape[:2]
    r, p = args.rate, args.pads
    padded = _zero_pad(value.astype(np.float64), p)
    dy64 = dy.astype(np.float64)
    d_padded = np.zeros_like(padded)
    d_filters = np.zeros(filters.shape, np.float64)
    for a in range(kh):
        for b in range(kw):
            window = (slice(None), slice(a * r, a * r + oh), slice(b * r, b * r + ow))
            d_padded[window] += dy64 @ filters[a, b].astype(np.float64).T
            d_filters[a, b] = np.einsum("nijc,nijo->co", padded[window], dy64)
    h, w = value.shape[1:3]
    d_value = d_padded[:, p.top:p.top + h, p.left:p.left + w]
    return d_value.astype(dtype), d_filters.astype(dtype)


def atrous_conv2d_transpose_vjp(value, filters, output_shape, rate, padding, dy):
    """NumPy reference for the gradients of ``atrous_conv2d_transpose``: ``(d_value, d_filters)``.

    From the definition in :func:`atrous_conv2d_transpose`: ``dy`` is placed
    back into a zero full result at the pads (the adjoint of the crop); the
    window ``full[:, a*r:a*r+h, b*r:b*r+w]`` that ``value @ filters[a, b].T``
    was added to gives ``d_value += window @ filters[a, b]`` and
    ``d_filters[a, b] = window^T value``.
    """
    value, filters, dy = np.asarray(value), np.asarray(filters), np.asarray(dy)
    dtype = check_dtypes(value.dtype, filters.dtype)
    args = check_transpose_args(value.shape, filters.shape, output_shape, rate, padding)
    check_dy(dy.shape, dy.dtype, args.output_shape, dtype)
    n, h, w, _ = value.shape
    kh, kw, cout, _ = filters.shape
    r, p = args.rate, args.pads
    full = _zero_pad(dy.astype(np.float64), p)
    value64 = value.astype(np.float64)
    d_value = np.zeros(value.shape, np.float64)
    d_filters = np.zeros(filters.shape, np.float64)
    for a in range(kh):
        for b in range(kw):
            window = full[:, a * r:a * r + h, b * r:b * r + w, :]
            d_value += window @ filters[a, b].astype(np.float64)
            d_filters[a, b] = np.einsum("nijc,nijo->co", window, value64)
    return d_value.astype(dtype), d_filters.astype(dtype)


def _zero_pad(x, pads):
    """``x`` (NHWC) with ``pads = (top, left, bottom, right)`` rows/columns of zeros added."""
    return np.pad(x, ((0, 0), (pads.top, pads.bottom), (pads.left, pads.right), (0, 0)))
