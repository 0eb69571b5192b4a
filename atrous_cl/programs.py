# SPDX-License-Identifier: Apache-2.0
"""Kernel sources, program builds and the on-disk program cache.

Programs are built once per (context, kernel file, build options) and their
kernels fetched once; both are cached for the life of the context. Across
processes, our own binary cache keeps each device's binary (see :func:`_build`
and :func:`_binary_key`, and why not pyopencl's), except where the driver keeps
its own (:func:`keeps_own_builds`). Build and driver failures are
re-raised as :class:`atrous_cl.errors.DeviceError`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.resources
import os
import re
import tempfile
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pyopencl as cl

from atrous_cl.cache import cache_dir, read_regular, warn_once
from atrous_cl.errors import DeviceError, VectorWidthError
from atrous_cl.facts import describe, is_pocl, max_vector_bytes, status_name

@functools.cache
def _kernel_texts() -> dict[str, str]:
    """Every ``.cl`` file shipped with the package, read together the first time one is
    needed, so that a process builds from one version of them: a package upgraded under a
    running process would otherwise pair new kernels with the process's host code
    (a review's test: relative error 3.0 on the first build after the swap).

    An installed wheel carries ``kernels/`` as the package ``atrous_cl.kernels``;
    a source checkout has it at the repository root.
    """
    try:
        folder = importlib.resources.files("atrous_cl.kernels")
        files = [f for f in folder.iterdir() if f.name.endswith(".cl")]
    except (ModuleNotFoundError, FileNotFoundError):
        files = []
    if not files:
        files = sorted((Path(__file__).resolve().parent.parent / "kernels").glob("*.cl"))
    return {f.name: f.read_text() for f in files}


def kernel_source(filename: str) -> str:
    """The text of a ``.cl`` file shipped with the package (:func:`_kernel_texts`)."""
    try:
        return _kernel_texts()[filename]
    except KeyError:
        raise FileNotFoundError(f"atrous-cl has no kernel file {filename!r}") from None


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

#: What :func:`get_kernels` built, per context, by file and options. The kernels keep
#: their context alive, as pyopencl's own program caches do.
_built: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_kernels(context: cl.Context, filename: str,
                options: tuple[str, ...]) -> tuple[dict[str, cl.Kernel], threading.Lock]:
    """The kernels of ``filename`` built with ``options``, built and fetched once per context.

    Returns the kernels by name with a lock: setting a kernel's arguments and
    enqueueing it must not interleave between threads. Builds are serialised,
    so threads asking for the same program build it once. A program built
    before is found without that lock: a call whose programs are built does not
    wait out another thread's build (a warm vjp took up to 1.5 s beside one).

    Raises:
        DeviceError: the build failed; the message holds the build log.
    """
    key = (filename, options)
    found = _built.get(context, {}).get(key)
    if found is not None:
        return found
    with _build_lock:
        found = _built.get(context, {}).get(key)
        if found is None:
            found = _build_kernels(context, filename, options)
            _built.setdefault(context, {})[key] = found
        return found


#: Bumped when what a cached program file holds changes.
_BINARY_FORMAT = b"atrous-cl program binary 1\n"


def _binary_folder() -> Path | None:
    """Our folder of program binaries, or None where no cache folder can be written."""
    try:
        folder = cache_dir() / "binaries"
        folder.mkdir(exist_ok=True)
    except OSError:
        return None
    return folder


def _binary_key(device: cl.Device, source: str, options: tuple[str, ...]) -> str:
    """What decides ``device``'s binary of ``source``: the source, our build options and
    those pyopencl adds from the environment, the device, its driver and pyopencl's version.

    Not where pyopencl is installed: pyopencl adds ``-I <its own folder>`` to every
    build and keys its own binary cache by it, so each new virtual environment (every
    CI run, every user's new venv) built every program afresh, minutes on PoCL. The
    kernels include nothing, so that option changes no binary.
    """
    platform = device.platform
    parts = (_BINARY_FORMAT.decode(), source, "\0".join(options),
             os.environ.get("PYOPENCL_BUILD_OPTIONS", ""), cl.VERSION_TEXT,
             platform.vendor, platform.name, platform.version,
             device.vendor, device.name, device.version, device.driver_version)
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def _entry(key: str, binary: bytes) -> bytes:
    """A cache file: the format, the key it is stored under and the binary's SHA-256, then the binary."""
    return _BINARY_FORMAT + f"{key}\n{hashlib.sha256(binary).hexdigest()}\n".encode() + binary


#: Bytes the folder of program binaries may hold: storing a binary past this
#: deletes the least recently used ones (:func:`_trim`). Every problem's
#: channel counts, kernel size, rate, tile and dtype make a program, 10-250 KB
#: each, and each kernel source its own set: a day of this project's test runs
#: left 330 MB, mostly binaries of earlier kernel sources that nothing loads.
BINARY_CACHE_BYTES = 512 << 20

#: A temporary file (a store in progress) older than this is a leftover of a
#: killed process, which :func:`_trim` deletes.
_STALE_TEMPORARY_SECONDS = 24 * 3600


def _read_binary(folder: Path, key: str) -> bytes | None:
    """The binary stored under ``key`` if its file is whole and made for that key (a
    truncated, damaged, foreign or renamed file is not), else None. A binary read
    is marked used (its modification time), for :func:`_trim`."""
    path = folder / key[:2] / key
    try:
        data = read_regular(path, BINARY_CACHE_BYTES)
    except OSError:  # missing, or a FIFO, a device, ... put there
        return None
    binary = data[len(_entry(key, b"")):]  # the header is as long for every binary
    if not (binary and data == _entry(key, binary)):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return binary


def _trim(folder: Path, keep: Path) -> None:
    """Delete the least recently used binaries (the oldest modification times) until the
    folder holds at most :data:`BINARY_CACHE_BYTES`, never ``keep`` (the one just
    stored), and temporary files of stores a killed process left.

    Another process may be reading a file deleted here: it reads it whole or finds it
    gone and builds from source; the cache only ever saves time.
    """
    now, entries, total = time.time(), [], 0
    for sub in os.scandir(folder):
        if not sub.is_dir(follow_symlinks=False):
            continue
        for f in os.scandir(sub.path):
            with contextlib.suppress(OSError):
                st = f.stat(follow_symlinks=False)
                if f.name.startswith("."):
                    if now - st.st_mtime > _STALE_TEMPORARY_SECONDS:
                        os.unlink(f.path)
                    continue
                entries.append((st.st_mtime, st.st_size, f.path))
                total += st.st_size
    for _, size, path in sorted(entries):
        if total <= BINARY_CACHE_BYTES:
            break
        if path != str(keep):
            with contextlib.suppress(OSError):
                os.unlink(path)
                total -= size


def _write_binary(folder: Path, key: str, binary: bytes) -> None:
    """Store ``binary`` under ``key``: written whole to a temporary file, then renamed into
    place, so a reader never sees a part; a failure (a full disk) only loses the entry."""
    if not binary:
        return
    sub, temporary = folder / key[:2], None
    try:
        sub.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=sub, prefix=f".{key}.", delete=False) as f:
            temporary = f.name
            f.write(_entry(key, binary))
        os.replace(temporary, sub / key)
        temporary = None
        with contextlib.suppress(OSError):  # stored; a failed trim only leaves more
            _trim(folder, sub / key)
    except BaseException as e:  # Ctrl-C too: no temporary file left behind
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        if not isinstance(e, OSError):
            raise
        warn_once(f"atrous-cl cannot store a compiled program in {folder} ({e.strerror or e}); "
                  f"programs are built afresh in each process until it can")


def keeps_own_builds(device: cl.Device) -> bool:
    """Whether ``device``'s driver caches builds from source itself, keyed by the source and
    the build options: PoCL (its kernel cache, ``POCL_CACHE_DIR``, by default
    ``~/.cache/pocl``). :func:`_build` then leaves the binaries to it.

    Asking PoCL for a program's binaries compiles every kernel of the program for
    any work-group size, on top of the build and the compile for the launch's own
    size when it first runs: PoCL 3.0 from PyPI (AMD EPYC, Zen 3), one problem's
    first call with no cache, 5x5 filters 2.5 s of 3.6 (binaries 1.7, build 0.75,
    the launch's compile 1.0), 3x3 0.74 of 2.5; with PoCL's cache and not ours,
    0.12 s. A test suite's worth of problems took minutes more.
    """
    return is_pocl(device)


def _options_text(options: tuple[str, ...]) -> bytes:
    """The options a build passes to the driver: ours and ``PYOPENCL_BUILD_OPTIONS``, not the
    ``-I <pyopencl's folder>`` pyopencl adds (:func:`_binary_key`), so that a driver's own
    cache keyed by the options serves every virtual environment."""
    return " ".join((*options, *os.environ.get("PYOPENCL_BUILD_OPTIONS", "").split())).encode()


def _build(context: cl.Context, source: str, options: tuple[str, ...]) -> cl.Program:
    """``source`` built with ``options`` for every device of ``context``: from our binary
    cache (:func:`_binary_key`) when it holds every device's binary, else from source,
    whose binaries it then keeps; where every device's driver keeps its own builds
    (:func:`keeps_own_builds`), from source alone. Each passes the options alone
    (:func:`_options_text`), through :func:`build_quietly`. A cached binary the driver will
    not load or build is replaced by a source build; the cache only ever saves time."""
    devices = context.devices
    text = _options_text(options)
    if all(keeps_own_builds(d) for d in devices):
        return build_quietly(unbuilt_program(context, source), text, devices)
    folder = _binary_folder()
    keys = [_binary_key(device, source, options) for device in devices]
    if folder is not None:
        binaries = [_read_binary(folder, key) for key in keys]
        if all(binary is not None for binary in binaries):
            try:
                return build_quietly(unbuilt_program(context, devices, binaries), text, devices)
            except (cl.Error, RuntimeError):
                pass  # a binary from another driver build, say: from source instead
    program = build_quietly(unbuilt_program(context, source), text, devices)
    if folder is not None:
        built = dict(zip((d.int_ptr for d in program.get_info(cl.program_info.DEVICES)),
                         program.get_info(cl.program_info.BINARIES)))
        for device, key in zip(devices, keys):
            _write_binary(folder, key, built.get(device.int_ptr, b""))
    return program


def unbuilt_program(context: cl.Context, *args):
    """pyopencl's unbuilt program (``pyopencl._cl._Program``) of a source (``args``: it) or
    of binaries (``args``: the devices and their binaries), for :func:`build_quietly`."""
    return cl._cl._Program(context, *args)


def build_quietly(program, options: bytes, devices=None) -> cl.Program:
    """``program`` (a ``pyopencl._cl._Program``) built with ``options``, as pyopencl's own
    build does it but without its warning.

    pyopencl turns any build log into a ``CompilerWarning``, and some drivers (Intel's)
    return a log on every successful build. Silencing it with
    :class:`warnings.catch_warnings` swaps the process's warning filters for the length
    of the build (seconds), undoing what other threads set meanwhile; and where warnings
    are errors, a build that said anything failed.

    Raises:
        pyopencl.RuntimeError: the build failed; its message holds each device's build
            log, as pyopencl's own error does.
    """
    try:
        program._build(options=options, devices=devices)
    except cl.Error as e:
        logs = (75 * "=" + "\n").join(f"Build on {device}:\n\n{log}"
                                      for device, log in program._get_build_logs())
        raise cl.RuntimeError(cl._cl._ErrorRecord(msg=f"{e}\n\n{logs}", code=e.code,
                                                  routine=e.routine)) from None
    return cl.Program(program)


#: Bytes of the OpenCL C types a build's ``-DACC`` may name.
_TYPE_BYTES = {"half": 2, "float": 4, "double": 8}


def vector_bytes(options: tuple[str, ...]) -> int:
    """The widest vector of accumulators a build of our kernels computes with: its channel
    vector (``-DBC``) or pixel vector (``-DVW``) times the accumulation type's size. The
    Winograd repack's runs (``-DRB``) only move data: built and run on PoCL 3.0 on Zen 4
    at 64-128 bytes (float16 to float64), they are not counted."""
    acc = next((o.split("=", 1)[1] for o in options if o.startswith("-DACC=")), "float")
    size = _TYPE_BYTES[acc]
    widths = [int(o.split("=", 1)[1]) for o in options if o.startswith(("-DBC=", "-DVW="))]
    return size * max(widths, default=1)


def _check_vectors(context: cl.Context, filename: str, options: tuple[str, ...]) -> None:
    """Refuse a build whose vectors a device's compiler would crash the process on
    (:func:`atrous_cl.facts.max_vector_bytes`): only hand-made tiles and layouts ask
    for them there, not the defaults or ``tune``."""
    width = vector_bytes(options)
    for device in context.devices:
        limit = max_vector_bytes(device)
        if limit is not None and width > limit:
            raise VectorWidthError(
                f"{filename} with {width}-byte vectors on {describe(device)}: its compiler "
                f"aborts the process on vectors over {limit} bytes on this CPU (an LLVM "
                f"that names it without AVX-512 but turns the host's AVX-512 on); use "
                f"narrower tiles, Intel's runtime (the intel extra) or a newer PoCL "
                f"(options {' '.join(options)})")


def _build_kernels(context: cl.Context, filename: str,
                   options: tuple[str, ...]) -> tuple[dict[str, cl.Kernel], threading.Lock]:
    _check_vectors(context, filename, options)
    source = program_source(filename)
    try:
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
        hint = ""
        if any(is_pocl(d) for d in context.devices):
            # A process that crashed while PoCL compiled leaves such a build in its cache.
            where = os.environ.get("POCL_CACHE_DIR") or "the pocl folder of your cache home"
            hint = f"; if it built before, delete PoCL's kernel cache ({where})"
        raise DeviceError(f"building {filename} on {', '.join(describe(d) for d in context.devices)} "
                          f"gave a program without kernels{hint}",
                          status="CL_BUILD_PROGRAM_FAILURE", source=filename, options=options)
    return kernels, threading.Lock()


# At import, not at the first build: a package upgraded between the two would pair its
# new kernels with this process's host code (_kernel_texts).
_kernel_texts()
