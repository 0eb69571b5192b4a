# SPDX-License-Identifier: Apache-2.0
"""atrous_cl.dask: chunked results equal the single call's, at every seam, locally and distributed."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import atrous_cl  # noqa: E402
import atrous_cl.dask as adask  # noqa: E402
from atrous_cl import geometry, reference  # noqa: E402
from dask.array.core import PerformanceWarning  # noqa: E402

from conftest import assert_close, skip_unsupported  # noqa: E402

#: Max |dask - single call| / max |single call|: the issue's bound for float32;
#: float64 is equal up to the rounding of sums taken in another order.
SINGLE_CALL_RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-13}

OPS = ["transpose", "forward"]


def _filters(rng, op, k, cin, cout, dtype):
    kh, kw = k
    shape = (kh, kw, cout, cin) if op == "transpose" else (kh, kw, cin, cout)
    return rng.standard_normal(shape).astype(dtype)


def _dask_op(op, x, filters, rate, padding, device=None):
    fn = adask.atrous_conv2d_transpose if op == "transpose" else adask.atrous_conv2d
    return fn(x, filters, rate, padding, device=device)


def _single_call(op, x, filters, rate, padding, queue):
    if op == "transpose":
        hw = geometry.transpose_output_hw(x.shape[1:3], filters.shape[:2], rate, padding)
        shape = (x.shape[0],) + hw + (filters.shape[2],)
        return (atrous_cl.atrous_conv2d_transpose(x, filters, shape, rate, padding, queue=queue),
                reference.atrous_conv2d_transpose(x, filters, shape, rate, padding))
    return (atrous_cl.atrous_conv2d(x, filters, rate, padding, queue=queue),
            reference.atrous_conv2d(x, filters, rate, padding))


def _check(op, x, chunks, filters, rate, padding, queue, device_info, context, want=None):
    """The Dask result on ``chunks`` against the single call (tight) and the reference.

    ``want``: the single call's and the reference's results, when already computed.
    """
    got = _dask_op(op, da.from_array(x, chunks=chunks), filters, rate, padding,
                   device=device_info.selector).compute(scheduler="sync")
    single, ref = want or _single_call(op, x, filters, rate, padding, queue)
    dtype = np.dtype(x.dtype)
    assert got.shape == single.shape and got.dtype == dtype, f"{context}: {got.shape} {got.dtype}"
    scale = max(np.max(np.abs(single.astype(np.float64))), np.finfo(np.float64).tiny)
    err = np.max(np.abs(got.astype(np.float64) - single)) / scale if got.size else 0.0
    assert err <= SINGLE_CALL_RTOL[dtype], f"{context}: {err:.3g} relative to the single call"
    assert_close(got, ref, context=context)


# (kh, kw), rate: odd and even kernels, even kernels at odd rates (TF's odd SAME
# remainder at the bottom/right), kh != kw, rate 1. Halos stay small so that a
# device compiling per launch size (PoCL) runs the sweep in seconds.
KERNELS = [((3, 3), 2), ((2, 2), 3), ((2, 4), 1), ((1, 1), 4)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("k,rate", KERNELS, ids=lambda v: str(v))
def test_a_seam_at_every_offset(queue, device_info, op, k, rate, padding, dtype):
    # One seam per axis, moved across the whole image: it sits at every offset
    # from the border and from the other seam's halo, for both axes at once
    # (rows and columns sweep in opposite directions).
    skip_unsupported(queue, dtype)
    rng = np.random.default_rng()
    halo = max((kk - 1) * rate for kk in k)
    h = w = 2 * halo + 4
    x = rng.standard_normal((1, h, w, 3)).astype(dtype)
    filters = _filters(rng, op, k, 3, 2, dtype)
    want = _single_call(op, x, filters, rate, padding, queue)
    for s in range(1, h):
        _check(op, x, (1, (s, h - s), (w - s, s), 3), filters, rate, padding, queue, device_info,
               f"{op} {padding} k={k} rate={rate} seam at {s}", want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("chunks", [
    (1, (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1), (2, 2, 2, 2, 2, 1)),   # every chunk smaller than the halo
    ((2, 1), (5, 3, 3), (7, 4)),                                   # odd sizes, batch chunks
    ((1, 1, 1), (11,), (1, 9, 1)),                                 # one chunk along an axis
    ((3,), (4, 7), (3, 3, 3, 2)),
    ((2, 0, 1), (5, 0, 6), (0, 7, 4)),                             # zero-length chunks (dask allows them)
], ids=["all-below-halo", "odd-batch", "one-chunk", "mixed", "zero-length"])
def test_odd_chunkings_and_batch_chunks(queue, device_info, op, chunks, padding, dtype):
    skip_unsupported(queue, dtype)
    rng = np.random.default_rng()
    x = rng.standard_normal((3, 11, 11, 5)).astype(dtype)
    filters = _filters(rng, op, (3, 2), 5, 4, dtype)
    # rate 3 with a 3x2 kernel: a halo of 6 rows and 3 columns.
    _check(op, x, chunks + (5,), filters, 3, padding, queue, device_info, f"{op} {padding} {chunks}")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("rate", [9, 17, 100_003, 2**40])
@pytest.mark.parametrize("chunks", [(1, 3, 2, 3), (2, 8, 9, 3)], ids=["small", "whole"])
def test_rates_beyond_the_image(queue, device_info, op, rate, chunks):
    """Rates at or past what a block reads (2**40 included, as the single call takes):
    each block then reads through one tap per axis at most and runs at a small
    equivalent rate, not on a window (k - 1) * rate wide. A NaN and an Inf in the
    filters show which taps add terms: the forward op's padding taps (0 * NaN)
    and none of the transpose op's taps that land outside the image."""
    rng = np.random.default_rng()
    x = rng.standard_normal((2, 8, 9, 3)).astype(np.float32)
    filters = _filters(rng, op, (3, 2), 3, 4, np.float32)

    def single_call():  # the reference allocates the whole dilated problem; the op does not
        if op == "transpose":
            return atrous_cl.atrous_conv2d_transpose(x, filters, (2, 8, 9, 4), rate, "SAME",
                                                     queue=queue)
        return atrous_cl.atrous_conv2d(x, filters, rate, "SAME", queue=queue)
    want = single_call()
    _check(op, x, chunks, filters, rate, "SAME", queue, device_info, f"{op} rate {rate}",
           (want, want if rate > 100 else _single_call(op, x, filters, rate, "SAME", queue)[1]))
    filters[0, 1, 0, 0], filters[2, 0, 1, 1] = np.nan, np.inf
    got = _dask_op(op, da.from_array(x, chunks=chunks), filters, rate, "SAME",
                   device=device_info.selector).compute(scheduler="sync")
    single = single_call()
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(single))
    finite = np.isfinite(single)
    assert_close(got[finite], single[finite], np.float32)


