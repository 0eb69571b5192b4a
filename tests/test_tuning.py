# SPDX-License-Identifier: Apache-2.0
"""Tile tuning: every candidate is correct, winners are cached on disk and used."""

from __future__ import annotations

import json
import os
import time
import types

import numpy as np
import pyopencl.array as cl_array
import pytest
from conftest import assert_close, poisoned, skip_unsupported, stub_device

import atrous_cl
from atrous_cl import (cache, calls, discovery, geometry, icd, launch, local_tile, memory, ops,
                       reference, tiles, tuning)
from atrous_cl.local_tile import LocalTile
from atrous_cl.tiles import Tile
from atrous_cl.validation import check_transpose_args


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(tuning, "_loaded", None)
    monkeypatch.setattr(cache, "_warned", set())
    yield tmp_path / "atrous-cl" / "tuning.json"
    tuning._loaded = None


def _tile_case(queue, shape, dtype):
    """Fresh random inputs of ``shape`` (n, h, w, cin, cout, kh, kw, rate, padding) on the
    device, the launch's arguments and the reference's result."""
    n, h, w, cin, cout, kh, kw, rate, padding = shape
    rng = np.random.default_rng()
    value = rng.standard_normal((n, h, w, cin)).astype(dtype)
    filters = rng.standard_normal((kh, kw, cout, cin)).astype(dtype)
    output_shape = (n, *geometry.transpose_output_hw((h, w), (kh, kw), rate, padding), cout)
    args = check_transpose_args(value.shape, filters.shape, output_shape, rate, padding)
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)
    return cl_array.to_device(queue, value), cl_array.to_device(queue, filters), args, want


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(2, 5, 9, 3, 5, 3, 2, 2, "SAME"), (1, 4, 3, 6, 17, 2, 3, 3, "VALID")],
                         ids=["small", "cout17"])
def test_every_candidate_tile_is_correct(queue, shape, dtype):
    """The tuner may pick any candidate, so each must match the reference exactly like the default."""
    skip_unsupported(queue, dtype)
    d_value, d_filters, args, want = _tile_case(queue, shape, dtype)
    cout, output_shape = shape[4], args.output_shape
    candidates = tiles.candidates(queue.device, dtype, cout, args.filters_shape)
    assert tiles.default_tile(queue.device, dtype, cout) in candidates
    for tile in candidates:
        out = poisoned(queue, output_shape, dtype)
        launch.transpose(queue, d_value, d_filters, out, args, tile)
        assert_close(out.get(), want, dtype, context=f"tile {tile}")


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=lambda d: np.dtype(d).name)
@pytest.mark.hand_made_tiles
def test_twelve_pixel_tiles_are_correct(queue, dtype):
    """12x16, which tune tries on CPUs: whole and ragged 12-pixel tiles (15 columns per
    phase), 10 of 16 lanes used, into a poisoned output."""
    d_value, d_filters, args, want = _tile_case(queue, (2, 5, 30, 3, 10, 3, 3, 2, "SAME"), dtype)
    out = poisoned(queue, args.output_shape, dtype)
    launch.transpose(queue, d_value, d_filters, out, args, Tile(12, 16))
    assert_close(out.get(), want, dtype)


def test_tune_caches_the_winner_and_the_op_uses_it(queue, fresh_cache):
    best, timings = tuning.tune(queue, (1, 6, 10, 4), (3, 3, 5, 4), 2, "SAME", repeats=1)
    assert str(best) in timings and timings[str(best)] == min(timings.values())
    saved = json.loads(fresh_cache.read_text())
    entry = saved["devices"][tuning.device_key(queue.device)]["float32 cin4 cout5 k3x3 r2 w16"]
    assert Tile(*entry["tile"]) == best
    args = check_transpose_args((3, 7, 12, 4), (3, 3, 5, 4), (3, 7, 12, 5), 2, "SAME")
    tuning._loaded = None  # a new process reads it back from disk
    assert tuning.tile_for(queue.device, np.float32, args) == best


def test_tiles_tuned_for_another_kernel_are_dropped(queue, fresh_cache, monkeypatch):
    """A tile timed with an older kernel source says nothing about this one."""
    tuning.tune(queue, (1, 6, 10, 4), (3, 3, 5, 4), 2, "SAME", repeats=1)
    args = check_transpose_args((1, 6, 10, 4), (3, 3, 5, 4), (1, 6, 10, 5), 2, "SAME")
    saved = json.loads(fresh_cache.read_text())
    assert saved["kernel"] == tuning.kernel_digest()
    stale = Tile(2, 1)  # a candidate no default is
    saved["devices"][tuning.device_key(queue.device)]["float32 cin4 cout5 k3x3 r2 w16"]["tile"] = list(stale)
    fresh_cache.write_text(json.dumps(saved))
    tuning._loaded = None
    assert tuning.tile_for(queue.device, np.float32, args) == stale  # same kernel: used
    saved["kernel"] = "0" * 16
    fresh_cache.write_text(json.dumps(saved))
    tuning._loaded = None
    assert tuning.tile_for(queue.device, np.float32, args) == tiles.default_for(queue.device, np.float32, args)


def test_a_tile_stored_in_this_process_is_used_at_once(queue, fresh_cache, monkeypatch):
    """tile_for remembers its answers, and each queue the tiles of the problems it ran;
    a new winner must replace the remembered default, and the op must launch with it."""
    args = check_transpose_args((1, 6, 10, 4), (3, 3, 5, 4), (1, 6, 10, 5), 2, "SAME")
    default = tiles.default_for(queue.device, np.float32, args)
    assert tuning.tile_for(queue.device, np.float32, args) == default
    rng = np.random.default_rng()
    value = rng.standard_normal(args.value_shape).astype(np.float32)
    filters = rng.standard_normal(args.filters_shape).astype(np.float32)
    launched = []
    real_plan = launch.plan
    monkeypatch.setattr(launch, "plan", lambda *a: launched.append(a[4]) or real_plan(*a))
    ops.atrous_conv2d_transpose(value, filters, args.output_shape, 2, "SAME", queue=queue)
    assert launched == [default]
    winner = Tile(2, 1)  # a candidate no default is
    tuning._store(queue.device, "float32 cin4 cout5 k3x3 r2 w16", winner, {str(winner): 1e-3})
    assert tuning.tile_for(queue.device, np.float32, args) == winner
    got = ops.atrous_conv2d_transpose(value, filters, args.output_shape, 2, "SAME", queue=queue)
    assert launched == [default, winner]  # the tile
    assert_close(got, reference.atrous_conv2d_transpose(value, filters, args.output_shape, 2, "SAME"),
                 np.float32)


def test_a_stored_two_vector_tile_is_read_back_and_used(queue, fresh_cache):
    """Tiles of several channel vectors are stored as three numbers; a new process reads
    them back, and the op computes with them (20 output channels: the second vector
    mostly padding)."""
    value_shape, filters_shape = (2, 5, 9, 3), (3, 3, 20, 3)
    candidates = tiles.candidates(queue.device, np.float32, 20)
    winner = next((t for t in (Tile(4, 16, 2), Tile(4, 8, 2)) if t in candidates), None)
    if winner is None:
        pytest.skip(f"{queue.device.name}: no two-vector tiles")
    args = check_transpose_args(value_shape, filters_shape, (2, 5, 9, 20), 2, "SAME")
    key = tuning.shape_class(np.float32, value_shape, filters_shape, 2)
    tuning._store(queue.device, key, winner, {str(winner): 1e-3})
    saved = json.loads(fresh_cache.read_text())
    assert saved["devices"][tuning.device_key(queue.device)][key]["tile"] == [*winner]
    tuning._loaded = None  # a new process reads it back from disk
    assert tuning.tile_for(queue.device, np.float32, args) == winner
    _run_op(queue, args)


