# SPDX-License-Identifier: Apache-2.0
"""How much slower a call is when it starts after an idle pause.

``python benchmarks/idle_start.py [--workloads C E] [--pause 0.02] [--calls 40]``

For each implementation ``atrous-cl bench`` knows (our op on each device,
onnxruntime, PyTorch, TensorFlow), the median time of ``--calls`` calls made
back to back, and of as many calls each made after sleeping ``--pause``
seconds. The interleaved benchmark sits between the two: each call there
starts after the other implementations' work.
"""

import argparse
import statistics
import time

import numpy as np

from atrous_cl import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="*", default=["C", "E"], metavar="NAME")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds idle before each call")
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    impls = bench.implementations()
    rng = np.random.default_rng(0)
    print(f"| workload | implementation | back to back, ms | after {args.pause * 1e3:.0f} ms idle, ms |")
    print("|---|---|---:|---:|")
    for wl in (w for w in bench.WORKLOADS if w.name in args.workloads):
        value = rng.standard_normal((wl.n, wl.h, wl.w, wl.cin)).astype(np.float32)
        filters = rng.standard_normal((wl.k, wl.k, wl.cout, wl.cin)).astype(np.float32)
        for name, impl in impls.items():
            call = impl.prepare(wl, value, filters)
            medians = []
            for pause in (0.0, args.pause):
                samples = []
                for i in range(args.calls + 3):  # 3 warm-up calls
                    if pause:
                        time.sleep(pause)
                    start = time.perf_counter()
                    call()
                    if i >= 3:
                        samples.append(time.perf_counter() - start)
                medians.append(statistics.median(samples) * 1e3)
            print(f"| {wl.name} | {name} | {medians[0]:.2f} | {medians[1]:.2f} |")


if __name__ == "__main__":
    main()
