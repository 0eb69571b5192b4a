# SPDX-License-Identifier: Apache-2.0
"""The direct kernel's tiles: phase tiles, where each work-item computes pixels ``rate``
apart from a window of inputs shared by a row's taps, and tiles of consecutive columns
(``atrous_conv2d_transpose_rows``), which skip the taps that read outside the image;
border tiles of either put 0 in slots outside the image only while every weight of
their channels is finite, and the host path reuses packed filters whose bytes it has
seen. The tests marked ``columns`` run both kernels and both layouts of the packed
weights on every case.

Shapes are picked for tiles the kernel treats differently: interior and border
tiles in one row, rows whose phases differ in width, tiles wider than a phase,
rates at which a tile's taps lie wholly outside the image, channel counts the
channel tile does not divide (several blocks of packed weights, the last partly
past the output channels).
"""

from __future__ import annotations

import threading

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array
import pytest
from conftest import assert_close, fitting, poisoned, recorded_host_copies, skip_unsupported

import atrous_cl
from atrous_cl import geometry, launch, local_tile, reference
from atrous_cl.tiles import Tile
from atrous_cl.validation import check_conv_args, check_transpose_args

#: n, h, w, cin, cout, kh, kw, rate, padding
SHAPES = [
    (1, 5, 41, 3, 5, 3, 3, 2, "SAME"),     # interior and border tiles, odd width
    (2, 4, 37, 2, 3, 2, 5, 3, "VALID"),    # even kernel height, phases 13/12/12 wide
    (1, 3, 30, 4, 17, 1, 4, 5, "SAME"),    # even kernel width at rate 5, cout 17
    (1, 6, 23, 3, 4, 3, 3, 1, "SAME"),     # rate 1: consecutive pixels
    (3, 4, 6, 5, 6, 3, 3, 4, "SAME"),      # phases 1-2 columns wide: tiles wider than a phase
    (1, 9, 33, 5, 19, 3, 3, 12, "SAME"),   # an ASPP rate: taps wholly outside many tiles
    (2, 5, 21, 3, 6, 3, 2, 9, "VALID"),    # VALID at a high rate, even kernel width
]
# With vectors (a third number): several channel vectors per work-item, the
# last work-item's partly past the output channels (cout 17 in 24 or 32). 5x8x2:
# the default on 256-bit vectors where rows allow (tiles.FIVE_PIXELS_WITHIN).
TILES = [Tile(1, 1), Tile(3, 4), Tile(8, 16), Tile(16, 8), Tile(8, 16, 2), Tile(3, 4, 3),
         Tile(5, 8, 2)]


@pytest.fixture(params=[("phase", "blocks"), ("consecutive", "blocks"), ("phase", "one-row"),
                        ("consecutive", "one-row")], ids="-".join)
def columns(request, monkeypatch):
    """Runs a test with the direct kernel's phase tiles and with consecutive columns,
    whatever :func:`atrous_cl.launch.consecutive_pixels` would pick for its shapes, each
    with the packed weights in blocks of a work-item's channels (CPUs) and in one row of
    every channel (GPUs: :func:`atrous_cl.launch.blocks_weights`)."""
    tiles, layout = request.param
    monkeypatch.setattr(launch, "consecutive_pixels", lambda *args: tiles == "consecutive")
    monkeypatch.setattr(launch, "blocks_weights", lambda device: layout == "blocks")
    launch.plan.cache_clear()
    yield request.param
    launch.plan.cache_clear()


def _problem(shape, dtype, rng):
    n, h, w, cin, cout, kh, kw, rate, padding = shape
    value = rng.standard_normal((n, h, w, cin)).astype(dtype)
    filters = rng.standard_normal((kh, kw, cout, cin)).astype(dtype)
    output_shape = (n, *geometry.transpose_output_hw((h, w), (kh, kw), rate, padding), cout)
    return value, filters, output_shape, rate, padding


def _run(queue, value, filters, output_shape, rate, padding, tile):
    args = check_transpose_args(value.shape, filters.shape, output_shape, rate, padding)
    out = poisoned(queue, output_shape, value.dtype)
    launch.transpose(queue, cl_array.to_device(queue, value), cl_array.to_device(queue, filters), out,
                     args, tile)
    return out.get()