def test_a_stored_winograd_tile_is_used_unless_winograd_is_off(queue, fresh_cache, monkeypatch):
    """A Winograd tile is stored with its flag; a new process reads it back and the op
    launches the Winograd kernel with it; with ATROUS_CL_WINOGRAD=0 the entry is ignored
    and the direct kernel runs."""
    value_shape, filters_shape = (2, 6, 9, 3), (3, 3, 20, 3)
    winner = tiles.winograd_tile(queue.device, np.float32, filters_shape, 4)
    if winner is None:
        pytest.skip(f"{queue.device.name}: no room for the Winograd kernel")
    args = check_transpose_args(value_shape, filters_shape, (2, 6, 9, 20), 2, "SAME")
    key = tuning.shape_class(np.float32, value_shape, filters_shape, 2)
    tuning._store(queue.device, key, winner, {str(winner): 1e-3})
    saved = json.loads(fresh_cache.read_text())
    assert saved["devices"][tuning.device_key(queue.device)][key]["tile"][3] is True
    tuning._loaded = None  # a new process reads it back from disk
    assert tuning.tile_for(queue.device, np.float32, args) == winner
    launched = []
    real_plan = launch.plan
    monkeypatch.setattr(launch, "plan", lambda *a: launched.append(real_plan(*a)) or launched[-1])
    _run_op(queue, args)
    assert [p.main_kernel for p in launched] == ["winograd_transpose"]
    monkeypatch.setenv("ATROUS_CL_WINOGRAD", "0")
    tuning._loaded = None
    calls.forget_prepared()
    assert not tuning.tile_for(queue.device, np.float32, args).winograd
    assert winner not in tiles.candidates(queue.device, np.float32, 20, filters_shape)
    _run_op(queue, args)
    assert launched[-1].source == launch.KERNEL_FILE  # phase tiles or consecutive columns


def test_local_tiles_are_tuned_on_gpus_only(queue, monkeypatch):
    """tune offers the local-memory kernel's tiles on a GPU only (none on these CPU devices,
    Oclgrind included): those of TUNE_TILES the device's work-groups hold, with channel
    vectors no wider than the output channels need, whose stage fits in local memory."""
    args = check_transpose_args(*_ARGS)
    assert local_tile.tune_candidates(queue.device, np.float32, args) == []
    gpu = stub_device()
    monkeypatch.setattr(local_tile, "_limits", lambda device: local_tile._Limits(
        1024, (1024, 1024, 64), 48 * 1024))
    c_like = check_transpose_args((1, 128, 128, 32), (3, 3, 16, 32), (1, 128, 128, 16), 4, "SAME")
    found = local_tile.tune_candidates(gpu, np.float32, c_like)
    assert {LocalTile.parse(t) for t in ("2x16x8/1x8", "2x32x4/1x8", "2x16x8/2x8")} <= set(found)
    assert len(found) == len(set(found)) == len(local_tile.TUNE_TILES)
    # 5 output channels: vectors of 4 and 8 become 4 and 8; two slices of 8 would be past them
    found = local_tile.tune_candidates(gpu, np.float32, args)
    assert found and all(t.channels in (4, 8) and (t.slices - 1) * t.channels < 5 for t in found)
    one = check_transpose_args((1, 6, 10, 4), (3, 3, 1, 4), (1, 6, 10, 1), 2, "SAME")
    assert {t.channels for t in local_tile.tune_candidates(gpu, np.float32, one)} == {1}
    assert local_tile.tune_candidates(gpu, np.float32, check_transpose_args(
        (0, 6, 10, 4), (3, 3, 5, 4), (0, 6, 10, 5), 2, "SAME")) == []
    # work-groups past the device's limits, or stages past its local memory, are left out
    monkeypatch.setattr(local_tile, "_limits", lambda device: local_tile._Limits(
        256, (256, 256, 8), 48 * 1024))
    assert all(t.group_size <= 256 and t.height <= 8
               for t in local_tile.tune_candidates(gpu, np.float32, c_like))
    monkeypatch.setattr(local_tile, "_limits", lambda device: local_tile._Limits(
        1024, (1024, 1024, 64), 2 * 1024))
    small = local_tile.tune_candidates(gpu, np.float32, c_like)
    assert all(local_tile.choose_staging(np.float32, c_like, t, 2048) for t in small)
    assert len(small) < len(local_tile.TUNE_TILES)


@pytest.mark.parametrize("host_path", ["as-the-device-takes-them", "copied"])
def test_a_tuned_local_tile_is_stored_and_the_ops_run_it(queue, fresh_cache, monkeypatch, host_path):
    """Where tune finds a local tile fastest (here: the only candidates, two small ones and
    one no device runs, which tune leaves out), it
    stores it as such, a new process reads it back, and the transpose and the forward op
    of its shape class run the local-memory kernel with it, through the host API (in place
    or copied) and the device API, into poisoned results."""
    if host_path == "copied":
        if not memory.works_in_host_memory(queue.device):
            pytest.skip(f"{queue.device.name}: the host path copies already")
        monkeypatch.setattr(memory, "works_in_host_memory", lambda device: False)
        calls.forget_prepared()
    offered = [LocalTile(4, 4, 1, 1, 4), LocalTile(4, 2, 2, 2, 2)]
    too_big = LocalTile(128, 128, 1, 1, 4)  # more work-items than any work-group: left out
    monkeypatch.setattr(local_tile, "tune_candidates",
                        lambda device, dtype, args: [offered[0], too_big, offered[1]])
    monkeypatch.setattr(tuning, "candidates", lambda *a: [])
    best, timings = tuning.tune(queue, (1, 6, 10, 4), (3, 3, 5, 4), 2, "SAME", repeats=1)
    assert best in offered and set(timings) == {str(t) for t in offered}
    entry = json.loads(fresh_cache.read_text())["devices"][tuning.device_key(queue.device)][_KEY]
    assert entry["local"] == list(best) and "tile" not in entry
    tuning._loaded = None  # a new process reads it back from disk
    args = check_transpose_args(*_ARGS)
    assert tuning.tile_for(queue.device, np.float32, args) == best
    launched, real = [], local_tile.launch
    monkeypatch.setattr(local_tile, "launch", lambda *a: launched.append(a[5:]) or real(*a))
    monkeypatch.setattr(launch, "plan", None)  # no register-tile launch
    rng = np.random.default_rng()
    for step in range(2):
        value = rng.standard_normal((1, 6, 10, 4)).astype(np.float32)
        filters = rng.standard_normal((3, 3, 5, 4)).astype(np.float32)
        want = reference.atrous_conv2d_transpose(value, filters, (1, 6, 10, 5), 2, "SAME")
        got = ops.atrous_conv2d_transpose(value, filters, (1, 6, 10, 5), 2, "SAME", queue=queue)
        assert_close(got, want, np.float32, context=f"host call {step}")
        out = poisoned(queue, (1, 6, 10, 5), np.float32)
        ops.atrous_conv2d_transpose(cl_array.to_device(queue, value), filters, (1, 6, 10, 5), 2,
                                    "SAME", out=out)
        assert_close(out.get(), want, np.float32, context=f"device call {step}")
        forward = filters.transpose(0, 1, 3, 2).copy()  # [kh, kw, in 4, out 5]: the same class
        x = rng.standard_normal((1, 6, 10, 4)).astype(np.float32)
        assert_close(atrous_cl.atrous_conv2d(x, forward, 2, "SAME", queue=queue),
                     reference.atrous_conv2d(x, forward, 2, "SAME"), np.float32,
                     context=f"forward op {step}")
    assert launched == [(best, False), (best, False), (best, True)] * 2, launched


def test_a_tuned_local_tile_that_this_build_cannot_run_gives_way_to_the_default(
        queue, fresh_cache, monkeypatch, recwarn):
    """A local tile stored for the problem's shape class whose build for this problem
    holds fewer work-items (local_tile.plan's ValueError): the op runs the default tile,
    with one warning naming why, and is right."""
    best = LocalTile(4, 4, 1, 1, 4)
    monkeypatch.setattr(local_tile, "tune_candidates", lambda device, dtype, args: [best])
    tuning._store(queue.device, _KEY, best, {str(best): 1e-3})

    def refuse(*a, **k):
        raise ValueError("tile 1x4x4/1x4 has 16 work-items, more than the 8 this build of "
                         "atrous_conv2d_transpose_local.cl can run")

    monkeypatch.setattr(local_tile, "plan", refuse)
    monkeypatch.setattr(local_tile, "launch", None)  # nothing may launch it
    args = check_transpose_args(*_ARGS)
    for _ in range(2):
        _run_op(queue, args)
    ours = [str(w.message) for w in recwarn.list if "local tile" in str(w.message)]
    assert len(ours) == 1 and "this build" in ours[0] and "default tile" in ours[0], ours


