# SPDX-License-Identifier: Apache-2.0
"""The ``atrous-cl`` command: ``devices``, ``demo``, ``tune``, ``bench``, ``export`` and ``fold``."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import threading
import time
import warnings

import numpy as np

#: Relative error (max |got - want| / max |want|) the demo accepts per dtype.
DEMO_TOLERANCE = {"float16": 2e-3, "float32": 1e-5, "float64": 1e-12}

#: Exit status of every error the user can fix, as argparse's own.
USAGE_ERROR = 2
#: Exit status after Ctrl-C, as a shell reports a process SIGINT ended (128 + 2).
INTERRUPTED = 130
#: Exit status after SIGTERM (``kill``, a job scheduler's time limit): 128 + 15.
TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM, raised where the command is (as Python raises KeyboardInterrupt for
    SIGINT), so that what it was writing is cleaned up: a model or plot half-written to
    its temporary file is removed, not left beside the destination. A BaseException, so
    that no ``except Exception`` on the way swallows it."""


@contextlib.contextmanager
def _sigterm_raises():
    """While the command runs, SIGTERM raises :class:`Terminated`; the previous handler
    is put back after (``main`` also runs inside other programs, e.g. the tests)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; SIGTERM keeps its own there
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def _warnings_as_lines(prog: str):
    """While the command runs, a warning prints as one line, ``atrous-cl tune: warning:
    ...``, as its errors do, not in Python's ``programs.py:230: RuntimeWarning: ...`` form
    followed by our source line, which tell a user of the command nothing. The previous
    handler is put back after. A warning that cannot be written (stderr closed, a full
    disk, a reader gone) is dropped, as Python's own handler drops it. In the main
    thread only, as :func:`_sigterm_raises`: the handler is the process's, and two
    commands run at once in other threads would put back each other's."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def show(message, category, filename, lineno, file=None, line=None):
        stream = sys.stderr if file is None else file
        try:
            print(f"{prog}: warning: {message}", file=stream)
        except (AttributeError, OSError, ValueError):  # None, gone, full or closed
            pass

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _escape_unencodable() -> None:
    """Print what the terminal's encoding cannot show as escapes: a file name that is not
    valid UTF-8 (Python holds its bytes as surrogates) failed the summary printed after
    the file was written, and so the command, under a strict UTF-8 stdout."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1 (argparse reports the ``ArgumentTypeError``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {value}")
    return value


def _physical_memory() -> int | None:
    """Bytes of RAM, where the OS says (POSIX); ``None`` elsewhere."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def demo_bytes(n: int, size: int, channels: int, kernel: int, rate: int, padding: str,
               dtype) -> int:
    """Host memory the demo allocates at once, in bytes (an upper estimate).

    Inputs and the device's result in ``dtype``; the NumPy reference's float64
    full (uncropped) result, its float64 copy of the input and one product;
    the float64 difference of the two results.
    """
    from atrous_cl import geometry

    item = np.dtype(dtype).itemsize
    oh, ow = geometry.transpose_output_hw((size, size), (kernel, kernel), rate, padding)
    full = size + (kernel - 1) * rate
    value, filters = n * size * size * channels, kernel * kernel * channels**2
    out = n * oh * ow * channels
    return (item * (value + filters + 2 * out) + 8 * (n * full * full * channels + 2 * value)
            + 8 * 2 * out)


