# SPDX-License-Identifier: Apache-2.0
"""Benchmark: our op on each OpenCL device against onnxruntime, PyTorch and TensorFlow.

Every implementation runs the same inputs in one process, interleaved round by
round so that machine noise hits them alike; each figure is the median of the
rounds after a warm-up. Our op is timed through the public host API (NumPy in,
NumPy out, transfers included where there are any), which the peers' ratios
refer to, and also on arrays already on the device ("on device": no transfers).
The ceiling is NumPy's sgemm measured in the same run.
FLOPs = 2 * N * H * W * Cin * Cout * kh * kw (value's H, W) for the op.

``op`` picks what is timed on each workload: the op itself (``transpose``),
or one of the two vjps (``transpose_vjp``: the gradients of the workload's
op; ``conv_vjp``: those of the forward ``atrous_conv2d`` from the workload's
output-shaped array back to ``value``'s shape, the op's adjoint), each
against PyTorch's autograd backward of the same convolution. A vjp computes
two results of the op's size each, so its FLOPs count twice. onnxruntime
has no gradients in its inference package, so it is in the op's table only.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import time
from typing import Callable, NamedTuple

import numpy as np

from atrous_cl import geometry
from onnx_export import saving


class Workload(NamedTuple):
    name: str
    n: int
    h: int
    w: int
    cin: int
    cout: int
    k: int
    rate: int
    padding: str

    @property
    def flops(self) -> int:
        return 2 * self.n * self.h * self.w * self.cin * self.cout * self.k * self.k

    def op_flops(self, op: str) -> int:
        """FLOPs of ``op`` on this workload: a vjp's two results cost the op's twice."""
        return self.flops * (1 if op == "transpose" else 2)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        hw = geometry.transpose_output_hw((self.h, self.w), (self.k, self.k), self.rate, self.padding)
        return (self.n, *hw, self.cout)

    def describe(self) -> str:
        return (f"{self.n}x{self.h}x{self.w}x{self.cin}->{self.cout} k{self.k} r{self.rate} "
                f"{self.padding}")


WORKLOADS = [
    Workload("A", 1, 64, 64, 64, 64, 3, 2, "SAME"),
    Workload("B", 8, 32, 32, 128, 128, 3, 2, "SAME"),
    Workload("C", 1, 128, 128, 32, 16, 3, 4, "SAME"),
    Workload("D", 1, 256, 256, 16, 16, 5, 2, "VALID"),
    Workload("E", 32, 8, 8, 16, 16, 3, 2, "SAME"),      # many tiny images
    Workload("F", 1, 128, 128, 1, 1, 3, 2, "SAME"),     # one channel
]


def parse_workload(text: str) -> Workload:
    """A workload of its own from ``N,H,W,CIN,COUT,K,RATE,PADDING`` (named by that text),
    for the benchmark scripts' ``--shapes``.

    Raises:
        ValueError: not 7 positive integers and SAME or VALID.
    """
    *sizes, padding = text.split(",")
    padding = padding.strip().upper()
    if (len(sizes) != 7 or not all(s.strip().isdigit() and int(s) > 0 for s in sizes)
            or padding not in ("SAME", "VALID")):
        raise ValueError("a shape is N,H,W,CIN,COUT,K,RATE,PADDING: seven positive integers "
                         f"and SAME or VALID, got {text!r}")
    return Workload(text, *map(int, sizes), padding)


def selected_workloads(names: list[str] | None, shapes: list[str]) -> list[Workload]:
    """The benchmark scripts' ``--workloads`` (None: all of :data:`WORKLOADS`, none when
    ``shapes`` are given) and then their ``--shapes`` (:func:`parse_workload`)."""
    if names is None:
        names = [] if shapes else [wl.name for wl in WORKLOADS]
    return [wl for wl in WORKLOADS if wl.name in names] + [parse_workload(t) for t in shapes]


#: What ``run`` can time: the op and its two vjps (see the module docstring).
OPS = ("transpose", "transpose_vjp", "conv_vjp")


def inputs(op: str, wl: Workload, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The random float32 inputs of ``op`` on ``wl``: ``(value, filters)`` for the op,
    ``(value, filters, dy)`` for a vjp. The conv vjp's ``value`` has the op's output
    shape and its ``dy`` the op's input shape: the forward conv is the op's adjoint."""
    op_value = rng.standard_normal((wl.n, wl.h, wl.w, wl.cin)).astype(np.float32)
    filters = rng.standard_normal((wl.k, wl.k, wl.cout, wl.cin)).astype(np.float32)
    if op == "transpose":
        return op_value, filters
    op_out = rng.standard_normal(wl.output_shape).astype(np.float32)
    return (op_value, filters, op_out) if op == "transpose_vjp" else (op_out, filters, op_value)


