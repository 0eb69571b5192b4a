# SPDX-License-Identifier: Apache-2.0
"""A huge image and a large batch through atrous_cl.dask on a LocalCluster, with bounded memory.

``python benchmarks/bench_dask.py [--size 16384] [--channels 8] [--chunk 1024] [--workers 2]
[--batch 64 --batch-size 512] [--skip-huge] [--skip-batch]``

Huge image: a ``1 x size x size x channels`` float32 input drawn lazily by
``dask.array.random`` (never materialised: 8 GiB at the defaults) goes through
``atrous_conv2d_transpose`` (3x3 filters, rate 2, SAME) chunk by chunk, and
every output block is reduced to its float64 sum in the worker, so nothing
large is ever held or sent. Reported: wall time, GFLOP/s (``2 * N * H * W *
Cin * Cout * kh * kw``), the same graph with the op replaced by a copy (the
cost of drawing the input and reducing it), the single-call op on one
``chunk x chunk`` tile in this process, and the peak RSS of every worker
(sampled every 20 ms by a thread in each worker process). One interior tile's
Dask result is checked against the single call on its window.

Large batch: ``batch`` images of ``batch-size^2 x channels``, one image per
chunk, spread over the workers, against the single call on the whole batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import numpy as np


def _start_sampler(dask_worker, period: float = 0.02) -> int:
    """In a worker: a daemon thread that records the process's peak RSS on the worker object."""
    import psutil

    proc = psutil.Process()
    state = dask_worker._atrous_cl_rss = {"peak": proc.memory_info().rss}

    def sample():
        while True:
            state["peak"] = max(state["peak"], proc.memory_info().rss)
            time.sleep(period)

    threading.Thread(target=sample, daemon=True).start()
    return state["peak"]


def _reset_sampler(dask_worker) -> int:
    import psutil

    dask_worker._atrous_cl_rss["peak"] = psutil.Process().memory_info().rss
    return dask_worker._atrous_cl_rss["peak"]


def _peak_rss(dask_worker) -> int:
    return dask_worker._atrous_cl_rss["peak"]


def _warm_up(chunk: int, channels: int) -> None:
    """In a worker: make its OpenCL queue and build the op's program, outside the timings."""
    import atrous_cl

    tile = np.zeros((1, chunk, chunk, channels), np.float32)
    filters = np.zeros((3, 3, channels, channels), np.float32)
    atrous_cl.atrous_conv2d_transpose(tile, filters, (1, chunk + 4, chunk + 4, channels), 2, "VALID")


def _block_sums(y):
    """Each output block reduced to its float64 sum, in the worker that made it."""
    return y.map_blocks(lambda b: np.full((1, 1, 1, 1), b.sum(dtype=np.float64)),
                        chunks=(1, 1, 1, 1), dtype=np.float64)


def _copy_op(x, filters, rate, padding, device=None):
    """The same chunked graph shape with no convolution: input drawing and reduction cost only."""
    return x.map_blocks(lambda b: b.copy(), dtype=x.dtype)