def _devices(args) -> int:
    from atrous_cl import discovery
    from atrous_cl.errors import DeviceError

    found = discovery.devices()
    if not found:
        raise ValueError("no OpenCL device found; pip install 'atrous-cl[pocl]' gives a CPU "
                         "device")
    try:
        chosen, reason = discovery.default_device()
    except (ValueError, DeviceError) as e:
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
    from atrous_cl import geometry, reference
    from atrous_cl.discovery import get_queue
    from atrous_cl.facts import describe

    dtype = np.dtype(args.dtype)
    n, h, w, cin, cout, k = args.batch, args.size, args.size, args.channels, args.channels, args.kernel
    need, have = demo_bytes(n, h, cin, k, args.rate, args.padding, dtype), _physical_memory()
    if have is not None and need > have // 2:
        # Refused before anything is allocated: NumPy would raise MemoryError
        # at best, or the machine would swap.
        raise ValueError(f"this demo needs about {need / 2**30:.3g} GiB of memory, more than half "
                         f"of this machine's {have / 2**30:.3g} GiB; use a smaller --size, "
                         f"--channels, --batch, --kernel or --rate")
    rng = np.random.default_rng()
    value = rng.standard_normal((n, h, w, cin)).astype(dtype)
    filters = rng.standard_normal((k, k, cout, cin)).astype(dtype)
    output_shape = (n, *geometry.transpose_output_hw((h, w), (k, k), args.rate, args.padding), cout)
    queue = get_queue(device=args.device)
    call = lambda: atrous_cl.atrous_conv2d_transpose(  # noqa: E731
        value, filters, output_shape, args.rate, args.padding, queue=queue)
    got = call()  # the first call builds the kernel
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        got = call()
        times.append(time.perf_counter() - start)
    want = reference.atrous_conv2d_transpose(value, filters, output_shape, args.rate, args.padding)
    # In float64: float16's max(0, 1e-30) is 0 (NEP 50), and an all-zero result gave 0 / 0.
    want, got = want.astype(np.float64), got.astype(np.float64)
    err = float(np.max(np.abs(got - want), initial=0.0) / max(float(np.max(np.abs(want), initial=0.0)), 1e-30))
    tol = DEMO_TOLERANCE[dtype.name]
    t = statistics.median(times)
    flops = 2 * n * h * w * cin * cout * k * k
    print(f"device:  {describe(queue.device)}")
    print(f"op:      atrous_conv2d_transpose value {value.shape} filters {filters.shape} -> "
          f"{tuple(output_shape)}, rate {args.rate}, {args.padding}, {dtype.name}")
    print(f"time:    {t * 1e3:.2f} ms median of {args.repeat} (the host API: NumPy "
          f"arrays in and out), {flops / t / 1e9:.1f} GFLOP/s")
    print(f"error:   {err:.2e} max relative to the NumPy reference (tolerance {tol:.0e})")
    ok = err <= tol
    print("result:  OK" if ok else "result:  FAILED: the device disagrees with the reference")
    return 0 if ok else 1


def _tune(args) -> int:
    from atrous_cl import bench, tiles, tuning, validation
    from atrous_cl.discovery import get_queue
    from atrous_cl.facts import describe

    queue = get_queue(device=args.device)
    if args.shape:
        n, h, w, cin, cout, k, rate = args.shape
        workloads = [bench.Workload("custom", n, h, w, cin, cout, k, rate, args.padding)]
    else:
        workloads = bench.WORKLOADS
    print(f"tuning on {describe(queue.device)}, {args.dtype}; cache {tuning.cache_path()}")
    for wl in workloads:
        best, timings = tuning.tune(queue, (wl.n, wl.h, wl.w, wl.cin), (wl.k, wl.k, wl.cout, wl.cin),
                                    wl.rate, wl.padding, args.dtype, repeats=args.repeat)
        if not timings:
            print(f"{wl.name}: {wl.describe()}: nothing to tune: one channel in and out runs a "
                  f"kernel of {best.pixels}-pixel vectors, which has no tile")
            continue
        default = tiles.default_for(queue.device, args.dtype, validation.check_transpose_args(
            (wl.n, wl.h, wl.w, wl.cin), (wl.k, wl.k, wl.cout, wl.cin), wl.output_shape, wl.rate,
            wl.padding))
        t_best, t_default = timings[str(best)], timings.get(str(default))
        gain = f", {t_default / t_best:.2f}x the default {default}" if t_default else ""
        print(f"{wl.name}: {wl.describe()}: best tile {best} {t_best * 1e3:.2f} ms{gain} "
              f"({len(timings)} tried)")
    return 0


