# SPDX-License-Identifier: Apache-2.0
"""Tile tuning: every candidate is correct, winners are cached on disk and used."""

from __future__ import annotations

import json

import numpy as np
import pyopencl.array as cl_array
import pytest
from conftest import assert_close, poisoned, skip_unsupported, stub_device

from atrous_cl import geometry, ops, reference, runtime, tuning
from atrous_cl.tuning import Tile
from atrous_cl.validation import check_transpose_args


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(tuning, "_loaded", None)
    yield tmp_path / "atrous-cl" / "tuning.json"
    tuning._loaded = None


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(2, 5, 9, 3, 5, 3, 2, 2, "SAME"), (1, 4, 3, 6, 17, 2, 3, 3, "VALID")],
                         ids=["small", "cout17"])
def test_every_candidate_tile_is_correct(queue, shape, dtype):
    """The tuner may pick any candidate, so each must match the reference exactly like the default."""
    skip_unsupported(queue, dtype)
    n, h, w, cin, cout, kh, kw, rate, padding = shape
    rng = np.random.default_rng()
    value = rng.standard_normal((n, h, w, cin)).astype(dtype)
    filters = rng.standard_normal((kh, kw, cout, cin)).astype(dtype)
    output_shape = (n, *geometry.transpose_output_hw((h, w), (kh, kw), rate, padding), cout)
    args = check_transpose_args(value.shape, filters.shape, output_shape, rate, padding)
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, rate, padding)
    d_value, d_filters = cl_array.to_device(queue, value), cl_array.to_device(queue, filters)
    tiles = tuning.candidates(queue.device, dtype, cout)
    assert tuning.default_tile(queue.device, dtype, cout) in tiles
    for tile in tiles:
        out = poisoned(queue, output_shape, dtype)
        ops._launch(queue, d_value, d_filters, out, args, tile)
        assert_close(out.get(), want, dtype, context=f"tile {tile}")


def test_tune_caches_the_winner_and_the_op_uses_it(queue, fresh_cache):
    best, timings = tuning.tune(queue, (1, 6, 10, 4), (3, 3, 5, 4), 2, "SAME", repeats=1)
    assert str(best) in timings and timings[str(best)] == min(timings.values())
    saved = json.loads(fresh_cache.read_text())
    entry = saved["devices"][tuning.device_key(queue.device)]["float32 cin4 cout5 k3x3 r2 w16"]
    assert entry["tile"] == list(best)
    args = check_transpose_args((3, 7, 12, 4), (3, 3, 5, 4), (3, 7, 12, 5), 2, "SAME")
    tuning._loaded = None  # a new process reads it back from disk
    assert tuning.tile_for(queue.device, np.float32, args) == best


def test_tiles_tuned_for_another_kernel_are_dropped(queue, fresh_cache, monkeypatch):
    """A tile timed with an older kernel source says nothing about this one."""
    tuning.tune(queue, (1, 6, 10, 4), (3, 3, 5, 4), 2, "SAME", repeats=1)
    args = check_transpose_args((1, 6, 10, 4), (3, 3, 5, 4), (1, 6, 10, 5), 2, "SAME")
    saved = json.loads(fresh_cache.read_text())
    assert saved["kernel"] == tuning.kernel_digest()
    stale = Tile(3, 1)  # no default has 3 pixels
    saved["devices"][tuning.device_key(queue.device)]["float32 cin4 cout5 k3x3 r2 w16"]["tile"] = list(stale)
    fresh_cache.write_text(json.dumps(saved))
    tuning._loaded = None
    assert tuning.tile_for(queue.device, np.float32, args) == stale  # same kernel: used
    saved["kernel"] = "0" * 16
    fresh_cache.write_text(json.dumps(saved))
    tuning._loaded = None
    assert tuning.tile_for(queue.device, np.float32, args) == tuning.default_tile(queue.device, np.float32, 5)


def test_a_tile_stored_in_this_process_is_used_at_once(queue, fresh_cache, monkeypatch):
    """tile_for remembers its answers; a new winner must replace the remembered default,
    and the op must launch with it."""
    args = check_transpose_args((1, 6, 10, 4), (3, 3, 5, 4), (1, 6, 10, 5), 2, "SAME")
    assert tuning.tile_for(queue.device, np.float32, args) == tuning.default_tile(queue.device, np.float32, 5)
    winner = Tile(3, 1)  # no default has 3 pixels
    tuning._store(queue.device, "float32 cin4 cout5 k3x3 r2 w16", winner, {str(winner): 1e-3})
    assert tuning.tile_for(queue.device, np.float32, args) == winner
    rng = np.random.default_rng()
    value = rng.standard_normal(args.value_shape).astype(np.float32)
    filters = rng.standard_normal(args.filters_shape).astype(np.float32)
    launched = []
    real_plan = ops._plan
    monkeypatch.setattr(ops, "_plan", lambda *a: launched.append(a[4]) or real_plan(*a))
    got = ops.atrous_conv2d_transpose(value, filters, args.output_shape, 2, "SAME", queue=queue)
    assert launched == [winner]  # the tile
    assert_close(got, reference.atrous_conv2d_transpose(value, filters, args.output_shape, 2, "SAME"),
                 np.float32)