def test_a_tuned_local_tile_another_problem_of_its_class_does_not_fit_is_not_warned_of(
        queue, fresh_cache, monkeypatch, recwarn):
    """On a GPU a tune tile of the problem's shape class whose stage does not fit this
    problem (or a problem without work) is not offered here: the default, silently."""
    tile = local_tile.TUNE_TILES[0]
    assert local_tile.is_tune_tile(tile) and local_tile.is_tune_tile(tile._replace(channels=1))
    assert not local_tile.is_tune_tile(LocalTile(4, 4, 1, 1, 4))
    assert not local_tile.is_tune_tile(tile._replace(channels=3))  # not a vector: foreign
    monkeypatch.setattr(tuning, "gpu_only", lambda device: True)
    monkeypatch.setattr(local_tile, "tune_candidates", lambda device, dtype, args: [])
    tuning._store(queue.device, _KEY, tile, {str(tile): 1e-3})
    args = check_transpose_args(*_ARGS)
    assert tuning.tile_for(queue.device, np.float32, args) == tiles.default_for(
        queue.device, np.float32, args)
    assert not [w for w in recwarn.list if "tuning cache" in str(w.message)]
    tuning._store(queue.device, _KEY, LocalTile(4, 4, 1, 1, 4), {"x": 1e-3})  # not tune's: warned
    assert tuning.tile_for(queue.device, np.float32, args) == tiles.default_for(
        queue.device, np.float32, args)
    assert len([w for w in recwarn.list if "tuning cache" in str(w.message)]) == 1


def test_one_channel_problems_time_and_store_nothing(queue, fresh_cache, monkeypatch):
    """One channel in and out on a CPU runs the one-channel kernel, which ignores tiles:
    timing tiles there would store noise as a winner."""
    vector = tiles.pixel_vector(queue.device, np.float32, (3, 3, 1, 1))
    if vector is None:
        pytest.skip(f"{queue.device.name}: one channel runs on the register tiles, which tune")
    monkeypatch.setattr(launch, "transpose", None)  # nothing may launch
    assert tuning.tune(queue, (1, 6, 9, 1), (3, 3, 1, 1), 2, "SAME") == (Tile(vector, 1), {})
    assert not fresh_cache.exists()


def test_untuned_problem_uses_the_default(queue, fresh_cache):
    args = check_transpose_args((1, 5, 5, 3), (3, 3, 2, 3), (1, 5, 5, 2), 1, "SAME")
    assert tuning.tile_for(queue.device, np.float32, args) == tiles.default_for(queue.device, np.float32, args)
    assert not fresh_cache.exists()


def test_corrupt_cache_falls_back_to_defaults(queue, fresh_cache):
    fresh_cache.parent.mkdir(parents=True)
    fresh_cache.write_text("{not json")
    args = check_transpose_args((1, 5, 5, 3), (3, 3, 2, 3), (1, 5, 5, 2), 1, "SAME")
    with pytest.warns(RuntimeWarning, match="not valid JSON"):
        assert tuning.tile_for(queue.device, np.float32, args) == tiles.default_for(queue.device, np.float32, args)


_KEY = "float32 cin4 cout5 k3x3 r2 w16"
_ARGS = ((1, 6, 10, 4), (3, 3, 5, 4), (1, 6, 10, 5), 2, "SAME")  # a problem of class _KEY


def _file_with(device_entries, kernel=None):
    """A tuning file of this kernel whose entries for the device under test are ``device_entries``."""
    return {"version": 1, "kernel": kernel or tuning.kernel_digest(), "devices": device_entries}


def _malformed(device_key):
    """Valid JSON of the wrong structure, by what is wrong (issue 14, item 5)."""
    def entry(e):
        return _file_with({device_key: {_KEY: e}})

    return {
        "list": [], "null": None, "number": 5, "devices list": _file_with([]),
        "device entries a list": _file_with({device_key: [1, 2]}),
        "entry 5": entry(5), "tile text": entry({"tile": "ab"}), "no tile": entry({"ms": {}}),
        "tile of 3": entry({"tile": [8, 8, 8]}), "tile of floats": entry({"tile": [8.0, 8.0]}),
        "tile of bools": entry({"tile": [True, True]}), "tile 8x0": entry({"tile": [8, 0]}),
        "tile 8x3": entry({"tile": [8, 3]}), "tile 512x16": entry({"tile": [512, 16]}),
        "tile -8x8": entry({"tile": [-8, 8]}), "tile 2**40": entry({"tile": [2**40, 8]}),
        "local of 4": entry({"local": [16, 16, 1, 1]}),
        "local of bools": entry({"local": [True] * 5}),
        "local and tile": entry({"local": [16, 16, 1, 1, 4], "tile": [4, 8]}),
        "local text": entry({"local": "1x16x16/1x4"}),
        "local 3 channels": entry({"local": [16, 16, 1, 1, 3]}),
        "local 2**40": entry({"local": [2**40, 16, 1, 1, 4]}),
        # tune offers local tiles on GPUs only (these devices are CPUs, Oclgrind too)
        "local here": entry({"local": [16, 16, 1, 1, 4]}),
    }


_MALFORMED = list(_malformed("x"))


def _run_op(queue, args):
    rng = np.random.default_rng()
    value = rng.standard_normal(args.value_shape).astype(np.float32)
    filters = rng.standard_normal(args.filters_shape).astype(np.float32)
    got = ops.atrous_conv2d_transpose(value, filters, args.output_shape, args.rate, args.padding,
                                      queue=queue)
    want = reference.atrous_conv2d_transpose(value, filters, args.output_shape, args.rate, args.padding)
    assert_close(got, want, np.float32)


@pytest.mark.parametrize("what", _MALFORMED)
def test_malformed_cache_is_ignored_with_one_warning(queue, fresh_cache, what, recwarn):
    """The cache is advisory: a wrong structure or a tile tune never tries must not make the op
    raise, nor reach a build (PoCL segfaults on 8x3 and 512x16)."""
    fresh_cache.parent.mkdir(parents=True)
    fresh_cache.write_text(json.dumps(_malformed(tuning.device_key(queue.device))[what]))
    args = check_transpose_args(*_ARGS)
    default = tiles.default_for(queue.device, np.float32, args)
    launched = []
    real_plan = launch.plan
    launch.plan.cache_clear()
    try:
        launch.plan = lambda *a: launched.append(a[4]) or real_plan(*a)
        for _ in range(2):
            assert tuning.tile_for(queue.device, np.float32, args) == default
            _run_op(queue, args)
    finally:
        launch.plan = real_plan
    assert launched and set(launched) == {default}
    ours = [w for w in recwarn.list if "tuning cache" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in ours]


def test_a_bad_entry_leaves_the_good_ones(queue, fresh_cache, recwarn):
    fresh_cache.parent.mkdir(parents=True)
    good = check_transpose_args((1, 5, 5, 3), (3, 3, 2, 3), (1, 5, 5, 2), 1, "SAME")
    good_key = tuning.shape_class(np.float32, good.value_shape, good.filters_shape, good.rate)
    entries = {_KEY: 5, good_key: {"tile": [2, 1]}}
    fresh_cache.write_text(json.dumps(_file_with({tuning.device_key(queue.device): entries})))
    assert tuning.tile_for(queue.device, np.float32, good) == Tile(2, 1)
    args = check_transpose_args(*_ARGS)
    assert tuning.tile_for(queue.device, np.float32, args) == tiles.default_for(queue.device, np.float32, args)
    assert len([w for w in recwarn.list if "tuning cache" in str(w.message)]) == 1


def test_tuning_file_that_is_a_fifo_does_not_hang(queue, tmp_path):
    """A plain open of a FIFO waits for a writer forever; the op must not. In a child process,
    so that a hang fails the test instead of stopping the run."""
    import os
    import subprocess
    import sys

    path = tmp_path / "atrous-cl" / "tuning.json"
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    selector = next(d.selector for d in discovery.devices() if d.device == queue.device)
    child = ("import atrous_cl, numpy as np\n"
             "from atrous_cl import tiles, tuning\n"
             "from atrous_cl.validation import check_transpose_args\n"
             f"args = check_transpose_args(*{_ARGS!r})\n"
             "d = atrous_cl.get_queue().device\n"
             "assert tuning.tile_for(d, np.float32, args) == tiles.default_for(d, np.float32, args)\n"
             "print('ok')\n")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), PYOPENCL_CTX=selector)
    try:
        done = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("reading a tuning file that is a FIFO hung")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert "not a regular file" in done.stderr


def test_oversized_tuning_file_is_not_read(queue, fresh_cache, recwarn):
    fresh_cache.parent.mkdir(parents=True)
    entries = {tuning.device_key(queue.device): {_KEY: {"tile": [2, 1]}}}
    fresh_cache.write_text(json.dumps(_file_with(entries)) + " " * (tuning._MAX_FILE_BYTES + 1))
    args = check_transpose_args(*_ARGS)
    assert tuning.tile_for(queue.device, np.float32, args) == tiles.default_for(queue.device, np.float32, args)
    assert any("larger than" in str(w.message) for w in recwarn.list)


