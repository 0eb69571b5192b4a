# SPDX-License-Identifier: Apache-2.0
"""One channel in and out: the one-channel kernel against the register tiles.

``python benchmarks/one_channel.py [--devices 2:0 1:0] [--workloads F] [--rounds 15]``

For each device and dtype (float32, float64, float16 where supported), each
round runs both paths in a new order, 12 calls each (the first two dropped):
``launch.transpose`` on device arrays with a profiled queue (the main
kernel's own time from its event, and the whole launch-and-wait), and the
host API. The register tiles are what :func:`atrous_cl.launch.plan` builds
when :func:`atrous_cl.tiles.pixel_vector` says None. Prints medians in us.
"""

import argparse
import statistics
import time

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

import atrous_cl
from atrous_cl import bench, discovery, launch, reference, tuning
from atrous_cl.validation import check_transpose_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["2:0", "1:0"])
    parser.add_argument("--workloads", nargs="+", default=["F"])
    parser.add_argument("--rounds", type=int, default=15)
    a = parser.parse_args()
    pixels = launch.pixel_vector
    rng = np.random.default_rng(0)
    print("| device | workload | dtype | path | kernel us | launch+wait us | host call us |")
    print("|---|---|---|---|---|---|---|")
    for selector in a.devices:
        device = discovery.select_device(selector)
        context = cl.Context([device])
        queue = cl.CommandQueue(context, properties=cl.command_queue_properties.PROFILING_ENABLE)
        for wl in bench.WORKLOADS:
            if wl.name not in a.workloads:
                continue
            for dtype in (np.float32, np.float64, np.float16):
                if dtype == np.float64 and "cl_khr_fp64" not in device.extensions:
                    continue
                v = rng.standard_normal((wl.n, wl.h, wl.w, wl.cin)).astype(dtype)
                f = rng.standard_normal((wl.k, wl.k, wl.cout, wl.cin)).astype(dtype)
                args = check_transpose_args(v.shape, f.shape, wl.output_shape, wl.rate, wl.padding)
                want = reference.atrous_conv2d_transpose(v, f, wl.output_shape, wl.rate, wl.padding)
                dv, df = cl_array.to_device(queue, v), cl_array.to_device(queue, f)
                out = cl_array.empty(queue, wl.output_shape, dtype)
                tile = tuning.tile_for(device, dtype, args)
                times = {(path, what): [] for path in ("tiles", "one-channel")
                         for what in ("kernel", "launch", "host")}
                for r in range(a.rounds):
                    for path in (("tiles", "one-channel") if r % 2 else ("one-channel", "tiles")):
                        launch.pixel_vector = pixels if path == "one-channel" else (lambda d, t, f: None)
                        launch.plan.cache_clear()
                        for i in range(12):
                            queue.finish()
                            start = time.perf_counter()
                            event = launch.transpose(queue, dv, df, out, args, tile)
                            queue.finish()
                            took = time.perf_counter() - start
                            start = time.perf_counter()
                            host = atrous_cl.atrous_conv2d_transpose(v, f, wl.output_shape, wl.rate,
                                                                     wl.padding, queue=queue)
                            host_took = time.perf_counter() - start
                            if r == 0 and i == 0:
                                scale = np.max(np.abs(want.astype(np.float64)))
                                for got in (out.get(), host):
                                    err = np.max(np.abs(got.astype(np.float64) - want)) / scale
                                    if not err < (2e-3 if dtype == np.float16 else 1e-5):
                                        raise SystemExit(f"{path} {wl.name} {dtype}: error {err:.3g}")
                            if i > 1:
                                times[path, "kernel"].append((event.profile.end - event.profile.start) * 1e-3)
                                times[path, "launch"].append(took * 1e6)
                                times[path, "host"].append(host_took * 1e6)
                launch.pixel_vector = pixels
                launch.plan.cache_clear()
                for path in ("tiles", "one-channel"):
                    print(f"| {selector} | {wl.name} | {np.dtype(dtype).name} | {path} | "
                          + " | ".join(f"{statistics.median(times[path, w]):.1f}"
                                       for w in ("kernel", "launch", "host")) + " |", flush=True)


if __name__ == "__main__":
    main()