def test_untuned_problem_uses_the_default(queue, fresh_cache):
    args = check_transpose_args((1, 5, 5, 3), (3, 3, 2, 3), (1, 5, 5, 2), 1, "SAME")
    assert tuning.tile_for(queue.device, np.float32, args) == tuning.default_tile(queue.device, np.float32, 2)
    assert not fresh_cache.exists()


def test_corrupt_cache_falls_back_to_defaults(queue, fresh_cache):
    fresh_cache.parent.mkdir(parents=True)
    fresh_cache.write_text("{not json")
    args = check_transpose_args((1, 5, 5, 3), (3, 3, 2, 3), (1, 5, 5, 2), 1, "SAME")
    assert tuning.tile_for(queue.device, np.float32, args) == tuning.default_tile(queue.device, np.float32, 2)


def test_pip_intel_runtime_is_registered_without_hiding_system_drivers(tmp_path, monkeypatch):
    lib = tmp_path / "prefix" / "lib" / "libintelocl.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    system = tmp_path / "vendors"
    system.mkdir()
    (system / "gpu.icd").write_text("/opt/vendor/libgpu.so\n")
    monkeypatch.setattr(runtime, "_pip_intel_runtime", lambda: lib)
    monkeypatch.setattr(runtime, "_SYSTEM_VENDORS", system)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("OCL_ICD_VENDORS", "")  # recorded, so the test's own setting is undone
    monkeypatch.delenv("OCL_ICD_VENDORS")
    folder = runtime.register_pip_icds()
    assert folder is not None and runtime.os.environ["OCL_ICD_VENDORS"] == folder
    files = {p.name: p.read_text() for p in (tmp_path / "cache" / "atrous-cl" / "icd").glob("*/*.icd")}
    assert files == {"atrous-cl-intel-cpu.icd": f"{lib}\n", "gpu.icd": "/opt/vendor/libgpu.so\n"}


def test_users_own_icd_setting_wins(monkeypatch):
    monkeypatch.setenv("OCL_ICD_VENDORS", "/somewhere/mine")
    assert runtime.register_pip_icds() is None
    assert runtime.os.environ["OCL_ICD_VENDORS"] == "/somewhere/mine"


_POCL_AVX2 = "OpenCL 3.0 PoCL HSTR: pthread-x86_64-unknown-linux-gnu-znver3"
_POCL_AVX512 = "OpenCL 3.0 PoCL HSTR: pthread-x86_64-pc-linux-gnu-skylake-avx512"


@pytest.mark.parametrize("platform, kind, version, want", [
    ("Intel(R) OpenCL", "CPU", "OpenCL 3.0 (Build 0)", tuning.Tile(8, 16)),
    ("Portable Computing Language", "CPU", _POCL_AVX2, tuning.Tile(8, 8)),
    ("Portable Computing Language", "CPU", _POCL_AVX512, tuning.Tile(8, 16)),
    ("NVIDIA CUDA", "GPU", "OpenCL 3.0 CUDA", tuning.Tile(4, 2)),
    ("AMD Accelerated Parallel Processing", "GPU", "OpenCL 2.0 AMD-APP", tuning.Tile(4, 2)),
    ("Some other CPU runtime", "CPU", "OpenCL 3.0", tuning.Tile(4, 8)),
])
def test_default_tile_per_platform(platform, kind, version, want):
    import types

    import pyopencl as cl

    stub = stub_device(platform=types.SimpleNamespace(name=platform),
                       type=getattr(cl.device_type, kind), version=version)
    assert tuning.default_tile(stub, np.float32, 64) == want
    # Never wider than the output channels need.
    assert tuning.default_tile(stub, np.float32, 1).channels == 1


@pytest.mark.parametrize("version, widest_float, widest_double",
                         [(_POCL_AVX2, 8, 4), (_POCL_AVX512, 16, 16)])
def test_pocl_vectors_stay_narrow_without_avx512(version, widest_float, widest_double):
    """PyPI's PoCL 3.0 (AVX2 target) aborts the process on some 16-wide float code
    and builds 8-wide double code into an empty program: 32-byte vectors at most there."""
    import types

    import pyopencl as cl

    stub = stub_device(platform=types.SimpleNamespace(name="Portable Computing Language"),
                       type=cl.device_type.CPU, version=version)
    assert max(t.channels for t in tuning.candidates(stub, np.float32, 64)) == widest_float
    assert max(t.channels for t in tuning.candidates(stub, np.float64, 64)) == widest_double