_STORER = """
import sys, time
from pathlib import Path
from atrous_cl import tiles, tuning
tuning.device_key = lambda device: "device"
who, folder = sys.argv[1], Path(sys.argv[2])
(folder / who).touch()
while not (folder / "go").exists():
    time.sleep(0.001)
for i in range(200):
    tuning._store(None, f"{who} {i}", tiles.Tile(2, 1), {"2x1": 1e-3})
"""


def test_two_processes_storing_at_once_keep_both_entries(tmp_path):
    """Each store reads, merges and writes under a file lock, so no process drops another's entries."""
    import os
    import subprocess
    import sys
    import time

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", _STORER, who, str(tmp_path)], env=env,
                              stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    while not ((tmp_path / "a").exists() and (tmp_path / "b").exists()):  # both imported
        assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    saved = json.loads((tmp_path / "atrous-cl" / "tuning.json").read_text())
    assert set(saved["devices"]["device"]) == {f"{who} {i}" for who in "ab" for i in range(200)}


@pytest.mark.parametrize("value_shape", [(0, 6, 10, 4), (1, 0, 10, 4), (1, 6, 0, 4)],
                         ids=["batch0", "height0", "width0"])
def test_tune_refuses_a_problem_without_work(queue, fresh_cache, value_shape):
    """Timings of a problem without work are noise; storing one as a winner would be a lie."""
    with pytest.raises(ValueError, match=r"tune needs a batch, height, width and channels of at least 1"):
        tuning.tune(queue, value_shape, (3, 3, 5, 4), 2, "SAME", repeats=1)
    assert not fresh_cache.exists()


@pytest.mark.parametrize("repeats", [0, -1, 1.5, True])
def test_tune_refuses_bad_repeats(queue, fresh_cache, repeats):
    with pytest.raises(ValueError, match=r"repeats must be an integer of at least 1, got"):
        tuning.tune(queue, (1, 6, 10, 4), (3, 3, 5, 4), 2, "SAME", repeats=repeats)
    assert not fresh_cache.exists()


def test_tune_that_could_not_store_its_winner_says_so_before_timing(queue, fresh_cache):
    """Another user's lock file in a shared cache home (here a folder in its place: the
    tests run as root, whom permissions do not stop) fails the tune at once, by name."""
    fresh_cache.with_name(fresh_cache.name + ".lock").mkdir(parents=True)
    timed = []
    with pytest.raises(OSError, match=r"tune cannot store its results: .*tuning\.json\.lock "
                                      r"cannot be opened for writing .*XDG_CACHE_HOME"):
        tuning.tune(queue, (1, 6, 10, 4), (3, 3, 5, 4), 2, "SAME", repeats=1,
                    progress=timed.append)
    assert timed == [] and not fresh_cache.exists()


def test_tune_where_the_tuning_file_is_a_folder_says_so_before_timing(queue, fresh_cache):
    """os.replace cannot put the tuning file over a folder: refused before any timing (it
    failed after every candidate had been timed), by name."""
    fresh_cache.mkdir(parents=True)
    timed = []
    with pytest.raises(IsADirectoryError, match=r"tune cannot store its results: .*tuning\.json "
                                                r"is a folder, not the tuning file; remove it"):
        tuning.tune(queue, (1, 6, 10, 4), (3, 3, 5, 4), 2, "SAME", repeats=1,
                    progress=timed.append)
    assert timed == [] and fresh_cache.is_dir()


def test_users_own_icd_setting_wins(monkeypatch):
    monkeypatch.setenv("OCL_ICD_VENDORS", "/somewhere/mine")
    assert icd.register_pip_icds() is None
    assert icd.os.environ["OCL_ICD_VENDORS"] == "/somewhere/mine"


_POCL_AVX2 = "OpenCL 3.0 PoCL HSTR: pthread-x86_64-unknown-linux-gnu-znver3"
_POCL_AVX512 = "OpenCL 3.0 PoCL HSTR: pthread-x86_64-pc-linux-gnu-skylake-avx512"


@pytest.mark.parametrize("platform, kind, version, want", [
    ("Intel(R) OpenCL", "CPU", "OpenCL 3.0 (Build 0)", tiles.Tile(8, 16, 2)),
    ("Portable Computing Language", "CPU", _POCL_AVX2, tiles.Tile(4, 8, 2)),
    ("Portable Computing Language", "CPU", _POCL_AVX512, tiles.Tile(8, 16, 2)),
    # PyPI's PoCL 3.0 on an Intel Xeon of family 6 model 207 (its LLVM 14 names it by
    # its features), and newer LLVMs' names of AVX-512 CPUs: 512-bit tiles.
    ("Portable Computing Language", "CPU", _POCL_AVX2.replace("znver3", "icelake-client"),
     tiles.Tile(8, 16, 2)),
    ("Portable Computing Language", "CPU", _POCL_AVX2.replace("znver3", "sapphirerapids"),
     tiles.Tile(8, 16, 2)),
    ("Portable Computing Language", "CPU", _POCL_AVX2.replace("znver3", "znver4"),
     tiles.Tile(8, 16, 2)),
    # AVX2 targets, and names that only end like an AVX-512 one, keep to 256 bits.
    ("Portable Computing Language", "CPU", _POCL_AVX2.replace("znver3", "alderlake"),
     tiles.Tile(4, 8, 2)),
    ("Portable Computing Language", "CPU", _POCL_AVX2.replace("znver3", "xknl"),
     tiles.Tile(4, 8, 2)),
    ("Portable Computing Language", "CPU",
     "OpenCL 3.0 PoCL HSTR: pthread-aarch64-unknown-linux-gnu-cortex-a72", tiles.Tile(4, 8, 2)),
    ("NVIDIA CUDA", "GPU", "OpenCL 3.0 CUDA", tiles.Tile(4, 2)),
    ("AMD Accelerated Parallel Processing", "GPU", "OpenCL 2.0 AMD-APP", tiles.Tile(4, 2)),
    ("Some other CPU runtime", "CPU", "OpenCL 3.0", tiles.Tile(4, 8)),
])
def test_default_tile_per_platform(platform, kind, version, want):
    import types

    import pyopencl as cl

    stub = stub_device(platform=types.SimpleNamespace(name=platform),
                       type=getattr(cl.device_type, kind), version=version)
    assert tiles.default_tile(stub, np.float32, 64) == want
    # Never wider than the output channels need, and one vector for float64, whose
    # 16-channel vectors take two registers (PoCL for AVX2: two of 4 doubles, test below).
    assert tiles.default_tile(stub, np.float32, 1).channels == 1
    sixteen = tiles.default_tile(stub, np.float32, 16)
    assert sixteen.channels * sixteen.vectors <= 16
    doubles = tiles.default_tile(stub, np.float64, 64)
    assert doubles.vectors == 1 or doubles == tiles.Tile(4, 4, 2) and tiles.pocl_narrow(stub)
    assert tiles.default_tile(stub, np.float16, 17).vectors == want.vectors


@pytest.mark.parametrize("problem, want", [
    # (n, h, w, cin, cout, k, rate, padding): the fastest register tile of each on an
    # NVIDIA H200 (gpu_tile's docstring), but C (8x1, 1.07x faster than 4x1) and the tiny E, F.
    ((1, 64, 64, 64, 64, 3, 2, "SAME"), Tile(4, 1)),       # A
    ((8, 32, 32, 128, 128, 3, 2, "SAME"), Tile(4, 4)),     # B
    ((1, 128, 128, 32, 16, 3, 4, "SAME"), Tile(4, 1)),     # C
    ((1, 256, 256, 16, 16, 5, 2, "VALID"), Tile(16, 1)),   # D
    ((1, 256, 256, 64, 64, 3, 2, "SAME"), Tile(4, 2)),
    ((1, 512, 512, 16, 16, 3, 2, "SAME"), Tile(4, 1)),
    ((2, 128, 128, 32, 32, 3, 2, "SAME"), Tile(4, 1)),
    ((32, 8, 8, 16, 16, 3, 2, "SAME"), Tile(4, 1)),        # E
    ((1, 128, 128, 1, 1, 3, 2, "SAME"), Tile(4, 1)),       # F
])
def test_gpus_take_the_measured_tiles_without_winograd(problem, want):
    """A GPU's untuned tile (tiles.gpu_tile): the direct kernel, whatever the filters."""
    n, h, w, cin, cout, k, rate, padding = problem
    hw = geometry.transpose_output_hw((h, w), (k, k), rate, padding)
    args = check_transpose_args((n, h, w, cin), (k, k, cout, cin), (n, *hw, cout), rate, padding)
    gpu = stub_device(platform=types.SimpleNamespace(name="NVIDIA CUDA"))
    assert tiles.gpu_tile(args) == want
    assert tiles.default_for(gpu, np.float32, args) == want
    assert tiles.default_for(gpu, np.float64, args) == want