def reference_result(op: str, wl: Workload, arrays) -> np.ndarray | tuple:
    from atrous_cl import reference

    if op == "transpose":
        return reference.atrous_conv2d_transpose(*arrays, wl.output_shape, wl.rate, wl.padding)
    value, filters, dy = arrays
    if op == "transpose_vjp":
        return reference.atrous_conv2d_transpose_vjp(value, filters, wl.output_shape, wl.rate,
                                                     wl.padding, dy)
    return reference.atrous_conv2d_vjp(value, filters, wl.rate, wl.padding, dy)


def add_problem_arguments(parser, devices: list[str]) -> None:
    """The benchmark scripts' ``--devices`` (default ``devices``), ``--workloads``,
    ``--shapes`` (:func:`selected_workloads`) and ``--dtype``."""
    parser.add_argument("--devices", nargs="+", default=devices)
    parser.add_argument("--workloads", nargs="*", default=None,
                        help="of atrous-cl bench (default: A-F, none with --shapes)")
    parser.add_argument("--shapes", nargs="*", default=[], help="N,H,W,CIN,COUT,K,RATE,PADDING")
    parser.add_argument("--dtype", default="float32")


class FilterGradProblem(NamedTuple):
    """The transpose vjp's filter gradient of a workload on a queue (the forward conv's
    from the op's output-shaped cotangent ``x`` back to ``d``, its ``value``), for the
    filter gradient's benchmarks: ``conv`` its arguments, ``out`` a device array of its
    result's shape, ``want`` the NumPy reference result, ``filters`` the op's (host)."""

    conv: object
    x: object
    d: object
    out: object
    want: np.ndarray
    filters: np.ndarray

    @classmethod
    def on(cls, queue, wl: Workload, dtype, rng: np.random.Generator) -> FilterGradProblem:
        import pyopencl.array as cl_array

        from atrous_cl import reference, validation

        value, filters, dy = (a.astype(dtype) for a in inputs("transpose_vjp", wl, rng))
        want = reference.atrous_conv2d_transpose_vjp(value, filters, wl.output_shape, wl.rate,
                                                     wl.padding, dy)[1]
        conv = validation.check_conv_args(dy.shape, filters.shape, wl.rate, wl.padding)
        return cls(conv, cl_array.to_device(queue, dy), cl_array.to_device(queue, value),
                   cl_array.empty(queue, filters.shape, dtype), want, filters)

    def run(self, plan) -> None:
        """Launch the filter gradient with ``plan`` (a :class:`atrous_cl.filter_grad.Layout`)
        and wait."""
        from atrous_cl import filter_grad

        filter_grad.launch(self.out.queue, self.x, self.d, self.out, self.conv, plan)
        self.out.queue.finish()

    def check(self, plan, name: str) -> None:
        """Run ``plan`` into a NaN-filled ``out``; RuntimeError unless it matches ``want``
        (relative to its largest entry: 1e-4, float16 1e-2)."""
        self.out.set(np.full(self.out.shape, np.nan, self.out.dtype))
        self.run(plan)
        err = np.max(np.abs(self.out.get() - self.want)) / np.max(np.abs(self.want))
        if not err < (1e-2 if self.out.dtype == np.float16 else 1e-4):  # float16: its rounding
            raise RuntimeError(f"{name}: relative error {err:.2e}")


