# SPDX-License-Identifier: Apache-2.0
"""Register tiles of the transpose kernel, kernel-only: ``python benchmarks/tile_sweep.py``.

``python benchmarks/tile_sweep.py [--devices 2:0 1:0] [--dtypes float64] [--workloads A C D]
[--shapes 1,128,128,32,4,5,2,SAME ...] [--tiles 8x16 8x8 4x16] [--rounds 9] [--kernel]``

For each device, dtype and workload, times the launch layer
(:func:`atrous_cl.launch.transpose`: repack, main kernel, wait) on arrays
already on the device with every candidate tile (:func:`atrous_cl.tiles.candidates`,
or ``--tiles``), interleaved round by round in a new order each round, and
prints the median ms of each tile and its time over the default tile's
(:func:`atrous_cl.tiles.default_tile`; marked ``*``). With ``--kernel``, the main kernel's
own time instead, from a profiling queue's event (no repack, no wait): for small problems,
where the driver's cost per command would hide the kernels' difference. That leaves out
float16's widening pass, which direct tiles take on devices that sum halves in float32 and
Winograd tiles never do: compare float16 without ``--kernel``. Every tile's result is
checked against the NumPy reference before it is timed. The tuning cache is not read or written.
``--shapes`` adds problems of its own, each ``N,H,W,CIN,COUT,K,RATE,PADDING`` (named
by that text), to the workloads named (none by default when shapes are given).
"""

import argparse
import statistics
import time

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

import atrous_cl
from atrous_cl import bench, launch, reference, tiles, validation


def sweep(queue, dtype, wl, tile_list, rounds: int, kernel: bool = False) -> dict:
    """Median seconds per tile for workload ``wl``; checks each tile's result first.
    ``kernel``: the main kernel's profiled time (``queue`` must profile)."""
    rng = np.random.default_rng(0)
    value = rng.standard_normal((wl.n, wl.h, wl.w, wl.cin)).astype(dtype)
    filters = rng.standard_normal((wl.k, wl.k, wl.cout, wl.cin)).astype(dtype)
    args = validation.check_transpose_args(value.shape, filters.shape, wl.output_shape, wl.rate,
                                           wl.padding)
    want = reference.atrous_conv2d_transpose(value, filters, wl.output_shape, wl.rate, wl.padding)
    scale = float(np.max(np.abs(want)))
    v, f = cl_array.to_device(queue, value), cl_array.to_device(queue, filters)
    out = cl_array.empty(queue, wl.output_shape, dtype)
    tol = {np.float16: 1e-2, np.float32: 1e-5, np.float64: 1e-12}[np.dtype(dtype).type]
    for tile in tile_list:
        launch.transpose(queue, v, f, out, args, tile)
        err = np.max(np.abs(out.get().astype(np.float64) - want)) / scale
        if not err < tol:
            raise RuntimeError(f"tile {tile} on {wl.name} {np.dtype(dtype).name}: error {err:.2e}")
    samples = {tile: [] for tile in tile_list}
    order = np.random.default_rng(1)
    for r in range(rounds + 1):
        for i in order.permutation(len(tile_list)):
            tile = tile_list[i]
            start = time.perf_counter()
            event = launch.transpose(queue, v, f, out, args, tile)
            queue.finish()
            took = (event.profile.end - event.profile.start) * 1e-9 if kernel else \
                time.perf_counter() - start
            if r:
                samples[tile].append(took)
    return {tile: statistics.median(s) for tile, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["2:0", "1:0"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--workloads", nargs="*", default=None,
                        help="of atrous-cl bench (default: A-F, none with --shapes)")
    parser.add_argument("--shapes", nargs="*", default=[], help="N,H,W,CIN,COUT,K,RATE,PADDING")
    parser.add_argument("--tiles", nargs="*", help="PxC tiles to time (default: the candidates)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--kernel", action="store_true",
                        help="the main kernel's profiled time, not the launch layer's (float16: without "
                             "the widening pass)")
    args = parser.parse_args()
    workloads = bench.selected_workloads(args.workloads, args.shapes)
    for device in args.devices:
        queue = atrous_cl.get_queue(device=device)
        if args.kernel:
            queue = cl.CommandQueue(queue.context, queue.device,
                                    properties=cl.command_queue_properties.PROFILING_ENABLE)
        for name in args.dtypes:
            dtype = np.dtype(name)
            for wl in workloads:
                default = tiles.default_tile(queue.device, dtype, wl.cout)
                tile_list = ([tiles.Tile.parse(t) for t in args.tiles] if args.tiles
                             else tiles.candidates(queue.device, dtype, wl.cout))
                tile_list = list(dict.fromkeys([default, *tile_list]))
                ms = sweep(queue, dtype, wl, tile_list, args.rounds, args.kernel)
                ranked = sorted(ms, key=ms.get)
                cells = "  ".join(f"{t}{'*' if t == default else ''} {ms[t] * 1e3:.3f} "
                                  f"({ms[t] / ms[default]:.2f})" for t in ranked[:8])
                print(f"{device} {name} {wl.name}: {cells}", flush=True)


if __name__ == "__main__":
    main()
