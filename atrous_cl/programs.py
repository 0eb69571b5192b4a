# SPDX-License-Identifier: Apache-2.0
"""Kernel sources, program builds and the on-disk program cache.

Programs are built once per (context, kernel file, build options) and their
kernels fetched once; both are cached for the life of the context. Builds go
through pyopencl's binary cache in a folder of our own, guarded by an
``flock`` (see :func:`_program_cache_held`). Build and driver failures are
re-raised as :class:`atrous_cl.errors.DeviceError`.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import re
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pyopencl as cl
from pyopencl.tools import context_dependent_memoize

from atrous_cl.cache import cache_dir
from atrous_cl.errors import DeviceError
from atrous_cl.facts import describe, status_name

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


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