@pytest.mark.parametrize("op", OPS)
def test_big_endian_chunks_are_swapped(queue, device_info, op):
    """N5 and some Zarr stores hold big-endian floats; the single call refuses them
    (it reads arrays in place), the Dask op swaps each chunk."""
    rng = np.random.default_rng()
    x = rng.standard_normal((2, 9, 8, 3)).astype(np.float32)
    filters = _filters(rng, op, (3, 3), 3, 4, np.float32)
    want = _single_call(op, x, filters, 2, "SAME", queue)
    got = _dask_op(op, da.from_array(x.astype(">f4"), chunks=(1, 4, 5, 3)), filters.astype(">f4"),
                   2, "SAME", device=device_info.selector).compute(scheduler="sync")
    assert got.dtype == np.dtype(np.float32)
    assert_close(got, want[1], np.float32)


@pytest.mark.parametrize("op", OPS)
def test_channels_in_several_chunks_are_rechunked_with_a_warning(queue, device_info, op):
    rng = np.random.default_rng()
    x = rng.standard_normal((2, 9, 8, 6)).astype(np.float32)
    filters = _filters(rng, op, (3, 3), 6, 4, np.float32)
    with pytest.warns(PerformanceWarning, match=r"channel axis is split into 3 chunks \(2, 2, 2\)"):
        y = _dask_op(op, da.from_array(x, chunks=(1, 4, 4, 2)), filters, 2, "SAME",
                     device=device_info.selector)
    assert y.chunks[3] == (4,)
    single, ref = _single_call(op, x, filters, 2, "SAME", queue)
    assert_close(y.compute(scheduler="sync"), ref)