class Impl(NamedTuple):
    """An implementation: ``prepare(workload, value, filters)`` returns a call to time.

    ``layout`` is the layout the call returns, 'NHWC' or 'NCHW' (a peer's
    native layout, so no conversion is timed).
    """

    prepare: Callable
    layout: str = "NHWC"


def _ours(device_info, resident: bool = False, op: str = "transpose") -> Callable:
    """Our host API, or with ``resident`` the device API on arrays already on the device
    (results into ``out=`` arrays allocated once, as a training loop would)."""
    import pyopencl.array as cl_array

    import atrous_cl

    queue = atrous_cl.get_queue(device=device_info.device)

    def prepare(wl: Workload, *arrays):
        # Computed once, as a model holds its shapes: the property costs 2.5 us,
        # which the timed call of the small workloads would otherwise pay.
        output_shape = wl.output_shape
        if op == "transpose":
            fn = lambda *a, **k: atrous_cl.atrous_conv2d_transpose(  # noqa: E731
                *a, output_shape, wl.rate, wl.padding, **k)
        elif op == "transpose_vjp":
            fn = lambda v, f, dy, **k: atrous_cl.atrous_conv2d_transpose_vjp(  # noqa: E731
                v, f, output_shape, wl.rate, wl.padding, dy, **k)
        else:
            fn = lambda v, f, dy, **k: atrous_cl.atrous_conv2d_vjp(  # noqa: E731
                v, f, wl.rate, wl.padding, dy, **k)
        if not resident:
            return lambda: fn(*arrays, queue=queue)
        on_device = [cl_array.to_device(queue, a) for a in arrays]
        shapes = [wl.output_shape] if op == "transpose" else [arrays[0].shape, arrays[1].shape]
        outs = [cl_array.empty(queue, s, np.float32) for s in shapes]

        def call():
            fn(*on_device, out=outs[0] if op == "transpose" else tuple(outs))
            queue.finish()
            return outs[0] if op == "transpose" else tuple(outs)
        return call
    return prepare


def _onnxruntime(layout: str, conv_form: bool = False) -> Callable | None:
    """onnxruntime's CPU provider on our exported model; ``conv_form``: the
    equivalent forward Conv, which onnxruntime runs on faster kernels."""
    try:
        import onnxruntime as ort

        from onnx_export import export_atrous_conv2d_transpose
    except ImportError:
        return None

    def prepare(wl: Workload, value, filters):
        model = export_atrous_conv2d_transpose(filters, value.shape, wl.output_shape, wl.rate,
                                               wl.padding, layout=layout, conv_form=conv_form)
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        # Spinning worker threads would steal the cores from whatever runs
        # next in the interleaved rounds.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        x = value if layout == "NHWC" else np.ascontiguousarray(value.transpose(0, 3, 1, 2))
        name = session.get_inputs()[0].name
        return lambda: session.run(None, {name: x})[0]
    return prepare


