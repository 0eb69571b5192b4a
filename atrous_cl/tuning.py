# SPDX-License-Identifier: Apache-2.0
"""``atrous-cl tune``: a search over tiles whose winners are cached on disk.

The kernel's register tile (output pixels x output channels per work-item,
:mod:`atrous_cl.tiles`) decides its speed, and the best one differs by OpenCL
implementation; on a GPU the local-memory kernel's work-group tiles
(:mod:`atrous_cl.local_tile`) compete too. :func:`tune` times every candidate
once per (device, driver, dtype, shape class) through the launch layer
(:func:`atrous_cl.launch.transpose`, :func:`atrous_cl.local_tile.launch`) and
stores the winner in ``$XDG_CACHE_HOME/atrous-cl/tuning.json``; the op then
uses it (:func:`tile_for`), and :func:`atrous_cl.tiles.default_for` without a
tuned entry. The file records a digest of the kernel sources it was timed
with: a changed kernel (a new version of this package) starts from the
defaults again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from atrous_cl import geometry, launch, local_tile, memory, validation
from atrous_cl.cache import cache_dir, read_regular, warn_once
from atrous_cl.errors import DeviceError
from atrous_cl.facts import check_dtype_support, describe, facts
from atrous_cl.local_tile import LocalTile
from atrous_cl.programs import program_source
from atrous_cl.tiles import (Tile, candidates, default_for, default_tile, gpu_only, pixel_vector,
                             pow2_at_least, winograd_enabled)

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

_CACHE_VERSION = 1


def device_key(device: cl.Device) -> str:
    f = facts(device)
    return f"{f.platform} | {f.name} | {f.driver}"


def shape_class(dtype, value_shape, filters_shape, rate: int) -> str:
    """What the best tile depends on: dtype, channels, kernel, rate and the width's octave."""
    kh, kw, cout, cin = filters_shape
    return (f"{np.dtype(dtype).name} cin{cin} cout{cout} k{kh}x{kw} r{rate} "
            f"w{pow2_at_least(max(1, value_shape[2]))}")


def cache_path() -> Path:
    return cache_dir() / "tuning.json"


#: A larger tuning file is not one we wrote: a full one holds a few hundred entries, ~100 kB.
_MAX_FILE_BYTES = 4 << 20

_lock = threading.Lock()
_loaded: dict | None = None
#: tile_for's answers, valid for the table object ``_memo_table`` only.
_memo: dict = {}
_memo_table: dict | None = None


def kernel_digest() -> str:
    """A digest of the kernel sources the timings are for (prelude included)."""
    sources = (program_source(launch.KERNEL_FILE) + program_source(launch.WINOGRAD_FILE)
               + program_source(local_tile.KERNEL_FILE))
    return hashlib.sha256(sources.encode()).hexdigest()[:16]


class _Unusable(Exception):
    """Why a tuning file cannot be used at all."""


#: What :func:`_read_json` gives for a missing file (a file may hold ``null``).
_MISSING = object()


def _read_json(path: Path):
    """The parsed contents of ``path``, or ``_MISSING`` when there is no file.

    Read only if it is a regular file, opened without blocking (a plain open
    of a FIFO waits for a writer forever) and read up to a size bound.

    Raises:
        _Unusable: the file is not a regular file, too large, or not JSON.
    """
    try:
        data = read_regular(path, _MAX_FILE_BYTES)
    except FileNotFoundError:
        return _MISSING
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EFBIG):
            raise _Unusable(e.strerror) from e
        raise _Unusable(f"cannot be opened ({e.strerror or e})") from e
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested arrays
        raise _Unusable(f"is not valid JSON ({type(e).__name__})") from e


def _valid_entry(entry) -> bool:
    """An object with ``tile``: ``[pixels, channels]`` or ``[pixels, channels, vectors]`` of
    ints, or those three and whether it is a Winograd tile, ``true`` or ``false``
    (:class:`Tile`); or with ``local``, the five ints of a :class:`LocalTile`."""
    if not isinstance(entry, dict) or ("tile" in entry) == ("local" in entry):
        return False
    if "local" in entry:
        local = entry["local"]
        return (isinstance(local, list) and len(local) == len(LocalTile._fields)
                and all(type(t) is int for t in local))  # not bool, not float
    tile = entry["tile"]
    if isinstance(tile, list) and len(tile) == 4 and type(tile[3]) is bool:
        tile = tile[:3]
    return (isinstance(tile, list) and len(tile) in (2, 3)
            and all(type(t) is int for t in tile))