def _check_plot_path(path: str) -> None:
    """Refuse a ``--plot`` path matplotlib could not write, before the benchmark runs."""
    from onnx_export import saving

    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise ValueError("--plot needs matplotlib, the plot extra: "
                         "pip install 'atrous-cl[plot]'") from None
    formats = FigureCanvasBase.get_supported_filetypes()
    ext = os.path.splitext(path)[1][1:].lower()
    if ext not in formats:
        raise ValueError(f"--plot {path!r}: the file name must end in a format matplotlib "
                         f"writes ({', '.join('.' + f for f in sorted(formats))}), got "
                         f"{'.' + ext if ext else 'no extension'}")
    if os.path.isdir(path):
        raise ValueError(f"--plot {path!r} is a directory; give a file name such as plot.png")
    try:  # where the plot will be written (a symlink's target), as export's model
        folder = os.path.dirname(saving.save_target(path))
    except ValueError as e:  # a FIFO, device or socket
        raise ValueError(f"--plot {path!r} exists and is not a regular file") from e
    except PermissionError as e:  # a read-only file
        raise ValueError(f"--plot {path!r}: {e.strerror}") from e
    if not os.path.isdir(folder):
        raise ValueError(f"--plot {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--plot {path!r}: the folder {folder!r} is not writable")


def _bench(args) -> int:
    from atrous_cl import bench

    if args.plot is not None:  # "" too: refused, not ignored
        _check_plot_path(args.plot)
    workloads = [wl for wl in bench.WORKLOADS if not args.workloads or wl.name in args.workloads]
    times, ceiling = bench.run(workloads, rounds=args.rounds, back_to_back=args.back_to_back,
                               op=args.op)
    print(bench.table(times, ceiling, workloads, op=args.op))
    if args.plot is not None:
        bench.plot(times, args.plot, workloads, op=args.op)
        print(f"plot: {args.plot}")
    return 0


def _export(args) -> int:
    from onnx_export import cli as export_cli

    return export_cli.run(args)


def _fold(args) -> int:
    from onnx_export import cli as export_cli

    return export_cli.run_fold(args)