@pytest.mark.usefixtures("columns")
@pytest.mark.parametrize("tile", TILES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.hand_made_tiles
def test_every_tile_matches_the_reference(queue, shape, tile):
    value, filters, output_shape, rate, padding = _problem(shape, np.float32, np.random.default_rng())
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)
    assert_close(_run(queue, value, filters, output_shape, rate, padding, tile), want,
                 context=f"tile {tile}")


@pytest.mark.usefixtures("columns")
@pytest.mark.parametrize("dtype", [np.float16, np.float64], ids=lambda d: np.dtype(d).name)
def test_other_dtypes_take_the_same_tiles(queue, dtype):
    skip_unsupported(queue, dtype)
    value, filters, output_shape, rate, padding = _problem(SHAPES[0], dtype, np.random.default_rng())
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)
    for tile in fitting(queue.device, dtype, (Tile(3, 4), Tile(8, 16), Tile(8, 16, 2), Tile(5, 4, 2))):
        assert_close(_run(queue, value, filters, output_shape, rate, padding, tile), want, dtype,
                     context=f"tile {tile}")


@pytest.mark.usefixtures("columns")
@pytest.mark.parametrize("wide", [False, True], ids=["as-stored", "widened"])
def test_float16_takes_the_same_tiles_as_stored_and_widened(queue, wide, monkeypatch):
    """float16 as stored (GPUs) and widened to float32 first (CPUs), on every device
    here: at rate 2 and at an ASPP rate, whose consecutive tiles skip taps."""
    skip_unsupported(queue, np.float16)
    monkeypatch.setattr(launch, "widens_inputs", lambda device, dtype: wide)
    for shape in (SHAPES[0], SHAPES[5]):
        value, filters, output_shape, rate, padding = _problem(shape, np.float16,
                                                               np.random.default_rng())
        want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)
        for tile in fitting(queue.device, np.float16, (Tile(3, 4), Tile(8, 16, 2), Tile(5, 8, 2))):
            assert_close(_run(queue, value, filters, output_shape, rate, padding, tile), want,
                         np.float16, context=f"{shape} tile {tile}")


# (a, b, out channel, in channel) of one non-finite weight: corner and middle taps, the
# first and a middle channel tile of 4 (cout 13: tiles 0-3, 4-7, 8-11, 12).
NON_FINITE_AT = [(0, 0, 5, 1), (2, 2, 0, 0), (1, 0, 12, 2), (2, 1, 9, 1)]


@pytest.mark.usefixtures("columns")
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan], ids=str)
@pytest.mark.parametrize("where", NON_FINITE_AT, ids=lambda w: "a%db%dc%do%d" % w)
@pytest.mark.parametrize("rate", [2, 9])
def test_a_non_finite_weight_reaches_only_its_taps_outputs(queue, where, bad, rate):
    """Border tiles of its channel tile must not add 0 * w for slots outside the image
    (NaN for an Inf or NaN weight); the other channel tiles may, and must stay finite.
    At rate 9 some consecutive tiles' taps lie wholly outside the image: skipped, not
    multiplied, whatever their weights."""
    rng = np.random.default_rng()
    value = rng.standard_normal((2, 13, 27, 3)).astype(np.float32)
    filters = rng.standard_normal((3, 3, 13, 3)).astype(np.float32)
    filters[where] = bad
    output_shape = (2, 13, 27, 13)
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, "SAME")
    assert not np.isfinite(want).all() and np.isfinite(want).any()
    for tile in (Tile(8, 4), Tile(3, 4), Tile(8, 4, 2), Tile(3, 2, 3), Tile(5, 8, 2)):
        assert_close(_run(queue, value, filters, output_shape, rate, "SAME", tile), want,
                     context=f"tile {tile}")


@pytest.mark.usefixtures("columns")
def test_non_finite_inputs_at_the_edges_stay_where_they_land(queue):
    """A border slot's load is clamped to an edge column; with finite weights the slot
    holds 0, so an Inf or NaN in that edge column must not leak into it."""
    rng = np.random.default_rng()
    value = rng.standard_normal((1, 6, 25, 2)).astype(np.float32)
    value[0, :, 0, 0] = np.inf
    value[0, :, -1, 1] = np.nan
    value[0, 2, 12, 0] = -np.inf
    filters = rng.standard_normal((3, 3, 4, 2)).astype(np.float32)
    want = reference.atrous_conv2d_transpose(value, filters, (1, 6, 25, 4), 3, "SAME")
    for tile in (Tile(8, 4), Tile(2, 1), Tile(8, 2, 2)):
        assert_close(_run(queue, value, filters, (1, 6, 25, 4), 3, "SAME", tile), want,
                     context=f"tile {tile}")


