# SPDX-License-Identifier: Apache-2.0
"""The ``atrous-cl`` command: ``devices``, ``demo``, ``export`` and ``fold``."""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

#: Relative error (max |got - want| / max |want|) the demo accepts per dtype.
DEMO_TOLERANCE = {"float16": 2e-3, "float32": 1e-5, "float64": 1e-12}


def _devices(args) -> int:
    from atrous_cl import runtime

    found = runtime.devices()
    if not found:
        print("no OpenCL device found; `pip install pocl-binary-distribution` gives a CPU device")
        return 1
    try:
        chosen, reason = runtime.default_device()
    except (ValueError, runtime.DeviceError) as e:
        chosen, reason = None, str(e)
    print(f"{'sel':<5} {'kind':<5} {'fp16':<5} {'fp64':<5} device (platform)")
    for d in found:
        mark = "*" if chosen is not None and d.device == chosen else " "
        print(f"{d.selector:<4}{mark} {d.kind:<5} {'yes' if d.fp16 else 'no':<5} "
              f"{'yes' if d.fp64 else 'no':<5} {d.name} ({d.platform})")
    print(f"default (*): {reason}. float16 runs on every device (stored as half, "
          "summed in float32); float64 needs fp64. Choose with PYOPENCL_CTX=P:D.")
    return 0


def _demo(args) -> int:
    import atrous_cl
    from atrous_cl import geometry, reference, runtime

    dtype = np.dtype(args.dtype)
    n, h, w, cin, cout, k = args.batch, args.size, args.size, args.channels, args.channels, args.kernel
    rng = np.random.default_rng()
    value = rng.standard_normal((n, h, w, cin)).astype(dtype)
    filters = rng.standard_normal((k, k, cout, cin)).astype(dtype)
    output_shape = (n, *geometry.transpose_output_hw((h, w), (k, k), args.rate, args.padding), cout)
    queue = runtime.get_queue(device=args.device)
    call = lambda: atrous_cl.atrous_conv2d_transpose(  # noqa: E731
        value, filters, output_shape, args.rate, args.padding, queue=queue)
    got = call()  # the first call builds the kernel
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        got = call()
        times.append(time.perf_counter() - start)
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, args.rate, args.padding)
    err = float(np.max(np.abs(got.astype(np.float64) - want)) / max(np.max(np.abs(want)), 1e-30))
    tol = DEMO_TOLERANCE[dtype.name]
    t = statistics.median(times)
    flops = 2 * n * h * w * cin * cout * k * k
    print(f"device:  {runtime.describe(queue.device)}")
    print(f"op:      atrous_conv2d_transpose value {value.shape} filters {filters.shape} -> "
          f"{tuple(output_shape)}, rate {args.rate}, {args.padding}, {dtype.name}")
    print(f"time:    {t * 1e3:.2f} ms median of {args.repeat} (the host API: NumPy "
          f"arrays in and out), {flops / t / 1e9:.1f} GFLOP/s")
    print(f"error:   {err:.2e} max relative to the NumPy reference (tolerance {tol:.0e})")
    ok = err <= tol
    print("result:  OK" if ok else "result:  FAILED: the device disagrees with the reference")
    return 0 if ok else 1


def _tune(args) -> int:
    from atrous_cl import bench, runtime, tuning

    queue = runtime.get_queue(device=args.device)
    if args.shape:
        n, h, w, cin, cout, k, rate = args.shape
        workloads = [bench.Workload("custom", n, h, w, cin, cout, k, rate, args.padding)]
    else:
        workloads = bench.WORKLOADS
    print(f"tuning on {runtime.describe(queue.device)}, {args.dtype}; cache {tuning.cache_path()}")
    for wl in workloads:
        best, timings = tuning.tune(queue, (wl.n, wl.h, wl.w, wl.cin), (wl.k, wl.k, wl.cout, wl.cin),
                                    wl.rate, wl.padding, args.dtype, repeats=args.repeat)
        default = tuning.default_tile(queue.device, args.dtype, wl.cout)
        t_best, t_default = timings[str(best)], timings.get(str(default))
        gain = f", {t_default / t_best:.2f}x the default {default}" if t_default else ""
        print(f"{wl.name}: {wl.describe()}: best tile {best} {t_best * 1e3:.2f} ms{gain} "
              f"({len(timings)} tried)")
    return 0


