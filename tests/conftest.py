# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: the OpenCL devices under test and one comparison helper.

``queue`` runs a test once per selected device. By default that is the device
the op would pick itself (``PYOPENCL_CTX`` or the best one found). Set
``ATROUS_CL_TEST`` to widen it, in the spirit of pyopencl's ``PYOPENCL_TEST``:
``all`` for every device, or comma-separated ``P:D`` selectors or
case-insensitive substrings of platform names (``portable,intel``). Not device
names: PoCL names its device after the CPU ("pthread-Intel(R) Xeon(R) ..."), so
``intel`` ran the suite on Intel's runtime and on PoCL both.
Without any OpenCL device the device tests skip, and say why.
"""

from __future__ import annotations

import os

import numpy as np
import pyopencl as cl
import pytest
from hypothesis import HealthCheck, settings

import atrous_cl
from atrous_cl import discovery, geometry, launch, local_tile, memory
from atrous_cl.errors import VectorWidthError

# Property tests: CI runs a fixed, derandomised profile so that a run can be
# repeated exactly; elsewhere hypothesis explores fresh examples each run.
# Choose with ATROUS_CL_HYPOTHESIS=ci|dev.
settings.register_profile("ci", derandomize=True, max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("ATROUS_CL_HYPOTHESIS", "ci" if os.environ.get("CI") else "dev"))

if os.environ.get("ATROUS_CL_KEEP_BUFFERS"):
    # For Oclgrind's uninitialised-value checker: Oclgrind 21.10 keeps the
    # "uninitialised" marks of a released buffer's memory when a later buffer
    # reuses it, even after that buffer is written (three cases of test_op's
    # table in a row report hundreds of false stores; keeping the buffers
    # alive, none). So every device array's buffer is kept until the end.
    import pyopencl.array as _cl_array

    _kept_buffers: list = []
    _array_init = _cl_array.Array.__init__

    def _keeping_init(self, *args, **kwargs):
        _array_init(self, *args, **kwargs)
        _kept_buffers.append(self.base_data)

    _cl_array.Array.__init__ = _keeping_init
    _device_buffer = memory._device_buffer  # the host path's own buffers on such devices

    def _keeping_device_buffer(*args):
        buffer = _device_buffer(*args)
        _kept_buffers.append(buffer)
        return buffer

    memory._device_buffer = _keeping_device_buffer

    # ... and the buffers of packed filters and of temporaries: a test that clears the
    # launch plans' cache (tests/test_tuning.py) releases the packed buffers they kept,
    # and the next packed buffer in their memory was flagged in every store of the op's
    # kernel after it (tests run in this order on one of CI's two Oclgrind workers).
    _packed_filters = launch.packed_filters

    def _keeping_packed_filters(*args):
        packed, event = _packed_filters(*args)
        _kept_buffers.append(packed)
        return packed, event

    launch.packed_filters = local_tile.packed_filters = _keeping_packed_filters
    _scratch = memory.scratch

    def _keeping_scratch(*args):
        buffer = _scratch(*args)
        _kept_buffers.append(buffer)
        return buffer

    memory.scratch = _keeping_scratch

@pytest.fixture(autouse=True)
def calls_prepared_afresh():
    """Each test works out its calls afresh: many swap device properties or launches
    for stand-ins, which a queue's remembered calls (atrous_cl.calls.prepared) would bypass;
    and the tiles chosen, which ATROUS_CL_WINOGRAD (read when a tile is first chosen) decides."""
    from atrous_cl import calls, tuning

    calls.forget_prepared()
    with tuning._lock:
        tuning._memo_table = None


@pytest.fixture(autouse=True)
def poisoned_host_results(monkeypatch):
    """Host-path results start as NaN, like poisoned device outputs: those that kernels write
    in place, and those the host path copies back (GPUs, Oclgrind), which come from a pool
    that may hold an earlier call's answer."""
    from atrous_cl import calls, memory

    def poisoned(shape, dtype, empty=np.empty):
        array = empty(shape, dtype)
        array.fill(np.nan)
        return array

    real_result = calls.result

    def poisoned_result(shape, dtype, queue, on_device, in_place=False, svm=False, empty=None):
        got = real_result(shape, dtype, queue, on_device, in_place, svm, empty)
        if not in_place and not on_device:
            memory.fill(queue, got, np.nan)
        return got

    monkeypatch.setattr(calls, "host_result", poisoned)
    monkeypatch.setattr(calls, "result", poisoned_result)


