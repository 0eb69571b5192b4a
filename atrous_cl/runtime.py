# SPDX-License-Identifier: Apache-2.0
"""OpenCL plumbing: device discovery and choice, queues, kernel sources, programs.

Programs are built once per (context, kernel file, build options) and their
kernels fetched once; both are cached for the life of the context. Build and
driver failures are re-raised as :class:`atrous_cl.errors.DeviceError`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import importlib.resources
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyopencl as cl
from pyopencl.tools import context_dependent_memoize

from atrous_cl.errors import DeviceCapabilityError, DeviceError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

#: Platforms never picked by default: simulators are for checking, not speed.
_SIMULATORS = ("oclgrind",)
#: Among CPU devices, Intel's runtime ran the same kernels 1.2-1.5x faster than PoCL here (README, Speed).
_FAST_CPU_PLATFORMS = ("intel",)
#: Where ocl-icd looks for vendor files when OCL_ICD_VENDORS is unset.
_SYSTEM_VENDORS = Path("/etc/OpenCL/vendors")
#: Our own registration in the vendors folder we hand the ICD loader.
_INTEL_ICD = "atrous-cl-intel-cpu.icd"

_cache_lock = threading.Lock()
#: cache_dir's answer per wanted folder, checked once a process.
_cache_dirs: dict[Path, Path] = {}
#: The private temporary cache of this process, made on first need.
_private: Path | None = None


def _home_cache() -> Path | None:
    """``$XDG_CACHE_HOME``, else ``~/.cache``; None when there is no home to expand."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        home = os.path.expanduser("~")
        if home.startswith("~"):  # HOME unset and no passwd entry
            return None
        base = os.path.join(home, ".cache")
    return Path(base)