@pytest.mark.parametrize("cout, dtype, want", [
    (1, np.float32, tiles.Tile(8, 1)),
    (2, np.float32, tiles.Tile(8, 1)),
    (4, np.float16, tiles.Tile(8, 1)),   # float16 is summed in float32
    (5, np.float32, tiles.Tile(8, 16)),  # a whole vector, 11 lanes of padding
    (8, np.float16, tiles.Tile(8, 16)),
    (16, np.float32, tiles.Tile(8, 16)),
    (17, np.float32, tiles.Tile(8, 16, 2)),
    (2, np.float64, tiles.Tile(8, 1)),
    (3, np.float64, tiles.Tile(8, 4)),   # the platform's: float64 keeps its narrow vectors
    (9, np.float64, tiles.Tile(8, 16)),
])
def test_intel_default_tile_for_few_output_channels(cout, dtype, want):
    """Intel's CPU runtime takes one output channel per work-item up to 4 (float64: 2), then
    a whole 16-channel vector; its 3x3 problems skip Winograd up to 3 (float64: 2).
    Other platforms keep their tiles; PoCL 3.0 (PyPI's) takes the direct kernel up to 16
    output channels in float32 and float64, Debian's PoCL 3.1 the Winograd kernel."""
    import types

    import pyopencl as cl

    intel = stub_device(platform=types.SimpleNamespace(name="Intel(R) OpenCL"),
                        type=cl.device_type.CPU, version="OpenCL 3.0 (Build 0)",
                        local_mem_size=256 << 10)
    assert tiles.default_tile(intel, dtype, cout) == want
    assert want in tiles.candidates(intel, dtype, cout)
    args = check_transpose_args((1, 16, 16, 32), (3, 3, cout, 32), (1, 16, 16, cout), 2, "SAME")
    got = tiles.default_for(intel, dtype, args)
    direct = cout <= {np.float32: 3, np.float64: 2}.get(dtype, 0)  # float16 keeps Winograd
    assert got.winograd == (not direct), got
    pocl = stub_device(platform=types.SimpleNamespace(name="Portable Computing Language"),
                       type=cl.device_type.CPU, version=_POCL_AVX512, local_mem_size=1 << 20)
    assert tiles.default_tile(pocl, dtype, cout) == tiles._platform_tile(pocl, dtype, cout)
    assert tiles.default_for(pocl, dtype, args).winograd  # Debian's PoCL 3.1: Winograd
    # PyPI's PoCL 3.0: the direct kernel up to 16 output channels, but in float16
    pypi_pocl = stub_device(platform=pocl.platform, type=pocl.type, version=_POCL_AVX512,
                            local_mem_size=1 << 20, driver_version="3.0-rc2")
    assert tiles.default_tile(pypi_pocl, dtype, cout) == tiles._platform_tile(pypi_pocl, dtype, cout)
    assert (tiles.default_for(pypi_pocl, dtype, args).winograd
            == (cout > 16 or np.dtype(dtype) == np.float16))


def test_pocl_for_avx2_takes_two_8_channel_vectors_and_winograd_from_17_channels():
    """PyPI's PoCL 3.0 on AVX2: the direct kernel with two 8-channel vectors (4x8x2) where
    the channels fill more than one, and for 3x3 filters up to 16 output channels (its
    Winograd tiles there have a single channel group); Winograd from 17, in 4-block
    tiles, 3 vectors above 64 channels; float64 two 4-double vectors; float16 Winograd."""
    import types

    import pyopencl as cl

    pocl = stub_device(platform=types.SimpleNamespace(name="Portable Computing Language"),
                       type=cl.device_type.CPU, version=_POCL_AVX2, local_mem_size=4 << 20)

    def three(cout, dtype=np.float32):
        args = check_transpose_args((1, 32, 32, 32), (3, 3, cout, 32), (1, 32, 32, cout), 2, "SAME")
        return tiles.default_for(pocl, dtype, args)

    assert tiles.default_tile(pocl, np.float32, 8) == tiles.Tile(8, 8)
    assert tiles.default_tile(pocl, np.float32, 9) == tiles.Tile(4, 8, 2)
    assert tiles.default_tile(pocl, np.float16, 64) == tiles.Tile(4, 8, 2)
    assert tiles.default_tile(pocl, np.float64, 64) == tiles.Tile(4, 4, 2)
    assert tiles.default_tile(pocl, np.float64, 4) == tiles.Tile(8, 4)
    assert tiles.Tile(4, 8, 2) in tiles.candidates(pocl, np.float32, 64)
    assert tiles.Tile(4, 4, 2) in tiles.candidates(pocl, np.float64, 64)
    assert three(16) == tiles.Tile(4, 8, 2) and three(8) == tiles.Tile(8, 8)
    assert three(17) == tiles.Tile(4, 8, 2, True) and three(128) == tiles.Tile(4, 8, 3, True)
    # float16 keeps Winograd (the direct kernel would widen first); float64 as float32.
    assert three(16, np.float16) == tiles.Tile(4, 8, 2, True)
    assert three(16, np.float64) == tiles.Tile(4, 4, 2)
    assert three(17, np.float64) == tiles.Tile(4, 4, 2, True)
    # The filter gradient keeps the platform tile's 8 pixels and channels.
    assert tuple(tiles.default_filter_grad_tile(pocl, np.float32, 64, 64))[:2] == (tiles.Tile(8, 8), 8)


@pytest.mark.parametrize("dtype, channels", [(np.float32, 8), (np.float16, 8), (np.float64, 4)])
def test_narrow_direct_tiles_take_5_pixels_where_the_row_wastes_no_more(dtype, channels):
    """On 256-bit vectors the direct default's 4 pixels of two vectors become 5 where 5
    compute at most FIVE_PIXELS_WITHIN times 4's pixel-taps along a row in the same
    kernel: D's phases of 132 columns (135 in fives), 33 consecutive columns (35 against
    36); not phases of 32 columns (35), nor of 4 (a tile is no wider than its phase), nor
    where 5 would take consecutive columns and 4 phases. tune tries 5 as well."""
    import types

    import pyopencl as cl

    pocl = stub_device(platform=types.SimpleNamespace(name="Portable Computing Language"),
                       type=cl.device_type.CPU, version=_POCL_AVX2, local_mem_size=4 << 20)
    four, five = tiles.Tile(4, channels, 2), tiles.Tile(5, channels, 2)

    def direct(value_shape, cout, k, rate, padding, n=1):
        out = [n, *value_shape, cout]
        if padding == "VALID":
            out[1:3] = [s + (k - 1) * rate for s in value_shape]
        args = check_transpose_args((n, *value_shape, 16), (k, k, cout, 16), tuple(out), rate,
                                    padding)
        return tiles.default_for(pocl, dtype, args)

    assert direct((256, 256), 16, 5, 2, "VALID") == five                # D
    assert direct((128, 128), 32, 5, 2, "SAME") == five                 # phases of 64
    assert direct((128, 128), 16, 4, 4, "SAME") == four                 # phases of 32
    assert direct((128, 128), 32, 5, 4, "SAME") == four                 # 5: consecutive
    assert direct((8, 8), 16, 5, 2, "SAME", n=32) == four               # phases of 4
    assert direct((33, 33), 16, 5, 12, "SAME") == five                  # consecutive columns
    assert five in tiles.candidates(pocl, dtype, 64)