def _usable_devices(data, digest: str) -> tuple[dict, list[str]]:
    """The well-formed entries of a parsed tuning file for this kernel, and what was dropped.

    A file for another file version or kernel source is stale, not broken:
    it gives no entries and no complaint.
    """
    if data is _MISSING:
        return {}, []
    if not isinstance(data, dict):
        return {}, [f"it holds a JSON {type(data).__name__}, not an object"]
    version = data.get("version")
    if type(version) is not int or version != _CACHE_VERSION or data.get("kernel") != digest:
        return {}, []
    devices = data.get("devices")
    if not isinstance(devices, dict):
        return {}, ["its 'devices' is not an object"]
    usable, dropped = {}, []
    for device, entries in devices.items():
        if not isinstance(entries, dict):
            dropped.append(f"device {device!r} holds {json.dumps(entries)[:40]}, not an object")
            continue
        for key, entry in entries.items():
            if _valid_entry(entry):
                usable.setdefault(device, {})[key] = entry
            else:
                dropped.append(f"entry {key!r} is {json.dumps(entry)[:40]}, not {{'tile': [int, int]}} "
                               f"or {{'local': [five ints]}}")
    return usable, dropped


def _read_table(path: Path, digest: str) -> dict:
    """The tuning table in ``path``: its well-formed entries for this kernel, or none.

    The cache only saves time, so anything unexpected in it is left out, with
    one warning, and never reaches a build.
    """
    try:
        devices, dropped = _usable_devices(_read_json(path), digest)
    except _Unusable as e:
        devices, dropped = {}, [f"it {e}"]
    if dropped:
        more = f" (and {len(dropped) - 1} more)" if len(dropped) > 1 else ""
        warn_once(f"atrous-cl ignores what it cannot use in its tuning cache {path}: "
                  f"{dropped[0]}{more}; default tiles stand in. `atrous-cl tune` rewrites it.",
                  stacklevel=3)
    return {"version": _CACHE_VERSION, "kernel": digest, "devices": devices}


def table() -> dict:
    """The tuning table in use: a new object whenever it is read afresh or a
    winner is stored, so what was worked out from an earlier one can tell."""
    global _loaded
    with _lock:
        if _loaded is None:
            digest = kernel_digest()
            try:
                path = cache_path()
            except OSError:  # no writable cache folder at all: nothing tuned
                _loaded = {"version": _CACHE_VERSION, "kernel": digest, "devices": {}}
            else:
                _loaded = _read_table(path, digest)
        return _loaded


def _tuned_tile(table: dict, device: cl.Device, dtype, args) -> Tile | LocalTile | None:
    """The stored tile for this problem if it is one :func:`tune` could have chosen here.

    Anything else (a hand-edited or foreign entry) could crash a driver's
    compiler or the process (PoCL segfaults on a tile of 8x3 or 512x16), so
    it is ignored with a warning.
    """
    key = shape_class(dtype, args.value_shape, args.filters_shape, args.rate)
    entry = table["devices"].get(device_key(device), {}).get(key)
    if entry is None:
        return None
    if "local" in entry:
        tile = LocalTile(*entry["local"])
        if tile in local_tile.tune_candidates(device, dtype, args):
            return tile
        if gpu_only(device) and local_tile.is_tune_tile(tile):
            return None  # tune's, for another problem of the class: this one's stage is larger
    else:
        tile = Tile(*entry["tile"])
        if tile.winograd and not winograd_enabled():
            return None  # ATROUS_CL_WINOGRAD=0: the direct sum everywhere, tuned or not
        if tile in candidates(device, dtype, args.filters_shape[2], args.filters_shape):
            return tile
    warn_once(f"atrous-cl ignores the tile {tile} stored for {key} on {device_key(device)} in its "
              f"tuning cache: not one `atrous-cl tune` tries there; the default tile stands in",
              stacklevel=3)
    return None