@pytest.mark.parametrize("op", OPS)
def test_lazy_and_huge_graphs_are_cheap(op, monkeypatch):
    # Building the graph of a 16384^2 image runs nothing and holds no image.
    def refuse(*args, **kwargs):
        raise AssertionError("the op ran while the graph was built")

    monkeypatch.setattr(atrous_cl, "atrous_conv2d_transpose", refuse)
    monkeypatch.setattr(atrous_cl, "atrous_conv2d", refuse)
    x = da.random.default_rng(0).standard_normal((1, 16384, 16384, 8), chunks=(1, 2048, 2048, 8),
                                                  dtype=np.float32)
    filters = np.ones((3, 3, 8, 8), np.float32)
    y = _dask_op(op, x, filters, 4, "VALID")
    halo = 8
    if op == "transpose":
        assert y.shape == (1, 16384 + halo, 16384 + halo, 8)
        assert y.chunks[1] == (2048,) * 7 + (2048 + halo,)
    else:
        assert y.shape == (1, 16384 - halo, 16384 - halo, 8)
        assert y.chunks[1] == (2048,) * 7 + (2048 - halo,)
    assert y.numblocks == (1, 8, 8, 1)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape,padding", [((0, 7, 6, 3), "SAME"), ((2, 0, 6, 3), "SAME"),
                                           ((2, 0, 6, 3), "VALID"), ((1, 5, 0, 3), "VALID")])
def test_empty_inputs(queue, device_info, op, shape, padding):
    rng = np.random.default_rng()
    x = rng.standard_normal(shape).astype(np.float32)
    filters = _filters(rng, op, (2, 3), 3, 4, np.float32)
    if op == "forward" and padding == "VALID":  # as the single call does
        with pytest.raises(ValueError, match="padding 'VALID' has no output"):
            adask.atrous_conv2d(da.from_array(x, chunks=(1, 4, 4, 3)), filters, 2, padding)
        return
    got = _dask_op(op, da.from_array(x, chunks=(1, 4, 4, 3)), filters, 2, padding,
                   device=device_info.selector).compute(scheduler="sync")
    single, ref = _single_call(op, x, filters, 2, padding, queue)
    assert got.shape == single.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("chunks,k,rate,padding,transpose,want", [
    ((4, 4, 3), 3, 2, "SAME", True, (4, 4, 3)),
    ((4, 4, 3), 3, 2, "VALID", True, (4, 4, 7)),
    ((4, 4, 3), 3, 2, "VALID", False, (4, 3)),                   # 11 - 4 = 7 rows
    ((5, 5, 2), 3, 2, "VALID", False, (5, 3)),                   # 8 rows: the last chunk drops out
    ((1, 1, 1, 1, 1), 2, 2, "VALID", False, (1, 1, 1)),
])
def test_output_chunks(chunks, k, rate, padding, transpose, want):
    assert adask.output_chunks(chunks, k, rate, padding, transpose) == want


def test_filters_are_taken_when_the_graph_is_built(queue, device_info):
    rng = np.random.default_rng()
    x = rng.standard_normal((1, 9, 7, 3)).astype(np.float32)
    filters = _filters(rng, "transpose", (3, 3), 3, 2, np.float32)
    _, want = _single_call("transpose", x, filters, 2, "SAME", queue)
    y = adask.atrous_conv2d_transpose(da.from_array(x, chunks=(1, 4, 4, 3)), filters, 2, "SAME",
                                      device=device_info.selector)
    filters += 1   # e.g. a training step between building the graph and computing it
    assert_close(y.compute(scheduler="sync"), want)


def test_filters_enter_the_graph_once():
    rng = np.random.default_rng()
    filters = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)   # 147 kB
    x = da.zeros((4, 64, 64, 64), chunks=(1, 16, 16, 64), dtype=np.float32)
    y = adask.atrous_conv2d_transpose(x, filters, 2, "SAME")
    layer = dict(y.dask.layers[y.name])
    holding = [key for key, task in layer.items() if pickle.dumps(task).count(filters.tobytes()[:256])]
    assert len(holding) == 1, f"{len(holding)} graph entries carry the filters"
    assert sum(1 for key in layer if isinstance(key, tuple) and key[0] == y.name) == 4 * 4 * 4
    # Every task pickles small: none carries its own copy of the filters.
    assert max(len(pickle.dumps(task)) for key, task in layer.items() if key not in holding) < 4096


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bad,error,match", [
    (dict(rate=0), ValueError, r"rate must be a positive integer \(>= 1\), got 0"),
    (dict(rate=2.0), TypeError, r"rate must be an integer, got 2\.0"),
    (dict(padding="same"), ValueError, r"padding must be 'SAME' or 'VALID', got 'same'"),
    (dict(filters_in=4), ValueError, r"channels .* must equal filters' in_channels"),
    (dict(filters_dtype=np.float64), TypeError, r"value and filters must have the same dtype"),
    (dict(device=0), TypeError, r"device must be None .* or a 'P:D' selector string, got int"),
    (dict(x="numpy"), TypeError, r"x must be a dask.array.Array \(NHWC\), got ndarray"),
    (dict(x="3d"), ValueError, r"x must be 4-D \(NHWC\), got 3-D"),
])
def test_bad_input_is_refused_up_front(op, bad, error, match):
    x = da.zeros((1, 8, 8, 3), chunks=(1, 4, 4, 3), dtype=np.float32)
    if bad.get("x") == "numpy":
        x = np.zeros((1, 8, 8, 3), np.float32)
    elif bad.get("x") == "3d":
        x = da.zeros((8, 8, 3), chunks=4, dtype=np.float32)
    cin = bad.get("filters_in", 3)
    shape = (3, 3, 2, cin) if op == "transpose" else (3, 3, cin, 2)
    filters = np.zeros(shape, bad.get("filters_dtype", np.float32))
    fn = adask.atrous_conv2d_transpose if op == "transpose" else adask.atrous_conv2d
    with pytest.raises(error, match=match):
        fn(x, filters, bad.get("rate", 2), bad.get("padding", "SAME"), device=bad.get("device"))