def _writable(folder: Path) -> OSError | None:
    """Create ``folder`` if needed and write a file in it; the error if either fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e
    return None


def _remove_private(folder: Path, pid: int) -> None:
    if os.getpid() == pid:  # a forked child inherits the atexit hook, not the folder
        shutil.rmtree(folder, ignore_errors=True)


def _private_cache(wanted: Path | None, error: OSError | None) -> Path:
    """This process's private temporary cache home, made on first need (with one warning
    per unusable folder) and removed at exit."""
    global _private
    where = f"its cache folder {wanted} ({error.strerror or error})" if wanted else \
        "a cache folder: HOME is unset and XDG_CACHE_HOME too"
    if _private is None:
        try:
            _private = Path(tempfile.mkdtemp(prefix="atrous-cl-cache-"))
        except OSError as e:
            raise OSError(e.errno, f"atrous-cl cannot write {where}, nor a temporary folder in "
                                   f"{tempfile.gettempdir()} ({e.strerror or e}); set XDG_CACHE_HOME "
                                   f"to a writable folder") from e
        atexit.register(_remove_private, _private, os.getpid())
    warnings.warn(f"atrous-cl cannot write {where}; using {_private} for this process, removed at "
                  f"exit (tuned tiles and compiled kernels are not kept). Set XDG_CACHE_HOME to a "
                  f"writable folder to keep them.", RuntimeWarning, stacklevel=3)
    return _private


def cache_dir() -> Path:
    """Per-user cache folder of atrous-cl: ``$XDG_CACHE_HOME/atrous-cl`` or ``~/.cache/atrous-cl``.

    The folder exists when this returns. If it cannot be made or written
    (HOME unset or read-only, XDG_CACHE_HOME a file), a private temporary
    folder stands in for the rest of the process, with one warning that names
    the unwritable folder: the cache only saves time, so it never stops the op.

    Raises:
        OSError: neither that folder nor a temporary one can be written; the
            message names both.
    """
    home = _home_cache()
    wanted = home / "atrous-cl" if home is not None else None
    with _cache_lock:
        found = _cache_dirs.get(wanted)
        if found is None:
            error = _writable(wanted) if wanted is not None else None
            found = wanted if wanted is not None and error is None else \
                _private_cache(wanted, error) / "atrous-cl"
            found.mkdir(exist_ok=True)
            _cache_dirs[wanted] = found
        return found


def provide_cache_home() -> str | None:
    """Point ``XDG_CACHE_HOME`` at a private temporary folder when the cache home is unwritable.

    atrous-cl is not alone there: pyopencl and pytools keep compiled programs
    and generated code in it, PoCL its kernels, and each fails without it
    (PoCL hides its devices, so the op finds none; pyopencl raises a bare
    ``KeyError`` or ``NotADirectoryError``). So when :func:`cache_dir` had to
    fall back to its temporary stand-in (with its warning), the whole process
    is pointed at that. It must run before pyopencl asks for platforms or
    builds anything, which is why importing atrous_cl calls it.

    Returns:
        The folder now in ``XDG_CACHE_HOME``, or None when nothing was changed.
    """
    try:
        folder = cache_dir()
    except OSError as e:
        warnings.warn(str(e), RuntimeWarning, stacklevel=2)
        return None
    if _private is None or folder.parent != _private:
        return None
    os.environ["XDG_CACHE_HOME"] = str(_private)
    return str(_private)


def _pip_intel_runtime() -> Path | None:
    """``libintelocl.so`` as the ``intel-opencl-rt`` wheel installs it, if present."""
    import site

    for prefix in (sys.prefix, site.getuserbase()):
        lib = Path(prefix) / "lib" / "libintelocl.so"
        if lib.is_file():
            return lib
    return None


def _replace_link(path: Path, target: Path) -> None:
    """Make ``path`` a symlink to ``target``, atomically, unless it already is one."""
    if path.is_symlink() and os.readlink(path) == str(target):
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, path)


def _sync_vendors(folder: Path, lib: Path) -> None:
    """Make ``folder`` list Intel's runtime plus exactly the system's current vendor files.

    System entries are symlinks, so an edited driver entry shows through, and
    entries whose system file is gone are removed: the loader must see the
    system as it is now, or a removed driver would come back and shift every
    later platform index.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ours = folder / _INTEL_ICD
    if not ours.is_file() or ours.is_symlink() or ours.read_text() != f"{lib}\n":
        tmp = folder / f".{_INTEL_ICD}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(f"{lib}\n")
        os.replace(tmp, ours)
    system = {icd.name: icd for icd in _SYSTEM_VENDORS.glob("*.icd")
              if icd.name != _INTEL_ICD} if _SYSTEM_VENDORS.is_dir() else {}
    for name, source in system.items():
        _replace_link(folder / name, source.absolute())
    for entry in folder.glob("*.icd"):
        if entry.name != _INTEL_ICD and entry.name not in system:
            entry.unlink(missing_ok=True)  # its system file is gone (or another process removed it)


def register_pip_icds() -> str | None:
    """Make an Intel OpenCL runtime installed from PyPI visible to the ICD loader.

    pyopencl's loader finds PoCL and Oclgrind wheels by itself, but Intel's
    runtime only through ``OCL_ICD_VENDORS``. When that variable is unset and
    ``intel-opencl-rt`` is installed, this keeps a vendors folder in the cache
    holding an ``.icd`` file for it plus symlinks to the system's current
    ``/etc/OpenCL/vendors`` entries (so system GPU drivers stay visible, and
    removed ones go), and points ``OCL_ICD_VENDORS`` at it. A user's own
    setting always wins. It must run before the first platform query of the
    process, which is why importing atrous_cl calls it. Without a writable
    cache home the folder goes in :func:`cache_dir`'s temporary stand-in, so
    the devices and their indices stay the same.

    Returns:
        The folder now in ``OCL_ICD_VENDORS``, or None when nothing was changed
        (with a warning naming the folder if it could not be written).
    """
    if "OCL_ICD_VENDORS" in os.environ:
        return None
    lib = _pip_intel_runtime()
    if lib is None:
        return None
    try:
        folder = cache_dir() / "icd" / hashlib.sha1(str(lib).encode()).hexdigest()[:12]
        _sync_vendors(folder, lib)
    except OSError as e:
        warnings.warn(f"atrous-cl could not register Intel's OpenCL runtime ({lib}) with the ICD "
                      f"loader, so it is not offered: {e}", RuntimeWarning, stacklevel=2)
        return None
    os.environ["OCL_ICD_VENDORS"] = str(folder)
    return str(folder)


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


