# SPDX-License-Identifier: Apache-2.0
"""Our exported model against tf2onnx's chain for the same op, in onnxruntime CPU.

tf2onnx (1.17) converts ``tf.nn.atrous_conv2d_transpose`` (SpaceToBatchND ->
Conv2DBackpropInput -> BatchToSpaceND in TF's graph) into a 9-node chain, 11
nodes when the batch is 1. :func:`tf2onnx_chain` rebuilds that chain with
``onnx.helper``, node for node as tf2onnx 1.17 writes it at opset 17, so the
benchmark needs neither TensorFlow nor tf2onnx.

Every model is checked against the NumPy reference before it is timed. Runs
are interleaved (one sample of each model per round, the order rotating every
round) and the median per model is reported after warm-up, with the ratio to
our model taken within each round: shared machines are noisy, so the ratios
are the figures to read, and nothing is asserted about time.

Usage::

    python benchmarks/bench_onnx.py [--threads 2] [--rounds 21] [--warmup 3] [--only A B]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from atrous_cl import geometry  # noqa: E402
from atrous_cl.reference import atrous_conv2d_transpose as reference  # noqa: E402
from onnx_export import DEFAULT_OPSET, export_atrous_conv2d_transpose  # noqa: E402

# name: (N, H, W, Cin, Cout, k, rate, padding)
OURS = "ours (ConvTranspose)"

WORKLOADS = {
    "A": (1, 64, 64, 64, 64, 3, 2, "SAME"),
    "B": (8, 32, 32, 128, 128, 3, 2, "SAME"),
    "C": (1, 128, 128, 32, 16, 3, 4, "SAME"),
    "D": (1, 256, 256, 16, 16, 5, 2, "VALID"),
    "E (small)": (1, 16, 16, 8, 8, 3, 2, "SAME"),
    "F (small)": (4, 20, 20, 16, 32, 4, 3, "SAME"),
}


def tf2onnx_chain(filters: np.ndarray, value_shape, rate: int, padding: str,
                  opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """tf2onnx 1.17's conversion of ``atrous_conv2d_transpose`` (rate > 1), rebuilt.

    TF pads the value so that ``rate`` divides it, moves the ``rate x rate``
    phases into the batch (SpaceToBatchND), runs an undilated VALID transposed
    conv, moves them back (BatchToSpaceND) and crops. tf2onnx writes
    SpaceToBatchND as Pad + Transpose + SpaceToDepth + Transpose and
    BatchToSpaceND as Transpose + DepthToSpace + Slice; for batch 1 its
    optimiser turns two of the Transposes into Reshapes and adds a Transpose
    around them (11 nodes).
    """
    n, h, w, cin = value_shape
    kh, kw, cout, _ = filters.shape
    if rate < 2:
        raise ValueError("tf2onnx converts rate 1 to a plain ConvTranspose; use rate >= 2")
    p = geometry.pads((kh, kw), rate, padding)
    extra_h, extra_w = (rate - h % rate) % rate, (rate - w % rate) % rate
    hp, wp = h + extra_h, w + extra_w
    oh, ow = geometry.transpose_output_hw((h, w), (kh, kw), rate, padding)
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [numpy_helper.from_array(np.ascontiguousarray(filters.transpose(3, 2, 0, 1)), "W"),
             i64("pads", [0, 0, 0, 0, 0, extra_h, extra_w, 0]),
             i64("starts", [p.top, p.left]), i64("ends", [p.top + oh, p.left + ow]),
             i64("axes", [2, 3])]
    nd = helper.make_node
    nodes = [nd("Pad", ["value", "pads"], ["padded"])]
    if n == 1:
        inits += [i64("shape_in", [cin, 1, hp, wp]), i64("shape_out", [1, cout, oh, ow])]
        nodes += [nd("Transpose", ["padded"], ["nchw"], perm=[0, 3, 1, 2]),
                  nd("Reshape", ["nchw", "shape_in"], ["cnhw"])]
    else:
        nodes += [nd("Transpose", ["padded"], ["cnhw"], perm=[3, 0, 1, 2])]
    nodes += [nd("SpaceToDepth", ["cnhw"], ["s2d"], blocksize=rate),
              nd("Transpose", ["s2d"], ["batched"], perm=[1, 0, 2, 3]),
              nd("ConvTranspose", ["batched", "W"], ["ct"], dilations=[1, 1], strides=[1, 1],
                 kernel_shape=[kh, kw], pads=[0, 0, 0, 0]),
              nd("Transpose", ["ct"], ["ct_t"], perm=[1, 0, 2, 3]),
              nd("DepthToSpace", ["ct_t"], ["d2s"], blocksize=rate),
              nd("Slice", ["d2s", "starts", "ends", "axes"], ["cropped"])]
    if n == 1:
        nodes += [nd("Reshape", ["cropped", "shape_out"], ["out_nchw"]),
                  nd("Transpose", ["out_nchw"], ["output"], perm=[0, 2, 3, 1])]
    else:
        nodes += [nd("Transpose", ["cropped"], ["output"], perm=[1, 2, 3, 0])]
    elem = helper.np_dtype_to_tensor_dtype(filters.dtype)
    graph = helper.make_graph(nodes, "tf2onnx_chain",
                              [helper.make_tensor_value_info("value", elem, list(value_shape))],
                              [helper.make_tensor_value_info("output", elem, [n, oh, ow, cout])],
                              inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model, full_check=True)
    return model


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    scale = max(float(np.abs(want).max(initial=0.0)), np.finfo(np.float64).tiny)
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max(initial=0.0)) / scale


def bench_workload(name, workload, args, rng):
    n, h, w, cin, cout, k, rate, padding = workload
    dtype = np.dtype(args.dtype)
    filters = rng.standard_normal((k, k, cout, cin)).astype(dtype)
    value = rng.standard_normal((n, h, w, cin)).astype(dtype)
    models = {
        OURS: export_atrous_conv2d_transpose(filters, value.shape, None, rate,
                                                               padding),
        "ours, conv_form": export_atrous_conv2d_transpose(filters, value.shape, None, rate,
                                                          padding, conv_form=True),
        "tf2onnx chain": tf2onnx_chain(filters, value.shape, rate, padding),
    }
    sessions = {m: session(model, args.threads) for m, model in models.items()}
    want = reference(value, filters, None or (n, *geometry.transpose_output_hw(
        (h, w), (k, k), rate, padding), cout), rate, padding)
    tol = 1e-5 if dtype == np.float32 else 1e-2
    for m, sess in sessions.items():
        err = rel_error(sess.run(None, {"value": value})[0], want)
        if not err <= tol:
            raise SystemExit(f"{name} {m}: output differs from the reference by {err:.3g} "
                             f"of its max (bound {tol:g})")
    feeds = {"value": value}
    for sess in sessions.values():
        for _ in range(args.warmup):
            sess.run(None, feeds)
    # A sample is the mean of `inner` back-to-back runs, enough for ~10 ms, so
    # that sub-millisecond workloads are not timer noise.
    t0 = time.perf_counter()
    sessions[OURS].run(None, feeds)
    inner = max(1, math.ceil(args.block_ms * 1e-3 / (time.perf_counter() - t0)))
    times = {m: [] for m in sessions}
    order = list(sessions)
    for r in range(args.rounds):
        for m in order[r % len(order):] + order[:r % len(order)]:
            run = sessions[m].run
            t0 = time.perf_counter()
            for _ in range(inner):
                run(None, feeds)
            times[m].append((time.perf_counter() - t0) / inner)
    flops = 2 * n * h * w * cin * cout * k * k
    rows = []
    for m, t in times.items():
        med = statistics.median(t)
        q1, _, q3 = statistics.quantiles(t, n=4)
        # Ratios are taken within a round, then the median: load that drifts
        # between rounds hits both sides of each ratio.
        ratio = statistics.median(a / b for a, b in zip(t, times[OURS]))
        rows.append(f"| {name} | {m} | {len(models[m].graph.node)} | {med * 1e3:.3f} | "
                    f"{(q3 - q1) / med * 100:.0f}% | {flops / med / 1e9:.1f} | {ratio:.2f} |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--rounds", type=int, default=21, help="timed runs per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per model first")
    parser.add_argument("--block-ms", type=float, default=10.0,
                        help="a timed sample repeats the model for about this long")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--only", nargs="*", help="workload names to run (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"onnxruntime {ort.__version__} CPUExecutionProvider, {args.threads} thread(s), "
          f"{args.dtype}, opset {DEFAULT_OPSET}, median of {args.rounds} interleaved samples "
          f"(each >= {args.block_ms:g} ms of back-to-back runs) after {args.warmup} warm-up; "
          f"{platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    print("FLOPs = 2*N*H*W*Cin*Cout*kh*kw. IQR: interquartile range over the median. "
          "'time vs ours': median over rounds of (model's time / ours' time in that round); "
          "below 1 is faster than ours.\n")
    print("| workload (N HxW Cin->Cout k rate padding) | model | nodes | median ms | IQR "
          "| GFLOP/s | time vs ours |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, wl in WORKLOADS.items():
        if args.only and name.split()[0] not in args.only:
            continue
        n, h, w, cin, cout, k, rate, padding = wl
        label = f"{name}: N{n} {h}x{w} {cin}->{cout} k{k} r{rate} {padding}"
        for row in bench_workload(label, wl, args, rng):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
