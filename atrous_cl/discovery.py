# SPDX-License-Identifier: Apache-2.0
"""Finding OpenCL devices, choosing one, and the queues the op runs on.

:func:`devices` lists what the ICD loader offers, :func:`default_device`
ranks it (GPUs, accelerators, Intel's CPU runtime, other CPUs, simulators
last) and passes over devices that cannot build a kernel, and
:func:`get_queue` turns a caller's queue, context or device into the queue a
call runs on. OpenCL state does not survive a fork (:func:`check_not_forked`).
"""

from __future__ import annotations

import functools
import os
import re
import threading
from typing import NamedTuple

import pyopencl as cl
from pyopencl.tools import context_dependent_memoize

from atrous_cl import icd
from atrous_cl.errors import DeviceError
from atrous_cl.facts import SIMULATORS, status_name
from atrous_cl.programs import build_quietly, unbuilt_program

#: Among CPU devices, Intel's runtime ran the same kernels 1.2-1.5x faster than PoCL here (docs/performance.md).
_FAST_CPU_PLATFORMS = ("intel",)


class DeviceInfo(NamedTuple):
    """One OpenCL device as ``atrous-cl devices`` lists it."""

    selector: str  # "platform:device", PYOPENCL_CTX's syntax
    platform: str
    name: str
    kind: str  # "GPU", "CPU", "ACCELERATOR", ...
    fp16: bool
    fp64: bool
    device: cl.Device


def _kind(device: cl.Device) -> str:
    for flag, name in ((cl.device_type.GPU, "GPU"), (cl.device_type.CPU, "CPU"),
                       (cl.device_type.ACCELERATOR, "ACCELERATOR")):
        if device.type & flag:
            return name
    return "OTHER"


#: The pid of the process that first asked the driver for platforms: OpenCL
#: state belongs to it, and a process forked from it may not use that state.
_opencl_pid: int | None = None

#: Where this process was forked from a process whose OpenCL drivers were loaded
#: though not by us (pyopencl called directly): that process's pid.
_forked_from_drivers: int | None = None

#: How the file names of OpenCL drivers' libraries (the ICDs the loader opens at the
#: first platform query) begin: PoCL, Intel's CPU and GPU runtimes, Oclgrind, NVIDIA's,
#: AMD's, Mesa's Clover and rusticl.
DRIVER_LIBRARIES = ("libpocl", "libintelocl", "libigdrcl", "liboclgrind", "libnvidia-opencl",
                    "libamdocl", "libMesaOpenCL", "libRusticlOpenCL")