@pytest.mark.usefixtures("columns")
@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_the_forward_op_and_its_vjp_keep_non_finite_weights_to_their_taps(queue, padding):
    """The forward op and the vjps run the same kernel with FORWARD_FILTERS' flipped taps.

    With SAME, TF and the reference multiply the zero padding by the weights
    (0 * Inf is NaN there): the forward build reads zeros for those taps.
    """
    rng = np.random.default_rng()
    value = rng.standard_normal((1, 9, 31, 3)).astype(np.float32)
    filters = rng.standard_normal((3, 3, 3, 6)).astype(np.float32)  # [kh, kw, in, out]
    filters[0, 2, 1, 4] = np.inf
    want = reference.atrous_conv2d(value, filters, 2, padding)
    assert_close(atrous_cl.atrous_conv2d(value, filters, 2, padding, queue=queue), want)
    dy = rng.standard_normal(want.shape).astype(np.float32)
    want_dx, _ = reference.atrous_conv2d_vjp(value, filters, 2, padding, dy)
    got_dx, _ = atrous_cl.atrous_conv2d_vjp(value, filters, 2, padding, dy, queue=queue)
    assert not np.isfinite(want_dx).all()
    assert_close(got_dx, want_dx)


@pytest.mark.usefixtures("columns")
@pytest.mark.parametrize("rate, padding", [(2, "SAME"), (7, "SAME"), (9, "VALID")])
@pytest.mark.parametrize("bad", [None, np.inf, np.nan], ids=["finite", "inf", "nan"])
def test_the_forward_kernel_adds_tf_padding_times_the_weights(queue, rate, padding, bad):
    """The forward conv's taps outside the image read TF's zero padding: 0 * w, which
    adds nothing for a finite weight (consecutive tiles skip those taps then) and NaN
    for an Inf or NaN one (they must not skip them), with each tile."""
    rng = np.random.default_rng()
    value = rng.standard_normal((2, 21, 31, 3)).astype(np.float32)
    filters = rng.standard_normal((3, 3, 3, 13)).astype(np.float32)  # [kh, kw, in, out]
    if bad is not None:
        filters[0, 2, 1, 4] = bad
        filters[2, 0, 2, 11] = bad
    want = reference.atrous_conv2d(value, filters, rate, padding)
    assert bad is None or not np.isfinite(want).all()
    args = launch.forward_as_transpose(check_conv_args(value.shape, filters.shape, rate, padding))
    for tile in (Tile(8, 4), Tile(3, 4, 2), Tile(5, 2, 3), Tile(5, 8, 2)):
        out = poisoned(queue, want.shape, np.float32)
        launch.transpose(queue, cl_array.to_device(queue, value),
                         cl_array.to_device(queue, filters), out, args, tile, forward_filters=True)
        assert_close(out.get(), want, context=f"tile {tile}")


def _copy_host_arrays(monkeypatch) -> None:
    """Make the host path copy host arrays to the device and back, as on a GPU, on any device."""
    from atrous_cl import calls, memory

    monkeypatch.setattr(memory, "works_in_host_memory", lambda device: False)
    calls.forget_prepared()


@pytest.fixture(params=["as-the-device-takes-them", "copied"])
def host_path(request, queue, monkeypatch) -> str:
    """How the host API hands host arrays to the device: as it does there (in place on a
    CPU device), or copied to the device and back, as on a GPU: forced on a CPU device,
    skipped where the host path copies anyway (Oclgrind)."""
    from atrous_cl import memory

    if request.param == "copied":
        if not memory.works_in_host_memory(queue.device):
            pytest.skip(f"{queue.device.name}: the host path copies already")
        _copy_host_arrays(monkeypatch)
    return request.param


