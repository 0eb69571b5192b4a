# SPDX-License-Identifier: Apache-2.0
"""tf2onnx's models against their folds, in onnxruntime and OpenVINO (CPU).

For every model in ``tests/models`` (tf2onnx 1.17's conversions): the model as
tf2onnx wrote it, :func:`onnx_export.fold_atrous_chains` of it (default,
portable pads) and its Conv form (``conv_form=True``). Each is checked against
TF's outputs (``tests/models/*.npz``) before it is timed, on the largest batch
stored there. Samples are interleaved: every round times each variant once, in
a new seeded random order, and a sample is a block of calls long enough to be
measured (``--block-ms``). The table gives the median per variant and the
median over rounds of (original's time / variant's time) in the same round,
the figure to read on a shared machine. Nothing is asserted about time.

OpenVINO runs with ``INFERENCE_PRECISION_HINT=f32``: on CPUs with bf16
instructions it otherwise runs Conv in bf16 (3.6e-3 relative error measured).

Usage::

    python benchmarks/bench_fold.py [--threads 2] [--rounds 21] [--runtimes onnxruntime openvino]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import random
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from onnx_export import fold_atrous_chains  # noqa: E402

MODELS_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "models"
MODELS = ("single_b1", "single_b3_valid", "dynamic_even_odd", "decoder")
VARIANTS = ("tf2onnx", "folded", "folded, conv_form")
TOL = 1e-4


def variants(name: str) -> dict:
    model = onnx.load(MODELS_DIR / f"{name}.onnx")
    return {"tf2onnx": model, "folded": fold_atrous_chains(model),
            "folded, conv_form": fold_atrous_chains(model, conv_form=True)}


def onnxruntime_runner(model, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Spinning worker threads would steal the cores from the variant timed next.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = model.graph.input[0].name
    return lambda x: sess.run(None, {name: x})[0]


def openvino_runner(model, threads: int):
    import openvino as ov

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.onnx")
        onnx.save(model, path)
        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                         "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    out = compiled.output(0)
    return lambda x: request.infer([x])[out]


RUNTIMES = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}


def runtime_version(runtime: str) -> str:
    if runtime == "onnxruntime":
        import onnxruntime as ort
        return f"onnxruntime {ort.__version__}"
    import openvino as ov
    return f"OpenVINO {ov.get_version().split('-')[0]}"


def bench_model(name: str, runtime: str, args, order_rng) -> list[str]:
    data = np.load(MODELS_DIR / f"{name}.npz")
    batch = max(int(k[1:]) for k in data.files if k.startswith("x"))
    x, want = data[f"x{batch}"], data[f"y{batch}"].astype(np.float64)
    models = variants(name)
    runs = {}
    for v, model in models.items():
        run = RUNTIMES[runtime](model, args.threads)
        err = np.abs(run(x) - want).max() / np.abs(want).max()
        if err > TOL:
            raise SystemExit(f"{name} {v} in {runtime}: error {err:.3g} > {TOL:g}")
        runs[v] = run
    for run in runs.values():                        # warm-up
        for _ in range(args.warmup):
            run(x)
    t0 = time.perf_counter()
    runs["tf2onnx"](x)
    inner = max(1, round(args.block_ms * 1e-3 / max(time.perf_counter() - t0, 1e-6)))
    times = {v: [] for v in runs}
    for _ in range(args.rounds):
        order = list(runs)
        order_rng.shuffle(order)
        for v in order:
            t0 = time.perf_counter()
            for _ in range(inner):
                runs[v](x)
            times[v].append((time.perf_counter() - t0) / inner)
    nodes = " / ".join(str(len(m.graph.node)) for m in models.values())
    cells = [f"{statistics.median(times['tf2onnx']) * 1e3:.3f}"]
    for v in VARIANTS[1:]:
        speedup = statistics.median(a / b for a, b in zip(times["tf2onnx"], times[v]))
        cells.append(f"{statistics.median(times[v]) * 1e3:.3f} ({speedup:.2f}x)")
    shape = "x".join(map(str, x.shape))
    return [f"| {name} ({shape}) | {runtime} | {nodes} | " + " | ".join(cells) + " |"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--block-ms", type=float, default=20.0,
                        help="time one sample spans (several calls for a fast model)")
    parser.add_argument("--runtimes", nargs="+", choices=list(RUNTIMES), default=list(RUNTIMES))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round order")
    args = parser.parse_args(argv)
    order_rng = random.Random(args.seed)
    versions = ", ".join(runtime_version(r) for r in args.runtimes)
    print(f"{versions}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads; float32; median of {args.rounds} interleaved rounds, "
          f"shuffled order (seed {args.seed}); (Nx) = median over rounds of tf2onnx's time / "
          f"this variant's time")
    print("| model (input) | runtime | nodes (tf2onnx / folded / conv form) | tf2onnx ms | "
          "folded ms | folded, conv_form ms |")
    print("|---|---|---|---:|---:|---:|")
    for name in args.models:
        for runtime in args.runtimes:
            for line in bench_model(name, runtime, args, order_rng):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
