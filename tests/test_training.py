# SPDX-License-Identifier: Apache-2.0
"""The forward op and the gradients of both ops: against the reference, the
adjoint identity, finite differences and TensorFlow's own outputs."""

from __future__ import annotations

import json
import types
import math
from pathlib import Path

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array
import pytest
from conftest import (assert_close, case_id, poisoned, skip_unsupported, stub_device,
                      winograd_filter_gradient_launches)

import atrous_cl
from atrous_cl import (calls, facts, filter_grad, geometry, memory, ops, programs, reference, tiles,
                       training)
from atrous_cl.tiles import Tile
from atrous_cl.validation import check_conv_args

# Every case describes a pair: x of (batch, height, width, cx) and y of the
# transpose op's output size with cy channels; filters are [kh, kw, cy, cx].
# The transpose maps x to y, the forward op y to x, so every row serves both
# ops and both paddings (for VALID, y is x + (k - 1) * rate: the forward op's
# input always holds its dilated kernel, while x may be smaller than it). The
# golden cases share this table's channels, kernels and rates, and so its
# kernel builds.
# (batch, height, width, cx, cy, kh, kw, rate)
SHAPES = [
    (1, 5, 5, 1, 1, 1, 1, 1),       # 1x1 kernel, single channels
    (2, 6, 7, 3, 4, 3, 3, 1),       # rate 1
    (3, 7, 11, 4, 6, 2, 2, 3),      # even kernel, odd rate: asymmetric pads
    (1, 8, 6, 2, 5, 4, 4, 1),       # even kernel, rate 1
    (2, 10, 9, 3, 3, 2, 5, 5),      # kh != kw, odd rate
    (1, 12, 7, 6, 2, 5, 3, 4),
    (1, 6, 6, 8, 8, 7, 7, 2),       # largest kernel
    (1, 1, 1, 3, 2, 3, 3, 2),       # 1x1 spatial
    (2, 1, 5, 2, 2, 3, 4, 6),       # 1 x W, rate 6
    (1, 3, 4, 2, 3, 3, 3, 8),       # rate 8: dilated kernel far larger than x
    (1, 5, 5, 4, 4, 6, 7, 7),       # dilated kernel larger than x, rate 7
    (1, 6, 5, 32, 32, 3, 3, 2),     # 32 channels
    (2, 5, 9, 17, 11, 3, 2, 3),     # channel counts that are not tile multiples
    (0, 5, 5, 3, 4, 3, 3, 2),       # empty batch
]


# float32 and float64 with both paddings; float16, whose only own code is its
# loads and stores, with SAME and VALID on alternate rows: every case builds
# two programs, and a cold PoCL cache spends ~0.7 s a case on them.
CASES = [pytest.param(shape, padding, dtype, id=f"{case_id(shape)}-{padding}-{np.dtype(dtype).name}")
         for row, shape in enumerate(SHAPES)
         for padding in ("SAME", "VALID")
         for dtype in (np.float32, np.float64, np.float16)
         if dtype != np.float16 or padding == ("SAME", "VALID")[row % 2]]


def _problem(shape, padding, dtype, rng):
    """``x``, ``y`` (random, of the two sides' shapes), ``filters`` and the rate."""
    n, h, w, cx, cy, kh, kw, r = shape
    y_hw = geometry.transpose_output_hw((h, w), (kh, kw), r, padding)
    x = rng.standard_normal((n, h, w, cx)).astype(dtype)
    y = rng.standard_normal((n, *y_hw, cy)).astype(dtype)
    filters = rng.standard_normal((kh, kw, cy, cx)).astype(dtype)
    return x, y, filters, r


def _to_device(queue, *arrays):
    return [cl_array.to_device(queue, a) for a in arrays]


@pytest.mark.parametrize("shape, padding, dtype", CASES)
def test_matches_reference(queue, shape, padding, dtype):
    """The forward op and both vjps, device path into NaN-poisoned outputs and host path."""
    skip_unsupported(queue, dtype)
    x, y, filters, rate = _problem(shape, padding, dtype, np.random.default_rng())
    d_x, d_y, d_f = _to_device(queue, x, y, filters)
    what = f"{shape} {padding}"

    # Forward: y -> x's shape; its cotangent has x's shape.
    want = reference.atrous_conv2d(y, filters, rate, padding)
    out = poisoned(queue, x.shape, dtype)
    assert training.atrous_conv2d(d_y, d_f, rate, padding, out=out) is out
    assert_close(out.get(), want, dtype, context=f"atrous_conv2d {what}")
    host = training.atrous_conv2d(y, filters, rate, padding, queue=queue)
    np.testing.assert_array_equal(host, out.get())  # the same kernel: bit-identical

    for name, fn, inputs, shapes in [
            ("atrous_conv2d_vjp", training.atrous_conv2d_vjp,
             lambda v, f, dy: (v, f, rate, padding, dy), (y, x)),
            ("atrous_conv2d_transpose_vjp", training.atrous_conv2d_transpose_vjp,
             lambda v, f, dy: (v, f, y.shape, rate, padding, dy), (x, y))]:
        value, dy = shapes
        ref = getattr(reference, name)(*inputs(value, filters, dy))
        outs = (poisoned(queue, value.shape, dtype), poisoned(queue, filters.shape, dtype))
        got = fn(*inputs(*_to_device(queue, value, filters, dy)), out=outs)
        assert got[0] is outs[0] and got[1] is outs[1]
        assert_close(outs[0].get(), ref[0], dtype, context=f"{name} d_value {what}")
        # d_filters sums N * H * W terms per entry, which may cancel (one 1x1 filter
        # of one channel summed 25 terms to 3e-4 of its own rounding-free size):
        # allow the recursive-summation bound n * u * sum |terms| on top.
        terms = getattr(reference, name)(*inputs(np.abs(value), np.abs(filters), np.abs(dy)))[1]
        u = np.finfo(np.float64 if dtype == np.float64 else np.float32).eps / 2
        atol = np.prod(dy.shape[:3]) * u * np.max(terms.astype(np.float64), initial=0.0)
        assert_close(outs[1].get(), ref[1], dtype, context=f"{name} d_filters {what}", atol=atol)
        host = fn(*inputs(value, filters, dy), queue=queue)
        assert all(isinstance(h, np.ndarray) for h in host)
        np.testing.assert_array_equal(host[1], outs[1].get())


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("shape", SHAPES, ids=case_id)
def test_adjoint_identity(queue, shape, padding):
    """<T(x), y> = <x, A(y)> for the same filters array, in float64 on the device."""
    skip_unsupported(queue, np.float64)
    x, y, filters, rate = _problem(shape, padding, np.float64, np.random.default_rng())
    tx = ops.atrous_conv2d_transpose(x, filters, y.shape, rate, padding, queue=queue)
    ay = training.atrous_conv2d(y, filters, rate, padding, queue=queue)
    lhs, rhs = np.vdot(tx, y), np.vdot(x, ay)
    # Rounding is relative to the sums of absolute terms, not to their (cancelling) total.
    scale = np.vdot(np.abs(tx), np.abs(y)) + np.vdot(np.abs(x), np.abs(ay))
    assert abs(lhs - rhs) <= 1e-12 * scale, (lhs, rhs)


def _directional_derivative(loss, arg, direction, eps=1e-3):
    """Central difference of ``loss`` at ``arg`` along ``direction`` (``arg`` is restored)."""
    old = arg.copy()
    arg += eps * direction
    up = loss()
    arg[...] = old - eps * direction
    down = loss()
    arg[...] = old
    return (up - down) / (2 * eps)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("shape", SHAPES, ids=case_id)
def test_gradients_match_finite_differences(queue, shape, padding):
    """All four gradients against central differences of the device ops, in float64.

    Along random directions: a gradient wrong in any element fails for almost
    every direction. Both ops are linear in value and in filters, so central
    differences are exact up to rounding and the bound can be tight. The bound
    scales with the sum of the terms' magnitudes (the same vjp on absolute
    values), not with the gradient, whose terms may cancel.
    """
    skip_unsupported(queue, np.float64)
    rng = np.random.default_rng()
    x, y, filters, rate = _problem(shape, padding, np.float64, rng)
    dx, dy = rng.standard_normal(x.shape), rng.standard_normal(y.shape)

    def transpose_loss():
        return np.vdot(ops.atrous_conv2d_transpose(x, filters, y.shape, rate, padding, queue=queue), dy)

    def conv_loss():
        return np.vdot(training.atrous_conv2d(y, filters, rate, padding, queue=queue), dx)

    a = np.abs
    for name, (d_value, d_filters), magnitudes, loss, value in [
            ("transpose", training.atrous_conv2d_transpose_vjp(x, filters, y.shape, rate, padding, dy,
                                                               queue=queue),
             reference.atrous_conv2d_transpose_vjp(a(x), a(filters), y.shape, rate, padding, a(dy)),
             transpose_loss, x),
            ("conv", training.atrous_conv2d_vjp(y, filters, rate, padding, dx, queue=queue),
             reference.atrous_conv2d_vjp(a(y), a(filters), rate, padding, a(dx)), conv_loss, y)]:
        for what, grad, terms, arg in (("d_value", d_value, magnitudes[0], value),
                                       ("d_filters", d_filters, magnitudes[1], filters)):
            for _ in range(3):
                u = rng.standard_normal(arg.shape)
                want = _directional_derivative(loss, arg, u)
                got = np.vdot(grad, u)
                scale = np.vdot(terms, np.abs(u))
                assert abs(got - want) <= 1e-9 * scale, f"{name} {what}: {got} vs {want}"


_GOLDEN = Path(__file__).parent / "golden" / "training.npz"


def _golden_cases():
    if not _GOLDEN.is_file():
        return []
    with np.load(_GOLDEN) as z:
        return [pytest.param(case, id=case["key"]) for case in json.loads(str(z["cases"]))]


@pytest.fixture(scope="module")
def golden():
    with np.load(_GOLDEN) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("case", _golden_cases())
def test_tensorflow_golden(queue, golden, case):
    """TF's atrous_conv2d and GradientTape's gradients of both ops, by the device and the reference."""
    a = {k: golden[f"{case['key']}/{k}"] for k in ("value", "filters", "dy", "y", "d_value", "d_filters")}
    dtype = a["value"].dtype
    skip_unsupported(queue, dtype)
    if case["op"] == "atrous_conv2d":
        attrs = (case["rate"], case["padding"])
        assert_close(training.atrous_conv2d(a["value"], a["filters"], *attrs, queue=queue), a["y"],
                     context="device y")
        assert_close(reference.atrous_conv2d(a["value"], a["filters"], *attrs), a["y"],
                     context="reference y")
        device = training.atrous_conv2d_vjp(a["value"], a["filters"], *attrs, a["dy"], queue=queue)
        ref = reference.atrous_conv2d_vjp(a["value"], a["filters"], *attrs, a["dy"])
    else:
        attrs = (case["output_shape"], case["rate"], case["padding"])
        device = training.atrous_conv2d_transpose_vjp(a["value"], a["filters"], *attrs, a["dy"],
                                                      queue=queue)
        ref = reference.atrous_conv2d_transpose_vjp(a["value"], a["filters"], *attrs, a["dy"])
    for source, (d_value, d_filters) in (("device", device), ("reference", ref)):
        assert_close(d_value, a["d_value"], context=f"{source} d_value")
        assert_close(d_filters, a["d_filters"], context=f"{source} d_filters")


