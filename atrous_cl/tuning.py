# SPDX-License-Identifier: Apache-2.0
"""Tile choice per device: a heuristic default, and a search whose winners are cached on disk.

The kernel's register tile (output pixels x output channels per work-item)
decides its speed, and the best one differs by OpenCL implementation: Intel's
CPU runtime likes 16-channel vectors, PoCL 8. PoCL 3.0's LLVM aborts the
whole process on some 16-wide float code and builds 8-wide double code into a
program without kernels, so its vectors are capped at 32 bytes. ``atrous-cl tune``
(or :func:`tune`) times the candidates once per (device, driver, dtype, shape
class) and stores the winner in ``$XDG_CACHE_HOME/atrous-cl/tuning.json``;
the op then uses it. Without a tuned entry the op uses :func:`default_tile`.
The file records a digest of the kernel source it was timed with: a changed
kernel (a new version of this package) starts from the defaults again.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import threading
import time
from typing import Callable, NamedTuple

import numpy as np
import pyopencl as cl

from atrous_cl import runtime

_CACHE_VERSION = 1


class Tile(NamedTuple):
    """Output pixels (along W) x output channels computed by one work-item."""

    pixels: int
    channels: int

    def padded_channels(self, cout: int) -> int:
        """``cout`` rounded up to whole channel tiles: the packed filters' width."""
        return -(-cout // self.channels) * self.channels

    def __str__(self) -> str:
        return f"{self.pixels}x{self.channels}"


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _is_pocl(device: cl.Device) -> bool:
    return "portable computing language" in runtime.facts(device).platform.lower()


def _pocl_narrow(device: cl.Device) -> bool:
    """PoCL building for a CPU target without 512-bit vectors.

    PoCL 3.0 from PyPI (LLVM 14, target znver3: AVX2) aborts the process on
    some 16-wide float code and builds 8-wide double code into an empty
    program; Debian's PoCL 3.1 (LLVM 15, target skylake-avx512) runs 16-wide
    tiles fine, and 1.7-2.4x faster than 8-wide ones. PoCL names its target
    in the device version (``HSTR: pthread-<triple>-<cpu>``).
    """
    return _is_pocl(device) and "avx512" not in runtime.facts(device).version.lower()


def _max_channels(device: cl.Device, dtype, cout: int) -> int:
    """Widest channel vector worth using: no wider than ``cout`` needs, 32 bytes on a
    PoCL without 512-bit vectors (:func:`_pocl_narrow`)."""
    acc_bytes = 8 if np.dtype(dtype) == np.float64 else 4  # half is summed in float
    return min(_pow2_at_least(cout), 32 // acc_bytes if _pocl_narrow(device) else 16)


def default_tile(device: cl.Device, dtype, cout: int) -> Tile:
    """The untuned tile: 8x16 on Intel's CPU runtime and on PoCL with 512-bit vectors,
    8x8 on other PoCL, 4x2 on GPUs, 4x8 elsewhere.

    Measured on a 2-core AMD EPYC (float32, the README's workloads A-E,
    ``atrous-cl tune``): Intel 8x16 best on A, C, D and within 1.13x of 4x16 on
    B and E (geometric mean 0.94x 4x16's time); PyPI's PoCL (AVX2) 8x8 best or
    within 1.04x on A-E; Debian's PoCL 3.1 (AVX-512) 8x16 ran A at 226 GFLOP/s
    and C at 207 against 8x8's 132 and 88. On an NVIDIA H100 (OpenCL 3.0, driver 580)
    GPUs want many small work-items: 4x2 came within 1.09x of each shape's
    best over A-D and E (geometric mean; 4x8 was 1.66x).
    """
    f = runtime.facts(device)
    if "intel" in f.platform.lower() and f.type & cl.device_type.CPU:
        tile = Tile(8, 16)
    elif _is_pocl(device):
        tile = Tile(8, 8) if _pocl_narrow(device) else Tile(8, 16)
    elif f.type & cl.device_type.GPU:
        tile = Tile(4, 2)
    else:
        tile = Tile(4, 8)
    return Tile(tile.pixels, min(tile.channels, _max_channels(device, dtype, cout)))


def candidates(device: cl.Device, dtype, cout: int) -> list[Tile]:
    """The tiles :func:`tune` tries: pixels 2-16 x channel vectors up to the useful width."""
    widest = _max_channels(device, dtype, cout)
    return [Tile(px, ch) for px in (2, 4, 8, 16) for ch in (1, 2, 4, 8, 16)
            if ch <= widest and px * ch <= 128]


def device_key(device: cl.Device) -> str:
    f = runtime.facts(device)
    return f"{f.platform} | {f.name} | {f.driver}"


def shape_class(dtype, value_shape, filters_shape, rate: int) -> str:
    """What the best tile depends on: dtype, channels, kernel, rate and the width's octave."""
    kh, kw, cout, cin = filters_shape
    return (f"{np.dtype(dtype).name} cin{cin} cout{cout} k{kh}x{kw} r{rate} "
            f"w{_pow2_at_least(max(1, value_shape[2]))}")


def cache_path():
    return runtime.cache_dir() / "tuning.json"


_lock = threading.Lock()
_loaded: dict | None = None
#: tile_for's answers, valid for the table object ``_memo_table`` only.
_memo: dict = {}
_memo_table: dict | None = None


def kernel_digest() -> str:
    """A digest of the kernel source the timings are for (prelude included)."""
    from atrous_cl import ops

    return hashlib.sha256(runtime.program_source(ops._KERNEL_FILE).encode()).hexdigest()[:16]


def _table() -> dict:
    global _loaded
    with _lock:
        if _loaded is None:
            digest = kernel_digest()
            try:
                data = json.loads(cache_path().read_text())
                current = data.get("version") == _CACHE_VERSION and data.get("kernel") == digest
                _loaded = data if current else {}
            except (OSError, ValueError):
                _loaded = {}
            _loaded.setdefault("version", _CACHE_VERSION)
            _loaded.setdefault("kernel", digest)
            _loaded.setdefault("devices", {})
        return _loaded


def tile_for(device: cl.Device, dtype, args) -> Tile:
    """The tuned tile for this problem on this device, else :func:`default_tile`.

    Answers are remembered for the table they came from: a table read afresh
    or a new winner stored starts a new memo.
    """
    global _memo, _memo_table
    table = _table()
    key = (device, np.dtype(dtype), args)
    with _lock:  # _store changes the table under it: a lookup never straddles a store
        if _memo_table is not table:
            _memo, _memo_table = {}, table
        tile = _memo.get(key)
        if tile is None:
            tuned = table["devices"].get(device_key(device))
            entry = tuned and tuned.get(shape_class(dtype, args.value_shape, args.filters_shape,
                                                    args.rate))
            tile = Tile(*entry["tile"]) if entry else default_tile(device, dtype, args.filters_shape[2])
            if len(_memo) < 1024:
                _memo[key] = tile
    return tile


def _store(device: cl.Device, key: str, tile: Tile, timings: dict[str, float]) -> None:
    global _memo_table
    table = _table()
    with _lock:
        _memo_table = None  # the memo no longer describes the table
        table["devices"].setdefault(device_key(device), {})[key] = {
            "tile": list(tile), "ms": {k: round(v * 1e3, 4) for k, v in timings.items()}}
        path = cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, path)


def tune(queue: cl.CommandQueue, value_shape, filters_shape, rate: int, padding: str,
         dtype=np.float32, repeats: int = 5,
         progress: Callable[[Tile], None] | None = None) -> tuple[Tile, dict[str, float]]:
    """Time every candidate tile on random data and cache the fastest.

    Each candidate is checked against the default tile's result before it is
    timed, so a miscompiled variant can never win.

    Returns:
        The winning tile and the median seconds of each candidate.
    """
    import pyopencl.array as cl_array

    from atrous_cl import ops, validation

    dtype = validation.check_dtypes(dtype, dtype)
    runtime.check_dtype_support(queue.device, dtype)
    kh, kw, cout, _ = filters_shape
    output_shape = (value_shape[0], *_geometry_hw(value_shape, filters_shape, rate, padding), cout)
    args = validation.check_transpose_args(value_shape, filters_shape, output_shape, rate, padding)
    rng = np.random.default_rng()
    value = cl_array.to_device(queue, rng.standard_normal(args.value_shape).astype(dtype))
    filters = cl_array.to_device(queue, rng.standard_normal(args.filters_shape).astype(dtype))
    out = cl_array.empty(queue, args.output_shape, dtype)
    ops._launch(queue, value, filters, out, args, default_tile(queue.device, dtype, cout))
    expected = out.get()
    scale = max(float(np.max(np.abs(expected.astype(np.float64)))), 1e-30) if expected.size else 1.0
    timings: dict[str, float] = {}
    for tile in candidates(queue.device, dtype, cout):
        if progress:
            progress(tile)
        runtime.fill(queue, out, np.nan)
        ops._launch(queue, value, filters, out, args, tile)
        got = out.get().astype(np.float64)
        if got.size and not np.max(np.abs(got - expected)) <= 1e-2 * scale:
            continue  # a wrong answer is never fast enough
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            ops._launch(queue, value, filters, out, args, tile)
            queue.finish()
            samples.append(time.perf_counter() - start)
        timings[str(tile)] = statistics.median(samples)
    best = Tile(*map(int, min(timings, key=timings.get).split("x")))
    _store(queue.device, shape_class(dtype, args.value_shape, args.filters_shape, args.rate),
           best, timings)
    return best, timings


def _geometry_hw(value_shape, filters_shape, rate, padding):
    from atrous_cl import geometry

    return geometry.transpose_output_hw(tuple(value_shape[1:3]), tuple(filters_shape[:2]), rate, padding)