def recorded_host_copies(monkeypatch) -> list:
    """A list that gets ``(shape, is_blocking)`` of every copy from a NumPy array to the
    device (``pyopencl.enqueue_copy``) from now on in the test."""
    copies = []
    real = cl.enqueue_copy

    def recorded(queue, dest, src, **kwargs):
        if isinstance(src, np.ndarray):
            copies.append((src.shape, kwargs.get("is_blocking", True)))
        return real(queue, dest, src, **kwargs)

    monkeypatch.setattr(cl, "enqueue_copy", recorded)
    return copies


def winograd_filter_gradient_launches(monkeypatch, chunk_bytes: int | None = None) -> list:
    """A list that gets the chunk count of every launch of the Winograd filter gradient
    (``filter_grad.winograd_launch``) from now on in the test. With ``chunk_bytes``, its
    gates open too, as for a large problem on a device where it wins (chunks of that many
    bytes), unless ``ATROUS_CL_WINOGRAD=0``."""
    from atrous_cl import filter_grad, tiles

    launches = []
    layout, launch = filter_grad.winograd_layout, filter_grad.winograd_launch
    if chunk_bytes is not None:
        monkeypatch.setattr(filter_grad, "winograd_layout",
                            lambda device, dtype, args: None if not tiles.winograd_enabled()
                            else layout(device, dtype, args, force=True,
                                        chunk_bytes=chunk_bytes))
    monkeypatch.setattr(filter_grad, "winograd_launch",
                        lambda *args: launches.append(args[-2].chunks) or launch(*args))
    return launches


#: Max |got - want| / max |want| per dtype. float16 is the rounding of one
#: half-precision store (2**-11) with margin; float32/64 leave room for sums of
#: a few thousand terms.
RTOL = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def assert_close(got, want, dtype=None, context="", atol=0.0):
    """Assert ``got`` matches ``want`` to the relative bound of ``dtype``, plus ``atol``.

    ``atol`` is for reductions whose terms may cancel: there rounding scales
    with the terms' magnitudes, not with the (small) result.

    NaN where ``want`` is finite fails (so poisoned, unwritten elements show);
    NaN and Inf must sit exactly where ``want`` has them.
    """
    got = np.asarray(got)
    want = np.asarray(want)
    dtype = np.dtype(dtype or want.dtype)
    assert got.shape == want.shape, f"{context}: shape {got.shape} != {want.shape}"
    assert got.dtype == dtype, f"{context}: dtype {got.dtype} != {dtype}"
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    finite = np.isfinite(want64)
    np.testing.assert_array_equal(np.isnan(got64), np.isnan(want64), err_msg=f"{context}: NaN placement")
    np.testing.assert_array_equal(np.where(np.isinf(want64), want64, 0),
                                  np.where(np.isinf(want64), got64, 0), err_msg=f"{context}: Inf placement")
    if not finite.any():
        return
    scale = max(np.max(np.abs(want64[finite])), np.finfo(np.float64).tiny)
    diff = np.max(np.abs(got64[finite] - want64[finite]))
    err = max(diff - atol, 0.0) / scale
    assert err <= RTOL[dtype], (f"{context}: relative error {err:.3g} > {RTOL[dtype]:.0e} "
                                f"({dtype.name}; max |error| {diff:.3g}, atol {atol:.3g})")


def _selected_devices() -> list[discovery.DeviceInfo]:
    found = discovery.devices()
    wanted = os.environ.get("ATROUS_CL_TEST", "").strip()
    if not found:
        return []
    if not wanted:
        try:
            chosen, _ = discovery.default_device()
        except atrous_cl.DeviceError:  # none works: the queue fixture says why
            return []
        return [d for d in found if d.device == chosen]
    if wanted.lower() == "all":
        return found
    keys = [k.strip().lower() for k in wanted.split(",") if k.strip()]
    return [d for d in found
            if any(k == d.selector or k in d.platform.lower() for k in keys)]


def _device_id(info: discovery.DeviceInfo) -> str:
    platform = info.platform.split()[0].lower()
    return f"{platform}-{info.kind.lower()}-{info.selector.replace(':', '.')}"


_DEVICES = _selected_devices()


def pytest_report_header(config):
    names = ", ".join(f"{d.selector} {d.name} ({d.platform})" for d in _DEVICES) or "none"
    return f"atrous-cl OpenCL devices under test: {names}"