def test_golden_file_is_present_and_complete():
    """The golden test must not pass by finding no cases."""
    ops_seen = [c.values[0]["op"] for c in _golden_cases()]
    assert ops_seen.count("atrous_conv2d") >= 20 and ops_seen.count("atrous_conv2d_transpose") >= 20


def _offset_view(queue, a):
    """``a`` on the device as a view that starts one leading slice (of 7s) into its buffer."""
    return cl_array.to_device(queue, np.concatenate([a[:1] * 0 + 7, a]))[1:]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_device_arrays_with_offsets_stay_on_the_queue(queue, dtype):
    """Views starting inside their buffer are read and written at their offset; results stay on the queue.
    float16: on CPUs the filter gradient and the op widen them first, from that offset."""
    skip_unsupported(queue, dtype)
    rng = np.random.default_rng()
    x, y, filters, rate = _problem((2, 6, 7, 3, 4, 3, 3, 1), "VALID", dtype, rng)  # a row of SHAPES
    dx = rng.standard_normal(x.shape).astype(dtype)
    v_x, v_y, v_f, v_dx = (_offset_view(queue, a) for a in (x, y, filters, dx))
    out = poisoned(queue, (3, *x.shape[1:]), dtype)
    got = training.atrous_conv2d(v_y, v_f, rate, "VALID", out=out[1:])
    assert got.queue is queue and np.isnan(out.get()[0]).all(), "wrote outside its output view"
    assert_close(out.get()[1:], reference.atrous_conv2d(y, filters, rate, "VALID"), dtype)

    d_value, d_filters = training.atrous_conv2d_vjp(v_y, v_f, rate, "VALID", v_dx)
    assert isinstance(d_value, cl_array.Array) and d_value.queue is queue
    want = reference.atrous_conv2d_vjp(y, filters, rate, "VALID", dx)
    assert_close(d_value.get(), want[0], dtype)
    assert_close(d_filters.get(), want[1], dtype)

    outs = (poisoned(queue, (3, *x.shape[1:]), dtype),
            poisoned(queue, (4, *filters.shape[1:]), dtype))
    training.atrous_conv2d_transpose_vjp(v_x, v_f, y.shape, rate, "VALID", v_y,
                                         out=(outs[0][1:], outs[1][1:]))
    want = reference.atrous_conv2d_transpose_vjp(x, filters, y.shape, rate, "VALID", y)
    assert np.isnan(outs[0].get()[0]).all() and np.isnan(outs[1].get()[0]).all()
    assert_close(outs[0].get()[1:], want[0], dtype)
    assert_close(outs[1].get()[1:], want[1], dtype)


def _same_non_finite(got, want, dtype, context):
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want), err_msg=context)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=context)
    finite = np.isfinite(want)
    assert_close(got[finite], want[finite], dtype, context)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rate", [30, 1000, 2**40])
@pytest.mark.parametrize("k", [(3, 2), (3, 3)], ids=["3x2", "3x3"])
def test_taps_that_read_only_padding_still_add_zero_times_weight(queue, k, rate, dtype):
    """On an 8x9 image, SAME: from rate 30 no tap of a 2-wide kernel lands inside along
    the width, and from rate 8 only the centre tap of a 3-tall one. The forward conv
    and both filter gradients read TF's zero padding there and add 0 * w: NaN for an
    Inf or NaN weight (or cotangent), as the reference's padded arrays give, not the
    empty sum (zero) they gave before. The transpose op and its value gradient add no
    term for a tap outside the image. The reference runs at rate 1000 for 2**40:
    the same taps land, at the same places."""
    skip_unsupported(queue, dtype)
    rng = np.random.default_rng()
    kh, kw = k
    x = rng.standard_normal((2, 8, 9, 3)).astype(dtype)
    fc = rng.standard_normal((kh, kw, 3, 4)).astype(dtype)
    fc[0, kw - 1, 0, 0], fc[2, 0, 1, 1] = np.nan, np.inf
    ft = np.ascontiguousarray(fc.transpose(0, 1, 3, 2))
    dy = rng.standard_normal((2, 8, 9, 4)).astype(dtype)
    dy[1, 3, 4, 2] = np.nan
    xn = x.copy()
    xn[0, 2, 2, 1] = np.inf
    ref_rate = min(rate, 1000)
    got = atrous_cl.atrous_conv2d(x, fc, rate, "SAME", queue=queue)
    _same_non_finite(got, reference.atrous_conv2d(x, fc, ref_rate, "SAME"), dtype, "forward")
    got = atrous_cl.atrous_conv2d_transpose(x, ft, (2, 8, 9, 4), rate, "SAME", queue=queue)
    _same_non_finite(got, reference.atrous_conv2d_transpose(x, ft, (2, 8, 9, 4), ref_rate, "SAME"),
                     dtype, "transpose")
    got = atrous_cl.atrous_conv2d_vjp(x, fc, rate, "SAME", dy, queue=queue)
    want = reference.atrous_conv2d_vjp(x, fc, ref_rate, "SAME", dy)
    for g, w, what in zip(got, want, ("d_value", "d_filters")):
        _same_non_finite(g, w, dtype, f"atrous_conv2d_vjp {what}")
    got = atrous_cl.atrous_conv2d_transpose_vjp(xn, ft, (2, 8, 9, 4), rate, "SAME", dy, queue=queue)
    want = reference.atrous_conv2d_transpose_vjp(xn, ft, (2, 8, 9, 4), ref_rate, "SAME", dy)
    for g, w, what in zip(got, want, ("d_value", "d_filters")):
        _same_non_finite(g, w, dtype, f"atrous_conv2d_transpose_vjp {what}")


def test_empty_image_transpose_gradient(queue):
    """VALID on a 0x0 image: the transpose's d_value is empty and d_filters all zeros."""
    value = np.zeros((2, 0, 0, 3), np.float32)
    filters = np.ones((2, 3, 4, 3), np.float32)
    output_shape = (2, *geometry.transpose_output_hw((0, 0), (2, 3), 2, "VALID"), 4)
    dy = np.ones(output_shape, np.float32)
    outs = poisoned(queue, value.shape, np.float32), poisoned(queue, filters.shape, np.float32)
    training.atrous_conv2d_transpose_vjp(*_to_device(queue, value, filters), output_shape, 2, "VALID",
                                         cl_array.to_device(queue, dy), out=outs)
    np.testing.assert_array_equal(outs[1].get(), np.zeros(filters.shape, np.float32))


@pytest.mark.parametrize("cin, cout", [(0, 5), (4, 0), (0, 0)])
@pytest.mark.parametrize("op", ["atrous_conv2d_vjp", "atrous_conv2d_transpose_vjp"])
def test_no_channels(queue, op, cin, cout):
    """Zero input or output channels: empty or all-zero gradients, as the reference's
    (the filter gradient's split divided by its zero-sized partial sums)."""
    rng = np.random.default_rng()
    value = rng.standard_normal((2, 5, 6, cin)).astype(np.float32)
    if op == "atrous_conv2d_vjp":
        filters = rng.standard_normal((3, 2, cin, cout)).astype(np.float32)
        args = (value, filters, 2, "SAME", rng.standard_normal((2, 5, 6, cout)).astype(np.float32))
    else:
        filters = rng.standard_normal((3, 2, cout, cin)).astype(np.float32)
        args = (value, filters, (2, 5, 6, cout), 2, "SAME",
                rng.standard_normal((2, 5, 6, cout)).astype(np.float32))
    got = getattr(atrous_cl, op)(*args, queue=queue)
    for g, w in zip(got, getattr(reference, op)(*args)):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


def test_filter_gradient_identical_run_to_run(queue):
    """No atomics and a fixed summation order: repeated calls agree bit for bit."""
    rng = np.random.default_rng()
    x, y, filters, rate = _problem((2, 24, 20, 32, 32, 3, 3, 2), "SAME", np.float32, rng)
    first = training.atrous_conv2d_transpose_vjp(x, filters, y.shape, rate, "SAME", y, queue=queue)
    for _ in range(3):
        again = training.atrous_conv2d_transpose_vjp(x, filters, y.shape, rate, "SAME", y, queue=queue)
        np.testing.assert_array_equal(again[1], first[1])
        np.testing.assert_array_equal(again[0], first[0])


@pytest.mark.parametrize("rows, tiles, want", [
    (1, 9, (1, 1)),          # a single row: one chunk
    (100, 4096, (1, 100)),   # enough work-items without splitting
    (100, 50, (50, 2)),      # ceil(4096 / 50) = 82 chunks of ceil(100 / 82) = 2 rows: 50 chunks
    (10, 7, (10, 1)),        # no more chunks than rows
    (0, 9, (0, 0)),          # an empty batch: nothing to split
])
def test_filter_grad_chunks(rows, tiles, want):
    assert filter_grad.row_chunks(rows, tiles) == want


@pytest.mark.parametrize("rows, tiles, items, max_rows, want", [
    (100, 50, 4096, None, (50, 2)),  # no bound on a chunk: as above
    (100, 50, 1, None, (1, 100)),    # one work-item wanted: one chunk
    (100, 50, 1, 30, (4, 25)),       # chunks of 30 rows at most: ceil(100 / 30) = 4 of 25
    (100, 50, 4096, 30, (50, 2)),    # the work-items ask for more chunks than the bound
    (10, 7, 1, 0, (10, 1)),          # a bound below one row: a chunk per row
    (0, 9, 1, 8, (0, 0)),            # an empty batch: nothing to split
])
def test_filter_grad_chunks_keep_below_max_rows(rows, tiles, items, max_rows, want):
    assert filter_grad.row_chunks(rows, tiles, items, max_rows) == want


