# SPDX-License-Identifier: Apache-2.0
"""Saving a model atomically: :func:`save_model`, and :func:`save_target`, the file it replaces.

Kept apart from onnx: a model is anything with ``SerializeToString``, so the
CLI can check an output path before it loads or builds a model; :func:`save_bytes`
writes any bytes so (``atrous-cl bench --plot`` too).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


def save_model(model: onnx.ModelProto, path) -> str:
    """Write ``model`` to ``path`` atomically (:func:`save_bytes`); return the path written.

    Raises:
        As :func:`save_bytes`; also ValueError: ``model`` cannot be serialised (over
        protobuf's 2 GiB).
    """
    path = os.fsdecode(os.fspath(path))
    save_target(path)  # refused before serialising a large model
    return save_bytes(model.SerializeToString(), path)


def save_bytes(data: bytes, path) -> str:
    """Write ``data`` to ``path`` atomically; return the path written.

    The bytes go to a temporary file in the destination's directory, which is
    then renamed over it with :func:`os.replace`. On any failure (Ctrl-C
    included) the temporary file is removed and the destination is left as it
    was, so no half-written file is ever seen there.

    Only a regular file or a new path is replaced. A symlink is followed: the
    file replaces its target (or creates it, for a dangling link) and the
    link stays. A directory, FIFO, device or socket is refused without being
    opened, so nothing blocks on a FIFO and no device node is replaced. So is a
    read-only file (:func:`save_target`), which a rename would otherwise replace.

    Raises:
        IsADirectoryError: ``path`` is, or names, a directory.
        PermissionError: ``path`` is a read-only file.
        ValueError: ``path`` is empty, or a FIFO, device or socket.
        OSError: the directory is missing or not writable, a symlink loops,
            or the write failed.
    """
    path = os.fsdecode(os.fspath(path))
    target = save_target(path)
    directory = os.path.dirname(target)
    tmp = os.path.join(directory, f".{_short(os.path.basename(target))}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: never write through someone else's file; 0o666 lets the umask set
    # the final file's mode as for any other new file.
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise type(e)(e.errno, f"cannot create a file in {directory!r}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _keep_mode(target, tmp)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


#: Bytes of the destination's name a temporary file's name keeps.
TMP_NAME_BYTES = 64


def _short(name: str) -> str:
    """``name`` cut to at most :data:`TMP_NAME_BYTES` bytes, whole characters only: a
    destination name near the file system's limit (255 bytes; 63 four-byte characters)
    must still leave room for the temporary file's suffix."""
    while len(os.fsencode(name)) > TMP_NAME_BYTES:
        name = name[:-1]
    return name


_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def save_target(path: str) -> str:
    """The absolute file :func:`save_model` replaces for ``path``: a regular file or a new one.

    A file that may not be written is refused (:func:`_unwritable`): one with no write
    permission bit (root included, who may write any file, but whose read-only files say
    not to), on a read-only file system, or not writable by this user.
    :func:`save_bytes` replaces a file by renaming over it, which needs only the folder's
    permission and would get round the file's own.
    """
    if not path:
        raise ValueError("the output path is empty")
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise IsADirectoryError(errno.EISDIR, "names a directory, not a model file path", path)
    target = os.path.realpath(path)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return target  # a new file (also a dangling symlink's target)
    if stat.S_ISREG(st.st_mode):
        why = _unwritable(target, st)
        if why is not None:
            raise PermissionError(errno.EACCES, f"{_via_link(path, target)} {why}".lstrip(), path)
        return target
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a model file path", path)
    if stat.S_ISLNK(st.st_mode):  # realpath stops at a loop
        raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
    kind = next((name for is_kind, name in _SPECIAL_FILES if is_kind(st.st_mode)),
                "not a regular file")
    raise ValueError(f"path {path!r}{_via_link(path, target)} is {kind}: save_model replaces only regular files "
                     f"(or creates new ones)")


def _via_link(path: str, target: str) -> str:
    """`` (a link to 'target') `` where ``path`` reaches ``target`` through a symlink, else ""."""
    return "" if target == os.path.abspath(path) else f" (a link to {target!r})"


def _unwritable(target: str, st: os.stat_result) -> str | None:
    """Why the existing file ``target`` (``st``: its ``lstat``) may not be replaced, or None:
    no write permission bit (a file someone made read-only), a read-only file system, or
    a file this user may not write."""
    mode = stat.S_IMODE(st.st_mode)
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return f"is read-only (mode {mode:04o}); make it writable to replace it"
    if os.access(target, os.W_OK):
        return None
    try:
        read_only_fs = bool(os.statvfs(os.path.dirname(target)).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):
        read_only_fs = False
    if read_only_fs:
        return "is on a read-only file system"
    return (f"is not writable by this user (mode {mode:04o}, owner uid {st.st_uid}); "
            f"choose another path")


def _keep_mode(target: str, tmp: str) -> None:
    """Give the new file the permission bits of the file it replaces, if any."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return
    os.chmod(tmp, mode)
