# SPDX-License-Identifier: Apache-2.0
"""Registering OpenCL runtimes installed from PyPI with the ICD loader.

pyopencl's ICD loader finds the PoCL and Oclgrind wheels by itself, but
Intel's CPU runtime (the ``intel`` extra) only through ``OCL_ICD_VENDORS``:
:func:`register_pip_icds` provides that before the first platform query.
"""

from __future__ import annotations

import hashlib
import os
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