def fitting(device, dtype, tiles):
    """The tiles among ``tiles`` whose vectors ``device``'s compiler builds
    (facts.max_vector_bytes), for tests that try several: the others are skipped there
    (a test of one hand-made tile is marked ``hand_made_tiles`` instead)."""
    from atrous_cl import facts
    from atrous_cl.tiles import acc_itemsize

    limit = facts.max_vector_bytes(device)
    return [t for t in tiles if limit is None or t.channels * acc_itemsize(dtype) <= limit]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test marked ``hand_made_tiles`` whose tile the device cannot build without
    crashing (``VectorWidthError``, raised before the build) is skipped there: the
    defaults never ask for such tiles (test_tuning's vector-limit test)."""
    outcome = yield
    report = outcome.get_result()
    if (call.when == "call" and call.excinfo is not None
            and item.get_closest_marker("hand_made_tiles") is not None
            and isinstance(call.excinfo.value, VectorWidthError)):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), (item.location[1] or 0) + 1,
                           f"Skipped: {str(call.excinfo.value).split(':')[0]}: vectors too wide "
                           f"for this device's compiler")


def pytest_generate_tests(metafunc):
    if "device_info" in metafunc.fixturenames:
        if _DEVICES:
            metafunc.parametrize("device_info", _DEVICES, ids=_device_id, scope="session")
        else:
            metafunc.parametrize("device_info", [None], ids=["no-device"], scope="session")


@pytest.fixture(scope="session")
def device_info(request):
    return request.param


@pytest.fixture(scope="session")
def queue(device_info) -> cl.CommandQueue:
    """An in-order queue on each device under test; skips when none is available."""
    if device_info is None:
        if not discovery.devices():
            pytest.skip("no OpenCL device found (install the 'pocl' extra)")
        if not os.environ.get("ATROUS_CL_TEST"):
            try:
                discovery.default_device()
            except atrous_cl.DeviceError as e:
                pytest.skip(str(e))
        pytest.skip(f"ATROUS_CL_TEST={os.environ.get('ATROUS_CL_TEST')!r} matches no device")
    reason = discovery.unusable_reason(device_info.device)
    if reason:
        pytest.skip(f"{device_info.selector} {device_info.name} cannot run kernels: {reason}")
    return atrous_cl.get_queue(device=device_info.device)


def skip_unsupported(queue: cl.CommandQueue, dtype) -> None:
    """Skip float64 on devices without cl_khr_fp64 (their error has its own test)."""
    if np.dtype(dtype) == np.float64 and "cl_khr_fp64" not in queue.device.extensions.split():
        pytest.skip(f"{queue.device.name} lacks cl_khr_fp64")


def poisoned(queue: cl.CommandQueue, shape, dtype):
    """A device array filled with NaN, so elements the kernel misses show up."""
    import pyopencl.array as cl_array

    out = cl_array.empty(queue, tuple(shape), dtype)
    memory.fill(queue, out, np.nan)
    return out


def stub_device(**overrides):
    """A stand-in for a ``cl.Device`` with the properties the op reads, for limits no real device has.

    Defaults: a roomy fp64 GPU; ``overrides`` sets any property.
    """
    import types

    props = dict(name="Stub GPU", driver_version="1", version="OpenCL 3.0 Stub",
                 platform=types.SimpleNamespace(name="Stub"),
                 type=cl.device_type.GPU, extensions="cl_khr_fp64", max_mem_alloc_size=2**30,
                 global_mem_size=2**32)
    return types.SimpleNamespace(**(props | overrides))


def case_id(shape) -> str:
    """A test id for a problem ``(n, h, w, cin, cout, kh, kw, rate)``."""
    n, h, w, cin, cout, kh, kw, r = shape
    return f"n{n}-{h}x{w}-c{cin}to{cout}-k{kh}x{kw}-r{r}"


def transpose_inputs(shape, padding, dtype, rng):
    """Random ``(value, filters, output_shape, rate)`` of the transpose op for a
    problem ``(n, h, w, cin, cout, kh, kw, rate)``."""
    n, h, w, cin, cout, kh, kw, r = shape
    value = rng.standard_normal((n, h, w, cin)).astype(dtype)
    filters = rng.standard_normal((kh, kw, cout, cin)).astype(dtype)
    output_shape = (n, *geometry.transpose_output_hw((h, w), (kh, kw), r, padding), cout)
    return value, filters, output_shape, r