def test_filter_grad_work_groups_per_driver():
    """Intel's CPU runtime ran the filter gradient 5-17x slower in the work-groups it chose
    from 1024 output channels on: groups of one there. PoCL's CPU driver keeps a group's
    private tiles on one thread's stack, which its own choice overflowed: groups whose tiles
    take at most 1 MiB there, 4 groups a compute unit or more (3 on 2 cores took two
    groups' time). GPUs keep the driver's (filter_grad.group_items)."""
    import types

    import pyopencl as cl

    intel = stub_device(platform=types.SimpleNamespace(name="Intel(R) OpenCL"),
                        type=cl.device_type.CPU)
    pocl = stub_device(platform=types.SimpleNamespace(name="Portable Computing Language"),
                       type=cl.device_type.CPU)
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    assert filter_grad.group_items(intel, f32, Tile(8, 16), 4, 4, 1, 1) == 1
    assert filter_grad.group_items(pocl, f32, Tile(8, 8), 8, 1, 1, 16) == 256  # 4 KiB each
    assert filter_grad.group_items(pocl, f64, Tile(8, 4), 8, 1, 1, 16) == 256
    assert filter_grad.group_items(pocl, f32, Tile(8, 16), 2, 1, 3, 1) == 2730  # 384 B each
    assert filter_grad.group_items(stub_device(), f32, Tile(4, 2), 4, 1, 1, 1) is None
    shape = (3, 3, 512, 1024)
    assert filter_grad.launch_geometry(shape, Tile(8, 16), 4, 1, 4, max_items=1) == \
        ((16, 128, 9), (1, 1, 1))
    # the 64x4x9 group PoCL chose, which crashed it, and the one it gets
    assert filter_grad.launch_geometry(shape, Tile(8, 8), 8, 1, 1, 1, 16, max_items=256) == \
        ((128, 4, 9), (128, 2, 1))
    assert filter_grad.launch_geometry(shape, Tile(8, 16), 4, 1, 4) == ((16, 128, 9), None)
    # within each axis's largest size, and split until every compute unit has 4 groups
    assert filter_grad.launch_geometry(shape, Tile(8, 8), 8, 1, 1, 1, 16, max_items=256,
                                       max_sizes=(64, 4096, 4096)) == ((128, 4, 9), (64, 4, 1))
    assert filter_grad.launch_geometry(shape, Tile(8, 8), 8, 1, 1, 1, 16, max_items=4096,
                                       units=4) == ((128, 4, 9), (16, 4, 3))  # 24
    assert filter_grad.launch_geometry(shape, Tile(8, 8), 8, 1, 1, 1, 16, max_items=4096,
                                       units=16) == ((128, 4, 9), (4, 4, 3))  # 96
    assert filter_grad.launch_geometry((1, 1, 1, 1), Tile(8, 1), 1, 1, max_items=64,
                                       units=16) == ((1, 1, 1), (1, 1, 1))
    kernel = types.SimpleNamespace(get_work_group_info=lambda what, device: 512)
    pocl16 = stub_device(platform=types.SimpleNamespace(name="Portable Computing Language"),
                         type=cl.device_type.CPU, max_work_group_size=4096,
                         max_work_item_sizes=[4096, 4096, 4096], max_compute_units=16)
    assert filter_grad.group_limits(kernel, pocl16, f32, Tile(8, 16), 2, 1, 3, 1) == \
        (512, (4096, 4096, 4096), 16)   # 2730 by the tiles' bytes, 512 by the kernel's
    assert filter_grad.group_limits(kernel, pocl16, f32, Tile(8, 8), 8, 1, 1, 16) == \
        (256, (4096, 4096, 4096), 16)
    assert filter_grad.group_limits(kernel, stub_device(), f32, Tile(4, 2), 4, 1, 1, 1) == \
        (None, (), 1)


def test_filter_grad_groups_keep_within_the_device(queue):
    """A cap from the tiles' bytes alone gave PyPI's PoCL groups of 4224 work-items (it takes
    4096 at most: CL_INVALID_WORK_GROUP_SIZE) for one input channel beside 512; groups stay
    within the kernel's and the device's largest, split to 4 a compute unit."""
    rng = np.random.default_rng()
    value = rng.standard_normal((1, 64, 64, 1)).astype(np.float32)
    filters = rng.standard_normal((1, 3, 1, 512)).astype(np.float32)
    dy = rng.standard_normal((1, 64, 64, 512)).astype(np.float32)
    got = training.atrous_conv2d_vjp(value, filters, 1, "SAME", dy, queue=queue)
    want = reference.atrous_conv2d_vjp(value, filters, 1, "SAME", dy)
    terms = reference.atrous_conv2d_vjp(np.abs(value), np.abs(filters), 1, "SAME", np.abs(dy))
    u = np.finfo(np.float32).eps / 2
    for g, w, t, n, what in zip(got, want, terms, (3 * 512, 64 * 64), ("d_value", "d_filters")):
        assert_close(g, w, np.float32, context=what, atol=n * u * float(np.max(t)))
    args = check_conv_args(value.shape, filters.shape, 1, "SAME")
    plan = filter_grad.layout(queue.device, np.dtype(np.float32), args)
    options = filter_grad.build_options(np.dtype(np.float32), args, plan.tile, plan.gc, plan.ov,
                                        plan.kt, False, plan.xpack, plan.cb, plan.chunks == 1,
                                        plan.dpack)
    kernels, _ = programs.get_kernels(queue.context, filter_grad.KERNEL_FILE, options)
    limits = filter_grad.group_limits(kernels["filter_grad_partial"], queue.device,
                                      np.dtype(np.float32), plan.tile, plan.gc, plan.ov,
                                      plan.kt, plan.cb)
    global_size, local = filter_grad.launch_geometry(args.filters_shape, plan.tile, plan.gc,
                                                     plan.chunks, plan.ov, plan.kt, plan.cb,
                                                     *limits)
    if local is not None:
        assert math.prod(local) <= min(queue.device.max_work_group_size, limits[0])
        assert all(g % item == 0 for g, item in zip(global_size, local))
        assert all(item <= m for item, m in zip(local, queue.device.max_work_item_sizes))