def _torch(op: str = "transpose") -> Callable | None:
    """PyTorch on the CPU, NCHW: ``conv_transpose2d`` for the op, and for a vjp the
    backward alone (``autograd.grad`` on a graph built once, kept with ``retain_graph``).
    A vjp returns ``(d_value NCHW, d_weight)``, the weight as PyTorch lays it out."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as for onnxruntime: no spinning threads
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731

    def prepare(wl: Workload, value, filters, dy=None):
        pads = geometry.pads((wl.k, wl.k), wl.rate, wl.padding)
        x = nchw(value)
        weight = torch.from_numpy(np.ascontiguousarray(filters.transpose(3, 2, 0, 1)))
        if op == "conv_vjp":  # TF's forward conv: explicit (maybe asymmetric) pads, then conv2d
            x.requires_grad_(True)
            weight.requires_grad_(True)
            padded = torch.nn.functional.pad(x, (pads.left, pads.right, pads.top, pads.bottom))
            y = torch.nn.functional.conv2d(padded, weight, dilation=wl.rate)
        else:
            ph, pw = min(pads.top, pads.bottom), min(pads.left, pads.right)
            oh, ow = wl.output_shape[1:3]
            top, left = pads.top - ph, pads.left - pw  # an asymmetric remainder is cropped

            def forward(x, weight):
                y = torch.nn.functional.conv_transpose2d(x, weight, padding=(ph, pw), dilation=wl.rate)
                return y[:, :, top:top + oh, left:left + ow]
            if op == "transpose":
                def call():
                    with torch.no_grad():
                        return forward(x, weight)
                return call
            x.requires_grad_(True)
            weight.requires_grad_(True)
            y = forward(x, weight)
        grad = nchw(dy)
        return lambda: torch.autograd.grad(y, (x, weight), grad, retain_graph=True)
    return prepare


def block_seconds(launch: Callable, wait: Callable, min_seconds: float = 0.02) -> float:
    """Seconds per ``launch()`` over a block of launches lasting at least ``min_seconds``,
    ended by ``wait()`` (kernels back to back: throughput, not a call's latency)."""
    count, start = 0, time.perf_counter()
    while True:
        launch()
        count += 1
        if count & (count - 1) == 0:  # a power of two: wait, and look at the clock
            wait()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds or count >= 1024:
                return elapsed / count


def torch_conv_transpose(wl: Workload) -> Callable:
    """``conv(x, weight)``: the workload's op on NCHW torch tensors (``weight``:
    ``filters.transpose(3, 2, 0, 1)``) by ``conv_transpose2d`` with symmetric pads, then the
    crop of TF's odd pad; the pads worked out here, not in the timed call."""
    import torch

    pads = geometry.pads((wl.k, wl.k), wl.rate, wl.padding)
    ph, pw = min(pads.top, pads.bottom), min(pads.left, pads.right)
    oh, ow = wl.output_shape[1:3]
    top, left = pads.top - ph, pads.left - pw

    def conv(x, weight):
        y = torch.nn.functional.conv_transpose2d(x, weight, padding=(ph, pw), dilation=wl.rate)
        return y[:, :, top:top + oh, left:left + ow]
    return conv


def cuda_torch():
    """PyTorch, where it sees a CUDA GPU, with cuDNN's TF32 off; else None. cuDNN convolves
    float32 in TF32 (10-bit mantissa) by default; ours is true float32, and so must the
    peer be to compute the same thing."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cudnn.allow_tf32 = False
    return torch


def _torch_cuda(resident: bool = False) -> Callable | None:
    """PyTorch (cuDNN) on a CUDA GPU, when there is one: the peer for our op on a GPU.

    Without ``resident`` it takes and returns NumPy arrays like our host API
    (transfers included); with it, tensors stay on the GPU and the call waits
    for the GPU to finish, like our "on device" row.
    """
    torch = cuda_torch()
    if torch is None:
        return None

    def prepare(wl: Workload, value, filters):
        weight = torch.from_numpy(np.ascontiguousarray(filters.transpose(3, 2, 0, 1))).cuda()
        x_host = np.ascontiguousarray(value.transpose(0, 3, 1, 2))
        x_dev = torch.from_numpy(x_host).cuda()
        conv = torch_conv_transpose(wl)

        def call():
            with torch.no_grad():
                x = x_dev if resident else torch.from_numpy(x_host).cuda()
                y = conv(x, weight)
                if resident:
                    torch.cuda.synchronize()
                    return y
                return y.cpu().numpy()
        return call
    return prepare


def _tensorflow() -> Callable | None:
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
    except ImportError:
        return None

    def prepare(wl: Workload, value, filters):
        x, f = tf.constant(value), tf.constant(filters)
        fn = tf.function(lambda: tf.nn.atrous_conv2d_transpose(x, f, wl.output_shape, wl.rate, wl.padding))
        return lambda: fn().numpy()
    return prepare


def sgemm_gflops(size: int = 2048, rounds: int = 5) -> float:
    """NumPy's float32 matmul rate: the ceiling the table reports percentages of."""
    a = np.random.default_rng().standard_normal((size, size)).astype(np.float32)
    a @ a
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        a @ a
        samples.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(samples) / 1e9


def implementations(include_simulators: bool = False, op: str = "transpose") -> dict[str, Impl]:
    """Name -> :class:`Impl` of ``op`` (:data:`OPS`), for everything installed; ours once
    per OpenCL device."""
    from atrous_cl import discovery

    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")

    impls: dict[str, Impl] = {}
    for info in discovery.devices():
        if ((include_simulators or discovery.rank(info)[0] < discovery.SIMULATOR_RANK)
                and discovery.unusable_reason(info.device) is None):  # it builds nothing
            name = f"atrous-cl {info.selector} {info.platform.split()[0]}"
            impls[name] = Impl(_ours(info, op=op))
            impls[f"{name} (on device)"] = Impl(_ours(info, resident=True, op=op))
    if op != "transpose":  # the peers with gradients
        torch = _torch(op)
        return {**impls, **({"torch NCHW (autograd)": Impl(torch, "NCHW")} if torch else {})}
    for name, prep, layout in (("onnxruntime NHWC", _onnxruntime("NHWC"), "NHWC"),
                               ("onnxruntime NCHW", _onnxruntime("NCHW"), "NCHW"),
                               ("onnxruntime NCHW Conv", _onnxruntime("NCHW", conv_form=True), "NCHW"),
                               ("torch NCHW", _torch(), "NCHW"),
                               ("torch CUDA NCHW", _torch_cuda(), "NCHW"),
                               ("torch CUDA NCHW (on device)", _torch_cuda(resident=True), "NCHW"),
                               ("tensorflow", _tensorflow(), "NHWC")):
        if prep is not None:
            impls[name] = Impl(prep, layout)
    return impls


def _progress(done: int, total: int, label: str) -> None:
    """A bar on a terminal; on a pipe, a line at each quarter so logs stay short."""
    if sys.stderr.isatty():
        filled = 30 * done // total
        end = "\n" if done == total else ""
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {label[:40]:<40}{end}")
    elif done * 4 // total != (done - 1) * 4 // total:
        sys.stderr.write(f"{done}/{total} timed\n")
    sys.stderr.flush()


def run(workloads=WORKLOADS, rounds: int = 7, warmup: int = 2, impls=None,
        check: bool = True, back_to_back: bool = False, op: str = "transpose") -> tuple[dict, float]:
    """Time every implementation on every workload; returns ({(workload, impl): seconds}, ceiling).

    Interleaved by default: each round runs every implementation once, in a
    new order, so each call starts after others' work, as an op inside a model
    does. With ``back_to_back`` each implementation runs all its rounds in a row instead,
    as a loop over one op does: threads and caches stay warm, which is how
    fast each can go at best.

    Raises:
        ValueError: ``rounds`` below 1 or ``warmup`` below 0 (checked before
            anything runs: a median of no rounds does not exist).
    """
    for what, n, low in (("rounds", rounds, 1), ("warmup", warmup, 0)):
        if isinstance(n, bool) or not isinstance(n, int) or n < low:
            raise ValueError(f"{what} must be an integer >= {low}, got {n!r}")
    impls = impls if impls is not None else implementations(op=op)
    rng = np.random.default_rng(0)
    calls, arrays = {}, {}
    for wl in workloads:
        arrays[wl] = inputs(op, wl, rng)
        for name, impl in impls.items():
            calls[wl, name] = impl.prepare(wl, *arrays[wl])
    total = len(calls) * (warmup + rounds)
    done = 0
    samples: dict = {key: [] for key in calls}
    names = list(impls)
    if back_to_back:
        schedule = [(r, (wl, name)) for wl in workloads for name in names
                    for r in range(warmup + rounds)]
    else:
        # A new order every round (seeded, so runs repeat), so that no implementation
        # always runs right after the same one: a peer whose worker threads spin after
        # returning (TF's Eigen pool does) slows whatever comes next. Rotating the
        # order would not do: it keeps who follows whom.
        shuffle = np.random.default_rng(1)
        schedule = [(r, (wl, names[i])) for r in range(warmup + rounds) for wl in workloads
                    for i in shuffle.permutation(len(names))]
    for r, key in schedule:
        call = calls[key]
        start = time.perf_counter()
        result = call()
        elapsed = time.perf_counter() - start
        if r == 0 and check:
            _check(key, result, impls[key[1]].layout, arrays[key[0]], op)
        if r >= warmup:
            samples[key].append(elapsed)
        done += 1
        _progress(done, total, f"{key[0].name} {key[1]}")
    ceiling = sgemm_gflops()
    return {key: statistics.median(s) for key, s in samples.items()}, ceiling


def _check(key, result, layout: str, arrays, op: str = "transpose") -> None:
    """Every implementation must compute the same thing before its time counts."""
    wl, name = key

    def host(x):
        if hasattr(x, "detach"):  # a torch tensor, maybe on a GPU
            x = x.detach().cpu().numpy()
        return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)

    want = reference_result(op, wl, arrays)
    if op == "transpose":
        got, want = [host(result)], [want]
        if layout == "NCHW":
            got = [got[0].transpose(0, 2, 3, 1)]
    else:
        got = [host(r) for r in result]
        if layout == "NCHW":  # (d_value NCHW, d_weight [out, in, kh, kw] of PyTorch)
            got = [got[0].transpose(0, 2, 3, 1), got[1].transpose(2, 3, 1, 0)]
    for g, w in zip(got, want):
        err = np.max(np.abs(g - w)) / max(float(np.max(np.abs(w))), 1e-30)
        if not err < 1e-4:
            raise RuntimeError(f"{name} disagrees with the reference on {wl.name}: relative "
                               f"error {err:.2e}")


