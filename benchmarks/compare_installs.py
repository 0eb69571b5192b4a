# SPDX-License-Identifier: Apache-2.0
"""Two (or more) installs of atrous-cl timed against each other in one interleaved run.

``python benchmarks/compare_installs.py --python before=/work/venv-before/bin/python
--python after=/work/venv-docs/bin/python [--workloads A B] [--shapes 1,33,33,256,256,3,6,SAME]
[--op transpose|transpose_vjp|conv_vjp] [--rounds 9] [--calls 5]
[--device P:D] [--copies]``

Each ``--python NAME=PATH`` is an interpreter whose environment has some atrous-cl
installed (a venv with the previous commit installed beside the current one, say).
Every interpreter gets one long-lived worker process, started with ``-I`` in an
empty folder so that it imports its own install and never a checkout in the
current directory. The workers read one JSON command per line on stdin and
answer one JSON line: ``workloads`` (the bench's ``WORKLOADS``, asked of the
first interpreter), ``setup`` (draw a workload's inputs from a seed, call the
host API of ``--op`` once (the op, or one of its vjps as ``atrous-cl bench --op``
has them), save the result in the scratch folder and return its error against
that install's NumPy reference; a vjp's two results each scaled by its reference's
largest |element|), ``difference`` (compare two saved results
element by element; asked of the first worker, so this process needs no NumPy)
and ``time`` (time ``calls`` calls back to back).

Rounds alternate the workers' order (ABBA: A B, B A, ...), so neither always
runs first; each round times a block of ``--calls`` calls per worker and keeps
its median. The table gives each install's median over rounds and the median
over rounds of the within-round ratio to the first install, the figure to read
on a shared machine. Before any timing, the results must agree across installs
(identical bytes, or every element within 1e-5 of the largest |result|) and each
must be within 1e-4 of its reference; otherwise the script exits 1. A worker that
fails (an interpreter without atrous-cl, say) ends the run with exit status 2.

``--device P:D`` is passed to every worker as ``PYOPENCL_CTX``; without it each
install uses its own default device (each worker prints which). ``--copies`` makes
every worker's host path copy its arrays to the device and back, as on a GPU,
where a CPU device would use them in place: the GPU host path's own costs, on a CPU.
Nothing here asserts anything about time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

#: The worker, run as ``python -I -c WORKER``. Its replies go to a private copy of
#: stdout; stdout itself is pointed at stderr so that a driver or library printing
#: there cannot corrupt the JSON stream.
WORKER = r'''
import json, os, sys, time, traceback
reply = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
import numpy as np
import atrous_cl
from atrous_cl import bench, reference
if os.environ.get("COMPARE_INSTALLS_COPIES") == "1":  # --copies: the host path GPUs take
    from atrous_cl import memory
    memory.works_in_host_memory = lambda device: False
OP = os.environ["COMPARE_INSTALLS_OP"]

inputs = {}


def call(wl, arrays):
    """The host API of OP on ``arrays`` (bench.inputs'), its results as a tuple."""
    if OP == "transpose":
        return (atrous_cl.atrous_conv2d_transpose(*arrays, wl.output_shape, wl.rate,
                                                  wl.padding),)
    value, filters, dy = arrays
    if OP == "transpose_vjp":
        return atrous_cl.atrous_conv2d_transpose_vjp(value, filters, wl.output_shape, wl.rate,
                                                     wl.padding, dy)
    return atrous_cl.atrous_conv2d_vjp(value, filters, wl.rate, wl.padding, dy)


def workloads(shapes=()):
    return [dict(wl._asdict(), output_shape=list(wl.output_shape), describe=wl.describe())
            for wl in [*bench.WORKLOADS, *map(bench.parse_workload, shapes)]]


def setup(wl, seed, save):
    wl = bench.Workload(*(wl[field] for field in bench.Workload._fields))
    arrays = bench.inputs(OP, wl, np.random.default_rng(seed))
    inputs[wl.name] = (wl, arrays)
    got = [np.asarray(y) for y in call(wl, arrays)]
    want = bench.reference_result(OP, wl, arrays)
    want = want if isinstance(want, tuple) else (want,)
    scales = [float(np.max(np.abs(w))) or 1.0 for w in want]
    np.save(save, np.concatenate([(y / scale).ravel() for y, scale in zip(got, scales)]))
    queue = atrous_cl.get_queue()
    return {"ref_error": max(float(np.max(np.abs(y - w))) / scale
                             for y, w, scale in zip(got, want, scales)),
            "device": f"{queue.device.name} ({queue.device.platform.name})"}


def difference(first, other):
    a, b = np.load(first), np.load(other)
    if a.shape != b.shape or a.dtype != b.dtype:
        return {"identical": False, "relative": float("inf")}
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
    return {"identical": a.tobytes() == b.tobytes(), "relative": diff / (scale or 1.0)}


def time_calls(name, calls):
    wl, arrays = inputs[name]
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call(wl, arrays)
        times.append(time.perf_counter() - start)
    return {"times": times}


for line in sys.stdin:
    command = json.loads(line)
    try:
        if command["cmd"] == "quit":
            break
        if command["cmd"] == "info":
            answer = {"atrous_cl": atrous_cl.__file__, "version": atrous_cl.__version__,
                      "python": sys.version.split()[0]}
        elif command["cmd"] == "workloads":
            answer = {"workloads": workloads(command.get("shapes", ()))}
        elif command["cmd"] == "setup":
            answer = setup(command["workload"], command["seed"], command["save"])
        elif command["cmd"] == "difference":
            answer = difference(command["first"], command["other"])
        elif command["cmd"] == "time":
            answer = time_calls(command["name"], command["calls"])
        else:
            answer = {"error": f"unknown command {command['cmd']!r}"}
    except Exception:
        answer = {"error": traceback.format_exc()}
    reply.write(json.dumps(answer) + "\n")
    reply.flush()
'''


class Worker:
    """One interpreter's long-lived worker process."""

    def __init__(self, name: str, python: str, env: dict, cwd: str):
        self.name = name
        self.python = python
        self.process = subprocess.Popen([python, "-I", "-c", WORKER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env, cwd=cwd)

    def ask(self, cmd: str, **fields) -> dict:
        """Send one command and return the answer; a worker's failure raises RuntimeError."""
        try:
            self.process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:  # it died before reading: reported below, with its status
            pass
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} ({self.python}) exited with status "
                               f"{self.process.wait()} on {cmd!r} (its stderr is above)")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"worker {self.name} ({self.python}) failed on {cmd!r}:\n"
                               f"{answer['error']}")
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            self.process.wait(timeout=60)
        else:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass


def _interpreter(text: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (name, path), for argparse: a bad one is a usage error."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=/path/to/python, got {text!r}")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise argparse.ArgumentTypeError(f"{path!r} is not an executable file")
    return name, path


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def agree(difference: dict) -> tuple[bool, str]:
    """Whether two installs' results are the same: identical bytes, or every element within
    1e-5 of the largest |result| (a changed summation order may round differently)."""
    if difference["identical"]:
        return True, "identical"
    return difference["relative"] <= 1e-5, f"differ by {difference['relative']:.1e} of the largest result"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", type=_interpreter, action="append", required=True,
                        metavar="NAME=PATH", help="an interpreter with atrous-cl installed "
                        "(give two or more; ratios are to the first)")
    parser.add_argument("--workloads", nargs="*", metavar="NAME",
                        help="bench workloads to run (default: all of the first install's)")
    parser.add_argument("--shapes", nargs="*", default=[], metavar="N,H,W,CIN,COUT,K,RATE,PADDING",
                        help="problems of their own, named by their text (then no named "
                        "workload unless --workloads names it)")
    parser.add_argument("--op", default="transpose", choices=["transpose", "transpose_vjp",
                                                               "conv_vjp"],
                        help="the op (default) or one of its vjps, as atrous-cl bench --op")
    parser.add_argument("--rounds", type=_positive, default=9, help="timed rounds (default 9)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--calls", type=_positive, default=5,
                        help="calls per worker per round; a round keeps their median (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="inputs' seed")
    parser.add_argument("--device", metavar="P:D",
                        help="PYOPENCL_CTX for every worker (default: each install's default)")
    parser.add_argument("--copies", action="store_true",
                        help="make the host path copy the arrays to the device and back, as it "
                        "does on a GPU, on a CPU device too (which otherwise uses them in place)")
    args = parser.parse_args(argv)
    names = [name for name, _ in args.python]
    if len(set(names)) != len(names) or len(names) < 2:
        parser.error(f"give at least two --python NAME=PATH with distinct names, got {names}")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {args.warmup}")

    env = dict(os.environ)
    if args.device:
        env["PYOPENCL_CTX"] = args.device
    env["COMPARE_INSTALLS_COPIES"] = "1" if args.copies else "0"
    env["COMPARE_INSTALLS_OP"] = args.op
    with tempfile.TemporaryDirectory(prefix="compare-installs-") as empty:
        args.scratch = empty  # the workers' results go here, to be compared in full
        workers = [Worker(name, path, env, empty) for name, path in args.python]
        try:
            return _compare(workers, args)
        except RuntimeError as e:  # a worker failed: its traceback or exit status says why
            print(f"compare_installs: error: {e}", file=sys.stderr)
            return 2
        finally:
            for w in workers:
                w.close()


def _compare(workers: list[Worker], args) -> int:
    for w in workers:
        info = w.ask("info")
        print(f"{w.name}: {w.python} (Python {info['python']}), atrous_cl {info['version']} "
              f"from {info['atrous_cl']}", file=sys.stderr)
    known = workers[0].ask("workloads", shapes=args.shapes)["workloads"]
    wanted = ((args.workloads or []) + args.shapes if args.shapes
              else args.workloads or [wl["name"] for wl in known])
    unknown = sorted(set(wanted) - {wl["name"] for wl in known})
    if unknown:
        print(f"compare_installs: error: unknown workloads {unknown}; the first install has "
              f"{[wl['name'] for wl in known]}", file=sys.stderr)
        return 2
    workloads = [wl for wl in known if wl["name"] in wanted]

    failed = False
    verdicts = {}
    for wl in workloads:
        saved = [os.path.join(args.scratch, f"{w.name}-{wl['name']}.npy") for w in workers]
        results = [w.ask("setup", workload=wl, seed=args.seed, save=path)
                   for w, path in zip(workers, saved)]
        devices = {r["device"] for r in results}
        if len(devices) > 1:
            print(f"warning: {wl['name']} ran on different devices: "
                  + "; ".join(f"{w.name} {r['device']}" for w, r in zip(workers, results)),
                  file=sys.stderr)
        notes = []
        for w, r in zip(workers, results):
            if not r["ref_error"] < 1e-4:
                failed = True
                notes.append(f"{w.name} off the reference by {r['ref_error']:.1e}")
        for w, path in zip(workers[1:], saved[1:]):
            same, how = agree(workers[0].ask("difference", first=saved[0], other=path))
            failed |= not same
            notes.append(how if same and len(workers) == 2 else f"{w.name}: {how}")
        verdicts[wl["name"]] = ", ".join(notes)
        device = results[0]["device"]
    if failed:
        for name, verdict in verdicts.items():
            print(f"{name}: {verdict}", file=sys.stderr)
        print("compare_installs: the installs' results disagree; nothing timed", file=sys.stderr)
        return 1

    samples = {(wl["name"], w.name): [] for wl in workloads for w in workers}
    for r in range(args.warmup + args.rounds):
        order = workers if r % 2 == 0 else workers[::-1]  # ABBA: neither always goes first
        for wl in workloads:
            for w in order:
                times = w.ask("time", name=wl["name"], calls=args.calls)["times"]
                if r >= args.warmup:
                    samples[wl["name"], w.name].append(statistics.median(times))
        print(f"round {r + 1}/{args.warmup + args.rounds}", file=sys.stderr)

    first = workers[0].name
    header = " | ".join(f"{w.name} ms" for w in workers)
    ratios = " | ".join(f"{w.name} / {first}" for w in workers[1:])
    print(f"Host API ({args.op}), float32, default device of each install (here: {device})"
          if not args.device
          else f"Host API ({args.op}), float32, PYOPENCL_CTX={args.device} ({device})")
    print(f"medians of {args.rounds} rounds x {args.calls} calls, ABBA order; "
          f"ratio: median over rounds of the within-round ratio (below 1: faster than {first})")
    print()
    print(f"| workload | {header} | {ratios} | results |")
    print("|---|" + "---:|" * (2 * len(workers) - 1) + "---|")
    for wl in workloads:
        base = samples[wl["name"], first]
        cells = [f"{statistics.median(samples[wl['name'], w.name]) * 1e3:.3f}" for w in workers]
        rel = [f"{statistics.median(t / b for t, b in zip(samples[wl['name'], w.name], base)):.3f}"
               for w in workers[1:]]
        print(f"| {wl['name']}: {wl['describe']} | {' | '.join(cells)} | {' | '.join(rel)} | "
              f"{verdicts[wl['name']]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