def check_not_forked() -> None:
    """Refuse OpenCL work in a process forked after its parent used OpenCL.

    A fork copies the driver's state but not its threads: PoCL's child hangs
    forever in its first ``finish``, and no driver promises more. A process
    forked before any OpenCL call (as ``import atrous_cl`` makes none) is fine.

    Raises:
        DeviceError: this process is such a child.
    """
    global _opencl_pid
    pid = os.getpid()
    if _opencl_pid is None:
        _opencl_pid = pid
    elif _opencl_pid != pid:
        raise DeviceError(f"this process ({pid}) was forked from process {_opencl_pid} after that "
                          f"one had used OpenCL, whose drivers do not survive a fork (PoCL hangs); "
                          f"start workers with multiprocessing's 'spawn' or 'forkserver' method, "
                          f"or fork before the first OpenCL call", status=None)


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


def _rank(info: DeviceInfo) -> tuple[int, str]:
    """Lower is better, with the reason: GPUs, accelerators, fast CPU runtimes, other CPUs, simulators."""
    platform = info.platform.lower()
    if any(s in platform for s in _SIMULATORS):
        return _SIMULATOR_RANK, "only a simulator is present"
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
    ranked = sorted(found, key=lambda d: _rank(d)[0])  # sorted keeps platform order among equals
    real = [d for d in ranked if _rank(d)[0] < _SIMULATOR_RANK]
    broken = []
    for info in real or ranked:
        reason = unusable_reason(info.device)
        if reason is None:
            why = _rank(info)[1]
            return info.device, why + (f" (passed over: {'; '.join(broken)})" if broken else "")
        broken.append(f"{info.selector} {info.name}: {reason}")
    raise DeviceError("no working OpenCL device: " + "; ".join(broken) + ". " + _INSTALL_HINT,
                      status="CL_BUILD_PROGRAM_FAILURE")