@pytest.fixture(params=["register", "local"])
def kernel_kind(request, monkeypatch) -> str:
    """Which kernel the op's transpose launches run: the register-tile kernel with its
    tuned or default tile, or the local-memory kernel, as where tune stored a local tile
    (a GPU's winner) for every problem: forced here on any device."""
    if request.param == "local":
        from atrous_cl import calls, local_tile, tuning

        monkeypatch.setattr(tuning, "tile_for",
                            lambda device, dtype, args: local_tile.LocalTile(4, 4, 1, 1, 4))
        calls.forget_prepared()
    return request.param


def _enqueued(monkeypatch, spy) -> None:
    """Route both kernel files' launches (launch.enqueue, as local_tile took it) through
    ``spy(real, kernel, *args, **kwargs)``."""
    from atrous_cl import local_tile

    real = launch.enqueue
    for module in (launch, local_tile):
        monkeypatch.setattr(module, "enqueue", lambda *a, **k: spy(real, *a, **k))


@pytest.mark.parametrize("cout, cin, reused", [(5, 4, True), (64, 64, True), (256, 128, False)],
                         ids=["5x4", "64x64-144KiB", "256x128-1152KiB"])
def test_filters_changed_in_place_between_calls_are_repacked(queue, cout, cin, reused, host_path,
                                                             kernel_kind, monkeypatch):
    """The host path reuses packed filters only while the caller's bytes are unchanged
    (filters up to launch.REUSE_BYTES; larger ones are repacked every call), whether it
    uses the arrays in place or copies them, with either kernel file; and it does reuse
    them."""
    rng = np.random.default_rng()
    value = rng.standard_normal((2, 6, 19, cin)).astype(np.float32)
    filters = rng.standard_normal((3, 3, cout, cin)).astype(np.float32)
    assert (filters.nbytes <= launch.REUSE_BYTES) == reused  # the case is on the side it names
    shape = (2, 6, 19, cout)
    call = lambda: atrous_cl.atrous_conv2d_transpose(value, filters, shape, 2, "SAME", queue=queue)
    enqueued = []
    _enqueued(monkeypatch, lambda real, kernel, *a, **k: enqueued.append(kernel.function_name)
              or real(kernel, *a, **k))
    repacks = []
    for change in (None, (1, 1, 2, 3, 7.0), (0, 2, 4, 0, np.inf), (0, 2, 4, 0, -0.5),
                   (2, 2, cout - 1, cin - 1, 0.25), None):
        if change is not None:
            filters[change[:4]] = change[4]
        want = reference.atrous_conv2d_transpose(value, filters, shape, 2, "SAME")
        del enqueued[:]
        assert_close(call(), want, context=f"after {change}")
        assert (enqueued[-1] == local_tile.KERNEL_NAME) == (kernel_kind == "local"), enqueued
        repacks.append(enqueued.count("repack_filters"))
    assert repacks == ([1, 1, 1, 1, 1, 0] if reused else [1] * 6), repacks
    # The same bytes in another array, and the op with other shapes in between.
    other = atrous_cl.atrous_conv2d_transpose(value[:1], filters.copy(), (1, 6, 19, cout), 2,
                                              "SAME", queue=queue)
    assert_close(other, reference.atrous_conv2d_transpose(value[:1], filters, (1, 6, 19, cout), 2,
                                                          "SAME"))


OPS = {
    "transpose": lambda v, f, dy, q: atrous_cl.atrous_conv2d_transpose(v, f, dy.shape, 2, "SAME",
                                                                     queue=q),
    "conv": lambda v, f, dy, q: atrous_cl.atrous_conv2d(v, f, 2, "SAME", queue=q),
    "transpose_vjp": lambda v, f, dy, q: atrous_cl.atrous_conv2d_transpose_vjp(
        v, f, dy.shape, 2, "SAME", dy, queue=q),
    "conv_vjp": lambda v, f, dy, q: atrous_cl.atrous_conv2d_vjp(v, f, 2, "SAME", dy, queue=q),
}


def _op_reference(op, v, f, dy):
    if op == "transpose":
        return reference.atrous_conv2d_transpose(v, f, dy.shape, 2, "SAME")
    if op == "conv":
        return reference.atrous_conv2d(v, f, 2, "SAME")
    if op == "transpose_vjp":
        return reference.atrous_conv2d_transpose_vjp(v, f, dy.shape, 2, "SAME", dy)
    return reference.atrous_conv2d_vjp(v, f, 2, "SAME", dy)


