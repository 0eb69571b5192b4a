# SPDX-License-Identifier: Apache-2.0
"""How a run of calls warms up: the time of each call in a row, after an idle pause or after
onnxruntime's Conv form.

``python benchmarks/warm_up.py [--devices 2:0] [--workloads C] [--calls 10] [--repeats 30]``

For each device and workload: ``--repeats`` times, a pause of 5 ms (or one onnxruntime
Conv-form call, then no pause), then ``--calls`` host calls of our op in a row, each timed.
Prints the median of each position in the row, in ms: how many calls the driver's threads
take to reach their steady speed. NumPy's sgemm (OpenBLAS, whose threads spin between calls)
is printed alongside as a control. Needs the ``onnx`` extra.
"""

import argparse
import statistics
import time

import numpy as np

import atrous_cl
from atrous_cl import bench


def _rows(call, before, calls: int, repeats: int) -> list[float]:
    rows = []
    for _ in range(repeats):
        before()
        row = []
        for _ in range(calls):
            start = time.perf_counter()
            call()
            row.append(time.perf_counter() - start)
        rows.append(row)
    return [statistics.median(position) * 1e3 for position in zip(*rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["2:0"])
    parser.add_argument("--workloads", nargs="+", default=["C"])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    a = parser.parse_args()
    rng = np.random.default_rng(0)
    ort = bench.Impl(bench._onnxruntime("NCHW", conv_form=True), "NCHW")
    pause = lambda: time.sleep(0.005)
    m = rng.random((512, 512), dtype=np.float32)
    print("| what | before | ms per call, in order |")
    print("|---|---|---|")
    print(f"| numpy 512x512 sgemm | 5 ms idle | "
          f"{' '.join(f'{t:.2f}' for t in _rows(lambda: m @ m, pause, a.calls, a.repeats))} |")
    for wl in (w for w in bench.WORKLOADS if w.name in a.workloads):
        value = rng.standard_normal((wl.n, wl.h, wl.w, wl.cin)).astype(np.float32)
        filters = rng.standard_normal((wl.k, wl.k, wl.cout, wl.cin)).astype(np.float32)
        ort_call = ort.prepare(wl, value, filters)
        for selector in a.devices:
            queue = atrous_cl.get_queue(device=selector)
            ours = lambda: atrous_cl.atrous_conv2d_transpose(value, filters, wl.output_shape,
                                                              wl.rate, wl.padding, queue=queue)
            for name, before in (("5 ms idle", pause), ("an onnxruntime call", ort_call)):
                times = _rows(ours, before, a.calls, a.repeats)
                print(f"| {wl.name} on {selector} | {name} | {' '.join(f'{t:.2f}' for t in times)} |",
                      flush=True)


if __name__ == "__main__":
    main()