def tile_for(device: cl.Device, dtype, args) -> Tile | LocalTile:
    """The tuned tile for this problem on this device (a :class:`LocalTile` for the
    local-memory kernel), else :func:`default_for`'s.

    Answers are remembered for the table they came from: a table read afresh
    or a new winner stored starts a new memo.
    """
    global _memo, _memo_table
    current = table()
    key = (device, np.dtype(dtype), args)
    with _lock:  # _store changes the table under it: a lookup never straddles a store
        if _memo_table is not current:
            _memo, _memo_table = {}, current
        tile = _memo.get(key)
        if tile is None:
            tile = _tuned_tile(current, device, dtype, args) or default_for(device, dtype, args)
            if len(_memo) < 1024:
                _memo[key] = tile
    return tile


def transpose(queue: cl.CommandQueue, value, filters, out, args, tile: Tile | LocalTile | None = None,
              forward_filters: bool = False) -> cl.Event | None:
    """:func:`atrous_cl.launch.transpose` with ``tile`` (:func:`tile_for`'s when None), or
    :func:`atrous_cl.local_tile.launch` for a :class:`LocalTile`: the launch layer as the
    op runs it, for tune and the benchmarks."""
    if tile is None:
        tile = tile_for(queue.device, out.dtype, args)
    if isinstance(tile, LocalTile):
        return local_tile.launch(queue, value, filters, out, args, tile, forward_filters)
    return launch.transpose(queue, value, filters, out, args, tile, forward_filters)


def _open_lock(path: Path) -> int:
    """A descriptor of the lock file beside ``path``, made if missing (this user's only)."""
    return os.open(path.with_name(path.name + ".lock"),
                   os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)


@contextlib.contextmanager
def _locked_file(path: Path):
    """An exclusive ``flock`` on a lock file beside ``path``, for a read-merge-write of it.

    Without it two processes tuning at once each write back their own view,
    and the later one drops the other's new entries. (Without ``fcntl``, on
    Windows, the write is still atomic, only not merged.)
    """
    fd = _open_lock(path)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def _check_storable(path: Path) -> None:
    """Raise now if a winner could not be stored in ``path`` (its lock file cannot be
    opened: another user's, in a cache home shared between users; or ``path`` is a
    folder, which the stored file's rename cannot replace), rather than after every
    candidate has been timed."""
    try:
        os.close(_open_lock(path))
    except OSError as e:
        raise OSError(e.errno, f"tune cannot store its results: {e.filename} cannot be opened for "
                               f"writing ({e.strerror}); set XDG_CACHE_HOME to a folder of your "
                               f"own") from e
    if path.is_dir() and not path.is_symlink():  # a link is replaced, not its target
        raise IsADirectoryError(errno.EISDIR, f"tune cannot store its results: {path} is a "
                                              f"folder, not the tuning file; remove it")


def _store(device: cl.Device, key: str, tile: Tile | LocalTile, timings: dict[str, float]) -> None:
    """Add a winner to the tuning file: read, merge and write under a file lock, so entries
    that other processes stored meanwhile survive; the write is a temporary file renamed."""
    global _loaded, _memo_table
    entry = {"local" if isinstance(tile, LocalTile) else "tile": list(tile),
             "ms": {k: round(v * 1e3, 4) for k, v in timings.items()}}
    digest = kernel_digest()
    path = cache_path()
    # The file lock first: op calls take _lock (table()) and must not wait on another
    # process's store.
    with _locked_file(path), _lock:
        table = _read_table(path, digest)
        table["devices"].setdefault(device_key(device), {})[key] = entry
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _loaded, _memo_table = table, None  # the memo no longer describes the table


