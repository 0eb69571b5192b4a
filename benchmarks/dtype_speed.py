# SPDX-License-Identifier: Apache-2.0
"""float16 and float64 against float32: ``python benchmarks/dtype_speed.py [DEVICE...] [--workloads A C]``.

``[--op transpose|transpose_vjp|conv_vjp] [--rounds 15]``. Times the host API
(the op, or one of its vjps) per dtype on the benchmark workloads, interleaved
round by round (a new order each round), and prints the median ms and each
dtype's time over float32's. A device without fp64 is timed in float16 and
float32 only.
"""

import argparse
import statistics
import time

import numpy as np

import atrous_cl
from atrous_cl import bench, training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("devices", nargs="*", default=["2:0", "1:0"])
    parser.add_argument("--workloads", nargs="+", default=["A", "C"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--op", default="transpose", choices=["transpose", "transpose_vjp", "conv_vjp"])
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
            dy = rng.standard_normal(wl.output_shape)
            calls = {np.dtype(d).name: _call(args.op, wl, value.astype(d), filters.astype(d),
                                             dy.astype(d), queue)
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


def _call(op, wl, value, filters, dy, queue):
    """The host call that ``op`` times: the op (value in), or a vjp with ``dy`` (the
    op's output-shaped cotangent; the forward conv's input is then ``dy``'s shape)."""
    if op == "transpose":
        return lambda: atrous_cl.atrous_conv2d_transpose(value, filters, wl.output_shape, wl.rate,
                                                         wl.padding, queue=queue)
    if op == "transpose_vjp":
        return lambda: training.atrous_conv2d_transpose_vjp(value, filters, wl.output_shape,
                                                            wl.rate, wl.padding, dy, queue=queue)
    return lambda: training.atrous_conv2d_vjp(dy, filters, wl.rate, wl.padding, value,
                                              queue=queue)


if __name__ == "__main__":
    main()