def test_intels_filter_grad_takes_one_vector_where_one_chunk_sums_many_channels(monkeypatch):
    """Where the rows run in one chunk, from 256 x 256 channels, Intel's runtime with 512-bit
    vectors takes 16x16x1x1, not 16x4x4x1 (1.6-2.1x its time there); problems in several
    chunks keep 16x4x4x1, and a layout given by hand is kept
    (filter_grad.INTEL_ONE_CHUNK_ONE_VECTOR_FROM)."""
    import types

    import pyopencl as cl

    from atrous_cl import tiles
    from atrous_cl.validation import check_transpose_args

    monkeypatch.setattr(tiles, "_host_avx512", lambda: True)
    intel = stub_device(platform=types.SimpleNamespace(name="Intel(R) OpenCL"),
                        type=cl.device_type.CPU, version="OpenCL 3.0 (Build 0)",
                        local_mem_size=256 << 10)
    f32 = np.dtype(np.float32)

    def split(problem, **given):
        n, h, w, cin, cout, k, rate = problem
        args = check_transpose_args((n, h, w, cin), (k, k, cout, cin), (n, h, w, cout), rate,
                                    "SAME")
        got = filter_grad.layout(intel, f32, training._adjoint(args), **given)
        return got.tile.channels, got.gc, got.ov, got.chunks

    # Filters whose width 3 does not divide (3x3's take three taps a row: 16x8x1x3).
    assert split((1, 33, 33, 256, 256, 5, 12)) == (16, 16, 1, 1)
    assert split((1, 33, 33, 2048, 256, 4, 12)) == (16, 16, 1, 1)
    assert split((1, 33, 33, 256, 255, 5, 12)) == (16, 4, 4, 1)   # one chunk, below 256 x 256
    assert split((1, 64, 64, 64, 64, 5, 2)) == (16, 4, 4, 4)      # several chunks
    assert split((1, 33, 33, 256, 256, 5, 12), ov=4) == (16, 4, 4, 1)
    assert split((1, 33, 33, 256, 256, 5, 12), gc=4) == (16, 4, 4, 1)
    assert split((1, 33, 33, 256, 256, 5, 12), cb=1) == (16, 4, 4, 1)  # any field by hand
    assert split((1, 33, 33, 256, 256, 3, 12)) == (16, 8, 1, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_the_vjps_of_many_channels_run_and_are_right(queue, dtype):
    """1x8x8 1024->512: the filter gradient's work-group overflowed PyPI's PoCL's stack
    (x packed in 16 groups of 8 input channels; "stack smashing detected"), and took
    Intel's runtime 10x its time at 1x32x32."""
    skip_unsupported(queue, dtype)
    rng = np.random.default_rng()
    value = rng.standard_normal((1, 8, 8, 1024)).astype(dtype)
    filters = rng.standard_normal((3, 3, 512, 1024)).astype(dtype)
    dy = rng.standard_normal((1, 8, 8, 512)).astype(dtype)
    got = atrous_cl.atrous_conv2d_transpose_vjp(value, filters, (1, 8, 8, 512), 1, "SAME", dy,
                                                queue=queue)
    want = reference.atrous_conv2d_transpose_vjp(value, filters, (1, 8, 8, 512), 1, "SAME", dy)
    # Sums of 4608 and 64 terms, which may cancel: the recursive-summation bound n * u *
    # sum |terms| on top of the dtype's (as test_matches_reference).
    terms = reference.atrous_conv2d_transpose_vjp(np.abs(value), np.abs(filters), (1, 8, 8, 512),
                                                  1, "SAME", np.abs(dy))
    u = np.finfo(dtype).eps / 2
    for g, w, t, n, what in zip(got, want, terms, (9 * 512, 64), ("d_value", "d_filters")):
        assert_close(g, w, dtype, context=what, atol=n * u * float(np.max(t)))


# Filter-gradient layouts the defaults do not reach on every device (CPUs split
# rows into chunks of 512 KiB, so these small problems run in one chunk there,
# and GPUs into about 4096 work-items): many chunks with a ragged last one, a
# chunk per row, chunks bounded by bytes, 16 input channels per work-item over
# a ragged channel count, 16x16 tiles, and one chunk; several output-channel
# vectors per work-item (ov): ragged in both channel counts, the last
# work-item's vectors partly or wholly past the padded channels (40 -> 48 is 3
# vectors of 16: ov 2 leaves one past, ov 4 one; 37 -> 40 is 10 vectors of 4).
LAYOUT_CASES = [
    ((2, 24, 20, 32, 32, 3, 3, 2), "SAME", dict(items=4096, chunk_bytes=0)),
    ((3, 7, 11, 4, 6, 2, 2, 3), "SAME", dict(items=1 << 20, chunk_bytes=0)),
    ((2, 24, 20, 17, 20, 3, 3, 2), "VALID", dict(items=1, chunk_bytes=9000)),
    ((2, 24, 20, 17, 20, 3, 3, 2), "SAME", dict(gc=16, items=4096, chunk_bytes=0)),
    ((2, 5, 9, 17, 11, 3, 2, 3), "SAME", dict(gc=16, tile=(8, 16), items=1, chunk_bytes=1000)),
    ((2, 10, 9, 3, 3, 2, 5, 5), "VALID", dict(items=1, chunk_bytes=1 << 30)),
    ((2, 6, 7, 40, 17, 3, 3, 2), "SAME", dict(gc=4, ov=2, tile=(8, 16), items=4096, chunk_bytes=0)),
    ((2, 6, 7, 40, 17, 3, 3, 2), "VALID", dict(gc=5, ov=4, tile=(8, 16), items=1, chunk_bytes=3000)),
    ((3, 5, 6, 37, 6, 2, 2, 3), "SAME", dict(gc=3, ov=3, tile=(8, 4), items=1 << 20, chunk_bytes=0)),
    ((2, 6, 7, 64, 9, 3, 3, 2), "SAME", dict(gc=4, ov=4, tile=(8, 16), items=1, chunk_bytes=1 << 30)),
    # Three taps of a filter row a work-item (kt 3): ragged input and output channels, two
    # groups a row (width 6) with two vectors, and images narrower than the dilated
    # kernel, where the taps share no column and each reads its own padding.
    ((2, 24, 20, 17, 20, 3, 3, 2), "SAME", dict(kt=3, gc=2, tile=(8, 16), items=1,
                                                chunk_bytes=9000)),
    ((2, 6, 13, 40, 17, 2, 6, 3), "VALID", dict(kt=3, gc=4, ov=2, tile=(8, 8), items=4096,
                                                chunk_bytes=0)),
    ((3, 5, 4, 5, 6, 3, 3, 3), "SAME", dict(kt=3, gc=3, tile=(8, 4), items=1 << 20,
                                            chunk_bytes=0)),
    ((2, 7, 5, 6, 16, 3, 6, 2), "SAME", dict(kt=3, gc=2, tile=(8, 16), items=1,
                                             chunk_bytes=1 << 30)),
    ((2, 9, 10, 12, 20, 3, 3, 2), "SAME", dict(kt=3, gc=2, tile=(8, 8), items=1,
                                               chunk_bytes=5000)),
    # x packed by channel groups first (xpack): x's channels ragged in their groups (17 in
    # pairs, in fives), one channel a group, and images narrower than the dilated kernel.
    ((2, 24, 20, 20, 17, 3, 3, 2), "SAME", dict(kt=3, gc=2, tile=(8, 16), items=1,
                                                chunk_bytes=9000, xpack=True)),
    ((2, 6, 7, 40, 17, 3, 3, 2), "VALID", dict(gc=5, ov=4, tile=(8, 16), items=1,
                                               chunk_bytes=3000, xpack=True)),
    ((3, 5, 4, 5, 6, 3, 3, 3), "SAME", dict(kt=3, gc=3, tile=(8, 4), items=1 << 20,
                                            chunk_bytes=0, xpack=True)),
    ((2, 10, 9, 3, 3, 2, 5, 5), "VALID", dict(gc=1, items=1, chunk_bytes=1 << 30, xpack=True)),
    # Five taps of a row a work-item (kt 5), unpacked and packed, x's channels ragged.
    ((2, 7, 13, 20, 16, 3, 5, 2), "SAME", dict(kt=5, gc=1, tile=(8, 16), items=1,
                                              chunk_bytes=5000)),
    ((2, 9, 6, 17, 23, 2, 5, 2), "SAME", dict(kt=5, gc=2, tile=(8, 16), items=1,
                                             chunk_bytes=3000, xpack=True)),
    ((2, 9, 16, 17, 23, 3, 10, 1), "VALID", dict(kt=5, gc=1, ov=2, tile=(8, 8), items=4096,
                                                chunk_bytes=0, xpack=True)),
    # Packed, several channel groups a work-item in turn (cb): the last work-item's groups
    # fewer (17 channels in 9 pairs by 4; 17 in 4 fives by 3; 23 in 23 by 8), padding rows.
    ((2, 24, 20, 20, 17, 3, 3, 2), "SAME", dict(kt=3, gc=2, tile=(8, 16), items=1,
                                                chunk_bytes=9000, xpack=True, cb=4)),
    ((2, 6, 7, 40, 17, 3, 3, 2), "VALID", dict(gc=5, ov=2, tile=(8, 8), items=1,
                                               chunk_bytes=3000, xpack=True, cb=3)),
    ((2, 9, 6, 17, 23, 2, 5, 3), "SAME", dict(kt=5, gc=1, tile=(8, 16), items=1,
                                             chunk_bytes=3000, xpack=True, cb=8)),
    # d packed by each work-item's output channels first (dpack): d's channels ragged in
    # the last group (40 in groups of 32; 37 of 12, whose last group also lies past the
    # padded channels, 40), with x packed and its groups in turn, the taps' own fringe
    # columns and padding terms read from the packed rows (x unpacked, images narrower
    # than the dilated kernel), chunks.
    ((2, 6, 7, 40, 17, 3, 3, 2), "SAME", dict(gc=4, ov=2, tile=(8, 16), items=4096,
                                              chunk_bytes=0, dpack=True)),
    ((3, 5, 6, 37, 6, 2, 2, 3), "SAME", dict(gc=3, ov=3, tile=(8, 4), items=1 << 20,
                                             chunk_bytes=0, dpack=True)),
    ((2, 24, 20, 20, 17, 3, 3, 2), "SAME", dict(kt=3, gc=2, ov=2, tile=(8, 8), items=1,
                                                chunk_bytes=9000, xpack=True, cb=4,
                                                dpack=True)),
    ((2, 6, 13, 40, 17, 2, 6, 3), "VALID", dict(kt=3, gc=4, ov=2, tile=(8, 8), items=4096,
                                                chunk_bytes=0, dpack=True)),
    ((2, 7, 5, 6, 16, 3, 6, 2), "SAME", dict(kt=3, gc=2, ov=2, tile=(8, 8), items=1,
                                             chunk_bytes=1 << 30, dpack=True)),
    ((2, 9, 16, 17, 23, 3, 10, 1), "VALID", dict(kt=5, gc=1, ov=2, tile=(8, 8), items=4096,
                                                chunk_bytes=0, xpack=True, dpack=True)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, padding, overrides", LAYOUT_CASES,
                         ids=[f"{case_id(s)}-{p}-{'-'.join(f'{k}{v}' for k, v in o.items())}"
                              for s, p, o in LAYOUT_CASES])
@pytest.mark.hand_made_tiles
def test_filter_gradient_layouts_match_reference(queue, shape, padding, overrides, dtype):
    """The transpose vjp's filter gradient (the forward conv's from dy to value) with
    each layout, into NaN-poisoned outputs."""
    skip_unsupported(queue, dtype)
    value, dy, filters, rate = _problem(shape, padding, dtype, np.random.default_rng())
    conv = check_conv_args(dy.shape, filters.shape, rate, padding)
    if "tile" in overrides:
        overrides = {**overrides, "tile": Tile(*overrides["tile"])}
    plan = filter_grad.layout(queue.device, np.dtype(dtype), conv, **overrides)
    n, hd = conv.output_shape[:2]
    if overrides["items"] > 1 or overrides["chunk_bytes"] < 1 << 20:
        assert plan.chunks > 1, plan  # the case exercises the split it is for
    out = poisoned(queue, filters.shape, dtype)
    filter_grad.launch(queue, *_to_device(queue, dy, value), out, conv, plan)
    want = reference.atrous_conv2d_transpose_vjp(value, filters, dy.shape, rate, padding, dy)[1]
    terms = reference.atrous_conv2d_transpose_vjp(np.abs(value), np.abs(filters), dy.shape, rate,
                                                  padding, np.abs(dy))[1]
    u = np.finfo(dtype).eps / 2
    atol = n * hd * conv.output_shape[2] * u * np.max(terms.astype(np.float64), initial=0.0)
    assert_close(out.get(), want, dtype, context=f"{shape} {padding} {plan}", atol=atol)


@pytest.mark.parametrize("xpack, cb, dpack", [(False, 1, False), (True, 1, False),
                                             (True, 3, False), (False, 1, True),
                                             (True, 3, True)])
@pytest.mark.parametrize("which", ["inf", "nan"])
@pytest.mark.parametrize("bad", ["value", "dy"])
@pytest.mark.parametrize("where", ["corner", "middle"])
@pytest.mark.parametrize("shape, padding", [((2, 7, 9, 6, 20, 3, 3, 2), "SAME"),
                                            ((2, 5, 4, 6, 20, 3, 6, 3), "SAME"),
                                            ((1, 4, 5, 3, 17, 3, 3, 2), "VALID")])
@pytest.mark.hand_made_tiles
def test_filter_gradient_tap_groups_keep_zero_padding_times_non_finite(queue, shape, padding,
                                                                      where, bad, which, xpack,
                                                                      cb, dpack):
    """Three taps of a row a work-item (kt 3) still add each tap's own 0 * Inf = NaN where
    its column or row reads TF's zero padding, and no other: widths 9, 4 (narrower than
    the dilated kernel, no column shared by the three) and VALID's all-inside rows; with
    x packed first too (xpack, whose pad channels copy x's last), three channel pairs
    a work-item in turn (cb 3), and d packed (dpack: its 6 or 3 channels in a group of two
    8-channel vectors, zeros past them)."""
    conv, value, dy, filters, want = _non_finite_problem(shape, padding, where, bad, which,
                                                         np.float32)
    # d packed with two 8-channel vectors a work-item: PyPI's PoCL's split, which it builds
    plan = filter_grad.layout(queue.device, np.dtype(np.float32), conv,
                              tile=Tile(8, 8 if dpack else 16), gc=2, items=1, chunk_bytes=0,
                              ov=2 if dpack else 1, kt=3, xpack=xpack, cb=cb, dpack=dpack)
    _check_non_finite_filter_grad(queue, conv, plan, value, dy, filters, want, np.float32)


def _non_finite_problem(shape, padding, where, bad, which, dtype):
    """``(conv, value, dy, filters, want)``: a transpose vjp's filter gradient (the forward
    conv from dy to value) with one Inf or NaN in ``bad``, and the reference's result."""
    rng = np.random.default_rng()
    value, dy, filters, rate = _problem(shape, padding, dtype, rng)
    if bad == "value":
        value = _with_non_finite(rng, value.shape, where, which, dtype)
    else:
        dy = _with_non_finite(rng, dy.shape, where, which, dtype)
    with np.errstate(invalid="ignore"):
        want = reference.atrous_conv2d_transpose_vjp(value, filters, dy.shape, rate, padding,
                                                     dy)[1]
    return check_conv_args(dy.shape, filters.shape, rate, padding), value, dy, filters, want


def _check_non_finite_filter_grad(queue, conv, plan, value, dy, filters, want, dtype):
    """The filter gradient by ``plan`` into a poisoned array: NaN, Inf (with its sign) and
    finite where the reference has them, the finite entries close."""
    out = poisoned(queue, filters.shape, dtype)
    filter_grad.launch(queue, *_to_device(queue, dy, value), out, conv, plan)
    got = out.get()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="NaNs")
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg="Infs")
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)], err_msg="signs")
    finite = np.isfinite(want)
    assert finite.any() and not finite.all()
    assert_close(np.where(finite, got, 0), np.where(finite, want, 0), dtype)