@pytest.mark.parametrize("order", ["in-order", "out-of-order"])
@pytest.mark.parametrize("op", list(OPS))
def test_copied_filters_are_uploaded_only_when_their_bytes_change(queue, op, order, kernel_kind,
                                                                  monkeypatch):
    """Where the host path copies arrays to the device (GPUs; forced here on CPU devices),
    filters whose bytes the launch packed last time are neither copied again nor repacked;
    changed in place, or new, they are. The other inputs are copied every call, without a
    wait of their own, and every result is right (each call draws a new value and dy, and
    its result starts poisoned). Either kernel file."""
    ooo = cl.command_queue_properties.OUT_OF_ORDER_EXEC_MODE_ENABLE
    if order == "out-of-order":
        if not queue.device.queue_properties & ooo:
            pytest.skip(f"{queue.device.name}: no out-of-order queues")
        queue = cl.CommandQueue(queue.context, queue.device, properties=ooo)
    _copy_host_arrays(monkeypatch)
    uploads = recorded_host_copies(monkeypatch)
    rng = np.random.default_rng()
    transpose = op.startswith("transpose")
    f = rng.standard_normal((3, 2, 5, 4) if transpose else (3, 2, 4, 5)).astype(np.float32)
    v_shape, dy_shape = (2, 6, 7, 4), (2, 6, 7, 5)  # SAME: the same for both ops
    copied = []
    for step, change in enumerate((None, None, (1, 1, 2, 3, 7.0), None, "new", None)):
        if change == "new":
            f = f.copy()  # the same bytes elsewhere: no copy
        elif change is not None:
            f[change[:4]] = change[4]
        v = rng.standard_normal(v_shape).astype(np.float32)
        dy = rng.standard_normal(dy_shape).astype(np.float32)
        del uploads[:]
        got = OPS[op](v, f, dy, queue)
        want = _op_reference(op, v, f, dy)
        for g, w in zip(got, want) if op.endswith("vjp") else [(got, want)]:
            assert_close(g, w, atol=1e-5 * float(np.max(np.abs(w))), context=f"call {step}")
        assert not any(blocking for _, blocking in uploads), uploads
        copied.append(sum(shape == f.shape for shape, _ in uploads))
        others = sum(shape in (v.shape, dy.shape) for shape, _ in uploads)
        assert others == (2 if op.endswith("vjp") else 1), uploads
    assert copied == [1, 0, 1, 0, 0, 0]


@pytest.mark.parametrize("kernel", ["direct", "winograd", "local"])
@pytest.mark.parametrize("op", list(OPS))
def test_filters_written_during_a_repack_are_not_kept_as_packed(queue, op, kernel, host_path,
                                                                 monkeypatch):
    """Filters another thread writes while a call repacks them: the packed copy the queue
    keeps is of the bytes the call compared, not of what the repack happened to read, so
    the next call with those bytes is right (a packed copy of other weights, kept under
    them, would give every later call with them a wrong answer). Every kernel file's
    repacks (3x3 filters to 24 channels take the Winograd kernel on CPUs; the
    local-memory kernel as where it was tuned)."""
    if kernel == "local":
        from atrous_cl import calls, tuning

        monkeypatch.setattr(tuning, "tile_for",
                            lambda device, dtype, args: local_tile.LocalTile(4, 4, 1, 1, 4))
        calls.forget_prepared()
    rng = np.random.default_rng()
    kh, kw, cout = (3, 2, 5) if kernel == "direct" else (3, 3, 24)
    transpose = op.startswith("transpose")
    f = rng.standard_normal((kh, kw, cout, 4) if transpose else (kh, kw, 4, cout))
    f = f.astype(np.float32)
    kept = f.copy()
    v = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    dy = rng.standard_normal((2, 8, 8, cout)).astype(np.float32)
    enqueued = []

    def write_during_repack(real, kernel, *args, **kwargs):
        if kernel.function_name == "repack_filters" and "repack_filters" not in enqueued:
            f[...] = 2 * kept + 1  # the "other thread", between the comparison and the repack
        enqueued.append(kernel.function_name)
        return real(kernel, *args, **kwargs)

    with monkeypatch.context() as spying:
        _enqueued(spying, write_during_repack)
        first = OPS[op](v, f, dy, queue)
    assert "repack_filters" in enqueued, enqueued
    if kernel == "local" or not op.endswith("vjp"):
        assert (local_tile.KERNEL_NAME in enqueued) == (kernel == "local"), enqueued
    if queue.device.type & cl.device_type.CPU and not op.endswith("vjp"):
        # (a vjp's gradient of the value has 4 output channels: the direct kernel on some)
        assert ("winograd_transpose" in enqueued) == (kernel == "winograd"), enqueued
    want = _op_reference(op, v, kept, dy)
    f[...] = kept
    for step in range(2):
        got = OPS[op](v, f, dy, queue)
        for g, w in zip(got, want) if op.endswith("vjp") else [(got, want)]:
            assert_close(g, w, atol=1e-5 * float(np.max(np.abs(w))), context=f"call {step}")
    # What the racing call returns may be either filters' answer; it is the compared bytes'.
    for g, w in zip(first, want) if op.endswith("vjp") else [(first, want)]:
        assert_close(g, w, atol=1e-5 * float(np.max(np.abs(w))), context="the racing call")