def tune(queue: cl.CommandQueue, value_shape, filters_shape, rate: int, padding: str,
         dtype=np.float32, repeats: int = 5,
         progress: Callable[[Tile | LocalTile], None] | None = None
         ) -> tuple[Tile | LocalTile, dict[str, float]]:
    """Time every candidate tile on random data and cache the fastest.

    The candidates are the register tiles (:func:`atrous_cl.tiles.candidates`)
    and, on a GPU, the local-memory kernel's (:func:`atrous_cl.local_tile.tune_candidates`).
    Each is checked against the default tile's result before it is timed, so a
    miscompiled variant can never win; a local tile whose build the driver refuses,
    or cannot run in work-groups of its size, is left out.

    One channel in and out on a CPU runs the one-channel kernel
    (:func:`atrous_cl.tiles.pixel_vector`), which has no tile: nothing is timed
    or stored, and the timings are empty.

    Returns:
        The winning tile and the median seconds of each candidate; for the
        one-channel kernel, its vector as a tile (pixels x 1 channel) and ``{}``.

    Raises:
        ValueError: the shapes are invalid, or have a batch, spatial size or
            channel count of 0: such a problem does no work, so its timings
            would store noise as a winner; or ``repeats`` is below 1.
        OSError: the winner could not be stored (the tuning file's lock cannot be
            opened), found before anything is timed.
        DeviceError: no candidate reproduced the default tile's result.
    """
    dtype = validation.check_dtypes(dtype, dtype)
    check_dtype_support(queue.device, dtype)
    value_shape = validation.check_shape4(value_shape, "value_shape", "NHWC")
    filters_shape = validation.check_shape4(filters_shape, "filters_shape",
                                            "[kh, kw, out_channels, in_channels]")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer of at least 1, got {repeats!r}")
    rate, padding, cout = validation.check_rate(rate), validation.check_padding(padding), filters_shape[2]
    output_shape = (value_shape[0], *_geometry_hw(value_shape, filters_shape, rate, padding), cout)
    args = validation.check_transpose_args(value_shape, filters_shape, output_shape, rate, padding)
    if 0 in args.value_shape or 0 in args.filters_shape:
        raise ValueError(f"tune needs a batch, height, width and channels of at least 1 (a problem "
                         f"without work has nothing to time), got value_shape {list(args.value_shape)} "
                         f"and filters_shape {list(args.filters_shape)}")
    vector = pixel_vector(queue.device, dtype, args.filters_shape)
    if vector is not None:
        return Tile(vector, 1), {}
    _check_storable(cache_path())
    rng = np.random.default_rng()
    value = cl_array.to_device(queue, rng.standard_normal(args.value_shape).astype(dtype))
    filters = cl_array.to_device(queue, rng.standard_normal(args.filters_shape).astype(dtype))
    out = cl_array.empty(queue, args.output_shape, dtype)
    launch.transpose(queue, value, filters, out, args, default_tile(queue.device, dtype, cout))
    expected = out.get()
    scale = max(float(np.max(np.abs(expected.astype(np.float64)))), 1e-30)
    timings: dict[str, float] = {}
    timed: dict[str, Tile | LocalTile] = {}
    for tile in (*candidates(queue.device, dtype, cout, args.filters_shape),
                 *local_tile.tune_candidates(queue.device, dtype, args)):
        if progress:
            progress(tile)
        run = lambda t=tile: transpose(queue, value, filters, out, args, t)  # noqa: E731
        memory.fill(queue, out, np.nan)
        try:
            run()
        except (ValueError, DeviceError):
            if not isinstance(tile, LocalTile):
                raise
            continue  # a work-group this build cannot run (or a build the driver refuses)
        got = out.get().astype(np.float64)
        if not np.max(np.abs(got - expected)) <= 1e-2 * scale:
            continue  # a wrong answer is never fast enough
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            queue.finish()
            samples.append(time.perf_counter() - start)
        timings[str(tile)], timed[str(tile)] = statistics.median(samples), tile
    if not timings:
        raise DeviceError(f"no candidate tile reproduced the default tile's result on "
                          f"{describe(queue.device)}; nothing stored")
    best = timed[min(timings, key=timings.get)]
    _store(queue.device, shape_class(dtype, args.value_shape, args.filters_shape, args.rate),
           best, timings)
    return best, timings


def _geometry_hw(value_shape, filters_shape, rate, padding):
    return geometry.transpose_output_hw(tuple(value_shape[1:3]), tuple(filters_shape[:2]), rate, padding)