def test_forward_valid_with_a_kernel_larger_than_the_image_is_refused():
    x = da.zeros((1, 5, 6, 3), chunks=2, dtype=np.float32)
    with pytest.raises(ValueError, match=r"filters dilated by rate 3 span 7x7"):
        adask.atrous_conv2d(x, np.zeros((3, 3, 3, 2), np.float32), 3, "VALID")


def test_unknown_chunk_sizes_are_refused():
    x = da.zeros((1, 8, 8, 3), chunks=4, dtype=np.float32)
    x = x[x[:, 0, 0, 0] >= 0]   # boolean indexing leaves the batch size unknown
    assert np.isnan(x.shape[0])
    with pytest.raises(ValueError, match=r"x must have known chunk sizes, got shape \(nan, 8, 8, 3\)"):
        adask.atrous_conv2d(x, np.zeros((3, 3, 3, 2), np.float32), 2, "SAME")


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, memory_limit="2GiB") as cluster, \
            distributed.Client(cluster) as client:
        yield client


@pytest.mark.parametrize("op", OPS)
def test_local_cluster_with_two_process_workers(cluster_client, queue, device_info, op):
    import distributed

    rng = np.random.default_rng()
    x = rng.standard_normal((4, 40, 36, 8)).astype(np.float32)
    filters = _filters(rng, op, (3, 3), 8, 6, np.float32)
    y = _dask_op(op, da.from_array(x, chunks=(1, 13, 12, 8)), filters, 2, "SAME",
                 device=device_info.selector)
    filters_key = next(k for k in y.__dask_graph__() if isinstance(k, str) and "-filters-" in k)
    y = cluster_client.persist(y)
    distributed.wait(y)
    # The filters reach each worker once at most (one computes their key, the
    # other fetches it), however many of its tasks use them.
    fetched = cluster_client.run(lambda dask_worker: sum(
        list(e["keys"]).count(filters_key) for e in dask_worker.transfer_incoming_log))
    assert sorted(fetched.values()) in ([0, 0], [0, 1]), fetched
    # Both workers ran blocks, each on an OpenCL queue made in its own process.
    holders = {w for ws in cluster_client.who_has(y).values() for w in ws}
    assert len(holders) == 2, holders
    got = y.compute()
    single, ref = _single_call(op, x, filters, 2, "SAME", queue)
    scale = np.max(np.abs(single))
    assert np.max(np.abs(got - single)) / scale <= SINGLE_CALL_RTOL[np.dtype(np.float32)]
    assert_close(got, ref)


def test_only_halo_strips_come_from_neighbouring_chunks():
    # On a cluster a task's inputs travel to it: a block takes its own input
    # chunk whole and only cut strips, never whole chunks, from its neighbours.
    x = da.zeros((2, 64, 64, 4), chunks=(1, 16, 16, 4), dtype=np.float32)
    y = adask.atrous_conv2d_transpose(x, np.zeros((3, 3, 4, 4), np.float32), 2, "SAME")
    from dask.core import get_dependencies

    graph = dict(y.__dask_graph__())
    blocks = [k for k in graph if isinstance(k, tuple) and k[0] == y.name]
    assert len(blocks) == 2 * 4 * 4
    for key in blocks:
        deps = get_dependencies(graph, key)
        assert {d for d in deps if isinstance(d, tuple) and d[0] == x.name} == {(x.name,) + key[1:]}, key
        cuts = [d for d in deps if isinstance(d, tuple) and d[0] != x.name]
        assert cuts, key
        for cut in cuts:   # each a strip of one chunk, at most the halo (4) thick
            assert len(get_dependencies(graph, cut)) == 1
            r0, r1, c0, c1 = cut[-4:]
            assert min(r1 - r0, c1 - c0) <= 4, cut