def _workload_names() -> list[str]:
    from atrous_cl import bench

    return [wl.name for wl in bench.WORKLOADS]


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
    demo.add_argument("--batch", type=_positive_int, default=1)
    demo.add_argument("--size", type=_positive_int, default=64, help="input height and width")
    demo.add_argument("--channels", type=_positive_int, default=64,
                      help="input and output channels")
    demo.add_argument("--kernel", type=_positive_int, default=3)
    demo.add_argument("--rate", type=_positive_int, default=2)
    demo.add_argument("--padding", default="SAME", choices=["SAME", "VALID"])
    demo.add_argument("--repeat", type=_positive_int, default=5)
    demo.set_defaults(func=_demo)
    tune = sub.add_parser("tune", help="search the kernel tile for some shapes on a device and "
                                       "cache the winners")
    tune.add_argument("--device", help="'P:D' platform:device indices (default: the default device)")
    tune.add_argument("--dtype", default="float32", choices=sorted(DEMO_TOLERANCE))
    tune.add_argument("--shape", type=_positive_int, nargs=7, metavar=("N", "H", "W", "CIN", "COUT", "K", "RATE"),
                      help="one problem to tune (default: the benchmark workloads)")
    tune.add_argument("--padding", default="SAME", choices=["SAME", "VALID"])
    tune.add_argument("--repeat", type=_positive_int, default=5,
                      help="timed runs per candidate (median)")
    tune.set_defaults(func=_tune)
    bench = sub.add_parser("bench", help="time the op on every device against onnxruntime, "
                                         "PyTorch and TensorFlow where installed")
    bench.add_argument("--rounds", type=_positive_int, default=7,
                       help="timed rounds (median) after 2 warm-ups")
    bench.add_argument("--workloads", nargs="*", metavar="NAME", choices=_workload_names(),
                       help="subset, e.g. A B (default: all)")
    bench.add_argument("--plot", metavar="PNG", help="also draw the table (needs matplotlib, "
                                                     "the plot extra)")
    bench.add_argument("--op", default="transpose", choices=["transpose", "transpose_vjp", "conv_vjp"],
                       help="what to time: the op, or one of its vjps (against PyTorch's "
                            "autograd backward)")
    bench.add_argument("--back-to-back", action="store_true",
                       help="run each implementation's rounds in a row (warm) instead of interleaved")
    bench.set_defaults(func=_bench)
    from onnx_export import cli as export_cli  # imports without onnx: the help always shows

    export = sub.add_parser("export", help="export the op as an ONNX model (needs the onnx extra)")
    export_cli.add_arguments(export)
    export.set_defaults(func=_export)
    fold = sub.add_parser("fold", help="fold tf2onnx's chains of the atrous ops in a model into "
                                       "one dilated node each (needs the onnx extra)")
    export_cli.add_fold_arguments(fold)
    fold.set_defaults(func=_fold)
    for command in sub.choices.values():  # main() reports stray arguments as the command's
        command.set_defaults(command_parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``atrous-cl``; return its exit status.

    0 on success; 2 for any error the user can fix, printed as one line
    ``atrous-cl <command>: error: ...`` (argparse's own errors exit 2 too);
    1 where a check fails (``demo``'s result disagrees with the reference,
    ``fold --check``'s folded model with the original);
    130 after Ctrl-C, 143 after SIGTERM, each with one line and no file
    half-written. A closed stdout (``atrous-cl devices | head -1``) ends
    the command quietly with status 1, as the Python docs' SIGPIPE recipe does.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    prog = f"atrous-cl {command}".rstrip()
    _escape_unencodable()
    try:
        with _sigterm_raises(), _warnings_as_lines(prog):
            return _main(argv, prog)
    except Terminated:
        print(f"\n{prog}: terminated", file=sys.stderr)
        return TERMINATED


def _main(argv: list[str], prog: str) -> int:
    try:
        parser = build_parser()
        args, stray = parser.parse_known_args(argv)
        if stray:  # argparse would name the top-level parser, not the command
            getattr(args, "command_parser", parser).error(
                f"unrecognized arguments: {' '.join(stray)}")
        status = _dispatch(args)
        if sys.stdout is not None:  # None when started with stdout closed
            sys.stdout.flush()  # a closed pipe or a full disk shows here, not at exit
        return status
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): Python's documented recipe.
        _stdout_to_devnull()
        return 1
    except OSError as e:  # only from the flush: _dispatch reports the command's own
        _stdout_to_devnull()
        print(f"{prog}: error: cannot write the output: {e}", file=sys.stderr)
        return USAGE_ERROR


def _stdout_to_devnull() -> None:
    """Point stdout at devnull so that the interpreter's final flush of what
    could not be written does not fail again (with 'Exception ignored')."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _is_opencl_error(e: Exception) -> bool:
    """pyopencl's own errors (a broken driver or ICD setup), where pyopencl is loaded."""
    cl = sys.modules.get("pyopencl")
    return cl is not None and isinstance(e, cl.Error)


def _dispatch(args: argparse.Namespace) -> int:
    from atrous_cl.errors import AtrousCLError

    try:
        return args.func(args)
    except Exception as e:
        if isinstance(e, BrokenPipeError) or not (
                isinstance(e, (ValueError, TypeError, OSError, MemoryError, AtrousCLError))
                or _is_opencl_error(e)):
            raise
        # MemoryError: sizes the user asked for (e.g. tune --shape) that NumPy cannot allocate.
        detail = f"out of memory: {e}" if isinstance(e, MemoryError) else e
        print(f"atrous-cl {args.command}: error: {detail}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