_SIMULATOR_RANK = 4
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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", cl.CompilerWarning)
                cl.Program(_queue_for_device(device).context, _PROBE_SOURCE).build()
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
    """
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


def get_queue(queue: cl.CommandQueue | None = None, context: cl.Context | None = None,
              device: cl.Device | str | None = None) -> cl.CommandQueue:
    """The queue to run on: the given one, one on a given context or device, or the default.

    A context or device gets one cached in-order queue, so repeated calls reuse
    its compiled programs.

    Raises:
        DeviceError: in a process forked after OpenCL was used (:func:`check_not_forked`).
    """
    check_not_forked()
    if sum(x is not None for x in (queue, context, device)) > 1:
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


def memory_pool(queue: cl.CommandQueue):
    """A buffer pool for the op's own temporaries on ``queue``, or None.

    Reusing buffers spares the driver fresh pages on every call: uploading 1 MB
    into a new buffer took 0.54 ms on Intel's CPU runtime, into a pooled one
    0.06 ms. A buffer returns to the pool when its array is dropped, possibly
    while kernels using it are still queued; one pool per in-order queue makes
    that safe, since the next user of the buffer is enqueued behind them.
    Out-of-order queues get no pool.
    """
    if queue.properties & cl.command_queue_properties.OUT_OF_ORDER_EXEC_MODE_ENABLE:
        return None
    with _queues_lock:  # kept on the queue itself: it lives exactly as long
        pool = getattr(queue, "_atrous_cl_pool", None)
        if pool is None:
            import pyopencl.tools

            pool = queue._atrous_cl_pool = pyopencl.tools.MemoryPool(
                pyopencl.tools.ImmediateAllocator(queue))
        return pool


@context_dependent_memoize
def _context_queue(context: cl.Context) -> cl.CommandQueue:
    return cl.CommandQueue(context, context.devices[0])


class Facts(NamedTuple):
    """What the op asks of a device on every call, read from the driver once."""

    name: str
    platform: str
    driver: str
    version: str  # CL_DEVICE_VERSION; PoCL names its LLVM CPU target there
    type: int
    extensions: frozenset
    max_alloc: int
    global_mem: int
    system_svm: bool  # kernels may take plain host pointers (fine-grained system SVM)


def _system_svm(device) -> bool:
    try:
        caps = device.svm_capabilities
    except (cl.Error, AttributeError):  # OpenCL 1.x: no SVM query
        return False
    return bool(caps & cl.device_svm_capabilities.FINE_GRAIN_SYSTEM)


_facts: dict[int, Facts] = {}


def facts(device: cl.Device) -> Facts:
    """The device's :class:`Facts`, cached per device.

    Each ``clGetDeviceInfo`` round trip is cheap on a CPU driver but not on
    every GPU driver, and a call asks a dozen of them; they never change for a
    device. Objects that are not ``cl.Device`` (test stubs) are read afresh.
    """
    key = device.int_ptr if isinstance(device, cl.Device) else None
    found = _facts.get(key) if key is not None else None
    if found is None:
        found = Facts(device.name.strip(), device.platform.name.strip(), device.driver_version,
                      device.version, int(device.type), frozenset(device.extensions.split()),
                      device.max_mem_alloc_size, device.global_mem_size, _system_svm(device))
        if key is not None:
            _facts[key] = found
    return found


def describe(device: cl.Device) -> str:
    """``'name (platform, driver version)'`` for messages."""
    f = facts(device)
    return f"{f.name} ({f.platform}, driver {f.driver})"


def check_dtype_support(device: cl.Device, dtype: np.dtype) -> None:
    """Refuse float64 on devices without ``cl_khr_fp64``.

    float16 is stored and loaded with ``vload_half``/``vstore_half`` and summed
    in float32, which core OpenCL supports without ``cl_khr_fp16``.

    Raises:
        DeviceCapabilityError: the device lacks the extension the dtype needs.
    """
    if np.dtype(dtype) == np.float64 and "cl_khr_fp64" not in facts(device).extensions:
        raise DeviceCapabilityError(f"float64 needs the OpenCL extension cl_khr_fp64, which device "
                                    f"{describe(device)} lacks; use float32 or another device")


def check_allocation(device: cl.Device, what: str, nbytes: int) -> None:
    """Refuse a buffer larger than the device can allocate, before trying.

    Raises:
        DeviceCapabilityError: ``nbytes`` exceeds the device's limits.
    """
    limit = facts(device).max_alloc
    if nbytes > limit:
        raise DeviceCapabilityError(f"{what} needs {nbytes} bytes, more than the largest buffer "
                                    f"device {describe(device)} can allocate ({limit} bytes)")


def check_fits(device: cl.Device, dtype: np.dtype, counts: dict[str, int],
               together: str | None = None) -> None:
    """Refuse, by name and size, tensors the device cannot allocate or hold at once.

    Args:
        counts: element counts by the name used in messages.
        together: how the message names them all (default: the names joined).

    Raises:
        DeviceCapabilityError: one tensor exceeds the largest allocation, or
            all of them the global memory.
    """
    itemsize = np.dtype(dtype).itemsize
    for what, count in counts.items():
        check_allocation(device, what, count * itemsize)
    total, memory = sum(counts.values()) * itemsize, facts(device).global_mem
    if total > memory:
        raise DeviceCapabilityError(f"{together or ', '.join(counts)} need {total} bytes together, "
                                    f"more than the {memory} bytes of global memory of device "
                                    f"{describe(device)}")


def status_name(error: cl.Error) -> str | None:
    """The OpenCL status name of a pyopencl error, e.g. ``'CL_OUT_OF_RESOURCES'``."""
    try:
        return "CL_" + cl.status_code.to_string(error.code)
    except (AttributeError, ValueError, TypeError):
        return None


def kernel_source(filename: str) -> str:
    """The text of a ``.cl`` file shipped with the package.

    An installed wheel carries ``kernels/`` as the package ``atrous_cl.kernels``;
    a source checkout has it at the repository root.
    """
    try:
        return importlib.resources.files("atrous_cl.kernels").joinpath(filename).read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        return (Path(__file__).resolve().parent.parent / "kernels" / filename).read_text()


#: Macros every kernel file uses, prepended to each (see its header).
_PRELUDE = "prelude.cl"


def program_source(filename: str) -> str:
    """``filename``'s source behind the shared prelude, its own lines numbered from 1."""
    return f"{kernel_source(_PRELUDE)}\n#line 1\n{kernel_source(filename)}"


