# SPDX-License-Identifier: Apache-2.0
"""Tiles against each other through the host API: ``python benchmarks/tile_ab.py``.

``python benchmarks/tile_ab.py DEVICE [--workloads A B] [--tiles 8x16 8x16x2]
[--dtype float32] [--rounds 15]``

Each tile (``PIXELSxCHANNELS`` or ``PIXELSxCHANNELSxVECTORS``, see
:class:`atrous_cl.tiles.Tile`) stands in for :func:`atrous_cl.tuning.tile_for`
in turn; every round runs every tile in a new order: one call to settle, then
three timed back to back (their mean). Prints each tile's median ms and its
ratio to the first tile's. Every tile's result is checked against the NumPy
reference before any timing. Where tiles need more output channels than a
workload has (more vectors than its channels fill), they compute padding.
"""

import argparse
import statistics
import time

import numpy as np

import atrous_cl
from atrous_cl import bench, calls, reference, tuning
from atrous_cl.tiles import Tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device")
    parser.add_argument("--workloads", nargs="+", default=["A", "B"])
    parser.add_argument("--tiles", nargs="+", default=["8x16", "8x16x2"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    queue = atrous_cl.get_queue(device=args.device)
    dtype = np.dtype(args.dtype)
    tiles = [Tile.parse(t) for t in args.tiles]
    rng = np.random.default_rng(0)
    real = tuning.tile_for
    try:
        for wl in (w for w in bench.WORKLOADS if w.name in args.workloads):
            value = rng.standard_normal((wl.n, wl.h, wl.w, wl.cin)).astype(dtype)
            filters = rng.standard_normal((wl.k, wl.k, wl.cout, wl.cin)).astype(dtype)
            want = reference.atrous_conv2d_transpose(value, filters, wl.output_shape, wl.rate,
                                                     wl.padding)

            def call(tile):
                tuning.tile_for = lambda *a, tile=tile: tile
                calls.forget_prepared()  # the memos hold the tile of the last call
                return atrous_cl.atrous_conv2d_transpose(value, filters, wl.output_shape, wl.rate,
                                                         wl.padding, queue=queue)

            for tile in tiles:
                err = np.max(np.abs(call(tile) - want)) / np.max(np.abs(want))
                if not err < (2e-3 if dtype == np.float16 else 1e-5):
                    raise RuntimeError(f"{tile} disagrees with the reference on {wl.name}: {err:.2e}")
            samples = {tile: [] for tile in tiles}
            for r in range(args.rounds):
                for i in np.random.default_rng(r).permutation(len(tiles)):
                    call(tiles[i])
                    start = time.perf_counter()
                    for _ in range(3):
                        atrous_cl.atrous_conv2d_transpose(value, filters, wl.output_shape, wl.rate,
                                                          wl.padding, queue=queue)
                    samples[tiles[i]].append((time.perf_counter() - start) / 3)
            base = statistics.median(samples[tiles[0]])
            print(args.device, wl.name, dtype.name, "  ".join(
                f"{t} {statistics.median(s) * 1e3:.3f} ({statistics.median(s) / base:.2f})"
                for t, s in samples.items()), flush=True)
    finally:
        tuning.tile_for = real
        calls.forget_prepared()


if __name__ == "__main__":
    main()