def test_worker_devices_gives_each_worker_its_device(cluster_client, queue, device_info):
    rng = np.random.default_rng()
    x = rng.standard_normal((2, 20, 18, 4)).astype(np.float32)
    filters = _filters(rng, "transpose", (3, 3), 4, 3, np.float32)
    _, ref = _single_call("transpose", x, filters, 2, "SAME", queue)
    dx = da.from_array(x, chunks=(1, 7, 9, 4))
    try:
        cluster_client.register_plugin(adask.WorkerDevices([device_info.selector]))
        got = cluster_client.compute(adask.atrous_conv2d_transpose(dx, filters, 2, "SAME")).result()
        assert_close(got, ref)
        assert set(cluster_client.run(lambda dask_worker: dask_worker.atrous_cl_device).values()) \
            == {device_info.selector}
        # A selector no machine has shows that tasks use the plugin's device.
        cluster_client.register_plugin(adask.WorkerDevices({0: "0:99", 1: "0:99"}))
        with pytest.raises(ValueError, match=r"device selector '0:99'"):
            y = adask.atrous_conv2d(dx, filters.transpose(0, 1, 3, 2), 2, "SAME")
            cluster_client.compute(y).result()
    finally:
        cluster_client.unregister_worker_plugin(adask.WorkerDevices.name)
    assert set(cluster_client.run(lambda dask_worker: dask_worker.atrous_cl_device).values()) == {None}


@pytest.mark.parametrize("selectors", [[], "0:0", [0], {0: 1}])
def test_worker_devices_refuses_bad_selectors(selectors):
    with pytest.raises(TypeError, match="selectors must be a non-empty list of 'P:D' strings"):
        adask.WorkerDevices(selectors)


def _raise_device_error_from_pyopencl(context):
    """Raise a DeviceError chained to a real pyopencl error, as the op raises a failed launch."""
    import pyopencl as cl

    try:
        cl.Buffer(context, cl.mem_flags.READ_WRITE, 0)   # size 0: CL_INVALID_BUFFER_SIZE
    except cl.Error as e:
        raise atrous_cl.DeviceError(f"launching the op failed: {e}", status="CL_INVALID_BUFFER_SIZE",
                                    source="atrous_conv2d_transpose.cl", options=("-DT=float",)) from e
    raise AssertionError("a zero-size buffer was accepted")


@pytest.mark.parametrize("op", OPS)
def test_a_device_error_in_a_distributed_worker_reaches_the_client(queue, op, monkeypatch):
    # The worker pickles the error with its chain (tblib); pyopencl's error in
    # that chain does not pickle, which used to turn it into a bare Exception.
    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(atrous_cl, "atrous_conv2d_transpose" if op == "transpose" else
                        "atrous_conv2d", lambda *args, **kwargs:
                        _raise_device_error_from_pyopencl(queue.context))
    x = da.zeros((1, 8, 8, 3), chunks=4, dtype=np.float32)
    filters = np.zeros((3, 3, 3, 3), np.float32)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        with pytest.raises(atrous_cl.DeviceError, match=r"launching the op failed: .*INVALID_BUFFER_SIZE") \
                as info:
            client.compute(_dask_op(op, x, filters, 2, "SAME")).result()
    assert info.value.status == "CL_INVALID_BUFFER_SIZE"
    assert info.value.options == ("-DT=float",)


def test_picklable_chain_keeps_the_error_and_the_text_of_its_cause(queue):
    tblib = pytest.importorskip("tblib.pickling_support")
    from atrous_cl.errors import picklable_chain

    with pytest.raises(atrous_cl.DeviceError) as info:
        _raise_device_error_from_pyopencl(queue.context)
    error = info.value
    tblib.install(error, error.__cause__)   # as a distributed worker does
    with pytest.raises(TypeError, match="_ErrorRecord"):
        pickle.dumps(error)
    assert picklable_chain(error) is error
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is atrous_cl.DeviceError and str(back) == str(error)
    assert (back.status, back.source, back.options) == \
        ("CL_INVALID_BUFFER_SIZE", "atrous_conv2d_transpose.cl", ("-DT=float",))
    assert type(back.__cause__) is RuntimeError
    assert re.fullmatch(r"pyopencl\._cl\.LogicError: .*INVALID_BUFFER_SIZE.*", str(back.__cause__)), \
        back.__cause__