def drivers_loaded() -> bool:
    """Whether an OpenCL driver's library (:data:`DRIVER_LIBRARIES`) is mapped into this
    process: the ICD loader opens them at the first platform query, whoever made it.
    Read from ``/proc/self/maps`` (the file names, not the folders: an environment
    called ``libpocl-dev`` is not a driver); False where there is none."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return maps_hold_a_driver(maps.read())
    except OSError:
        return False


def maps_hold_a_driver(maps: str) -> bool:
    """Whether ``maps`` (``/proc/PID/maps``'s text) maps a file whose name begins as one of
    :data:`DRIVER_LIBRARIES` does."""
    # A mapping's line ends in its path, after five fields; anonymous ones have none.
    names = {os.path.basename(fields[5]) for fields in (line.split(maxsplit=5)
                                                        for line in maps.splitlines())
             if len(fields) == 6}
    return any(name.startswith(DRIVER_LIBRARIES) for name in names)


#: Held by the first call's shield (:func:`check_not_forked`), which every other thread's
#: first call waits for.
_start_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child whose parent had OpenCL drivers loaded, though not through us, notes
    it here: its mappings are still the parent's. The start lock is new: a parent's thread
    may have held it at the fork."""
    global _forked_from_drivers, _start_lock
    _start_lock = threading.Lock()
    if _opencl_pid is None and _forked_from_drivers is None and drivers_loaded():
        _forked_from_drivers = os.getppid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def check_not_forked() -> None:
    """Refuse OpenCL work in a process forked after its parent used OpenCL.

    A fork copies the driver's state but not its threads: PoCL's child hangs
    forever in its first ``finish``, and no driver promises more. A process
    forked before any OpenCL call (as ``import atrous_cl`` makes none) is fine.
    A parent's use through this library is known; one through pyopencl alone
    shows as a driver library the child finds mapped as it starts
    (:func:`drivers_loaded`). The first call in a process also shields the
    drivers from a global LLVM (:func:`atrous_cl.icd.shield_from_global_llvm`),
    since OpenCL starts here.

    Raises:
        DeviceError: this process is such a child.
    """
    global _opencl_pid
    pid = os.getpid()
    if _opencl_pid is None and _forked_from_drivers is not None:
        raise DeviceError(f"this process ({pid}) was forked from process {_forked_from_drivers} "
                          f"after that one had loaded OpenCL drivers, which do not survive a fork "
                          f"(PoCL hangs); {_FORK_ADVICE}", status=None)
    if _opencl_pid is None:
        # Every thread's first call waits until the shield has loaded the drivers: a
        # platform query while it loads them is the crash it exists to prevent.
        with _start_lock:
            if _opencl_pid is None:
                icd.shield_from_global_llvm()
                _opencl_pid = pid
    elif _opencl_pid != pid:
        raise DeviceError(f"this process ({pid}) was forked from process {_opencl_pid} after that "
                          f"one had used OpenCL, whose drivers do not survive a fork (PoCL hangs); "
                          f"{_FORK_ADVICE}", status=None)


_FORK_ADVICE = ("start workers with multiprocessing's 'spawn' or 'forkserver' method, or fork "
                "before the first OpenCL call")


def devices() -> list[DeviceInfo]:
    """Every OpenCL device visible to pyopencl, in platform order.

    Raises:
        DeviceError: in a process forked after OpenCL was used (:func:`check_not_forked`).
    """
    check_not_forked()
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # the ICD loader reports "no platforms" as an error
        return []
    found = []
    for p_idx, platform in enumerate(platforms):
        try:
            devs = platform.get_devices()
        except cl.Error:
            continue
        for d_idx, dev in enumerate(devs):
            ext = dev.extensions.split()
            found.append(DeviceInfo(f"{p_idx}:{d_idx}", platform.name.strip(), dev.name.strip(),
                                    _kind(dev), "cl_khr_fp16" in ext, "cl_khr_fp64" in ext, dev))
    return found


def rank(info: DeviceInfo) -> tuple[int, str]:
    """Lower is better, with the reason: GPUs, accelerators, fast CPU runtimes, other CPUs, simulators."""
    platform = info.platform.lower()
    if any(s in platform for s in SIMULATORS):
        return SIMULATOR_RANK, "only a simulator is present"
    if info.kind == "GPU":
        return 0, "first GPU"
    if info.kind == "ACCELERATOR":
        return 1, "no GPU; first accelerator"
    if any(s in platform for s in _FAST_CPU_PLATFORMS):
        return 2, "no GPU; Intel's CPU runtime, faster than PoCL on the same CPU"
    return 3, "no GPU; first CPU device"


def default_device() -> tuple[cl.Device, str]:
    """The device used when the caller names none, and why it was chosen.

    ``PYOPENCL_CTX`` (pyopencl's ``platform:device`` syntax) wins when set;
    otherwise the first GPU, else an accelerator, else Intel's CPU runtime,
    else the first CPU device; a simulator only if nothing else exists. A
    device that cannot build a kernel (:func:`unusable_reason`) is passed over.

    Raises:
        DeviceError: no OpenCL device is available, or none that works.
    """
    selector = os.environ.get("PYOPENCL_CTX")
    if selector:
        return select_device(selector), f"PYOPENCL_CTX={selector}"
    found = devices()
    if not found:
        raise DeviceError("no OpenCL device found; install one, e.g. `pip install "
                          "pocl-binary-distribution` (the `pocl` extra) for a CPU device",
                          status="CL_PLATFORM_NOT_FOUND_KHR")
    ranked = sorted(found, key=lambda d: rank(d)[0])  # sorted keeps platform order among equals
    real = [d for d in ranked if rank(d)[0] < SIMULATOR_RANK]
    broken = []
    for info in real or ranked:
        reason = unusable_reason(info.device)
        if reason is None:
            why = rank(info)[1]
            return info.device, why + (f" (passed over: {'; '.join(broken)})" if broken else "")
        broken.append(f"{info.selector} {info.name}: {reason}")
    raise DeviceError("no working OpenCL device: " + "; ".join(broken) + ". " + _INSTALL_HINT,
                      status="CL_BUILD_PROGRAM_FAILURE")


SIMULATOR_RANK = 4
_INSTALL_HINT = ("On x86-64 Linux the `intel` extra gives Intel's CPU runtime; Debian and Ubuntu "
                 "package a newer PoCL (`apt install pocl-opencl-icd`); PYOPENCL_CTX=P:D picks a "
                 "device (a simulator too) regardless")
_PROBE_SOURCE = "__kernel void probe(__global float *x) { x[get_global_id(0)] = 1.0f; }"
_unusable: dict[int, str | None] = {}


def unusable_reason(device: cl.Device) -> str | None:
    """Why ``device`` cannot run kernels, from one trivial build; None when it can.

    Checked once per device and process. PoCL 3.0 from PyPI (LLVM 14) builds
    nothing on CPUs its LLVM does not know, such as AMD's Zen 5: it names the
    CPU 'generic', which its own compiler then refuses.
    """
    key = device.int_ptr
    if key not in _unusable:
        try:
            context = _queue_for_device(device).context
            build_quietly(unbuilt_program(context, _PROBE_SOURCE), b"")
            _unusable[key] = None
        except cl.Error as e:
            log = str(e)
            cpu = re.search(r"unknown target CPU '([^']*)'", log)
            _unusable[key] = (f"its compiler does not know this CPU (LLVM target {cpu.group(1)!r})"
                              if cpu else f"a trivial kernel does not build ({status_name(e)})")
    return _unusable[key]


def select_device(selector: str) -> cl.Device:
    """The device named by ``"P"`` or ``"P:D"`` (platform and device indices).

    Raises:
        ValueError: the selector is malformed or names no device.
        DeviceError: in a process forked after OpenCL was used (:func:`check_not_forked`).
    """
    check_not_forked()
    parts = str(selector).split(":")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"device selector must look like 'P' or 'P:D' (platform and device "
                         f"indices, as in PYOPENCL_CTX), got {selector!r}")
    p_idx, d_idx = int(parts[0]), int(parts[1]) if len(parts) == 2 else 0
    platforms = cl.get_platforms()
    if p_idx >= len(platforms):
        raise ValueError(f"device selector {selector!r}: platform index must be below "
                         f"{len(platforms)}, got {p_idx}")
    devs = platforms[p_idx].get_devices()
    if d_idx >= len(devs):
        raise ValueError(f"device selector {selector!r}: platform {p_idx} has {len(devs)} "
                         f"device(s), got index {d_idx}")
    return devs[d_idx]