def test_calls_from_threads_with_alternating_filters(queue, host_path, kernel_kind):
    """Threads calling the op on one queue, each switching between two filters every call,
    so that calls reuse and replace the queue's packed filters under each other; in place
    or copied, with either kernel file, every result is its own inputs'."""
    from atrous_cl.facts import is_simulator

    if is_simulator(queue.device):
        pytest.skip("Oclgrind crashes (segmentation fault) when called from several threads, "
                    "with this library's code before these tests too")
    rng = np.random.default_rng()
    filters = [rng.standard_normal((3, 3, 5, 4)).astype(np.float32) for _ in range(2)]
    wrong = []

    def calls(seed):
        r = np.random.default_rng(seed)
        for k in range(12):
            value = r.standard_normal((2, 6, 7, 4)).astype(np.float32)
            f = filters[(seed + k) % 2]
            got = atrous_cl.atrous_conv2d_transpose(value, f, (2, 6, 7, 5), 2, "SAME", queue=queue)
            want = reference.atrous_conv2d_transpose(value, f, (2, 6, 7, 5), 2, "SAME")
            if not np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want)):
                wrong.append((seed, k))

    threads = [threading.Thread(target=calls, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


@pytest.mark.parametrize("output_shape, tile, rate_w, max_group, want", [
    ((1, 64, 64, 64), Tile(8, 16), 2, 8192, ((4, 8, 64), (1, 8, 4))),       # A: a channel tile a group
    ((1, 264, 264, 16), Tile(8, 16), 2, 8192, ((1, 34, 264), (1, 34, 3))),  # D: phases 132 wide
    ((32, 8, 8, 16), Tile(4, 16), 2, 8192, ((1, 2, 256), (1, 2, 16))),      # E: 16 groups
    ((2, 3, 100000, 1024), Tile(8, 16), 1, 8192, ((64, 12500, 6), (1, 6250, 1))),  # 8192 don't divide
    ((1, 2, 8191 * 8, 4), Tile(8, 4), 1, 4096, ((1, 8191, 2), (1, 1, 1))),  # a prime number of tiles
    ((1, 4, 7, 1024), Tile(8, 16), 10**9, 8192, ((64, 7, 4), (1, 7, 1))),   # a phase per column
    ((1, 64, 5, 3), Tile(8, 4), 1, 6, ((1, 1, 64), (1, 1, 4))),             # rows capped by max_group
    ((1, 4, 7, 2**20), Tile(8, 16), 3, 8192, ((65536, 3, 4), (1, 3, 1))),   # channel tiles past it
    ((1, 64, 64, 64), Tile(8, 16), 2, None, ((4, 8, 64), None)),            # other devices
])
def test_launch_geometry_groups_whole_rows_that_fit(output_shape, tile, rate_w, max_group, want):
    assert launch.launch_geometry(output_shape, tile, rate_w, max_group) == want
    (global_size, local_size), limit = want, max_group or 1
    if local_size is not None:
        assert all(g % l == 0 for g, l in zip(global_size, local_size))
        assert np.prod(local_size) <= limit