def _time(fn, repeat: int) -> float:
    fn()  # warm-up: program build, first allocation
    return statistics.median(_timed(fn) for _ in range(repeat))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def huge_image(client, args, filters) -> None:
    import dask.array as da

    import atrous_cl
    import atrous_cl.dask as adask

    n, s, c, t = 1, args.size, args.channels, args.chunk
    x = da.random.default_rng(0).random((n, s, s, c), chunks=(1, t, t, c), dtype=np.float32)
    flops = 2 * n * s * s * c * c * 9
    print(f"huge image: {n}x{s}x{s}x{c} float32 ({_gib(x.nbytes)}, never materialised), "
          f"chunks {t}x{t} ({x.numblocks[1] * x.numblocks[2]} blocks), 3x3 filters, rate 2, SAME, "
          f"{args.workers} process workers x 1 thread")

    # Single call on one tile, in this process, on the default device.
    rng = np.random.default_rng(1)
    tile = rng.random((1, t, t, c), dtype=np.float32)
    single = _time(lambda: atrous_cl.atrous_conv2d_transpose(tile, filters, tile.shape, 2, "SAME"), 5)
    tile_flops = 2 * t * t * c * c * 9
    print(f"  single call on one {t}x{t} tile: {single * 1e3:.1f} ms, "
          f"{tile_flops / single / 1e9:.1f} GFLOP/s")

    # Check one interior tile against the single call on its window (halo 2 per side).
    i0 = t * (x.numblocks[1] // 2)
    window = x[:, i0 - 2:i0 + t + 2, i0 - 2:i0 + t + 2].compute()
    want = atrous_cl.atrous_conv2d_transpose(window, filters, window.shape, 2, "SAME")[:, 2:-2, 2:-2]
    got = adask.atrous_conv2d_transpose(x, filters, 2, "SAME")[:, i0:i0 + t, i0:i0 + t].compute()
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    print(f"  interior tile vs the single call on its window: max relative difference {err:.2g}")

    walls = {}
    for label, fn in (("input drawn and reduced, no op", _copy_op),
                      ("atrous_cl.dask.atrous_conv2d_transpose", adask.atrous_conv2d_transpose)):
        client.run(_reset_sampler)
        sums = _block_sums(fn(x, filters, 2, "SAME"))
        t0 = time.perf_counter()
        total = float(sums.sum().compute())
        wall = walls[fn] = time.perf_counter() - t0
        peaks = client.run(_peak_rss)
        peak_text = ", ".join(_gib(p) for p in peaks.values())
        rate = f", {flops / wall / 1e9:.1f} GFLOP/s" if fn is not _copy_op else ""
        print(f"  {label}: {wall:.1f} s{rate}; checksum {total:.6g}; peak RSS per worker {peak_text}")
    extra = walls[adask.atrous_conv2d_transpose] - walls[_copy_op]
    print(f"  the op's share (difference of the two): {extra:.1f} s, {flops / extra / 1e9:.1f} GFLOP/s")


def large_batch(client, args) -> None:
    import dask.array as da
    from distributed import wait

    import atrous_cl
    import atrous_cl.dask as adask

    b, s, c = args.batch, args.batch_size, args.channels
    # Drawn in the workers, one image per chunk; the same values drawn here for the single call.
    x = da.random.default_rng(2).random((b, s, s, c), chunks=(1, s, s, c), dtype=np.float32)
    value = x.compute()
    filters = np.random.default_rng(4).random((3, 3, c, c), dtype=np.float32)
    flops = 2 * b * s * s * c * c * 9
    print(f"large batch: {b}x{s}x{s}x{c} float32 ({_gib(value.nbytes)}), one image per chunk, "
          f"{args.workers} process workers")
    single = _time(lambda: atrous_cl.atrous_conv2d_transpose(value, filters, value.shape, 2, "SAME"), 3)
    print(f"  single call on the whole batch, this process: {single:.2f} s, "
          f"{flops / single / 1e9:.1f} GFLOP/s")
    # Drawn in the workers before the clock starts, as the single call's input is.
    x = x.persist()
    wait(x)
    client.run(_reset_sampler)
    y = adask.atrous_conv2d_transpose(x, filters, 2, "SAME")
    t0 = time.perf_counter()
    got = y.compute()
    wall = time.perf_counter() - t0
    sums = _block_sums(y)
    t0 = time.perf_counter()
    sums.compute()
    reduced = time.perf_counter() - t0
    want = atrous_cl.atrous_conv2d_transpose(value, filters, value.shape, 2, "SAME")
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    peaks = ", ".join(_gib(p) for p in client.run(_peak_rss).values())
    print(f"  atrous_cl.dask, result gathered to this process: {wall:.2f} s, "
          f"{flops / wall / 1e9:.1f} GFLOP/s; max relative difference to the single call {err:.2g}")
    print(f"  atrous_cl.dask, each image reduced in its worker: {reduced:.2f} s, "
          f"{flops / reduced / 1e9:.1f} GFLOP/s; peak RSS per worker {peaks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GiB", help="per worker")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--skip-huge", action="store_true")
    parser.add_argument("--skip-batch", action="store_true")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    import atrous_cl

    print(f"default device: {atrous_cl.get_queue().device.name.strip()}; "
          f"{os.cpu_count()} CPUs; PYOPENCL_CTX={os.environ.get('PYOPENCL_CTX')}")
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      memory_limit=args.memory_limit, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        base = client.run(_start_sampler)
        print(f"  worker RSS at start: {', '.join(_gib(p) for p in base.values())}")
        client.run(_warm_up, args.chunk, args.channels)
        client.run(_warm_up, args.batch_size, args.channels)
        filters = np.random.default_rng(3).random((3, 3, args.channels, args.channels), dtype=np.float32)
        if not args.skip_huge:
            huge_image(client, args, filters)
        if not args.skip_batch:
            large_batch(client, args)


if __name__ == "__main__":
    main()