_queues: dict[int, tuple[cl.Context, cl.CommandQueue]] = {}
_queues_lock = threading.Lock()


def _queue_for_device(device: cl.Device) -> cl.CommandQueue:
    with _queues_lock:
        key = device.int_ptr
        if key not in _queues:
            # Keep the Context object alive beside its queue: Intel's CPU
            # runtime invalidates a context whose last Python handle is
            # collected even while a queue still uses it.
            context = cl.Context([device])
            _queues[key] = (context, cl.CommandQueue(context, device))
        return _queues[key][1]


@functools.lru_cache(maxsize=None)
def _queue_for_default() -> cl.CommandQueue:
    return _queue_for_device(default_device()[0])


def queue_if_made(queue: cl.CommandQueue | None) -> cl.CommandQueue | None:
    """``queue`` if it is one, the default queue if a call has made it, else None:
    :func:`get_queue` without its checks, discovery or errors, for a lookup of what
    a queue remembers (:func:`atrous_cl.calls.transpose_host`)."""
    if queue is None:
        return _queue_for_default() if _queue_for_default.cache_info().currsize else None
    return queue if isinstance(queue, cl.CommandQueue) else None


def get_queue(queue: cl.CommandQueue | None = None, context: cl.Context | None = None,
              device: cl.Device | str | None = None) -> cl.CommandQueue:
    """The queue to run on: the given one, one on a given context or device, or the default.

    A context or device gets one cached in-order queue, so repeated calls reuse
    its compiled programs.

    Raises:
        DeviceError: in a process forked after OpenCL was used (:func:`check_not_forked`).
    """
    check_not_forked()
    if (queue is not None) + (context is not None) + (device is not None) > 1:
        raise ValueError("pass at most one of queue, context and device, got "
                         + ", ".join(n for n, x in (("queue", queue), ("context", context),
                                                    ("device", device)) if x is not None))
    if queue is not None:
        if not isinstance(queue, cl.CommandQueue):
            raise TypeError(f"queue must be a pyopencl.CommandQueue, got {type(queue).__name__}")
        return queue
    if context is not None:
        if not isinstance(context, cl.Context):
            raise TypeError(f"context must be a pyopencl.Context, got {type(context).__name__}")
        return _context_queue(context)
    if device is not None:
        if isinstance(device, str):
            device = select_device(device)
        if not isinstance(device, cl.Device):
            raise TypeError(f"device must be a pyopencl.Device or a 'P:D' selector string, "
                            f"got {type(device).__name__}")
        return _queue_for_device(device)
    return _queue_for_default()


@context_dependent_memoize
def _context_queue(context: cl.Context) -> cl.CommandQueue:
    return cl.CommandQueue(context, context.devices[0])
