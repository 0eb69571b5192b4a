# SPDX-License-Identifier: Apache-2.0
"""Where a host call's time goes, for small workloads (issue 13: E and F).

``python benchmarks/call_cost.py [--devices 2:0 1:0] [--workloads E F] [--calls 200]``

For each device and workload, medians over ``--calls`` calls of:

- ``call``: the whole host API call, back to back;
- ``call after ort``: the same, each right after an onnxruntime Conv-form call
  on the same workload (as in the interleaved bench: the driver's threads
  have gone to sleep meanwhile, or the cores are someone else's);
- ``call after 20 ms idle``: each after a sleep (``--pause``), when every
  step of the call runs from cold caches: the Python steps cost about ten
  times their warm time there;
- the host path's Python steps, each timed alone in a loop of its own
  (validation, queue, the prepared call's lookup, the input and result
  wrappers; and what the lookup spares: the tile and plan lookups);
- ``enqueue``: the launches' enqueue calls on a warm plan (the host filters
  compared against the last repacked, then the kernel enqueued), measured to
  the return of :func:`atrous_cl.launch.transpose`;
- ``wait``: from there to the result's ``get`` returning;
- ``kernel``: the main kernel's own duration from a profiling queue's event;
- ``empty kernel``: a one-work-item kernel enqueued and waited for, back to
  back: what the driver takes per command whatever the kernel;
- ``onnxruntime``: its Conv-form call back to back, for scale.

Nothing here asserts anything about time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pyopencl as cl

from atrous_cl import bench, calls, discovery, launch, local_tile, ops, tuning
from atrous_cl.validation import check_dtypes


def _median_us(fn, n: int) -> float:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def _loop_us(fn, n: int) -> float:
    """Per call, of ``n`` calls in one timed loop: for steps too short to time one by one."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def measure(device: cl.Device, wl: bench.Workload, value, filters, ort_call, n: int,
            pause: float = 0.02) -> dict:
    queue = discovery.get_queue(device=device)
    shape, rate, padding = wl.output_shape, wl.rate, wl.padding
    full = lambda: ops.atrous_conv2d_transpose(value, filters, shape, rate, padding,  # noqa: E731
                                               queue=queue)
    for _ in range(5):
        full()
    out = {"call": _median_us(full, n)}

    def after_ort():
        ort_call()
        start = time.perf_counter()
        full()
        return time.perf_counter() - start
    out["call after ort"] = statistics.median(after_ort() for _ in range(n)) * 1e6

    def after_idle():
        time.sleep(pause)
        start = time.perf_counter()
        full()
        return time.perf_counter() - start
    out[f"call after {pause * 1e3:.0f} ms idle"] = statistics.median(
        after_idle() for _ in range(min(n, 50))) * 1e6

    dtype = np.dtype(np.float32)
    args = ops._transpose_args(value.shape, filters.shape, shape, rate, padding)
    steps = (calls.Transpose(args),)
    inputs = {"value": value, "filters": filters}
    out["validate"] = _loop_us(lambda: (calls.host_or_device(value), calls.host_or_device(filters),
                                        check_dtypes(value.dtype, filters.dtype),
                                        ops._transpose_args(value.shape, filters.shape, shape,
                                                            rate, padding)), n * 10)
    out["queue_for"] = _loop_us(lambda: calls.queue_for((value, filters), queue, None, None), n * 10)
    out["prepared call lookup"] = _loop_us(
        lambda: calls.prepared(queue, dtype, steps, inputs, {"out": shape}, False), n * 10)
    out["queue.device"] = _loop_us(lambda: queue.device, n * 10)
    call = calls.prepared(queue, dtype, steps, inputs, {"out": shape}, False)
    in_place, svm, empty = call.in_place, call.svm, call.empties[0]
    lazy = "filters" in call.lazy  # copied only if repacked, where arrays are copied
    out["inputs + result wrappers"] = _loop_us(
        lambda: (calls.device_array(queue, "value", value, dtype, in_place, svm),
                 calls.device_array(queue, "filters", filters, dtype, in_place, svm, lazy=lazy),
                 calls.result(shape, dtype, queue, False, in_place, svm, empty)), n * 10)
    out["tile_for"] = _loop_us(lambda: tuning.tile_for(queue.device, dtype, args), n * 10)
    tile = tuning.tile_for(queue.device, dtype, args)
    wide = launch.widens_inputs(queue.device, dtype)
    if not isinstance(tile, local_tile.LocalTile):  # a tuned local tile's plan: local_tile.plan
        out["plan lookup"] = _loop_us(lambda: launch.plan(queue.context, queue.device, dtype, args,
                                                          tile, False, wide), n * 10)

    enq, wait = [], []
    for _ in range(n):
        v = calls.device_array(queue, "value", value, dtype, in_place, svm)
        f = calls.device_array(queue, "filters", filters, dtype, in_place, svm, lazy=lazy)
        r = calls.result(shape, dtype, queue, False, in_place, svm, empty)
        start = time.perf_counter()
        tuning.transpose(queue, v, f, r, args, tile)
        mid = time.perf_counter()
        r.get(queue)
        enq.append(mid - start)
        wait.append(time.perf_counter() - mid)
    out["enqueue (transpose())"] = statistics.median(enq) * 1e6
    out["wait (get)"] = statistics.median(wait) * 1e6

    prof = cl.CommandQueue(queue.context, queue.device,
                           properties=cl.command_queue_properties.PROFILING_ENABLE)
    kernel = []
    for _ in range(n):
        prof_empty = calls.prepared(prof, dtype, steps, inputs, {"out": shape}, False).empties[0]
        v = calls.device_array(prof, "value", value, dtype, in_place, svm)
        f = calls.device_array(prof, "filters", filters, dtype, in_place, svm, lazy=lazy)
        r = calls.result(shape, dtype, prof, False, in_place, svm, prof_empty)
        event = tuning.transpose(prof, v, f, r, args, tile)
        r.get(prof)
        kernel.append((event.profile.end - event.profile.start) * 1e-3)
    out["kernel (profiled)"] = statistics.median(kernel)

    # The driver's own floor per command: one work-item writing one float,
    # enqueued and waited for; and onnxruntime's whole call, for scale.
    empty_kernel = cl.Program(queue.context, _EMPTY_KERNEL).build().one
    one = cl.Buffer(queue.context, cl.mem_flags.READ_WRITE, 4)
    empty_kernel.set_args(one)

    def floor():
        cl.enqueue_nd_range_kernel(queue, empty_kernel, (1,), None)
        queue.finish()
    for _ in range(5):
        floor()
    out["empty kernel: enqueue + finish"] = _median_us(floor, n)
    for _ in range(5):
        ort_call()
    out["onnxruntime Conv form call"] = _median_us(ort_call, n)
    return out


_EMPTY_KERNEL = "__kernel void one(__global float *x) { x[0] = 1.0f; }"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["2:0", "1:0"])
    parser.add_argument("--workloads", nargs="+", default=["E", "F"])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--pause", type=float, default=0.02, help="seconds idle before the idle calls")
    args = parser.parse_args()
    ort = bench._onnxruntime("NCHW", conv_form=True)
    rng = np.random.default_rng(0)
    results = {}
    for wl in (w for w in bench.WORKLOADS if w.name in args.workloads):
        value, filters = bench.inputs("transpose", wl, rng)
        ort_call = ort(wl, value, filters)
        for sel in args.devices:
            results[wl.name, sel] = measure(discovery.select_device(sel), wl, value, filters,
                                            ort_call, args.calls, args.pause)
    keys = list(next(iter(results.values())))
    print("| us | " + " | ".join(f"{w} {s}" for w, s in results) + " |")
    print("|---" + "|---:" * len(results) + "|")
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{r[k]:.1f}" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
