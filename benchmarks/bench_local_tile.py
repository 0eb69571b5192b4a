# SPDX-License-Identifier: Apache-2.0
"""The local-memory (GPU) kernel against the register-tile kernel, device API, on one device.

``python benchmarks/bench_local_tile.py [--device P:D] [--rounds 7] [--workloads A,B,C,D,E,F]
[--tiles 16x16x1/1x4,...]``

Per workload of ``atrous-cl bench`` (float32, device arrays, the op's launch
only: repack + main kernel, no transfers), the samples are interleaved: each
round times ``tuning.transpose`` with its tuned or default tile and
``local_tile.launch`` with each tile asked for (default: its default tile), in
a new random order. A sample is a block of launches of at least 20 ms, ended by
``queue.finish()``. Prints the median ms per launch, GFLOP/s and the median
per-round ratio t_ops / t_local (above 1: the local kernel is faster). Each
local result is first checked against the register-tile kernel's.
"""

from __future__ import annotations

import argparse
import random
import statistics

import numpy as np
import pyopencl.array as cl_array

import atrous_cl
from atrous_cl import bench, local_tile, tuning
from atrous_cl.validation import check_transpose_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workloads", default="A,B,C,D,E,F")
    parser.add_argument("--tiles", default=None, help="comma-separated SxWxH/PxC tiles")
    opts = parser.parse_args()
    queue = atrous_cl.get_queue(device=opts.device)
    print(f"device: {queue.device.name.strip()} ({queue.device.platform.name.strip()})")
    rng = np.random.default_rng(0)
    for w in (w for w in bench.WORKLOADS if w.name in opts.workloads.split(",")):
        value = cl_array.to_device(queue, rng.standard_normal((w.n, w.h, w.w, w.cin), np.float32))
        filters = cl_array.to_device(queue, rng.standard_normal((w.k, w.k, w.cout, w.cin),
                                                                np.float32))
        args = check_transpose_args(value.shape, filters.shape, w.output_shape, w.rate, w.padding)
        out = cl_array.empty(queue, w.output_shape, np.float32)
        tiles = ([local_tile.LocalTile.parse(t) for t in opts.tiles.split(",")] if opts.tiles else
                 [local_tile.default_tile(queue.device, np.float32, w.cout)])
        calls = {"ops": lambda: tuning.transpose(queue, value, filters, out, args)}
        calls["ops"]()
        want = out.get()
        for tile in tiles:
            calls[str(tile)] = lambda tile=tile: local_tile.launch(queue, value, filters, out, args,
                                                                   tile)
            calls[str(tile)]()
            np.testing.assert_allclose(out.get(), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        times = {name: [] for name in calls}
        for _ in range(opts.rounds):
            for name in random.sample(list(calls), len(calls)):
                times[name].append(bench.block_seconds(calls[name], queue.finish))
        print(f"{w.name} {w.describe()}")
        for name, samples in times.items():
            ms = statistics.median(samples) * 1e3
            line = f"  {name:>16}  {ms:8.3f} ms  {w.flops / ms / 1e6:7.1f} GFLOP/s"
            if name != "ops":
                ratio = statistics.median(o / s for o, s in zip(times["ops"], samples))
                line += f"  t_ops/t_local {ratio:.2f}"
            print(line)


if __name__ == "__main__":
    main()
