# SPDX-License-Identifier: Apache-2.0
"""The Winograd kernel's groups and chunks against the direct kernel, kernels only.

``python benchmarks/winograd_groups.py [--device 2:0] [--dtype float32] [--mib 1000 12 6 3]
[--chunk 0 64] [--tiles 4x8x3w 3x8x3w] [--rounds 3] --shapes 1,64,64,768,768,3,2,SAME ...``

For each ``N,H,W,CIN,COUT,K,RATE,PADDING`` problem, times the launch layer (repack, main
kernel, wait; :func:`atrous_cl.launch.plan` and its launch, on arrays already on the
device) with the direct kernel's default tile and with each Winograd tile (default:
:func:`atrous_cl.tiles.winograd_tile`'s) for each ``--mib`` limit on a group's transformed
filters (:func:`atrous_cl.tiles.winograd_group_bytes`'s first limit, on every device; its
second, all the filters in one group, is set to 0, so every limit splits) and each ``--chunk``: input channels a work-group
transforms at once (0: :func:`atrous_cl.tiles.winograd_split`'s; else at most that many, a
multiple of the tile's vector, where the local memory holds them with the group's
products), interleaved round by round in a new order each round.
Every plan's result is checked against the NumPy reference first. Prints the median ms of
each and its time over the direct kernel's, with its split (``c`` input channels a chunk,
``g`` output channels a group). A Winograd tile the device's local memory cannot hold is
left out.
"""

import argparse
import functools
import statistics
import time

import numpy as np
import pyopencl.array as cl_array

import atrous_cl
from atrous_cl import bench, geometry, launch, reference, tiles, validation


def _split(chunk, filters_shape, tile, dtype, local_mem, device=None):
    """:func:`atrous_cl.tiles.winograd_split` with at most ``chunk`` input channels a chunk
    (0: its own), or None where the local memory does not hold them."""
    split = tiles.winograd_split(filters_shape, tile, dtype, local_mem, device)
    if not chunk or split is None:
        return split
    cinp = -(-filters_shape[3] // tile.channels) * tile.channels
    chunk = min(cinp, max(tile.channels, chunk // tile.channels * tile.channels))
    split = split._replace(chunk=min(chunk, split.chunk))
    return split if tiles.winograd_local_bytes(tile, tiles.winograd_parts(*filters_shape[:2]),
                                               split, filters_shape[3], dtype) <= local_mem else None


def plans(queue, dtype, args, tile_list, limits, chunks=(0,)) -> dict:
    """{name: plan}: the direct kernel's default tile, then each Winograd tile per limit
    and chunk size."""
    device, wide = queue.device, launch.widens_inputs(queue.device, dtype)
    direct = tiles.default_tile(device, dtype, args.filters_shape[2])
    if direct == tiles._NARROW_DIRECT._replace(channels=direct.channels):
        direct = tiles._five_pixels(args, direct)
    found = {f"direct {direct}": launch.plan(queue.context, device, dtype, args, direct, False, wide)}
    saved = tiles.winograd_group_bytes, launch.winograd_split
    try:
        for tile in tile_list:
            if tile is None or not launch.winograd_runs(device, dtype, args, tile):
                continue
            for mib in limits:
                # Every limit splits, on every device (one group: --mib 1000).
                tiles.winograd_group_bytes = lambda device, mib=mib: (mib << 20, 0)
                for chunk in chunks:
                    launch.winograd_split = functools.partial(_split, chunk)
                    ran = tile._replace(pixels=min(tile.pixels, geometry.phase_blocks(
                        args.output_shape[2], launch.kernel_dilation(args)[2])))  # as plan does
                    split = launch.winograd_split(args.filters_shape, ran, dtype,
                                                  device.local_mem_size, device)
                    if split is None or not launch.winograd_runs(device, dtype, args, tile):
                        continue  # the plan would run the direct kernel
                    launch.plan.cache_clear()
                    found[f"{tile} {mib} MiB c{split.chunk} g{split.group}"] = launch.plan(
                        queue.context, device, dtype, args, tile, False, wide)
    finally:
        tiles.winograd_group_bytes, launch.winograd_split = saved
        launch.plan.cache_clear()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="2:0")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--mib", nargs="+", type=int, default=[1000, 12, 6, 3])
    parser.add_argument("--chunk", nargs="+", type=int, default=[0])
    parser.add_argument("--tiles", nargs="*", help="Winograd tiles (default: the device's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", required=True, help="N,H,W,CIN,COUT,K,RATE,PADDING")
    a = parser.parse_args()
    queue = atrous_cl.get_queue(device=a.device)
    dtype = np.dtype(a.dtype)
    tol = {np.float16: 1e-2, np.float32: 1e-5, np.float64: 1e-12}[dtype.type]
    for text in a.shapes:
        wl = bench.parse_workload(text)
        rng = np.random.default_rng(0)
        value = rng.standard_normal((wl.n, wl.h, wl.w, wl.cin)).astype(dtype)
        filters = rng.standard_normal((wl.k, wl.k, wl.cout, wl.cin)).astype(dtype)
        args = validation.check_transpose_args(value.shape, filters.shape, wl.output_shape,
                                               wl.rate, wl.padding)
        want = reference.atrous_conv2d_transpose(value, filters, wl.output_shape, wl.rate,
                                                 wl.padding)
        scale = float(np.max(np.abs(want)))
        v, f = cl_array.to_device(queue, value), cl_array.to_device(queue, filters)
        out = cl_array.empty(queue, wl.output_shape, dtype)
        tile_list = ([tiles.Tile.parse(t) for t in a.tiles] if a.tiles
                     else [tiles.winograd_tile(queue.device, dtype, filters.shape)])
        found = plans(queue, dtype, args, tile_list, a.mib, a.chunk)
        for name, p in found.items():
            launch._launch(p, queue, v, f, out)
            err = np.max(np.abs(out.get().astype(np.float64) - want)) / scale
            if not err < tol:
                raise RuntimeError(f"{name} on {text}: error {err:.2e}")
        samples = {name: [] for name in found}
        names, order = list(found), np.random.default_rng(1)
        for r in range(a.rounds + 1):
            for i in order.permutation(len(names)):
                start = time.perf_counter()
                launch._launch(found[names[i]], queue, v, f, out)
                queue.finish()
                if r:
                    samples[names[i]].append(time.perf_counter() - start)
        ms = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
        base = ms[names[0]]
        print(f"{a.device} {dtype.name} {text}: "
              + "  ".join(f"{name} {t:.1f} ({t / base:.2f})" for name, t in ms.items()), flush=True)


if __name__ == "__main__":
    main()