@pytest.mark.parametrize("host_avx512", [False, True])
def test_intel_without_512_bit_vectors_keeps_to_8_channels(monkeypatch, host_avx512):
    """Intel's runtime reporting native vectors of 8 floats on a host without AVX-512 (AMD
    Zen 3) takes 8-channel vectors as PyPI's PoCL does there, in its Winograd tile too,
    and a 16-channel vector in the filter gradient (tiles._intel_narrow); an AVX-512
    host keeps the 16-channel tiles whatever the runtime reports."""
    import types

    import pyopencl as cl

    monkeypatch.setattr(tiles, "_host_avx512", lambda: host_avx512)
    intel = stub_device(platform=types.SimpleNamespace(name="Intel(R) OpenCL"),
                        type=cl.device_type.CPU, version="OpenCL 3.0 (Build 0)",
                        local_mem_size=256 << 10, native_vector_width_float=8)
    a = check_transpose_args((1, 64, 64, 64), (3, 3, 64, 64), (1, 64, 64, 64), 2, "SAME")
    d = check_transpose_args((1, 256, 256, 16), (5, 5, 16, 16), (1, 264, 264, 16), 2, "VALID")
    f32, f64 = np.float32, np.float64
    if host_avx512:
        assert tiles.default_tile(intel, f32, 64) == tiles.Tile(8, 16, 2)
        assert tiles.default_for(intel, f32, a) == tiles.Tile(8, 16, 2, True)
        assert tiles.default_for(intel, f32, d) == tiles.Tile(8, 16)
        assert tuple(tiles.default_filter_grad_tile(intel, f32, 64, 64)) == \
            (tiles.Tile(8, 16), 4, 1, 512 << 10, 4, 1, False, 1)
        # three taps of a 3-wide filter row, 8 input channels, one 16-channel vector (float32
        # and float16, 16 output channels or more): tiles.default_filter_grad_tile
        for dtype in (f32, np.float16):
            assert tuple(tiles.default_filter_grad_tile(intel, dtype, 64, 64, kw=3)) == \
                (tiles.Tile(8, 16), 8, 1, 512 << 10, 1, 3, False, 1)
        assert tiles.default_filter_grad_tile(intel, f32, 64, 64, kw=6).kt == 3
        assert tiles.default_filter_grad_tile(intel, f32, 4, 64, kw=3).gc == 4
        assert tiles.default_filter_grad_tile(intel, f32, 64, 8, kw=3).kt == 1
        assert tiles.default_filter_grad_tile(intel, f64, 64, 64, kw=3).kt == 1
        assert tiles.default_filter_grad_tile(intel, f32, 64, 64, kw=5).kt == 1
        # no output channels (the vjps of an empty problem): one vector, not none
        assert tiles.default_filter_grad_tile(intel, f32, 4, 0).ov == 1
        return
    # 4 pixels of two 8-channel vectors where they pad no more channels than one would
    assert tiles.default_tile(intel, f32, 64) == tiles.Tile(4, 8, 2)
    assert tiles.default_tile(intel, f32, 16) == tiles.Tile(4, 8, 2)  # no 16-channel vector
    assert tiles.default_tile(intel, f32, 12) == tiles.Tile(4, 8, 2)
    assert tiles.default_tile(intel, f32, 24) == tiles.Tile(8, 8)
    assert tiles.default_tile(intel, f32, 8) == tiles.Tile(8, 8)
    assert tiles.default_tile(intel, f32, 2) == tiles.Tile(8, 1)   # one channel per item stays
    assert tiles.default_tile(intel, f64, 64) == tiles.Tile(4, 4, 2)
    assert tiles.default_tile(intel, f64, 12) == tiles.Tile(8, 4)
    assert tiles.default_for(intel, f32, a) == tiles.Tile(4, 8, 2, True)
    assert tiles.default_for(intel, np.float16, a) == tiles.Tile(4, 8, 2, True)
    assert tiles.default_for(intel, f64, a) == tiles.Tile(4, 4, 2, True)
    assert tiles.default_for(intel, f32, d) == tiles.Tile(5, 8, 2)  # tiles.FIVE_PIXELS_WITHIN
    assert tiles.Tile(4, 8, 2) in tiles.candidates(intel, f32, 64)
    assert max(t.channels for t in tiles.candidates(intel, f32, 64, a.filters_shape)) == 8
    assert tuple(tiles.default_filter_grad_tile(intel, f32, 64, 64)) == \
        (tiles.Tile(8, 16), 8, 1, 512 << 10, 1, 1, False, 1)
    assert tiles.default_filter_grad_tile(intel, f32, 8, 2).tile.channels == 2
    assert tiles.default_filter_grad_tile(intel, f64, 64, 64).tile == tiles.Tile(8, 4)


@pytest.mark.parametrize("version", [_POCL_AVX2, "intel"])
def test_narrow_cpus_take_three_taps_of_a_row_in_the_filter_gradient(monkeypatch, version):
    """On 256-bit vectors a filter gradient work-item takes three taps of a filter row x
    2 input channels x one 16-channel vector where the width is a multiple of 3, at least
    16 output channels fill the vector and the sums are float32 (float16 too), or one
    8-channel vector of float64 on Intel's runtime; else the split before."""
    import types

    import pyopencl as cl

    monkeypatch.setattr(tiles, "_host_avx512", lambda: False)
    if version == "intel":
        stub = stub_device(platform=types.SimpleNamespace(name="Intel(R) OpenCL"),
                           type=cl.device_type.CPU, version="OpenCL 3.0 (Build 0)",
                           native_vector_width_float=8)
    else:
        stub = stub_device(platform=types.SimpleNamespace(name="Portable Computing Language"),
                           type=cl.device_type.CPU, version=version)
    taps = tiles.FilterGradTile(tiles.Tile(8, 16), 2, 1, 512 << 10, 1, 3)
    # x packed by channel pairs first from 32 input and output channels, where packing pays
    # for the problem (packable, filter_grad.layout's call).
    for kw, cin, cout, dtype, xpack in [(3, 64, 64, np.float32, True),
                                        (6, 64, 16, np.float32, False),
                                        (9, 17, 20, np.float32, False),
                                        (3, 32, 16, np.float16, False),
                                        (3, 32, 32, np.float16, True),
                                        (3, 31, 64, np.float32, False),
                                        (3, 31, 64, np.float16, False),
                                        (3, 256, 31, np.float32, False),
                                        (3, 32, 32, np.float32, True)]:
        got = tiles.default_filter_grad_tile(stub, dtype, cin, cout, kw=kw, packable=True)
        want = taps._replace(xpack=xpack, cb=tiles._packed_groups(cin, 2, xpack))
        assert got == want, (kw, cin, cout, dtype)
        assert tiles.default_filter_grad_tile(stub, dtype, cin, cout, kw=kw) == taps
    assert tiles.default_filter_grad_tile(stub, np.float32, 1, 64, kw=3).gc == 1
    before = tiles.default_filter_grad_tile(stub, np.float32, 64, 64)
    assert before.kt == 1
    for kw, cout, dtype in [(5, 64, np.float32), (2, 64, np.float32), (3, 8, np.float32),
                            (5, 64, np.float64), (3, 4, np.float64)]:
        got = tiles.default_filter_grad_tile(stub, dtype, 64, cout, kw=kw)
        assert got.kt == 1 and got == tiles.default_filter_grad_tile(stub, dtype, 64, cout)
    # float64: two registers of doubles on Intel's runtime; PyPI's PoCL keeps its split.
    got = tiles.default_filter_grad_tile(stub, np.float64, 64, 64, kw=3, packable=True)
    if version == "intel":
        assert got == tiles.FilterGradTile(tiles.Tile(8, 8), 2, 1, 512 << 10, 1, 3, True, 8)
        assert not tiles.default_filter_grad_tile(stub, np.float64, 64, 31, kw=3,
                                                  packable=True).xpack
    else:
        assert got == tiles.default_filter_grad_tile(stub, np.float64, 64, 64, packable=True)
    # Outside the three- and five-tap splits x is packed on PyPI's PoCL only (Intel's 16x8 lost).
    for dtype in (np.float32, np.float64):
        got = tiles.default_filter_grad_tile(stub, dtype, 32, 32, kw=4, packable=True)
        assert got.xpack == (version != "intel")
        assert got.cb == tiles._packed_groups(32, got.gc, got.xpack)
        assert not tiles.default_filter_grad_tile(stub, dtype, 32, 31, kw=4, packable=True).xpack
    # Five taps of a row a work-item for 5-wide filters (float32 sums, 16 output channels or
    # more), one input channel each: with x packed, or x's pixels one cache line or less.
    five = tiles.FilterGradTile(tiles.Tile(8, 16), 1, 1, 512 << 10, 1, 5)
    assert tiles.default_filter_grad_tile(stub, np.float32, 16, 16, kw=5) == five
    assert tiles.default_filter_grad_tile(stub, np.float32, 16, 16, kw=10) == five
    for dtype in (np.float32, np.float16):
        got = tiles.default_filter_grad_tile(stub, dtype, 64, 64, kw=5, packable=True)
        assert got == five._replace(xpack=True, cb=16)
    assert tiles.default_filter_grad_tile(stub, np.float32, 64, 64, kw=5).kt == 1
    assert tiles.default_filter_grad_tile(stub, np.float32, 16, 8, kw=5).kt == 1
    assert tiles.default_filter_grad_tile(stub, np.float64, 16, 16, kw=5).kt == 1