_SCALAR_TYPES = {"int": np.int32, "uint": np.uint32, "long": np.int64, "ulong": np.uint64}
_KERNEL_SIGNATURE = re.compile(r"__kernel\s+void\s+(\w+)\s*\(([^)]*)\)")


def scalar_arg_dtypes(source: str) -> dict[str, list]:
    """Each kernel's argument dtypes, as ``Kernel.set_scalar_arg_dtypes`` takes them.

    Read from the kernels' signatures: a pointer is ``None``, a scalar its
    NumPy type. Declared, pyopencl sets a launch's arguments in about 1 us;
    undeclared, it probes every NumPy scalar it is given (about 7 us each,
    40 us of the main kernel's launch).
    """
    found = {}
    for name, params in _KERNEL_SIGNATURE.findall(source):
        dtypes = []
        for param in params.split(","):
            words = param.replace("*", " * ").split()
            if "*" in words:
                dtypes.append(None)
            elif words[-2] in _SCALAR_TYPES:  # [const] TYPE name
                dtypes.append(_SCALAR_TYPES[words[-2]])
            else:
                raise ValueError(f"kernel {name}: no NumPy type known for argument {param.strip()!r}")
        found[name] = dtypes
    return found


_build_lock = threading.Lock()


def get_kernels(context: cl.Context, filename: str,
                options: tuple[str, ...]) -> tuple[dict[str, cl.Kernel], threading.Lock]:
    """The kernels of ``filename`` built with ``options``, built and fetched once per context.

    Returns the kernels by name with a lock: setting a kernel's arguments and
    enqueueing it must not interleave between threads. Builds are serialised,
    so threads asking for the same program build it once, and the warning
    filter around a build cannot be undone by another thread's.

    Raises:
        DeviceError: the build failed; the message holds the build log.
    """
    with _build_lock:
        return _build_kernels(context, filename, options)


def _program_cache() -> Path | None:
    """Our folder for pyopencl's binary cache (per Python version, like pyopencl's own), or None."""
    try:
        folder = cache_dir() / f"programs-py{sys.version_info[0]}.{sys.version_info[1]}"
        folder.mkdir(exist_ok=True)
    except OSError:
        return None
    return folder