def table(times: dict, ceiling: float, workloads=WORKLOADS, op: str = "transpose") -> str:
    """Markdown: per workload and implementation ms, GFLOP/s, % of the sgemm ceiling and
    how many times faster the fastest atrous-cl device is than each peer (>1: we are faster)."""
    names = list(dict.fromkeys(name for _, name in times))
    # Peers are compared with our host API, which takes and returns the same NumPy
    # arrays; a peer timed on device-resident data with our device API.
    ours = [n for n in names if n.startswith("atrous-cl") and not n.endswith("(on device)")]
    ours_resident = [n for n in names if n.startswith("atrous-cl") and n.endswith("(on device)")]
    lines = [f"op: {op}; sgemm ceiling (NumPy float32 2048^3, same run): {ceiling:.0f} GFLOP/s", "",
             "| workload | implementation | ms | GFLOP/s | % ceiling | ours faster by |",
             "|---|---|---:|---:|---:|---:|"]
    for wl in workloads:
        best_host = min((times[wl, n] for n in ours if (wl, n) in times), default=None)
        best_resident = min((times[wl, n] for n in ours_resident if (wl, n) in times), default=None)
        for name in names:
            if (wl, name) not in times:
                continue
            t = times[wl, name]
            best_ours = best_resident if name.endswith("(on device)") else best_host
            gflops = wl.op_flops(op) / t / 1e9
            ratio = ("" if name.startswith("atrous-cl") or best_ours is None
                     else f"{t / best_ours:.2f}x")
            lines.append(f"| {wl.name}: {wl.describe()} | {name} | {t * 1e3:.2f} | {gflops:.1f} | "
                         f"{100 * gflops / ceiling:.0f}% | {ratio} |")
    return "\n".join(lines)


def plot(times: dict, path: str, workloads=WORKLOADS, op: str = "transpose") -> None:
    """A grouped bar chart of GFLOP/s per workload and implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for _, name in times))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + i * width for j, wl in enumerate(workloads) if (wl, name) in times]
        ys = [wl.op_flops(op) / times[wl, name] / 1e9 for wl in workloads if (wl, name) in times]
        ax.bar(xs, ys, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(workloads))], [wl.name for wl in workloads])
    ax.set_ylabel("GFLOP/s (median)")
    ax.set_title("atrous_conv2d_transpose, float32" if op == "transpose" else f"{op}, float32")
    ax.legend(fontsize=8)
    fig.tight_layout()
    # Rendered in memory, then written atomically, as export writes a model: an
    # interrupted or failed write leaves no half-written image at path.
    image = io.BytesIO()
    fig.savefig(image, dpi=110, format=os.path.splitext(path)[1][1:].lower())
    plt.close(fig)
    saving.save_bytes(image.getvalue(), path)