def test_packed_filter_gradient_takes_channel_groups_in_turn():
    """cb: the largest power of two up to 16 that leaves 4 work-items across x's
    channel groups, with x packed; 1 unpacked."""
    for cin, gc, want in [(128, 2, 16), (256, 2, 16), (64, 2, 8), (32, 2, 4), (17, 2, 2),
                          (7, 2, 1), (64, 1, 16), (32, 8, 1), (3, 1, 1)]:
        assert tiles._packed_groups(cin, gc, True) == want, (cin, gc)
        assert tiles._packed_groups(cin, gc, False) == 1


@pytest.mark.parametrize("platform, kind, version, want", [
    ("Intel(R) OpenCL", "CPU", "OpenCL 3.0 (Build 0)", (tiles.Tile(8, 16), 4, 1, 512 << 10, 4)),
    ("Portable Computing Language", "CPU", _POCL_AVX2, (tiles.Tile(8, 8), 8, 1, 512 << 10, 1)),
    ("Portable Computing Language", "CPU", _POCL_AVX512,
     (tiles.Tile(8, 16), 4, 1, 512 << 10, 4)),
    ("NVIDIA CUDA", "GPU", "OpenCL 3.0 CUDA", (tiles.Tile(4, 2), 4, 4096, 0, 1)),
    ("Some other CPU runtime", "CPU", "OpenCL 3.0", (tiles.Tile(4, 8), 4, 1, 512 << 10, 1)),
])
def test_default_filter_grad_tile_per_platform(platform, kind, version, want):
    import types

    import pyopencl as cl

    stub = stub_device(platform=types.SimpleNamespace(name=platform),
                       type=getattr(cl.device_type, kind), version=version)
    xpack = version == _POCL_AVX2  # x packed first outside the three-tap split on 256-bit PoCL
    got = tiles.default_filter_grad_tile(stub, np.float32, 64, 64, packable=True)
    assert tuple(got) == (*want, 1, xpack, 2 if xpack else 1)  # 64 channels in 8 eights by 2
    assert tuple(tiles.default_filter_grad_tile(stub, np.float32, 64, 64)) == (*want, 1, False, 1)
    # Never more input channels per work-item than there are.
    assert tiles.default_filter_grad_tile(stub, np.float32, 3, 64).gc == 3
    if kind == "GPU" or version == _POCL_AVX512:  # three taps a row only on 256-bit CPUs
        assert tiles.default_filter_grad_tile(stub, np.float32, 64, 64, kw=3).kt == 1
    # From 128 channels PoCL with 512-bit vectors packs x too, its groups in turn; a packable
    # problem only.
    got = tiles.default_filter_grad_tile(stub, np.float32, 128, 128, packable=True)
    wide_pocl = version == _POCL_AVX512
    assert got.xpack == (wide_pocl or xpack)
    assert got.cb == (tiles._packed_groups(128, got.gc, True) if got.xpack else 1)
    assert not tiles.default_filter_grad_tile(stub, np.float32, 128, 128).xpack
    for dtype in (np.float16, np.float64):
        assert tiles.default_filter_grad_tile(stub, dtype, 256, 128, packable=True).xpack \
            == (wide_pocl or xpack)


@pytest.mark.parametrize("cout, dtype, want", [
    (64, np.float32, (4, 4)),    # 4 vectors of 16 output channels: 4 input channels each
    (32, np.float32, (8, 2)),    # 2 vectors
    (40, np.float16, (5, 3)),    # 3 vectors (48 padded), float16 summed in float32
    (16, np.float32, (8, 1)),    # one vector: 8 input channels on Intel
    (9, np.float32, (8, 1)),     # fewer output channels than a vector
    (128, np.float32, (4, 4)),   # never more than 4 vectors
    (64, np.float64, (8, 1)),    # float64 keeps one vector
])
def test_default_filter_grad_tile_vectors_fill_the_output_channels(cout, dtype, want):
    """On Intel's CPU runtime the register tile takes up to 4 output-channel vectors
    and 16 // vectors input channels, never more vectors than the channels fill."""
    import types

    import pyopencl as cl

    stub = stub_device(platform=types.SimpleNamespace(name="Intel(R) OpenCL"),
                       type=cl.device_type.CPU, version="OpenCL 3.0 (Build 0)")
    got = tiles.default_filter_grad_tile(stub, dtype, 64, cout)
    assert (got.gc, got.ov) == want


@pytest.mark.parametrize("version, widest_float, widest_double",
                         [(_POCL_AVX2, 8, 4), (_POCL_AVX512, 16, 16)])
def test_pocl_vectors_stay_narrow_without_avx512(version, widest_float, widest_double):
    """PyPI's PoCL 3.0 (AVX2 target) aborts the process on some 16-wide float code
    and builds 8-wide double code into an empty program: 32-byte vectors at most there."""
    import types

    import pyopencl as cl

    stub = stub_device(platform=types.SimpleNamespace(name="Portable Computing Language"),
                       type=cl.device_type.CPU, version=version)
    assert max(t.channels for t in tiles.candidates(stub, np.float32, 64)) == widest_float
    assert max(t.channels for t in tiles.candidates(stub, np.float64, 64)) == widest_double


