# SPDX-License-Identifier: Apache-2.0
"""The per-user cache folder, and the cache home that OpenCL libraries need.

atrous-cl keeps its tuned tiles, compiled programs and the ICD vendors folder
under :func:`cache_dir`; pyopencl, pytools and PoCL keep theirs under the same
cache home. When it cannot be written, one private temporary folder stands in
for the whole process (:func:`provide_cache_home`).
"""

from __future__ import annotations

import atexit
import errno
import os
import shutil
import stat
import tempfile
import threading
import warnings
from pathlib import Path

_cache_lock = threading.Lock()
#: cache_dir's answer per wanted folder, checked once a process.
_cache_dirs: dict[Path, Path] = {}
#: The private temporary cache of this process, made on first need.
_private: Path | None = None


#: Warnings already given, so each problem of a cache file or folder is told once a process.
_warned: set[str] = set()


def warn_once(message: str, stacklevel: int = 1) -> None:
    """A RuntimeWarning with ``message``, unless this process has given it already;
    ``stacklevel`` as for :func:`warnings.warn`, from the caller."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel + 1)


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, read only if it is a regular file, opened without blocking
    (a plain open of a FIFO waits for a writer forever) and up to ``limit`` bytes.

    Raises:
        FileNotFoundError: there is no such file.
        OSError: it cannot be opened, is not a regular file (``EINVAL``) or is larger
            than ``limit`` (``EFBIG``).
    """
    if not stat.S_ISREG(os.stat(path).st_mode):  # not even opened: a device may act on open
        raise OSError(errno.EINVAL, "is not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since the stat
            raise OSError(errno.EINVAL, "is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"is larger than {limit} bytes")
    return data


def _home_cache() -> Path | None:
    """``$XDG_CACHE_HOME``, else ``~/.cache``; None when there is no home to expand.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG Base Directory spec says: it
    would name another folder in every working directory."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base or not os.path.isabs(base):
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


def _gone_private(home: Path | None) -> bool:
    """Whether ``home`` (the cache home in ``XDG_CACHE_HOME``) is a private temporary cache
    that no longer exists: a child that outlived the parent whose cache it was
    (:func:`provide_cache_home` passed it on). Writing there would make it again, and
    nothing would remove it."""
    return (home is not None and home.name.startswith("atrous-cl-cache-")
            and home.parent == Path(tempfile.gettempdir()) and not home.exists())


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
            if wanted is None:
                error = None
            elif _gone_private(home):
                error = OSError(errno.ENOENT, "a parent's temporary cache, removed at its exit")
            else:
                error = _writable(wanted)
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
