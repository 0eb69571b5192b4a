# SPDX-License-Identifier: Apache-2.0
"""Host results in fine-grained SVM against host-pointer buffers, in one process.

``python benchmarks/svm_results_ab.py DEVICE [--workloads E F] [--rounds 41] [--calls 20]
[--after-ort] [--limit BYTES]``

Times the whole host call with :func:`atrous_cl.memory.result_allocator` as it
is ("svm") and replaced by one that always answers None ("hostptr": a result in
a ``CL_MEM_USE_HOST_PTR`` buffer, mapped before it is returned), alternating
which goes first (ABBA). Each round times a block of ``--calls`` calls per
variant and keeps its median; prints the medians over rounds and the median of
the within-round ratio svm / hostptr (below 1: SVM faster). ``--after-ort``
runs an onnxruntime Conv-form call before each timed call, as the interleaved
bench does; ``--limit`` sets :data:`atrous_cl.memory.SVM_RESULT_BYTES` for the
run. Only a device without system SVM (PoCL) takes the SVM path. Nothing here
asserts anything about time.
"""

import argparse
import statistics
import time

import numpy as np

from atrous_cl import bench, discovery, memory, ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device")
    parser.add_argument("--workloads", nargs="+", default=["E", "F"])
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--after-ort", action="store_true")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    if args.limit is not None:
        memory.SVM_RESULT_BYTES = args.limit
    variants = {"svm": memory.result_allocator, "hostptr": lambda queue, nbytes: None}
    queue = discovery.get_queue(device=args.device)
    ort = bench._onnxruntime("NCHW", conv_form=True) if args.after_ort else None
    print("| workload | svm us | hostptr us | svm / hostptr |")
    print("|---|---:|---:|---:|")
    for wl in (w for w in bench.WORKLOADS if w.name in args.workloads):
        value, filters = bench.inputs("transpose", wl, np.random.default_rng(0))
        before = ort(wl, value, filters) if ort else (lambda: None)
        shape = wl.output_shape
        call = lambda: ops.atrous_conv2d_transpose(value, filters, shape, wl.rate,  # noqa: E731
                                                   wl.padding, queue=queue)
        medians = {name: [] for name in variants}
        for r in range(args.rounds):
            for name in (list(variants) if r % 2 else list(variants)[::-1]):
                memory.result_allocator = variants[name]
                call()
                samples = []
                for _ in range(args.calls):
                    before()
                    start = time.perf_counter()
                    call()
                    samples.append(time.perf_counter() - start)
                medians[name].append(statistics.median(samples))
        memory.result_allocator = variants["svm"]
        ratio = statistics.median(a / b for a, b in zip(medians["svm"], medians["hostptr"]))
        print(f"| {wl.name} | {statistics.median(medians['svm']) * 1e6:.1f} | "
              f"{statistics.median(medians['hostptr']) * 1e6:.1f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