@pytest.mark.parametrize("dpack", [False, True], ids=["d-as-is", "d-packed"])
@pytest.mark.parametrize("chunk_bytes", [4000, 1 << 30], ids=["chunks", "one-chunk"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.hand_made_tiles
def test_filter_gradient_packs_x_from_an_offset_view(queue, dtype, chunk_bytes, dpack):
    """x packed by channel groups (xpack) from a view that starts inside its buffer, x's
    channels ragged in their groups; float16 widened while packed on CPUs (packed as
    float16 elsewhere); d too (dpack), from a view, its 12 channels in one group of 16.
    Into a view of a poisoned array, from several chunks (their sums added by
    filter_grad_sum) and from one (stored by the partial kernel itself)."""
    skip_unsupported(queue, dtype)
    rng = np.random.default_rng()
    value, dy, filters, rate = _problem((2, 9, 10, 12, 19, 3, 3, 2), "SAME", dtype, rng)
    conv = check_conv_args(dy.shape, filters.shape, rate, "SAME")
    plan = filter_grad.layout(queue.device, np.dtype(dtype), conv, tile=Tile(8, 8), gc=2,
                              items=1, chunk_bytes=chunk_bytes, ov=2, kt=3, xpack=True, cb=4,
                              dpack=dpack)
    assert plan.xpack and plan.dpack == dpack and (plan.chunks > 1) == (chunk_bytes == 4000), plan
    assert (plan.partials == 0) == (plan.chunks == 1), plan
    out = poisoned(queue, (filters.shape[0] + 1, *filters.shape[1:]), dtype)
    filter_grad.launch(queue, _offset_view(queue, dy), _offset_view(queue, value), out[1:],
                       conv, plan)
    want = reference.atrous_conv2d_transpose_vjp(value, filters, dy.shape, rate, "SAME", dy)[1]
    assert np.isnan(out.get()[0]).all(), "wrote outside its output view"
    assert_close(out.get()[1:], want, dtype)


@pytest.mark.parametrize("xpack, cb, dpack", [(False, 1, False), (True, 1, False),
                                             (True, 4, False), (False, 1, True),
                                             (True, 4, True)])
@pytest.mark.parametrize("wide", [False, True], ids=["as-stored", "widened"])
def test_filter_gradient_float16_as_stored_and_widened(queue, wide, xpack, cb, dpack,
                                                       monkeypatch):
    """float16 x and d widened to float32 first (CPUs: prelude.cl's widen, 8 halves a
    work-item, or pack_x and pack_d, 8 channels at a time) and loaded as stored
    (elsewhere), both on every device here, from views that start inside a buffer, of
    sizes 8 does not divide, x's 19 channels two eights, a pair and a ragged pair; packed,
    d's 13 channels a group of 8 (8 halves at once) and a ragged one."""
    skip_unsupported(queue, np.float16)
    monkeypatch.setattr(filter_grad, "widens_inputs", lambda device, dtype: wide)
    rng = np.random.default_rng()
    value, dy, filters, rate = _problem((2, 9, 10, 13, 19, 3, 3, 2), "SAME", np.float16, rng)
    assert value.size % 8 and dy.size % 8
    conv = check_conv_args(dy.shape, filters.shape, rate, "SAME")
    plan = filter_grad.layout(queue.device, np.dtype(np.float16), conv, tile=Tile(8, 8), gc=2,
                              items=1, chunk_bytes=4000, ov=1, kt=3, xpack=xpack, cb=cb,
                              dpack=dpack)
    out = poisoned(queue, filters.shape, np.float16)
    filter_grad.launch(queue, _offset_view(queue, dy), _offset_view(queue, value), out, conv,
                       plan)
    want = reference.atrous_conv2d_transpose_vjp(value, filters, dy.shape, rate, "SAME", dy)[1]
    assert_close(out.get(), want, np.float16, context=f"wide {wide} {plan}")


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_vjps_with_their_default_layouts_past_the_packing_bound(queue, padding, k):
    """Both vjps on a problem of PACK_FROM_MACS multiply-adds or more a filter gradient,
    where 256-bit CPUs pack x by default (the other tests' problems are smaller), host
    arrays in."""
    rng = np.random.default_rng()
    value, dy, filters, rate = _problem((2, 36, 36, 64, 64, k, k, 2), padding, np.float32, rng)
    flipped = np.ascontiguousarray(filters.transpose(0, 1, 3, 2))  # atrous_conv2d's [.., in, out]
    dz = rng.standard_normal(reference.atrous_conv2d(value, flipped, rate, padding).shape)
    dz = dz.astype(np.float32)
    for x, f in ((dy, filters), (value, flipped)):  # each filter gradient's conv
        conv = check_conv_args(x.shape, f.shape, rate, padding)
        n, h, w, _ = conv.output_shape
        assert n * h * w * math.prod(conv.filters_shape) >= filter_grad.PACK_FROM_MACS, conv
    got = training.atrous_conv2d_transpose_vjp(value, filters, dy.shape, rate, padding, dy,
                                               queue=queue)
    want = reference.atrous_conv2d_transpose_vjp(value, filters, dy.shape, rate, padding, dy)
    got += training.atrous_conv2d_vjp(value, flipped, rate, padding, dz, queue=queue)
    want += reference.atrous_conv2d_vjp(value, flipped, rate, padding, dz)
    for name, g, w in zip(["d_value", "d_filters"] * 2, got, want):
        assert_close(g, w, np.float32, context=f"{name} {padding}")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("op", ["atrous_conv2d_transpose_vjp", "atrous_conv2d_vjp"])
def test_vjps_with_d_packed_by_default_past_the_packing_bound(queue, op, padding, dtype):
    """Each vjp whose filter gradient's d (the transpose's value, the conv's dy) has 512
    channels, 2 KiB a pixel, past PACK_FROM_MACS: packed by default on the CPUs of
    filter_grad.packs_d (the other tests force it), float16 widened as it is packed; host
    arrays in."""
    skip_unsupported(queue, dtype)
    rng = np.random.default_rng()
    if op == "atrous_conv2d_transpose_vjp":
        value, dy, filters, rate = _problem((1, 33, 33, 512, 16, 3, 3, 12), padding, dtype, rng)
        conv = check_conv_args(dy.shape, filters.shape, rate, padding)
        args = (value, filters, dy.shape, rate, padding)
    else:  # 33x33 out either way
        hw = 33 if padding == "SAME" else 57
        value = rng.standard_normal((1, hw, hw, 16)).astype(dtype)
        filters = rng.standard_normal((3, 3, 16, 512)).astype(dtype)
        rate = 12
        conv = check_conv_args(value.shape, filters.shape, rate, padding)
        dy = rng.standard_normal(conv.output_shape).astype(dtype)
        args = (value, filters, rate, padding)
    plan = filter_grad.winograd_layout(queue.device, np.dtype(dtype), conv) or \
        filter_grad.layout(queue.device, np.dtype(dtype), conv)
    n, h, w, _ = conv.output_shape
    assert n * h * w * math.prod(conv.filters_shape) >= filter_grad.PACK_FROM_MACS, conv
    assert conv.filters_shape[3] == 512, conv  # d's channels
    if filter_grad.packs_d(queue.device, np.dtype(dtype), 512):
        assert isinstance(plan, filter_grad.Layout) and plan.dpack, plan
    got = getattr(training, op)(*args, dy, queue=queue)
    want = getattr(reference, op)(*(a.astype(np.float64) if isinstance(a, np.ndarray) else a
                                    for a in args), dy.astype(np.float64))
    for name, g, w in zip(["d_value", "d_filters"], got, want):
        assert_close(g, w.astype(dtype), dtype, context=f"{op} {name} {padding} {plan}")


def test_filter_gradient_packs_x_only_where_it_pays(queue, monkeypatch):
    """The default's xpack holds where pack_x's rows (every column a tap reads) are at most
    twice x's, not for a rate as wide as the image, which would pack mostly zeros, and from
    PACK_FROM_MACS multiply-adds; an explicit xpack holds whatever the problem."""
    # A split that packs wherever layout says packing pays.
    monkeypatch.setattr(filter_grad, "tiles", lambda device, dtype, shape, packable:
                        (Tile(8, 16), 2, 1, 512 << 10, 1, 3, packable, 1))
    f32 = np.dtype(np.float32)
    narrow = check_conv_args((2, 32, 40, 64), (3, 3, 64, 64), 20, "SAME")  # rows of 40 + 40
    wide = check_conv_args((2, 32, 40, 64), (3, 3, 64, 64), 21, "SAME")    # 40 + 42
    small = check_conv_args((2, 32, 40, 64), (3, 3, 64, 8), 2, "SAME")     # 2**26 - 2**24 MACs
    assert filter_grad.packed_width(narrow) == 80 and filter_grad.packed_width(wide) == 82
    assert 2 * 32 * 40 * 9 * 64 * 64 >= filter_grad.PACK_FROM_MACS > 2 * 32 * 40 * 9 * 64 * 8
    assert filter_grad.layout(queue.device, f32, narrow).xpack
    assert not filter_grad.layout(queue.device, f32, wide).xpack
    assert not filter_grad.layout(queue.device, f32, small).xpack
    for args in (wide, small):
        assert filter_grad.layout(queue.device, f32, args, xpack=True).xpack


def test_filter_gradient_packs_d_where_its_pixels_lie_far_apart(monkeypatch):
    """The default packs d (dpack) on the CPUs where it was measured to pay: PoCL (256- and
    512-bit) from 1 KiB a pixel of d as the kernel reads it (float16 widened to float32
    there), Intel's CPU runtime from 2 KiB; not on GPUs, nor below PACK_FROM_MACS
    multiply-adds; an explicit dpack holds whatever the problem."""
    import types

    import pyopencl as cl

    def device(platform, kind, version="OpenCL 3.0"):
        return stub_device(platform=types.SimpleNamespace(name=platform),
                           type=getattr(cl.device_type, kind), version=version)

    pypi_pocl = device("Portable Computing Language", "CPU",
                       "OpenCL 3.0 PoCL HSTR: pthread-x86_64-unknown-linux-gnu-znver3")
    wide_pocl = device("Portable Computing Language", "CPU",
                       "OpenCL 3.0 PoCL HSTR: pthread-x86_64-pc-linux-gnu-skylake-avx512")
    intel = device("Intel(R) OpenCL", "CPU")
    gpu = device("NVIDIA CUDA", "GPU")
    for dtype, pocl_from, intel_from in [(np.float32, 256, 512), (np.float16, 256, 512),
                                         (np.float64, 128, 256)]:
        for cout, pocl_packs, intel_packs in [(pocl_from - 1, False, False),
                                              (pocl_from, True, False),
                                              (intel_from, True, True)]:
            for pocl in (pypi_pocl, wide_pocl):
                assert filter_grad.packs_d(pocl, dtype, cout) == pocl_packs, (dtype, cout)
            assert filter_grad.packs_d(intel, dtype, cout) == intel_packs, (dtype, cout)
        assert not filter_grad.packs_d(gpu, dtype, 4096)
    monkeypatch.setattr(filter_grad, "packs_d", lambda device, dtype, cout: True)
    f32 = np.dtype(np.float32)
    large = check_conv_args((2, 32, 40, 64), (3, 3, 64, 64), 2, "SAME")  # d of 64 channels
    small = check_conv_args((2, 32, 40, 64), (3, 3, 64, 8), 2, "SAME")   # 2**26 - 2**24 MACs
    assert filter_grad.layout(pypi_pocl, f32, large).dpack
    assert not filter_grad.layout(pypi_pocl, f32, small).dpack
    assert filter_grad.layout(pypi_pocl, f32, small, dpack=True).dpack
    assert not filter_grad.layout(pypi_pocl, f32, large, dpack=False).dpack


def test_filter_gradient_taps_a_work_item_divide_the_width(queue):
    conv = check_conv_args((1, 8, 8, 4), (3, 5, 4, 4), 2, "SAME")
    with pytest.raises(ValueError, match="kt must divide the filters' width 5; got 3"):
        filter_grad.layout(queue.device, np.dtype(np.float32), conv, kt=3)


def test_filter_gradient_takes_channel_groups_in_turn_only_packed(queue, monkeypatch):
    """cb above 1 needs x packed (the kernel reads each group's own packed rows): an
    explicit one without xpack is refused; a default split's cb goes with its packing."""
    conv = check_conv_args((1, 8, 8, 4), (3, 3, 4, 4), 2, "SAME")
    f32 = np.dtype(np.float32)
    for cb, xpack in [(2, False), (0, True)]:
        with pytest.raises(ValueError, match=f"cb must be 1, or more with x packed; got {cb}"):
            filter_grad.layout(queue.device, f32, conv, cb=cb, xpack=xpack)
    monkeypatch.setattr(filter_grad, "tiles", lambda device, dtype, shape, packable:
                        (Tile(8, 16), 2, 1, 512 << 10, 1, 3, True, 4))
    assert filter_grad.layout(queue.device, f32, conv).cb == 4
    assert filter_grad.layout(queue.device, f32, conv, xpack=False).cb == 1
    # A plan made by hand is checked before any build.
    plan = filter_grad.layout(queue.device, f32, conv)._replace(xpack=False)
    x = cl_array.zeros(queue, conv.value_shape, np.float32)
    d = cl_array.zeros(queue, conv.output_shape, np.float32)
    out = cl_array.zeros(queue, conv.filters_shape, np.float32)
    with pytest.raises(ValueError, match="cb must be 1, or more with x packed; got 4"):
        filter_grad.launch(queue, x, d, out, conv, plan)


@pytest.mark.parametrize("value_shape", [(1, 2000, 4, 128), (2, 3000, 9, 64)])
def test_filter_gradient_partial_sums_stay_below_the_inputs(queue, value_shape):
    """Rows wider than the chunk bound (a large image) must not get a chunk, and a partial
    sum of the whole filter gradient, each: the partials stay within the inputs' size."""
    cin = value_shape[3]
    conv = check_conv_args(value_shape, (3, 3, cin, cin), 2, "SAME")
    plan = filter_grad.layout(queue.device, np.dtype(np.float32), conv, items=1, chunk_bytes=1)
    rows = value_shape[0] * value_shape[1]
    assert 1 < plan.chunks < rows, plan
    assert plan.partials <= 2 * math.prod(value_shape), plan


def test_float16_filter_gradient_sums_in_float32(queue):
    """2048 + 1 + 1 = 2050 is a float16; a float16 running sum would end at 2048."""
    value = np.array([2048, 1, 1], np.float16).reshape(1, 1, 3, 1)
    dy = np.ones((1, 1, 3, 1), np.float16)
    filters = np.ones((1, 1, 1, 1), np.float16)
    _, d_filters = training.atrous_conv2d_vjp(value, filters, 1, "SAME", dy, queue=queue)
    assert d_filters.dtype == np.float16 and d_filters[0, 0, 0, 0] == 2050


# Validation: one test per new error, by the device functions and the reference.
Y = np.zeros((2, 5, 6, 4), np.float32)        # the forward op's value
X = np.zeros((2, 5, 6, 3), np.float32)        # the transpose's value
F = np.zeros((3, 2, 4, 3), np.float32)        # [kh, kw, 4, 3]
CONV = dict(value=Y, filters=F, rate=2, padding="SAME")

CONV_CASES = [
    ("value-3d", dict(value=Y[0]), ValueError, r"value must be 4-D \(NHWC\), got 3-D"),
    ("filters-2d", dict(filters=F[0, 0]), ValueError,
     r"filters must be 4-D \(\[kh, kw, in_channels, out_channels\]\), got 2-D"),
    ("channel-mismatch", dict(value=np.zeros((2, 5, 6, 3), np.float32)), ValueError,
     r"value's channels \(value.shape\[3\] = 3\) must equal filters' in_channels \(filters.shape\[2\] = 4\)"),
    ("empty-kernel", dict(filters=np.zeros((3, 0, 4, 3), np.float32)), ValueError,
     r"filters must have a spatial size of at least 1x1, got 3x0"),
    ("valid-kernel-too-large", dict(padding="VALID", rate=3), ValueError,
     r"filters dilated by rate 3 span 7x4 .* more than value's 5x6: padding 'VALID' has no output"),
    ("rate-0", dict(rate=0), ValueError, r"rate must be a positive integer"),
    ("rate-float", dict(rate=2.0), TypeError, r"rate must be an integer"),
    ("padding-lower", dict(padding="valid"), ValueError, r"padding must be 'SAME' or 'VALID'.*upper case"),
    ("mixed-dtypes", dict(filters=F.astype(np.float64)), TypeError,
     r"same dtype, got value float32 and filters float64"),
]
DY_CASES = [
    ("dy-shape", lambda shape: np.zeros((shape[0], shape[1] + 1, *shape[2:]), np.float32), ValueError,
     r"dy must have the op's output shape \(2, 5, 6, \d\), got \(2, 6, 6, \d\)"),
    ("dy-batch", lambda shape: np.zeros((shape[0] - 1, *shape[1:]), np.float32), ValueError,
     r"dy must have the op's output shape \(2, 5, 6, \d\), got \(1, 5, 6, \d\)"),
    ("dy-channels", lambda shape: np.zeros((*shape[:3], shape[3] + 1), np.float32), ValueError,
     r"dy must have the op's output shape \(2, 5, 6, (\d)\), got \(2, 5, 6, (?!\1)\d\)"),
    ("dy-dtype", lambda shape: np.zeros(shape, np.float64), TypeError,
     r"dy must have the dtype of value and filters \(float32\), got float64"),
]


@pytest.fixture
def no_device_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("device work started before the arguments were checked")

    monkeypatch.setattr(calls.discovery, "get_queue", refuse)
    monkeypatch.setattr(programs, "get_kernels", refuse)


@pytest.mark.parametrize("fn", [training.atrous_conv2d, reference.atrous_conv2d], ids=["opencl", "reference"])
@pytest.mark.parametrize("overrides, exc, pattern", [c[1:] for c in CONV_CASES],
                         ids=[c[0] for c in CONV_CASES])
def test_bad_conv_argument(fn, overrides, exc, pattern, no_device_work):
    with pytest.raises(exc, match=pattern):
        fn(**{**CONV, **overrides})


@pytest.mark.parametrize("fn", [training.atrous_conv2d_vjp, reference.atrous_conv2d_vjp],
                         ids=["opencl", "reference"])
@pytest.mark.parametrize("make_dy, exc, pattern", [c[1:] for c in DY_CASES], ids=[c[0] for c in DY_CASES])
def test_bad_conv_dy(fn, make_dy, exc, pattern, no_device_work):
    with pytest.raises(exc, match=pattern):
        fn(**CONV, dy=make_dy((2, 5, 6, 3)))


@pytest.mark.parametrize("fn", [training.atrous_conv2d_transpose_vjp, reference.atrous_conv2d_transpose_vjp],
                         ids=["opencl", "reference"])
@pytest.mark.parametrize("make_dy, exc, pattern", [c[1:] for c in DY_CASES], ids=[c[0] for c in DY_CASES])
def test_bad_transpose_dy(fn, make_dy, exc, pattern, no_device_work):
    with pytest.raises(exc, match=pattern):
        fn(X, F, [2, 5, 6, 4], 2, "SAME", dy=make_dy((2, 5, 6, 4)))


def test_transpose_vjp_checks_the_transpose_arguments(no_device_work):
    with pytest.raises(ValueError, match=r"output_shape\[1:3\].*expected \[5, 6\], got \[9, 8\]"):
        training.atrous_conv2d_transpose_vjp(X, F, [2, 9, 8, 4], 2, "SAME",
                                             np.zeros((2, 9, 8, 4), np.float32))


def test_good_arguments_pass_validation():
    """The baselines the tables vary are themselves valid."""
    assert reference.atrous_conv2d(**CONV).shape == (2, 5, 6, 3)
    assert reference.atrous_conv2d_vjp(**CONV, dy=np.zeros((2, 5, 6, 3), np.float32))[1].shape == F.shape
    assert reference.atrous_conv2d_transpose_vjp(X, F, [2, 5, 6, 4], 2, "SAME", Y)[0].shape == X.shape


@pytest.mark.parametrize("out, exc, pattern", [
    ("not-a-pair", TypeError, r"out must be a pair \(d_value, d_filters\)"),
    ("wrong-shape", ValueError, r"out must have shape \(3, 2, 4, 3\) and dtype float32"),
])
def test_bad_vjp_out(queue, out, exc, pattern):
    d_y, d_f = _to_device(queue, Y, F)
    dy = cl_array.zeros(queue, (2, 5, 6, 3), np.float32)
    pair = (cl_array.zeros(queue, Y.shape, np.float32), cl_array.zeros(queue, (3, 2, 3, 4), np.float32))
    with pytest.raises(exc, match=pattern):
        training.atrous_conv2d_vjp(d_y, d_f, 2, "SAME", dy, out=pair[0] if out == "not-a-pair" else pair)


def test_host_path_refuses_out(queue):
    with pytest.raises(TypeError, match=r"out is for device arrays"):
        training.atrous_conv2d_vjp(Y, F, 2, "SAME", np.zeros((2, 5, 6, 3), np.float32), queue=queue,
                                   out=(None, None))


@pytest.mark.parametrize("vjp", ["forward", "transpose"])
def test_vjp_counts_its_own_buffers_against_device_memory(queue, vjp, monkeypatch):
    """Value, filters, dy and both gradients fit, but not with the packed filters and the
    filter gradient's partial sums: refused before anything is allocated, by name."""
    value, filters, dy = (np.zeros(s, np.float32) for s in ((1, 64, 64, 1), (3, 3, 1, 1), (1, 64, 64, 1)))
    tensors = 4 * (value.size + filters.size + dy.size + value.size + filters.size)
    found = facts.facts(queue.device)
    monkeypatch.setitem(facts._facts, queue.device.int_ptr, found._replace(global_mem=tensors + 4))
    if vjp == "forward":
        call = lambda: training.atrous_conv2d_vjp(value, filters, 2, "SAME", dy, queue=queue)
    else:
        call = lambda: training.atrous_conv2d_transpose_vjp(value, filters, value.shape, 2, "SAME", dy,
                                                            queue=queue)
    with pytest.raises(ValueError, match=r"the packed filters, the filter gradient's partial sums need "
                                         r"\d+ bytes together, more than the \d+ bytes of global memory"):
        call()
    monkeypatch.setitem(facts._facts, queue.device.int_ptr, found._replace(global_mem=10 * tensors))
    call()  # with room for them too


def test_a_failure_after_a_launch_waits_for_the_queue(queue, monkeypatch):
    """Host arrays used in place must outlive the kernels: an error between the launches
    (here the filter gradient's) waits for the queue before it unwinds and frees them."""
    drained = []
    real_drain = memory.drain
    monkeypatch.setattr(memory, "drain", lambda q: drained.append(q) or real_drain(q))

    def broken(*args, **kwargs):
        raise RuntimeError("the filter gradient failed")

    monkeypatch.setattr(filter_grad, "launch", broken)
    with pytest.raises(RuntimeError, match="the filter gradient failed"):
        training.atrous_conv2d_vjp(Y, F, 2, "SAME", np.zeros((2, 5, 6, 3), np.float32), queue=queue)
    assert drained == [queue]


@pytest.mark.parametrize("svm", [True, False], ids=["system-svm", "host-pointer-buffers"])
def test_one_array_as_two_inputs(queue, svm, monkeypatch):
    """The transpose vjp at dy = value: in host-pointer buffers (OpenCL leaves commands on
    overlapping host memory undefined) the second is copied; with SVM both are used as they lie."""
    if not memory.works_in_host_memory(queue.device):
        pytest.skip(f"{queue.device.name}: the host path copies anyway")
    if svm and not memory.uses_system_svm(queue.device):
        pytest.skip(f"{queue.device.name}: no fine-grained system SVM")
    monkeypatch.setattr(memory, "uses_system_svm", lambda device: svm)
    wrapped = []
    real_host_array = memory.HostArray.__init__

    def recording(self, array, *args, **kwargs):
        wrapped.append(array)
        real_host_array(self, array, *args, **kwargs)

    monkeypatch.setattr(memory.HostArray, "__init__", recording)
    rng = np.random.default_rng()
    x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    filters = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    got = training.atrous_conv2d_transpose_vjp(x, filters, x.shape, 2, "SAME", x, queue=queue)
    want = reference.atrous_conv2d_transpose_vjp(x, filters, x.shape, 2, "SAME", x)
    for g, w in zip(got, want):
        assert_close(g, w, np.float32, atol=1e-5 * np.abs(w).max())
    inputs = wrapped[:3]  # before the two results
    shared = [np.shares_memory(a, b) for i, a in enumerate(inputs) for b in inputs[i + 1:]]
    assert any(shared) == svm


def test_float64_needs_fp64():
    stub = stub_device(extensions="", name="NoFP64")
    with pytest.raises(ValueError, match=r"float64 needs the OpenCL extension cl_khr_fp64"):
        calls.check_device(stub, np.dtype(np.float64), {"value": (1, 2, 3, 4)}, {})


# --- TF's zero padding times a non-finite factor ------------------------------------------------

def _with_non_finite(rng, shape, where: str, which: str, dtype=np.float32) -> np.ndarray:
    """A random array with one Inf or NaN at a corner or in the middle."""
    x = rng.standard_normal(shape).astype(dtype)
    index = tuple(0 if where == "corner" else s // 2 for s in shape)
    x[index] = np.inf if which == "inf" else np.nan
    return x


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("which", ["inf", "nan"])
@pytest.mark.parametrize("where", ["corner", "middle"])
@pytest.mark.parametrize("bad", ["value", "filters", "dy"])
@pytest.mark.parametrize("op", ["forward", "transpose"])
@pytest.mark.parametrize("channels", ["3-4", "1-1", "40-36"])
def test_zero_padding_times_a_non_finite_factor_is_nan_as_in_tf(queue, channels, op, bad, where,
                                                                  which, padding):
    """TF's forward conv multiplies its zero padding by the weights, and its filter gradient
    the padded input by dy: 0 * Inf is NaN there, as in the reference. Every output and
    gradient must have the reference's NaNs exactly, and its numbers elsewhere. One
    channel in and out runs the one-channel kernel, 21 columns wide so that it meets
    whole vectors and border lanes; 40 and 36 channels give the filter gradient several
    ragged output-channel vectors per work-item where the device's default has them."""
    rng = np.random.default_rng()
    rate = 2
    c_in, c_out = map(int, channels.split("-"))  # of the transpose op
    h, w = (7, 9) if c_in > 1 else (7, 21)
    value_shape, filters_shape = (2, h, w, c_in), (3, 2, c_out, c_in)
    if op == "forward":  # atrous_conv2d: value has the filters' in-channels (shape[2])
        value_shape = (2, h, w, c_out)
        out_shape = (2, *geometry.conv_output_hw((h, w), (3, 2), rate, padding), c_in)
    else:
        out_shape = (2, *geometry.transpose_output_hw((h, w), (3, 2), rate, padding), c_out)
    value = _with_non_finite(rng, value_shape, where, which) if bad == "value" else \
        rng.standard_normal(value_shape).astype(np.float32)
    filters = _with_non_finite(rng, filters_shape, where, which) if bad == "filters" else \
        rng.standard_normal(filters_shape).astype(np.float32)
    dy = _with_non_finite(rng, out_shape, where, which) if bad == "dy" else \
        rng.standard_normal(out_shape).astype(np.float32)
    with np.errstate(invalid="ignore"):
        if op == "forward":
            pairs = [(training.atrous_conv2d(value, filters, rate, padding, queue=queue),
                      reference.atrous_conv2d(value, filters, rate, padding))]
            got = training.atrous_conv2d_vjp(value, filters, rate, padding, dy, queue=queue)
            want = reference.atrous_conv2d_vjp(value, filters, rate, padding, dy)
        else:
            pairs = [(ops.atrous_conv2d_transpose(value, filters, out_shape, rate, padding, queue=queue),
                      reference.atrous_conv2d_transpose(value, filters, out_shape, rate, padding))]
            got = training.atrous_conv2d_transpose_vjp(value, filters, out_shape, rate, padding, dy,
                                                       queue=queue)
            want = reference.atrous_conv2d_transpose_vjp(value, filters, out_shape, rate, padding, dy)
    pairs += list(zip(got, want))
    for (g, w), name in zip(pairs, ["result", "d_value", "d_filters"]):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"{op} {name}: NaNs")
        np.testing.assert_array_equal(np.isinf(g), np.isinf(w), err_msg=f"{op} {name}: Infs")
        finite = np.isfinite(w)
        if finite.any():
            assert_close(np.where(finite, g, 0), np.where(finite, w, 0), np.float32,
                         context=f"{op} {name}")


# The Winograd filter gradient (3x3 filters), each with a register tile and chunks by hand:
# channels ragged against the tile's input channels (gc) and its vectors (bc x ov), rates
# that leave phases of one row or column (tiles half past d's edge), images narrower than
# the dilated kernel, VALID, one-lane vectors, one chunk and a chunk per tile.
WINOGRAD_CASES = [
    ((2, 9, 10, 12, 20, 3, 3, 2), "SAME", dict(gc=6, ov=2, bc=8, chunk_bytes=3000)),
    ((2, 24, 20, 17, 20, 3, 3, 2), "SAME", dict(gc=5, ov=1, bc=8, chunk_bytes=1 << 30)),
    ((3, 5, 4, 5, 6, 3, 3, 3), "SAME", dict(gc=4, ov=2, bc=4, chunk_bytes=1)),
    ((2, 6, 13, 40, 17, 3, 3, 3), "VALID", dict(gc=8, ov=1, bc=16, chunk_bytes=2000)),
    ((1, 7, 7, 3, 5, 3, 3, 1), "SAME", dict(gc=3, ov=3, bc=2, chunk_bytes=200)),
    ((2, 1, 5, 2, 2, 3, 3, 6), "SAME", dict(gc=1, ov=1, bc=1, chunk_bytes=100)),
    ((1, 3, 4, 2, 3, 3, 3, 8), "VALID", dict(gc=2, ov=2, bc=2, chunk_bytes=60)),
    ((1, 11, 9, 9, 7, 3, 3, 4), "SAME", dict(gc=6, ov=2, bc=8, chunk_bytes=4000)),
]


def _winograd_plan(queue, conv, dtype, overrides):
    plan = filter_grad.winograd_layout(queue.device, np.dtype(dtype), conv, force=True,
                                       **overrides)
    assert plan is not None
    return plan


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape, padding, overrides", WINOGRAD_CASES,
                         ids=[f"{case_id(s)}-{p}-{'-'.join(f'{k}{v}' for k, v in o.items())}"
                              for s, p, o in WINOGRAD_CASES])
@pytest.mark.hand_made_tiles
def test_winograd_filter_gradient_matches_reference(queue, shape, padding, overrides, dtype):
    """The Winograd filter gradient (the transpose vjp's: the forward conv's from dy to
    value) with each register tile and chunking, from views that start inside their
    buffers into a NaN-poisoned one, within the direct sum's bound, nothing written
    outside it; the same bits on a second run (a fixed order, no atomics)."""
    skip_unsupported(queue, dtype)
    value, dy, filters, rate = _problem(shape, padding, dtype, np.random.default_rng())
    conv = check_conv_args(dy.shape, filters.shape, rate, padding)
    plan = _winograd_plan(queue, conv, dtype, overrides)
    if overrides["chunk_bytes"] < 1 << 20:
        assert plan.chunks > 1, plan  # the case exercises the split it is for
    whole = poisoned(queue, (2, *filters.shape), dtype)
    out = whole[1]
    inputs = _offset_view(queue, dy), _offset_view(queue, value)
    filter_grad.launch(queue, *inputs, out, conv, plan)
    assert np.isnan(whole.get()[0]).all()
    want = reference.atrous_conv2d_transpose_vjp(value, filters, dy.shape, rate, padding, dy)[1]
    terms = reference.atrous_conv2d_transpose_vjp(np.abs(value), np.abs(filters), dy.shape, rate,
                                                  padding, np.abs(dy))[1]
    n, hd, wd = conv.output_shape[:3]
    u = np.finfo(np.float32 if dtype == np.float16 else dtype).eps / 2
    atol = n * hd * wd * u * np.max(terms.astype(np.float64), initial=0.0)
    got = out.get()
    assert_close(got, want, dtype, context=f"{shape} {padding} {plan}", atol=atol)
    again = poisoned(queue, filters.shape, dtype)
    filter_grad.launch(queue, *inputs, again, conv, plan)
    assert again.get().tobytes() == got.tobytes()


# The non-finite cases' register tiles: two 8-lane vectors, one-lane vectors (the scalar
# path), float64's and float16's.
_NON_FINITE_TILES = [(np.float32, dict(gc=2, ov=2, bc=8)), (np.float32, dict(gc=3, ov=1, bc=1)),
                     (np.float64, dict(gc=2, ov=1, bc=4)), (np.float16, dict(gc=4, ov=1, bc=8))]


@pytest.mark.parametrize("dtype, tile", _NON_FINITE_TILES,
                         ids=[f"{np.dtype(d).name}-bc{t['bc']}-ov{t['ov']}"
                              for d, t in _NON_FINITE_TILES])
@pytest.mark.parametrize("which", ["inf", "nan"])
@pytest.mark.parametrize("bad", ["value", "dy"])
@pytest.mark.parametrize("where", ["corner", "middle"])
@pytest.mark.parametrize("shape, padding", [((2, 7, 9, 6, 20, 3, 3, 2), "SAME"),
                                            ((2, 5, 4, 6, 20, 3, 3, 3), "SAME"),
                                            ((1, 4, 5, 3, 17, 3, 3, 2), "VALID")])
@pytest.mark.hand_made_tiles
def test_winograd_filter_gradient_keeps_the_direct_sums_non_finite_values(queue, shape, padding,
                                                                         where, bad, which,
                                                                         dtype, tile):
    """Winograd spreads an Inf or NaN over its tile's transforms (Inf - Inf = NaN) and a
    zero of d past its edge times an Inf of x is NaN: every filter-gradient entry whose
    Winograd value is not finite is the direct sum again, so each is NaN, Inf or finite
    as the reference's, including TF's 0 * Inf = NaN for taps reading the padding."""
    skip_unsupported(queue, dtype)
    conv, value, dy, filters, want = _non_finite_problem(shape, padding, where, bad, which, dtype)
    plan = _winograd_plan(queue, conv, dtype, dict(tile, chunk_bytes=2000))
    _check_non_finite_filter_grad(queue, conv, plan, value, dy, filters, want, dtype)


@pytest.mark.parametrize("on_device", [False, True], ids=["host", "device"])
@pytest.mark.parametrize("op", ["atrous_conv2d_vjp", "atrous_conv2d_transpose_vjp"])
def test_winograd_filter_gradient_through_the_vjps(queue, op, on_device, monkeypatch):
    """Both vjps with the Winograd filter gradient taken by default (its gates opened, as
    for a large problem): the host path (NumPy arrays in place on CPUs) and device arrays,
    the pooled temporaries of an in-order queue reused by a second call; and with
    ATROUS_CL_WINOGRAD=0 the direct kernel's."""
    ran = winograd_filter_gradient_launches(monkeypatch, chunk_bytes=3000)
    calls.forget_prepared()
    rng = np.random.default_rng()
    x, y, filters, rate = _problem((2, 9, 11, 12, 10, 3, 3, 2), "SAME", np.float32, rng)
    if op == "atrous_conv2d_vjp":
        args = (y, filters, rate, "SAME", rng.standard_normal(x.shape).astype(np.float32))
    else:
        args = (x, filters, y.shape, rate, "SAME", y)
    want = getattr(reference, op)(*args)
    for round_ in range(3):
        if round_ == 2:
            monkeypatch.setenv("ATROUS_CL_WINOGRAD", "0")
            calls.forget_prepared()
        inputs = [cl_array.to_device(queue, a) if on_device and isinstance(a, np.ndarray) else a
                  for a in args]
        got = getattr(atrous_cl, op)(*inputs, queue=queue)
        for g, w, what in zip(got, want, ("d_value", "d_filters")):
            assert_close(g.get() if on_device else g, w, np.float32, context=f"{what} {round_}")
    assert len(ran) == 2 and min(ran) > 1


def test_winograd_filter_gradient_runs_where_it_was_measured_to_win(monkeypatch):
    """By default only on PoCL's CPU driver on x86 and on Intel's runtime with 512-bit
    vectors from many channel pairs (slower below; GPUs are unmeasured), for 3x3 filters,
    enough multiply-adds and channel pairs, tiles that fill the phases, bounded
    temporaries, and not with ATROUS_CL_WINOGRAD=0."""
    f32 = np.dtype(np.float32)
    pocl = stub_device(platform=types.SimpleNamespace(name="Portable Computing Language"),
                       name="pthread-AMD EPYC", type=cl.device_type.CPU,
                       version="OpenCL 3.0 PoCL HSTR: pthread-x86_64-pc-linux-gnu-znver3",
                       native_vector_width_float=8)
    intel = stub_device(platform=types.SimpleNamespace(name="Intel(R) OpenCL"),
                        type=cl.device_type.CPU, native_vector_width_float=16)
    gpu = stub_device(platform=types.SimpleNamespace(name="Portable Computing Language"))

    def conv(n, h, w, cin, cout, rate, k=3):
        return check_conv_args((n, h, w, cin), (k, k, cin, cout), rate, "SAME")

    b = conv(8, 32, 32, 128, 128, 2)
    plan = filter_grad.winograd_layout(pocl, f32, b)
    assert plan is not None and (plan.bc, plan.gc, plan.ov) == (8, 6, 2)
    assert plan.tiles == 8 * 2 * 8 * 2 * 8 and plan.chunks * plan.tiles_per_chunk >= plan.tiles
    for device in (intel, gpu):
        assert filter_grad.winograd_layout(device, f32, b) is None
    wide = conv(1, 64, 64, 512, 512, 2)  # Intel's runtime from 512 x 512 channel pairs
    assert filter_grad.winograd_layout(intel, f32, wide).bc == 16
    assert filter_grad.winograd_layout(intel, f32, conv(1, 64, 64, 256, 512, 2)) is None
    assert filter_grad.winograd_layout(gpu, f32, wide) is None
    assert filter_grad.winograd_layout(pocl, f32, conv(8, 32, 32, 128, 128, 2, k=5)) is None
    assert filter_grad.winograd_layout(pocl, f32, conv(1, 128, 128, 16, 32, 4)) is None  # pairs
    assert filter_grad.winograd_layout(pocl, f32, conv(8, 8, 8, 32, 32, 2)) is None  # MACs
    assert filter_grad.winograd_layout(pocl, f32, conv(1, 33, 33, 256, 256, 12)) is None  # fill
    assert filter_grad.winograd_layout(pocl, f32, conv(1, 33, 33, 256, 256, 6)) is not None
    assert filter_grad.winograd_layout(pocl, f32, conv(4, 1024, 1024, 64, 64, 2)) is None  # bytes
    # Many channel pairs: the chunks' partial sums (16 x 256 x 2048 a chunk) stay within the
    # transformed inputs (512 KiB chunks would have made 24 of them, 805 MiB).
    aspp = conv(1, 65, 65, 256, 2048, 6)
    plan = filter_grad.winograd_layout(pocl, f32, aspp)
    sizes = plan.temporaries(aspp, f32)
    assert sizes["the filter gradient's partial sums"] <= \
        sizes["the filter gradient's transformed x"] + sizes["the filter gradient's transformed d"]
    assert 1 < plan.chunks < 24
    # float64 keeps the accumulators' bytes (16-double vectors: 4 input channels, not 8);
    # float16's temporaries are float32, twice its elements.
    assert filter_grad.winograd_layout(intel, np.dtype(np.float64), wide).gc == 4
    assert filter_grad.winograd_layout(pocl, np.dtype(np.float64), b).gc == 6
    f16 = filter_grad.winograd_layout(pocl, np.dtype(np.float16), b)
    assert f16.temporaries(b, np.float16) == {
        k: 2 * v for k, v in filter_grad.winograd_layout(pocl, f32, b).temporaries(b, f32).items()}
    # PoCL with 512-bit vectors (Debian's 3.1) from 64 x 64 channel pairs: A's 64x64 runs,
    # 32x64 not (1.13x the direct kernel's time there), nor PyPI's PoCL's rules' 32x32.
    debian = stub_device(**{**vars(pocl), "version": "OpenCL 3.0 PoCL HSTR: pthread-x86_64-"
                                                   "pc-linux-gnu-skylake-avx512",
                            "native_vector_width_float": 16})
    assert not tiles.pocl_narrow(debian)
    assert filter_grad.winograd_layout(debian, f32, conv(1, 64, 64, 64, 64, 2)).bc == 16
    assert filter_grad.winograd_layout(debian, f32, conv(1, 64, 64, 32, 64, 3)) is None
    assert filter_grad.winograd_layout(pocl, f32, conv(1, 96, 96, 32, 32, 2)) is not None
    assert filter_grad.winograd_layout(debian, f32, conv(1, 96, 96, 32, 32, 2)) is None
    assert filter_grad.winograd_layout(debian, f32, conv(1, 33, 33, 256, 256, 12)) is None
    # Unmeasured there: PoCL off x86, Intel's runtime without 512-bit vectors.
    arm = stub_device(**{**vars(pocl), "version": "OpenCL 3.0 PoCL HSTR: pthread-aarch64-"
                                                "unknown-linux-gnu-cortex-a72"})
    assert filter_grad.winograd_layout(arm, f32, b) is None
    monkeypatch.setattr(tiles, "_host_avx512", lambda: False)
    avx2 = stub_device(**{**vars(intel), "native_vector_width_float": 8})
    assert filter_grad.winograd_layout(avx2, f32, wide) is None
    # The device's memory: no temporary past its largest allocation, all within half of it.
    small = stub_device(**{**vars(pocl), "max_mem_alloc_size": 8 << 20})
    assert filter_grad.winograd_layout(small, f32, b) is None
    little = stub_device(**{**vars(pocl), "global_mem_size": 32 << 20})
    assert filter_grad.winograd_layout(little, f32, b) is None
    monkeypatch.setenv("ATROUS_CL_WINOGRAD", "0")
    assert filter_grad.winograd_layout(pocl, f32, b) is None
    assert filter_grad.winograd_layout(pocl, f32, b, force=True) is not None