def test_op_calls_do_not_wait_for_another_process_storing_a_winner(queue, fresh_cache):
    """While another process holds the tuning file's lock (a long store, a stopped
    process, a lock on NFS), a store here waits for it without holding the table's
    thread lock, which every op call takes (tuning.table)."""
    import fcntl
    import threading

    fresh_cache.parent.mkdir(parents=True, exist_ok=True)
    winner = tiles.Tile(4, 4)
    fd = os.open(fresh_cache.with_name(fresh_cache.name + ".lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: as another process's lock
        store = threading.Thread(target=tuning._store, args=(
            queue.device, "float32 cin4 cout5 k3x3 r2 w16", winner, {str(winner): 1e-3}))
        store.start()
        time.sleep(0.3)  # the store now waits for the file lock
        assert store.is_alive()
        read = threading.Thread(target=tuning.table)
        read.start()
        read.join(timeout=10)
        assert not read.is_alive(), "an op's table() waited for another process's lock"
    finally:
        os.close(fd)
    store.join(timeout=30)
    assert not store.is_alive()
    assert "float32 cin4 cout5 k3x3 r2 w16" in json.loads(fresh_cache.read_text())["devices"][
        tuning.device_key(queue.device)]


@pytest.mark.parametrize("float_width, sixteen", [(8, (tiles.Tile(8, 16), 1)),
                                                   (16, (tiles.Tile(8, 8), 2))],
                         ids=["zen3", "zen4"])
def test_narrow_pocl_sums_sixteen_filter_gradient_channels_however_its_compiler_builds_them(
        float_width, sixteen):
    """PyPI's PoCL on 256-bit vectors takes 16 output channels x three taps x 2 input channels
    in the filter gradient: as one 16-float vector where its compiler builds one (Zen 3),
    as two 8-float vectors where it would crash on them (Zen 4: facts.max_vector_bytes)."""
    import types

    import pyopencl as cl

    stub = stub_device(platform=types.SimpleNamespace(name="Portable Computing Language"),
                       type=cl.device_type.CPU, version=_POCL_AVX2, local_mem_size=256 << 10,
                       native_vector_width_float=float_width)
    tile, ov = sixteen
    got = tiles.default_filter_grad_tile(stub, np.float32, 64, 64, kw=3, packable=True)
    assert (got.tile, got.gc, got.ov, got.kt, got.xpack) == (tile, 2, ov, 3, True)
    got = tiles.default_filter_grad_tile(stub, np.float32, 16, 16, kw=5)
    assert (got.tile, got.gc, got.ov, got.kt) == (tile, 1, ov, 5)
    assert tiles.default_filter_grad_tile(stub, np.float32, 16, 8, kw=3).kt == 1  # 8 channels


@pytest.mark.parametrize("version, float_width, limit", [
    (_POCL_AVX2, 16, 32),     # PyPI's PoCL 3.0 on AMD Zen 4: znver3 with AVX-512 features on
    (_POCL_AVX2, 8, None),    # the same on Zen 3 (AVX2): 16 floats build as two vectors of 8
    (_POCL_AVX512, 16, None),
    (_POCL_AVX2.replace("znver3", "znver4"), 16, None),  # an LLVM that knows Zen 4
    (_POCL_AVX2.replace("znver3", "sapphirerapids"), 16, None),
    (_POCL_AVX2.replace("znver3", "x86-64-v3"), 16, 32),  # names with hyphens, whole
    (_POCL_AVX2.replace("znver3", "core-avx2"), 16, 32),
    (_POCL_AVX2.replace("znver3", "icelake-client"), 16, None)])
def test_defaults_keep_within_the_vectors_the_compiler_builds(version, float_width, limit):
    """Where PoCL's compiler aborts the process on vectors over 32 bytes
    (facts.max_vector_bytes), no default tile, filter gradient split, one-channel vector
    or tile ``tune`` tries asks for them, for any dtype, filter size or channel count;
    a build that would is refused before it starts (programs.vector_bytes)."""
    import types

    import pyopencl as cl

    from atrous_cl import facts, programs

    stub = stub_device(platform=types.SimpleNamespace(name="Portable Computing Language"),
                       type=cl.device_type.CPU, version=version, local_mem_size=256 << 10,
                       native_vector_width_float=float_width)
    assert facts.max_vector_bytes(stub) == limit
    if limit is None:
        return
    widest = []
    for dtype in (np.float16, np.float32, np.float64):
        acc = tiles.acc_itemsize(dtype)
        for k in (1, 2, 3, 5, 6, 7):
            for cin, cout in ((1, 1), (3, 16), (16, 16), (32, 32), (64, 17), (256, 256)):
                args = check_transpose_args((1, 33, 33, cin), (k, k, cout, cin), (1, 33, 33, cout),
                                            2, "SAME")
                for kw in (k, 3 * k):
                    for packable in (False, True):
                        grad = tiles.default_filter_grad_tile(stub, dtype, cin, cout, kw=kw,
                                                              packable=packable)
                        widest.append(acc * grad.tile.channels)
                widest += [acc * t.channels
                           for t in tiles.candidates(stub, dtype, cout, args.filters_shape)]
                widest.append(acc * tiles.default_for(stub, dtype, args).channels)
                widest.append(acc * (tiles.pixel_vector(stub, dtype, args.filters_shape) or 1))
    assert max(widest) == limit
    assert programs.vector_bytes(("-DT=float", "-DACC=float", "-DBC=8")) == 32
    assert programs.vector_bytes(("-DT=half", "-DACC=float", "-DBC=16")) == 64
    assert programs.vector_bytes(("-DT=double", "-DACC=double", "-DVW=8")) == 64
    for dtype, acc in ((np.float16, 4), (np.float32, 4), (np.float64, 8)):  # the launches' own
        assert programs.vector_bytes(launch.TYPE_OPTIONS[dtype] + ("-DBC=4",)) == 4 * acc


# (n, h, w, cin, cout, k, rate, padding): DeepLab's ASPP rates on its feature maps (33
# and 65 pixels), a high rate on a larger image, and the benchmark's A-E.
ASPP_18 = (1, 33, 33, 256, 256, 3, 18, "SAME")
ASPP_12 = (1, 33, 33, 256, 256, 3, 12, "SAME")
ASPP_6 = (1, 33, 33, 256, 256, 3, 6, "SAME")
ASPP_36_65 = (1, 65, 65, 256, 256, 3, 36, "SAME")
ASPP_12_65 = (1, 65, 65, 256, 256, 3, 12, "SAME")
RATE_12_128 = (1, 128, 128, 32, 32, 3, 12, "SAME")
BENCH_A_TO_E = [(1, 64, 64, 64, 64, 3, 2, "SAME"), (8, 32, 32, 128, 128, 3, 2, "SAME"),
                (1, 128, 128, 32, 16, 3, 4, "SAME"), (1, 256, 256, 16, 16, 5, 2, "VALID"),
                (32, 8, 8, 16, 16, 3, 2, "SAME")]


def _args(problem):
    n, h, w, cin, cout, k, rate, padding = problem
    hw = geometry.transpose_output_hw((h, w), (k, k), rate, padding)
    return check_transpose_args((n, h, w, cin), (k, k, cout, cin), (n, *hw, cout), rate, padding)


@pytest.mark.parametrize("problem, consecutive", [
    (ASPP_18, True), (ASPP_12, True), (ASPP_6, True), (ASPP_36_65, True), (ASPP_12_65, True),
    (RATE_12_128, True), *[(p, False) for p in BENCH_A_TO_E]], ids=str)
def test_the_direct_kernel_takes_consecutive_columns_where_phases_are_narrow(problem, consecutive):
    """Consecutive columns where a phase's tiles of 4 pixels (AVX2's direct tiles) would
    compute a ninth more pixel-taps or more (tiles.direct_columns); the benchmark's
    workloads keep phase tiles."""
    args = _args(problem)
    tile = tiles.Tile(4, 8, 2)
    assert launch.consecutive_pixels(args, tile, launch.kernel_dilation(args)) == consecutive


@pytest.mark.parametrize("platform, version", [("Intel(R) OpenCL", "OpenCL 3.0 (Build 0)"),
                                               ("Portable Computing Language", _POCL_AVX512)])
def test_two_512_bit_vectors_take_4_pixels_on_consecutive_columns(monkeypatch, platform,
                                                                   version):
    """8x16x2's sixteen accumulator vectors ran 2-4x slower in the consecutive-column
    kernel than 4x16x2 (Intel's runtime, AMD Zen 4): a default of two 512-bit vectors takes
    4 pixels there (tiles._ROWS_PIXELS); phase tiles keep 8, as do narrower devices."""
    import types

    import pyopencl as cl

    monkeypatch.setattr(tiles, "_host_avx512", lambda: True)
    device = stub_device(platform=types.SimpleNamespace(name=platform), type=cl.device_type.CPU,
                         version=version, local_mem_size=4 << 20)
    f32 = np.float32
    for problem in (ASPP_18, ASPP_36_65, (1, 33, 33, 2048, 256, 3, 12, "SAME"),
                    (1, 33, 33, 128, 128, 3, 2, "SAME")):
        args = _args(problem)
        tile = tiles.default_for(device, f32, args)
        assert tile == tiles.Tile(4, 16, 2), (problem, tile)
        assert launch.consecutive_pixels(args, tiles.Tile(8, 16, 2), launch.kernel_dilation(args))
    for problem in (BENCH_A_TO_E[1], (1, 64, 64, 256, 256, 3, 2, "SAME"),
                    (1, 33, 33, 2048, 256, 3, 6, "SAME")):  # phase tiles
        assert tiles.default_for(device, f32, _args(problem)) in (
            tiles.Tile(8, 16, 2), tiles.Tile(8, 16, 2, True)), problem
    # 4 pixels where they would run phase tiles too (measured faster there as well)
    flips = _args((1, 17, 17, 64, 64, 5, 1, "SAME"))
    assert tiles.default_for(device, f32, flips) == tiles.Tile(4, 16, 2)
    assert not launch.consecutive_pixels(flips, tiles.Tile(4, 16, 2), launch.kernel_dilation(flips))
    # one vector (16 output channels, float64) and 256-bit vectors keep their pixels
    assert tiles.default_for(device, f32, _args((1, 33, 33, 16, 16, 3, 12, "SAME"))).pixels == 8
    assert tiles.default_for(device, np.float64, _args(ASPP_18)) == tiles.Tile(8, 16)
    narrow = stub_device(platform=types.SimpleNamespace(name="Portable Computing Language"),
                         type=cl.device_type.CPU, version=_POCL_AVX2, local_mem_size=4 << 20)
    assert tiles.default_for(narrow, f32, _args(ASPP_18)) == tiles.Tile(5, 8, 2)


@pytest.mark.parametrize("problem, winograd", [
    (ASPP_6, True), (ASPP_12_65, True), (BENCH_A_TO_E[0], True), (BENCH_A_TO_E[1], True),
    ((1, 64, 64, 64, 64, 3, 8, "SAME"), True),
    (ASPP_12, False),      # 1.64x the direct kernel's multiplies (measured 1.75x its time)
    (ASPP_18, False),      # one block per phase row: groups of one
    (ASPP_36_65, False),   # likewise
], ids=str)
def test_winograd_is_the_default_where_it_computes_far_fewer_multiplies(problem, winograd):
    """On CPUs whose tiles take Winograd for these channel counts (Intel's runtime, PyPI's
    PoCL for AVX2): Winograd's multiplies, its blocks past the phases and its taps outside
    the image included, against the direct kernel's terms (tiles.winograd_pays)."""
    import types

    import pyopencl as cl

    args = _args(problem)
    intel = stub_device(platform=types.SimpleNamespace(name="Intel(R) OpenCL"),
                        type=cl.device_type.CPU, version="OpenCL 3.0 (Build 0)",
                        local_mem_size=4 << 20)
    pocl = stub_device(platform=types.SimpleNamespace(name="Portable Computing Language"),
                       type=cl.device_type.CPU, version=_POCL_AVX2, local_mem_size=4 << 20)
    for device in (intel, pocl):
        assert tiles.default_for(device, np.float32, args).winograd == winograd, device.platform