@contextlib.contextmanager
def _program_cache_held():
    """The ``cache_dir`` to give ``Program.build``: our folder, held, or False (build uncached).

    pyopencl's binary cache guards itself with a lock file that a process
    killed mid-build (Ctrl-C, kill) leaves behind; every later build by any
    process then waits 60 s and raises a bare KeyError
    (:func:`_is_cache_failure`). So builds use a folder of our own, and take
    an ``flock`` on it first, which the kernel drops with a dead holder. Since every user of the folder holds
    the flock around pyopencl's work in it, a pyopencl lock file seen under
    the flock is stale, and is removed. If another process holds the flock
    (it is building), this build goes uncached rather than waiting on it.
    """
    folder = _program_cache()
    if folder is None:
        yield False
        return
    if fcntl is None:  # no flock (Windows): cannot tell a stale lock file from a live one
        yield str(folder)
        return
    try:
        fd = os.open(folder / ".atrous-cl.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except OSError:
            held = False
        if held:
            (folder / "lock").unlink(missing_ok=True)
        yield str(folder) if held else False
    finally:
        os.close(fd)  # drops the flock


def _is_cache_failure(error: KeyError) -> bool:
    """pyopencl 2024-2026.1 reads ``os.environ["PYOPENCL_CACHE_FAILURE_FATAL"]`` when its binary
    cache fails, so any cache failure surfaces as this KeyError unless the variable is set."""
    return error.args == ("PYOPENCL_CACHE_FAILURE_FATAL",)


def _build(context: cl.Context, source: str, options: tuple[str, ...]) -> cl.Program:
    """``source`` built with ``options``, through our binary cache where it works, else uncached."""
    with _program_cache_held() as cache:
        try:
            return cl.Program(context, source).build(options=list(options), cache_dir=cache)
        except KeyError as e:
            if cache is False or not _is_cache_failure(e):
                raise
            failure = e.__context__  # os.environ's own KeyError(b'...'), then the cache's error
            while isinstance(failure, KeyError) and failure.__context__ is not None:
                failure = failure.__context__
    # The cache only saves time: build without it, and say what went wrong with it.
    warnings.warn(f"pyopencl's binary cache in {cache} failed ({failure!r}); building without it",
                  RuntimeWarning, stacklevel=4)
    return cl.Program(context, source).build(options=list(options), cache_dir=False)


@context_dependent_memoize
def _build_kernels(context: cl.Context, filename: str,
                   options: tuple[str, ...]) -> tuple[dict[str, cl.Kernel], threading.Lock]:
    source = program_source(filename)
    try:
        with warnings.catch_warnings():
            # Some drivers (Intel's) return a build log even on success, which
            # pyopencl turns into a warning on every first call.
            warnings.simplefilter("ignore", cl.CompilerWarning)
            program = _build(context, source, options)
    except cl.Error as e:
        raise DeviceError(f"building {filename} failed on "
                          f"{', '.join(describe(d) for d in context.devices)}: {e}",
                          status=status_name(e), source=filename, options=options) from e
    kernels = {k.function_name: k for k in program.all_kernels()}
    for name, dtypes in scalar_arg_dtypes(source).items():
        if name in kernels:
            kernels[name].set_scalar_arg_dtypes(dtypes)
    if not kernels:  # PoCL 3.0 "builds" 8 x double vectors into an empty program
        raise DeviceError(f"building {filename} on {', '.join(describe(d) for d in context.devices)} "
                          f"gave a program without kernels", status="CL_BUILD_PROGRAM_FAILURE",
                          source=filename, options=options)
    return kernels, threading.Lock()


def scratch(queue: cl.CommandQueue, nbytes: int):
    """A temporary device buffer of ``nbytes`` for kernels on ``queue``, from its pool.

    A bare buffer, not an array: wrapping it in a ``pyopencl.array.Array``
    costs 12 us a call on this project's CPU, the pool itself 0.2.
    """
    pool = memory_pool(queue)
    return pool(nbytes) if pool is not None else cl.Buffer(queue.context, cl.mem_flags.READ_WRITE, nbytes)


def works_in_host_memory(device: cl.Device) -> bool:
    """Whether kernels on ``device`` should read and write NumPy arrays in place: on CPU devices.

    Host memory is a CPU device's memory, so the host API needs no copies in
    or out. With fine-grained system SVM (Intel's CPU runtime) a kernel takes
    the array's pointer itself; elsewhere (PoCL) it gets a buffer created with
    ``CL_MEM_USE_HOST_PTR`` on the array (:class:`HostArray`). Measured
    against uploading and downloading (2-core EPYC, medians interleaved):
    Intel's runtime, 1x64x64, 64->64: 2.23 -> 1.76 ms; 32x8x8, 16->16:
    0.33 -> 0.14 ms (system SVM). PoCL 3.0: 1x64x64, 64->64: 2.39 -> 2.01 ms;
    1x128x128, 32->16: 1.84 -> 1.23; 32x8x8, 16->16: 0.70 -> 0.38 (host-pointer
    buffers).

    Not on a simulator (Oclgrind calls itself a CPU too): its uninitialised-value
    checker does not see what the host wrote into a host-pointer buffer, and
    would flag every value read from one.
    """
    f = facts(device)
    return bool(f.type & cl.device_type.CPU) and not any(s in f.platform.lower() for s in _SIMULATORS)


def uses_system_svm(device: cl.Device) -> bool:
    """Whether a :class:`HostArray` on ``device`` is handed to kernels as a plain
    host pointer (fine-grained system SVM) rather than in a host-pointer buffer."""
    return facts(device).system_svm


class HostArray:
    """A C-contiguous, aligned NumPy array that kernels on a CPU device use in place.

    It offers what the launches take from a ``pyopencl.array.Array``
    (``base_data``, ``offset``, ``size``, ``dtype``, ``events``, ``add_event``)
    and ``get``, which waits for the queue and returns the array itself. ``base_data`` is the array as
    system SVM where the device has it (:func:`uses_system_svm`), else a buffer
    created with ``CL_MEM_USE_HOST_PTR`` on it; either is made on first use
    (OpenCL has no empty buffers). Such a buffer's memory is defined on the
    host only once mapped, so ``get`` maps and unmaps a ``written`` one.
    """

    offset = 0

    def __init__(self, array: np.ndarray, queue: cl.CommandQueue, written: bool = False):
        self.array, self.written = array, written
        self.size, self.dtype, self.shape = array.size, array.dtype, array.shape
        self._svm = uses_system_svm(queue.device)
        self._context = queue.context
        self._data = None
        self.events: list[cl.Event] = []  # the launches that write it (see ops._launch)

    def add_event(self, event: cl.Event) -> None:
        self.events.append(event)

    @property
    def base_data(self):
        if self._data is None:
            if self._svm:
                self._data = cl.SVM(self.array)
            else:
                access = cl.mem_flags.READ_WRITE if self.written else cl.mem_flags.READ_ONLY
                self._data = cl.Buffer(self._context, cl.mem_flags.USE_HOST_PTR | access,
                                       hostbuf=self.array)
        return self._data

    def get(self, queue: cl.CommandQueue) -> np.ndarray:
        if self.written and self._data is not None and not self._svm:
            # After its writers: on an out-of-order queue a map need not wait.
            mapped, _ = cl.enqueue_map_buffer(queue, self._data, cl.map_flags.READ, 0,
                                              self.shape, self.dtype, wait_for=self.events)
            mapped.base.release(queue)
        queue.finish()  # until then kernels may still be writing it
        return self.array


@contextlib.contextmanager
def draining(queue: cl.CommandQueue):
    """Around a host call's launches and result: if anything in it raises, wait for the
    queue before the error unwinds, since kernels may still use host arrays in place
    that the unwinding frees."""
    try:
        yield
    except BaseException:
        drain(queue)
        raise


def drain(queue: cl.CommandQueue) -> None:
    """After a failure in a host call (:func:`draining`): wait for what was enqueued,
    which may still use host arrays in place, so none is freed under a running kernel."""
    try:
        queue.finish()
    except cl.Error:
        pass


def fill(queue: cl.CommandQueue, array, value, wait_for=()) -> cl.Event | None:
    """Set every element of a C-contiguous device array (or a :class:`HostArray`) to ``value``.

    Uses ``clEnqueueFillBuffer`` with a one-element pattern on ``queue``, after
    ``wait_for``, so it works for every dtype (pyopencl's own ``fill`` compiles
    a kernel, which float16 cannot have without ``cl_khr_fp16``); the array
    gets the event, which is returned. A HostArray, fresh and in no kernel's
    hands, is filled on the host (None is returned).
    """
    if array.size == 0:
        return None
    if isinstance(array, HostArray):
        array.array.fill(value)
        return None
    pattern = np.array(value, dtype=array.dtype)
    event = cl.enqueue_fill_buffer(queue, array.base_data, pattern, array.offset, array.nbytes,
                                   wait_for=list(wait_for))
    array.add_event(event)
    return event
