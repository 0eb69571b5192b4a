# SPDX-License-Identifier: Apache-2.0
"""Registering OpenCL runtimes installed from PyPI with the ICD loader.

pyopencl's ICD loader finds the PoCL and Oclgrind wheels by itself, but
Intel's CPU runtime (the ``intel`` extra) only through ``OCL_ICD_VENDORS``:
:func:`register_pip_icds` provides that before the first platform query.
:func:`shield_from_global_llvm` keeps a process that already loaded another
copy of LLVM globally (TensorFlow does) from crashing in that query.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import sys
import threading
import warnings
from pathlib import Path

from atrous_cl.cache import cache_dir

#: Where ocl-icd looks for vendor files when OCL_ICD_VENDORS is unset.
_SYSTEM_VENDORS = Path("/etc/OpenCL/vendors")
#: Our own registration in the vendors folder we hand the ICD loader.
_INTEL_ICD = "atrous-cl-intel-cpu.icd"


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


def _folder_name(lib: Path) -> str:
    """The vendors folder's name for ``lib``: by the runtime's path and the names of the
    system's vendor files, so that machines sharing a cache home (a home on NFS) whose
    systems list other drivers keep folders of their own, and one machine's sync never
    removes the entries another's loader is about to read."""
    names = sorted(icd.name for icd in _SYSTEM_VENDORS.glob("*.icd")) \
        if _SYSTEM_VENDORS.is_dir() else []
    return hashlib.sha1("\n".join([str(lib), *names]).encode()).hexdigest()[:12]


def _ours_and_gone(vendors: str) -> bool:
    """Whether ``OCL_ICD_VENDORS`` names a folder of ours that no longer exists: a child
    that outlived its parent, whose private temporary cache home went at its exit
    (:func:`atrous_cl.cache.cache_dir`). Its loader would find no vendor at all."""
    path = Path(vendors)
    return (re.fullmatch(r"[0-9a-f]{12}", path.name) is not None and path.parent.name == "icd"
            and path.parent.parent.name == "atrous-cl" and not path.exists())


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
    inherited = os.environ.get("OCL_ICD_VENDORS")
    if inherited is not None:
        if not _ours_and_gone(inherited):
            return None
        del os.environ["OCL_ICD_VENDORS"]  # it would hide every driver, registered or not
    lib = _pip_intel_runtime()
    if lib is None:
        return None
    try:
        folder = cache_dir() / "icd" / _folder_name(lib)
        _sync_vendors(folder, lib)
    except OSError as e:
        warnings.warn(f"atrous-cl could not register Intel's OpenCL runtime ({lib}) with the ICD "
                      f"loader, so it is not offered: {e}", RuntimeWarning, stacklevel=2)
        return None
    os.environ["OCL_ICD_VENDORS"] = str(folder)
    return str(folder)


#: A symbol every LLVM with its command-line registry defines. When the
#: process's global scope has it, a library loaded with RTLD_GLOBAL carries
#: its own LLVM (TensorFlow's libtensorflow_framework.so.2 does).
_LLVM_PROBE = "_ZN4llvm2cl6Option11addArgumentEv"
#: The vendor libraries :func:`shield_from_global_llvm` loaded; kept so they
#: stay loaded for the ICD loader to find.
_shielded: list[ctypes.CDLL] = []


def _icd_libraries() -> list[str]:
    """The vendor libraries pyopencl's ICD loader will open, as it names them.

    Its folder of wheels' ``.icd`` files (PoCL, Oclgrind; an entry without a
    slash names a file beside it), ``OCL_ICD_VENDORS`` (a folder or one file)
    or else ``/etc/OpenCL/vendors`` (an entry without a slash is a name the
    dynamic linker searches for), and ``OCL_ICD_FILENAMES``.
    """
    import pyopencl

    found: list[str] = []

    def read(icd: Path, beside: bool) -> None:
        try:
            name = icd.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return
        if name and "/" not in name and beside and (icd.parent / name).is_file():
            name = str(icd.parent / name)
        if name and name not in found:
            found.append(name)

    for icd in sorted((Path(pyopencl.__file__).parent / ".libs").glob("*.icd")):
        read(icd, beside=True)
    vendors = Path(os.environ.get("OCL_ICD_VENDORS") or _SYSTEM_VENDORS)
    for icd in sorted(vendors.glob("*.icd")) if vendors.is_dir() else [vendors]:
        read(icd, beside=False)
    for name in os.environ.get("OCL_ICD_FILENAMES", "").split(":"):
        if name and name not in found:
            found.append(name)
    return found


def shield_from_global_llvm() -> list[str]:
    """Load the OpenCL vendor libraries so they bind to their own LLVM, when the
    process's global scope already holds another LLVM.

    TensorFlow loads ``libtensorflow_framework.so.2`` with RTLD_GLOBAL, and it
    exports LLVM's symbols unversioned. A vendor library linked to a shared
    LLVM (Debian's PoCL: ``libclang-cpp``, ``libLLVM-15``) then binds its static
    initialisers to TensorFlow's copy while using its own data, and the
    process dies with a segmentation fault inside the ICD loader's first
    platform query (measured with tensorflow-cpu 2.21 and Debian's PoCL 3.1).
    Loading each vendor library first with RTLD_DEEPBIND puts its own
    dependencies ahead of the global scope; the ICD loader then finds it
    already loaded. Nothing is done without a global LLVM, so a process
    without one loads its drivers exactly as the ICD loader would. Call before
    the process's first platform query (:func:`atrous_cl.discovery.check_not_forked`
    does); later calls change nothing that is loaded already.

    Returns:
        The libraries loaded this way (none without a global LLVM, or where
        they cannot be loaded: the ICD loader then reports them as before).
    """
    if not hasattr(os, "RTLD_DEEPBIND") or _shielded:
        return []
    try:
        if not hasattr(ctypes.CDLL(None), _LLVM_PROBE):
            return []
    except OSError:
        return []
    loaded = []
    for name in _icd_libraries():
        try:
            _shielded.append(ctypes.CDLL(name, mode=os.RTLD_NOW | os.RTLD_LOCAL | os.RTLD_DEEPBIND))
        except OSError:
            continue  # the ICD loader skips it too
        loaded.append(name)
    return loaded