def _bench(args) -> int:
    from atrous_cl import bench

    workloads = [wl for wl in bench.WORKLOADS if not args.workloads or wl.name in args.workloads]
    times, ceiling = bench.run(workloads, rounds=args.rounds, back_to_back=args.back_to_back)
    print(bench.table(times, ceiling, workloads))
    if args.plot:
        bench.plot(times, args.plot, workloads)
        print(f"plot: {args.plot}")
    return 0


def _export(args) -> int:
    from onnx_export import cli as export_cli

    return export_cli.run(args)


def _fold(args) -> int:
    from onnx_export import cli as export_cli

    return export_cli.run_fold(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atrous-cl", description="TensorFlow-exact "
                                     "atrous_conv2d_transpose on OpenCL")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("devices", help="list OpenCL devices and the default").set_defaults(func=_devices)
    demo = sub.add_parser("demo", help="run a representative case on the default device and "
                                       "check it against the NumPy reference")
    demo.add_argument("--device", help="'P:D' platform:device indices (default: PYOPENCL_CTX "
                                       "or the best device found)")
    demo.add_argument("--dtype", default="float32", choices=sorted(DEMO_TOLERANCE))
    demo.add_argument("--batch", type=int, default=1)
    demo.add_argument("--size", type=int, default=64, help="input height and width")
    demo.add_argument("--channels", type=int, default=64, help="input and output channels")
    demo.add_argument("--kernel", type=int, default=3)
    demo.add_argument("--rate", type=int, default=2)
    demo.add_argument("--padding", default="SAME", choices=["SAME", "VALID"])
    demo.add_argument("--repeat", type=int, default=5)
    demo.set_defaults(func=_demo)
    tune = sub.add_parser("tune", help="search the kernel tile for some shapes on a device and "
                                       "cache the winners")
    tune.add_argument("--device", help="'P:D' platform:device indices (default: the default device)")
    tune.add_argument("--dtype", default="float32", choices=sorted(DEMO_TOLERANCE))
    tune.add_argument("--shape", type=int, nargs=7, metavar=("N", "H", "W", "CIN", "COUT", "K", "RATE"),
                      help="one problem to tune (default: the benchmark workloads)")
    tune.add_argument("--padding", default="SAME", choices=["SAME", "VALID"])
    tune.add_argument("--repeat", type=int, default=5, help="timed runs per candidate (median)")
    tune.set_defaults(func=_tune)
    bench = sub.add_parser("bench", help="time the op on every device against onnxruntime, "
                                         "PyTorch and TensorFlow where installed")
    bench.add_argument("--rounds", type=int, default=7, help="timed rounds (median) after 2 warm-ups")
    bench.add_argument("--workloads", nargs="*", metavar="NAME", help="subset, e.g. A B (default: all)")
    bench.add_argument("--plot", metavar="PNG", help="also draw the table (needs matplotlib)")
    bench.add_argument("--back-to-back", action="store_true",
                       help="run each implementation's rounds in a row (warm) instead of interleaved")
    bench.set_defaults(func=_bench)
    try:
        from onnx_export import cli as export_cli
    except ImportError:  # onnx is an optional extra
        export_cli = None
    export = sub.add_parser("export", help="export the op as an ONNX model (needs the onnx extra)")
    if export_cli is not None:
        export_cli.add_arguments(export)
    export.set_defaults(func=_export)
    fold = sub.add_parser("fold", help="fold tf2onnx's chains of the atrous ops in a model into "
                                       "one dilated node each (needs the onnx extra)")
    if export_cli is not None:
        export_cli.add_fold_arguments(fold)
    fold.set_defaults(func=_fold)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from atrous_cl.errors import AtrousCLError

    try:
        return args.func(args)
    except (ValueError, TypeError, AtrousCLError) as e:
        print(f"atrous-cl {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
