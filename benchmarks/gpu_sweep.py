# SPDX-License-Identifier: Apache-2.0
"""On a GPU: every kernel and tile of the op against PyTorch's cuDNN, in one process.

``python benchmarks/gpu_sweep.py [--device P:D] [--rounds 5] [--workloads A B C D E F]
[--shapes N,H,W,CIN,COUT,K,RATE,PADDING ...] [--local 16x16x1/1x4 ...] [--no-unpadded]``

Per workload (float32, device arrays), two measurements:

- throughput: blocks of launches of at least 20 ms ended by one wait, the
  median per launch over ``--rounds`` rounds in a new random order each: the
  register-tile kernel with each of its candidate tiles
  (:func:`atrous_cl.tiles.candidates`), the local-memory kernel with each local
  tile (``--local``, else a built-in list; the best four also without the
  staging's spare word, ``padded=False``), and cuDNN through
  ``torch.nn.functional.conv_transpose2d`` (TF32 off), the bench's peer;
- latency: single calls each followed by a wait (what ``atrous-cl bench``'s
  "on device" row times), the public device API with its chosen kernel, and
  the best register and local tiles of the sweep through their launchers,
  interleaved with cuDNN's, 200 each.

Each kernel's result is checked against cuDNN's (or the default register
tile's when torch has no GPU) before it is timed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
import pyopencl.array as cl_array

import atrous_cl
from atrous_cl import bench, launch, local_tile, tiles
from atrous_cl.validation import check_transpose_args

LOCAL = [f"{s}x{x}x{y}/{p}x{c}" for (x, y) in ((16, 16), (32, 8), (16, 8), (32, 4))
         for s in (1, 2) for p in (1, 2, 4) for c in (4, 8)]


def torch_call(wl, value, filters):
    """cuDNN's transposed convolution of the workload (NCHW, as the bench runs it):
    ``(call, wait, result)``, or None without a CUDA GPU."""
    torch = bench.cuda_torch()
    if torch is None:
        return None
    weight = torch.from_numpy(np.ascontiguousarray(filters.transpose(3, 2, 0, 1))).cuda()
    x = torch.from_numpy(np.ascontiguousarray(value.transpose(0, 3, 1, 2))).cuda()
    conv = bench.torch_conv_transpose(wl)

    def call():
        with torch.no_grad():
            return conv(x, weight)
    return call, torch.cuda.synchronize, lambda: call().permute(0, 2, 3, 1).cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workloads", nargs="*", default=None)
    parser.add_argument("--shapes", nargs="*", default=[])
    parser.add_argument("--local", nargs="*", default=LOCAL)
    parser.add_argument("--no-unpadded", action="store_true")
    parser.add_argument("--latency", type=int, default=200)
    opts = parser.parse_args()
    queue = atrous_cl.get_queue(device=opts.device)
    dev = queue.device
    print(f"device: {dev.name.strip()} ({dev.platform.name.strip()}, {dev.version.strip()}, "
          f"driver {dev.driver_version}), {dev.max_compute_units} units, local "
          f"{dev.local_mem_size} B", flush=True)
    rng = np.random.default_rng(0)
    for wl in bench.selected_workloads(opts.workloads, opts.shapes):
        value = rng.standard_normal((wl.n, wl.h, wl.w, wl.cin), np.float32)
        filters = rng.standard_normal((wl.k, wl.k, wl.cout, wl.cin), np.float32)
        d_value, d_filters = cl_array.to_device(queue, value), cl_array.to_device(queue, filters)
        args = check_transpose_args(value.shape, filters.shape, wl.output_shape, wl.rate, wl.padding)
        out = cl_array.empty(queue, wl.output_shape, np.float32)
        peer = torch_call(wl, value, filters)
        calls, waits = {}, {}
        default = tiles.default_for(dev, np.float32, args)
        if peer is not None:
            calls["cudnn"], waits["cudnn"], want_fn = peer
            want = want_fn()
        else:
            launch.transpose(queue, d_value, d_filters, out, args, default)
            want = out.get()
        scale = float(np.abs(want).max()) or 1.0
        register = tiles.candidates(dev, np.float32, wl.cout, filters.shape)
        for tile in register:
            calls[f"reg {tile}"] = (lambda t=tile: launch.transpose(queue, d_value, d_filters, out,
                                                                   args, t))
        local = {}
        for text in opts.local:
            tile = local_tile.LocalTile.parse(text)
            try:
                local_tile.check_tile(dev, tile)
                local_tile.build_options(np.float32, args, tile, budget=local_tile.local_budget(dev))
            except ValueError:
                continue
            local[f"loc {tile}"] = tile
            calls[f"loc {tile}"] = (lambda t=tile: local_tile.launch(queue, d_value, d_filters,
                                                                     out, args, t))
        print(f"\n{wl.name} {wl.describe()}: {wl.flops / 1e9:.3f} GFLOP, default {default}, "
              f"{len(calls)} candidates", flush=True)

        def checked(names):
            """``names`` whose launch builds, runs and matches ``want``; the others reported."""
            kept = []
            for name in names:
                try:
                    out.fill(np.float32(np.nan)).finish()
                    calls[name]()
                    got = out.get()
                except Exception as e:  # a tile that does not build or run here
                    print(f"  {name}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                err = float(np.max(np.abs(got - want))) / scale
                if not err < 1e-4:
                    print(f"  {name}: WRONG, max error {err:.2e} of the largest output", flush=True)
                    continue
                kept.append(name)
            return kept

        def sweep(names, rounds):
            times = {n: [] for n in names}
            for _ in range(rounds):
                for n in random.sample(names, len(names)):
                    times[n].append(bench.block_seconds(calls[n], waits.get(n, queue.finish)))
            return {n: statistics.median(t) for n, t in times.items()}

        t0 = time.perf_counter()
        names = checked([n for n in calls if n != "cudnn"]) + (["cudnn"] if peer else [])
        print(f"  built and checked in {time.perf_counter() - t0:.1f} s", flush=True)
        med = sweep(names, opts.rounds)
        if not opts.no_unpadded:
            best_local = sorted((n for n in med if n in local), key=med.get)[:4]
            for n in best_local:
                calls[f"unp {n[4:]}"] = (lambda t=local[n]: local_tile.launch(
                    queue, d_value, d_filters, out, args, t, padded=False))
            pairs = checked([f"unp {n[4:]}" for n in best_local])
            if pairs:
                med.update(sweep(pairs + [f"loc {n[4:]}" for n in pairs], opts.rounds))
        base = med.get("cudnn")
        for n in (["cudnn"] if base else []) + sorted((n for n in med if n != "cudnn"),
                                                      key=med.get)[:14]:
            ms = med[n] * 1e3
            line = f"  {n:>24} {ms:8.4f} ms {wl.flops / ms / 1e9:8.2f} TFLOP/s"
            if base and n != "cudnn":
                line += f"  cudnn/this {base / med[n]:.2f}"
            print(line, flush=True)
        reg_best = min((n for n in med if n.startswith("reg")), key=med.get, default=None)
        loc_best = min((n for n in med if n.startswith("loc")), key=med.get, default=None)
        print(f"  default reg {default}: {med.get(f'reg {default}', float('nan')) * 1e3:.4f} ms",
              flush=True)
        # Latency: one call, one wait.
        d_out = cl_array.empty(queue, wl.output_shape, np.float32)
        lat = {"api": lambda: atrous_cl.atrous_conv2d_transpose(
            d_value, d_filters, wl.output_shape, wl.rate, wl.padding, out=d_out)}
        for n in (reg_best, loc_best):
            if n:
                lat[n] = calls[n]
        if base:
            lat["cudnn"] = calls["cudnn"]
        samples = {n: [] for n in lat}
        for fn in lat.values():
            fn()
        queue.finish()
        for _ in range(opts.latency):
            for n in random.sample(list(lat), len(lat)):
                t = time.perf_counter()
                lat[n]()
                waits.get(n, queue.finish)()
                samples[n].append(time.perf_counter() - t)
        line = "  latency (one call + wait, median ms):"
        for n, s in samples.items():
            line += f" {n} {statistics.median(s) * 1e3:.4f};"
        print(line, flush=True)


if __name__ == "__main__":
    main()
