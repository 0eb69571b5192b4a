# SPDX-License-Identifier: Apache-2.0
"""float16 and float64 against float32: ``python benchmarks/dtype_speed.py [DEVICE...] [--workloads A C]``.

Times the host API per dtype on the benchmark workloads, interleaved round by
round (a new order each round), and prints the median ms and each dtype's time
over float32's. A device without fp64 is timed in float16 and float32 only.
"""

import argparse
import statistics
import time

import numpy as np

import atrous_cl
from atrous_cl import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("devices", nargs="*", default=["2:0", "1:0"])
    parser.add_argument("--workloads", nargs="+", default=["A", "C"])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for device in args.devices:
        queue = atrous_cl.get_queue(device=device)
        dtypes = [np.float16, np.float32] + (
            [np.float64] if "cl_khr_fp64" in queue.device.extensions.split() else [])
        for wl in bench.WORKLOADS:
            if wl.name not in args.workloads:
                continue
            value = rng.standard_normal((wl.n, wl.h, wl.w, wl.cin))
            filters = rng.standard_normal((wl.k, wl.k, wl.cout, wl.cin))
            calls = {np.dtype(d).name: (lambda v=value.astype(d), f=filters.astype(d):
                                        atrous_cl.atrous_conv2d_transpose(
                                            v, f, wl.output_shape, wl.rate, wl.padding, queue=queue))
                     for d in dtypes}
            samples = {name: [] for name in calls}
            for r in range(args.rounds + 2):
                for name in np.random.default_rng(r).permutation(list(calls)):
                    start = time.perf_counter()
                    calls[name]()
                    if r >= 2:
                        samples[name].append(time.perf_counter() - start)
            ms = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
            print(device, wl.name, "  ".join(f"{name} {t:.3f} ms ({t / ms['float32']:.2f}x)"
                                             for name, t in ms.items()), flush=True)


if __name__ == "__main__":
    main()
