# SPDX-License-Identifier: Apache-2.0
"""The ``atrous-cl`` command and the packaging it relies on."""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from atrous_cl import cli, discovery, programs


def test_devices_lists_the_default(queue, capsys):
    assert cli.main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "*" in out and "default (*):" in out
    assert queue.device.name.strip() in out


def test_demo_checks_against_the_reference(queue, capsys, monkeypatch):
    monkeypatch.setenv("PYOPENCL_CTX", next(d.selector for d in discovery.devices()
                                            if d.device == queue.device))
    code = cli.main(["demo", "--size", "12", "--channels", "8", "--rate", "3", "--repeat", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "result:  OK" in out and "error:" in out and "GFLOP/s" in out


@pytest.mark.parametrize("dtype", ["float16", "float32"])  # every device has both
def test_demo_judges_an_all_zero_result(queue, dtype, capsys, monkeypatch):
    """A 1x1 image with a 2x2 kernel at rate 2 lands no tap: the result is all zeros, and
    right. float16's max(0, 1e-30) is 0 under NumPy 2, which made the error 0 / 0 = NaN
    and the demo report a correct device as FAILED."""
    monkeypatch.setenv("PYOPENCL_CTX", next(d.selector for d in discovery.devices()
                                            if d.device == queue.device))
    code = cli.main(["demo", "--size", "1", "--channels", "1", "--kernel", "2", "--dtype", dtype,
                     "--repeat", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "error:   0.00e+00" in out, out


def test_demo_fails_when_the_device_disagrees(queue, capsys, monkeypatch):
    """The demo's exit code means something: a wrong result makes it non-zero."""
    import atrous_cl

    real = atrous_cl.atrous_conv2d_transpose
    monkeypatch.setattr(atrous_cl, "atrous_conv2d_transpose", lambda *a, **k: real(*a, **k) * 1.01)
    assert cli.main(["demo", "--size", "8", "--channels", "4", "--repeat", "1"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_bad_device_selector_is_a_clean_error(capsys):
    assert cli.main(["demo", "--device", "nonsense"]) == 2
    assert "device selector must look like" in capsys.readouterr().err


def test_kernels_ship_inside_the_package():
    """An installed wheel finds its .cl files through importlib.resources."""
    if importlib.util.find_spec("atrous_cl.kernels") is None:
        pytest.skip("running from a source tree: atrous_cl.kernels exists only once installed")
    shipped = importlib.resources.files("atrous_cl.kernels")
    for name in ("prelude.cl", "atrous_conv2d_transpose.cl", "atrous_conv2d.cl"):
        assert shipped.joinpath(name).is_file(), name
    assert "__kernel" in programs.kernel_source("atrous_conv2d_transpose.cl")


def test_the_package_runs_from_a_zip_archive(queue, tmp_path):
    """A zipapp or PEX holds the package as the wheel lays it out; its kernels come from
    the archive (a namespace package there made importlib.resources fail)."""
    import zipfile
    from pathlib import Path

    package = Path(programs.__file__).resolve().parent
    if importlib.util.find_spec("atrous_cl.kernels") is not None:  # installed, editable or not
        kernels = Path(str(importlib.resources.files("atrous_cl.kernels")))
    else:
        kernels = package.parent / "kernels"
    archive = tmp_path / "atrous.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for folder, inside in ((package, "atrous_cl"), (kernels, "atrous_cl/kernels")):
            for f in folder.iterdir():
                if f.suffix in (".py", ".cl"):
                    z.write(f, f"{inside}/{f.name}")
        assert "atrous_cl/kernels/__init__.py" in z.namelist()
    script = (
        "import numpy as np, atrous_cl\n"
        "from atrous_cl import reference\n"
        "assert atrous_cl.__file__.startswith(%r), atrous_cl.__file__\n"
        "rng = np.random.default_rng()\n"
        "x = rng.standard_normal((2, 7, 6, 3), dtype=np.float32)\n"
        "f = rng.standard_normal((3, 3, 4, 3), dtype=np.float32)\n"
        "y = atrous_cl.atrous_conv2d_transpose(x, f, (2, 7, 6, 4), 2, 'SAME')\n"
        "r = reference.atrous_conv2d_transpose(x.astype(np.float64), f.astype(np.float64),\n"
        "                                      (2, 7, 6, 4), 2, 'SAME')\n"
        "print(float(np.abs(y - r).max() / np.abs(r).max()))\n" % str(archive))
    selector = next(d.selector for d in discovery.devices() if d.device == queue.device)
    env = {**os.environ, "PYTHONPATH": str(archive), "PYOPENCL_CTX": selector}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.split()[-1]) < 1e-5


@pytest.mark.skipif(shutil.which("atrous-cl") is None, reason="console script not installed")
def test_console_script_runs():
    proc = subprocess.run(["atrous-cl", "devices"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "default (*):" in proc.stdout


def test_tune_command_caches_a_winner(queue, capsys, monkeypatch, tmp_path):
    from atrous_cl import tuning

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(tuning, "_loaded", None)
    selector = next(d.selector for d in discovery.devices() if d.device == queue.device)
    code = cli.main(["tune", "--device", selector, "--shape", "1", "6", "9", "3", "4", "3", "2",
                     "--repeat", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "best tile" in out and (tmp_path / "atrous-cl" / "tuning.json").is_file()
    tuning._loaded = None
    # The gain is over the op's own default (the Winograd tile on CPUs), which tune also times.
    from atrous_cl import tiles
    from atrous_cl.validation import check_transpose_args
    default = tiles.default_for(queue.device, np.float32, check_transpose_args(
        (1, 6, 9, 3), (3, 3, 4, 3), (1, 6, 9, 4), 2, "SAME"))
    assert f"the default {default} (" in out, out


def test_tune_command_on_one_channel_says_there_is_nothing_to_tune(queue, capsys, monkeypatch,
                                                                   tmp_path):
    from atrous_cl import tiles, tuning

    if tiles.pixel_vector(queue.device, np.float32, (3, 3, 1, 1)) is None:
        pytest.skip(f"{queue.device.name}: one channel runs on the register tiles, which tune")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(tuning, "_loaded", None)
    selector = next(d.selector for d in discovery.devices() if d.device == queue.device)
    code = cli.main(["tune", "--device", selector, "--shape", "1", "6", "9", "1", "1", "3", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "nothing to tune: one channel in and out" in out, out
    assert not (tmp_path / "atrous-cl" / "tuning.json").exists()
    tuning._loaded = None


def test_bench_prints_a_checked_table(queue, capsys, monkeypatch):
    from atrous_cl import bench

    tiny = bench.Workload("T", 2, 6, 7, 3, 4, 3, 2, "SAME")
    monkeypatch.setattr(bench, "WORKLOADS", [tiny])
    monkeypatch.setattr(bench, "sgemm_gflops", lambda: 100.0)
    # Ours on the device under test only (with the peers), as every device test runs;
    # a simulator too, which the bench itself leaves out.
    selector = next(d.selector for d in discovery.devices() if d.device == queue.device)
    every = bench.implementations
    monkeypatch.setattr(bench, "implementations", lambda **kw: {
        name: impl for name, impl in every(**{**kw, "include_simulators": True}).items()
        if not name.startswith("atrous-cl") or name.startswith(f"atrous-cl {selector} ")})
    assert cli.main(["bench", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "| T: 2x6x7x3->4 k3 r2 SAME | atrous-cl" in out and "% ceiling" in out


@pytest.mark.parametrize("op", ["transpose_vjp", "conv_vjp"])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_bench_times_the_vjps_checked_against_the_reference(queue, op, padding):
    """Ours (host and device API) and PyTorch's autograd, where installed, must each
    give both gradients of the reference before a time counts."""
    from atrous_cl import bench

    wl = bench.Workload("T", 2, 6, 7, 3, 4, 3, 2, padding)
    selector = next(d.selector for d in discovery.devices() if d.device == queue.device)
    every = bench.implementations(include_simulators=True, op=op)
    impls = {name: impl for name, impl in every.items()
             if not name.startswith("atrous-cl") or name.startswith(f"atrous-cl {selector} ")}
    assert sum(name.startswith("atrous-cl") for name in impls) == 2
    times, _ = bench.run([wl], rounds=1, warmup=0, impls=impls, op=op)
    assert set(times) == {(wl, name) for name in impls}
    assert f"op: {op}" in bench.table(times, 100.0, [wl], op=op)


@pytest.mark.parametrize("op", ["transpose_vjp", "conv_vjp"])
def test_bench_rejects_a_wrong_gradient(op):
    from atrous_cl import bench

    wl = bench.Workload("T", 1, 4, 4, 2, 3, 3, 2, "SAME")

    def prepare(wl, value, filters, dy):
        right = bench.reference_result(op, wl, (value, filters, dy))
        return lambda: (right[0], right[1] * 1.01)  # d_filters off by 1%

    with pytest.raises(RuntimeError, match="wrong disagrees with the reference on T"):
        bench.run([wl], rounds=1, warmup=0, impls={"wrong": bench.Impl(prepare)}, op=op)


def test_bench_ops_are_the_clis_choices():
    from atrous_cl import bench

    op = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["bench"]._actions
              if a.dest == "op")
    assert tuple(op.choices) == bench.OPS


def test_bench_runs_back_to_back_or_interleaved_in_a_new_order_each_round():
    from atrous_cl import bench

    wl = bench.Workload("T", 1, 4, 4, 2, 2, 3, 1, "SAME")
    order = []

    def impl(name):
        def prepare(wl, value, filters):
            def call():
                order.append(name)
                return np.zeros(wl.output_shape, np.float32)
            return call
        return bench.Impl(prepare)

    impls = {"x": impl("x"), "y": impl("y"), "z": impl("z")}
    bench.run([wl], rounds=2, warmup=1, impls=impls, check=False, back_to_back=True)
    assert order == ["x"] * 3 + ["y"] * 3 + ["z"] * 3
    order.clear()
    bench.run([wl], rounds=7, warmup=1, impls=impls, check=False)
    rounds = [order[i:i + 3] for i in range(0, len(order), 3)]
    assert all(sorted(r) == ["x", "y", "z"] for r in rounds) and len(rounds) == 8
    # Interleaved in a new order each round: x does not always follow the same one
    # (a rotation would keep z before it).
    assert len({r[r.index("x") - 1] for r in rounds if r[0] != "x"}) == 2


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(rounds=0), r"rounds must be an integer >= 1, got 0"),
    (dict(rounds=2.0), r"rounds must be an integer >= 1, got 2.0"),
    (dict(rounds=True), r"rounds must be an integer >= 1, got True"),
    (dict(warmup=-1), r"warmup must be an integer >= 0, got -1"),
])
def test_bench_run_refuses_bad_counts_before_running(kwargs, pattern):
    from atrous_cl import bench

    def never(wl, value, filters):
        raise AssertionError("an implementation was prepared")

    wl = bench.Workload("T", 1, 4, 4, 2, 2, 3, 1, "SAME")
    with pytest.raises(ValueError, match=pattern):
        bench.run([wl], impls={"x": bench.Impl(never)}, **kwargs)


def test_bench_shapes_parse_into_workloads():
    from atrous_cl import bench

    wl = bench.parse_workload("2,16,12,3,5,3,2,valid")
    assert wl == bench.Workload("2,16,12,3,5,3,2,valid", 2, 16, 12, 3, 5, 3, 2, "VALID")
    assert wl.output_shape == (2, 20, 16, 5)


@pytest.mark.parametrize("text", [
    "1,8,8,4,4,3,2", "1,8,8,4,4,3,SAME", "1,8,8,4,4,3,2,2,SAME", "1,8,8,4,-4,3,2,SAME",
    "1,8,8,4,4,3,0,SAME", "0,8,8,4,4,3,2,SAME", "1,8,8,4,4,3,2,FULL", "1,8.5,8,4,4,3,2,SAME",
])
def test_bench_shapes_refuse_what_is_not_a_problem(text):
    from atrous_cl import bench

    with pytest.raises(ValueError, match="seven positive integers and SAME or VALID"):
        bench.parse_workload(text)


def test_bench_rejects_a_peer_that_computes_something_else():
    from atrous_cl import bench

    wl = bench.Workload("T", 1, 4, 4, 2, 2, 3, 1, "SAME")
    wrong = {"wrong": bench.Impl(lambda wl, value, filters: lambda: np.zeros(wl.output_shape, np.float32))}
    with pytest.raises(RuntimeError, match="wrong disagrees with the reference on T"):
        bench.run([wl], rounds=1, warmup=0, impls=wrong)


# --- user errors: one line, exit 2, before any work -------------------------------------------

def run_main(argv) -> int:
    """``cli.main(argv)``'s status, argparse's ``SystemExit`` included."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def assert_usage_error(capsys, command: str, *fragments: str) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"atrous-cl {command}: error: "), err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("argv, fragment", [
    (["--size", "0"], "argument --size: must be a positive integer (>= 1), got 0"),
    (["--size", "-3"], "argument --size: must be a positive integer (>= 1), got -3"),
    (["--size", "x"], "argument --size: expected a positive integer, got 'x'"),
    (["--repeat", "0"], "argument --repeat"),
    (["--batch", "0"], "argument --batch"),
    (["--channels", "0"], "argument --channels"),
    (["--kernel", "-1"], "argument --kernel"),
    (["--rate", "0"], "argument --rate"),
    (["--size", "100000"], "this demo needs about"),
    (["--size", "8", "--rate", str(2**31)], "this demo needs about"),  # the reference's full result
])
def test_demo_refuses_bad_arguments_before_allocating(argv, fragment, capsys, monkeypatch):
    import atrous_cl

    def never(*args, **kwargs):
        raise AssertionError("the demo ran the op")

    monkeypatch.setattr(atrous_cl, "atrous_conv2d_transpose", never)
    monkeypatch.setattr(np.random, "default_rng", never)  # nothing is drawn (allocated) either
    assert run_main(["demo", *argv]) == cli.USAGE_ERROR
    assert_usage_error(capsys, "demo", fragment)


def test_demo_memory_estimate_covers_the_reference():
    """The estimate is at least what the arrays the demo holds at once take."""
    from atrous_cl import reference

    n, size, channels, k, rate = 2, 5, 3, 3, 4
    value = np.zeros((n, size, size, channels), np.float32)
    filters = np.zeros((k, k, channels, channels), np.float32)
    want = reference.atrous_conv2d_transpose(value, filters, value.shape, rate, "SAME")
    full = n * (size + (k - 1) * rate) ** 2 * channels * 8
    held = value.nbytes + filters.nbytes + 2 * want.nbytes + full + 2 * value.nbytes * 2
    assert cli.demo_bytes(n, size, channels, k, rate, "SAME", np.float32) >= held


@pytest.mark.parametrize("command", ["devices", "demo", "bench", "tune", "export"])
def test_stray_arguments_are_the_commands_error(command, capsys):
    """argparse reports them as the top-level parser's ('atrous-cl: error:') unless told."""
    required = ["f.npy", "--value-shape", "1", "2", "3", "4", "--rate", "1", "-o", "m.onnx"]
    extra = required if command == "export" else []
    assert run_main([command, *extra, "--no-such-option", "x"]) == cli.USAGE_ERROR
    assert_usage_error(capsys, command, "unrecognized arguments: --no-such-option x")


def test_no_device_is_an_error_naming_the_extra(capsys, monkeypatch):
    monkeypatch.setattr(discovery, "devices", lambda: [])
    assert run_main(["devices"]) == cli.USAGE_ERROR
    assert_usage_error(capsys, "devices", "no OpenCL device found; pip install 'atrous-cl[pocl]'")


def test_a_warning_is_one_line_naming_the_command(capsys, monkeypatch):
    """Not Python's ``file:line: RuntimeWarning:`` form with a source line after it; and
    the handler is Python's again after the command."""
    import warnings

    def warns():
        warnings.warn("atrous-cl cannot write /x/cache; using /tmp/y for this process",
                      RuntimeWarning)
        return []

    monkeypatch.setattr(discovery, "devices", warns)
    before = warnings.showwarning
    assert run_main(["devices"]) == cli.USAGE_ERROR
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == ("atrous-cl devices: warning: atrous-cl cannot write /x/cache; using "
                        "/tmp/y for this process"), lines
    assert lines[1].startswith("atrous-cl devices: error: no OpenCL device found"), lines
    assert len(lines) == 2 and warnings.showwarning is before


def test_a_warning_that_cannot_be_written_does_not_end_the_command(capsys, monkeypatch):
    """stderr gone (a reader that left, a full disk): the warning is dropped, as Python's
    own handler drops it, and the command's output still comes."""
    import errno
    import warnings

    real = discovery.devices

    def warns():
        warnings.warn("a compiled program could not be stored", RuntimeWarning)
        return real()

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    monkeypatch.setattr(discovery, "devices", warns)
    monkeypatch.setattr(sys, "stderr", Full())
    assert run_main(["devices"]) == 0
    assert "sel" in capsys.readouterr().out


def test_the_warning_handler_is_left_alone_by_commands_in_other_threads(capsys, monkeypatch):
    """The handler is the process's: a command run in another thread (a program calling
    main) leaves it as it is, so two at once cannot put back each other's."""
    import threading
    import warnings

    seen = []

    def warns():
        seen.append(warnings.showwarning)
        return []

    monkeypatch.setattr(discovery, "devices", warns)
    before = warnings.showwarning
    worker = threading.Thread(target=lambda: run_main(["devices"]))
    worker.start()
    worker.join(60)
    assert seen == [before] and warnings.showwarning is before


def test_an_opencl_error_is_one_line(capsys, monkeypatch):
    """pyopencl's own errors (e.g. a broken ICD) end in an error line, not a traceback."""
    import pyopencl as cl

    def broken():
        raise cl.LogicError("clGetPlatformIDs failed: PLATFORM_NOT_FOUND_KHR")

    monkeypatch.setattr(discovery, "devices", broken)
    assert run_main(["devices"]) == cli.USAGE_ERROR
    assert_usage_error(capsys, "devices", "PLATFORM_NOT_FOUND_KHR")


def test_out_of_memory_is_one_line(capsys, monkeypatch):
    """Sizes NumPy cannot allocate (tune --shape 1 100000 100000 ...) end in an error line."""
    def huge(args):
        raise MemoryError("Unable to allocate 2.38 TiB for an array")

    monkeypatch.setattr(cli, "_tune", huge)
    assert run_main(["tune", "--shape", "1", "100000", "100000", "64", "64", "3", "2"]) == 2
    assert_usage_error(capsys, "tune", "out of memory: Unable to allocate 2.38 TiB")


@pytest.fixture
def no_benchmark(monkeypatch):
    """``bench.run`` fails the test: every refusal must come before the benchmark."""
    from atrous_cl import bench

    def never(*args, **kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(bench, "run", never)


@pytest.mark.parametrize("argv, fragment", [
    (["--rounds", "0"], "argument --rounds: must be a positive integer (>= 1), got 0"),
    (["--workloads", "Z"], "argument --workloads: invalid choice: 'Z'"),
    (["--workloads", "A", "b"], "invalid choice: 'b'"),
    (["--plot", "{tmp}/missing/plot.png"], "does not exist"),
    (["--plot", "{tmp}/plot.xyz"], "must end in a format matplotlib writes"),
    (["--plot", "{tmp}/plot"], "got no extension"),
    (["--plot", "{tmp}"], "must end in a format"),
    (["--plot", "{tmp}/dir.png"], "is a directory"),
    (["--plot", ""], "got no extension"),
    (["--plot", "{tmp}/fifo.png"], "exists and is not a regular file"),
    (["--plot", "{tmp}/dangling.png"], "/missing' does not exist"),  # its target's folder
    (["--plot", "{tmp}/read-only.png"], "is read-only (mode 0444); make it writable"),
])
def test_bench_refuses_bad_arguments_before_running(argv, fragment, tmp_path, capsys, no_benchmark):
    pytest.importorskip("matplotlib")
    (tmp_path / "dir.png").mkdir()
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "missing" / "plot.png")
    (tmp_path / "read-only.png").write_bytes(b"an earlier plot")
    (tmp_path / "read-only.png").chmod(0o444)
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert run_main(["bench", *argv]) == cli.USAGE_ERROR
    assert_usage_error(capsys, "bench", fragment)


def test_bench_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch, no_benchmark):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert run_main(["bench", "--plot", str(tmp_path / "plot.png")]) == cli.USAGE_ERROR
    assert_usage_error(capsys, "bench", "pip install 'atrous-cl[plot]'")


def test_bench_plot_writes_the_file(tmp_path, capsys, monkeypatch):
    """A path the checks accept is written (the checks refuse no good one)."""
    pytest.importorskip("matplotlib")
    from atrous_cl import bench, reference

    tiny = bench.Workload("T", 1, 5, 5, 2, 3, 3, 2, "SAME")
    exact = bench.Impl(lambda wl, value, filters: lambda: reference.atrous_conv2d_transpose(
        value, filters, wl.output_shape, wl.rate, wl.padding))
    monkeypatch.setattr(bench, "WORKLOADS", [tiny])
    monkeypatch.setattr(bench, "implementations", lambda **_: {"reference": exact})
    monkeypatch.setattr(bench, "sgemm_gflops", lambda: 100.0)
    assert run_main(["bench", "--rounds", "1", "--plot", str(tmp_path / "p.svg")]) == 0
    assert (tmp_path / "p.svg").read_bytes().lstrip().startswith(b"<?xml")
    # Through a symlink: its target gets the image and the link stays, as for export.
    (tmp_path / "link.png").symlink_to(tmp_path / "target.png")
    assert run_main(["bench", "--rounds", "1", "--plot", str(tmp_path / "link.png")]) == 0
    assert (tmp_path / "link.png").is_symlink()
    assert (tmp_path / "target.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.png", "p.svg", "target.png"]


# --- Ctrl-C and a closed pipe: subprocesses, since both end the process -------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(prelude: str, argv, env_extra=None, **kwargs) -> subprocess.Popen:
    """``cli.main(argv)`` in a fresh interpreter after ``prelude``, as the console script does."""
    code = f"{prelude}\nimport sys\nfrom atrous_cl import cli\nsys.exit(cli.main({list(argv)!r}))"
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-c", code], env=env, **kwargs)


def test_ctrl_c_exits_130_with_one_line():
    # devices() announces itself, then waits as a long command would.
    prelude = ("import sys, time\nfrom atrous_cl import discovery\n"
               "def slow():\n    print('ready', file=sys.stderr, flush=True)\n    time.sleep(60)\n"
               "discovery.devices = slow")
    proc = _python(prelude, ["devices"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == cli.INTERRUPTED, err
    assert "Traceback" not in err and err.strip() == "atrous-cl devices: interrupted"


def test_closed_pipe_exits_quietly():
    """``atrous-cl devices | head -0``: the reader is gone before the first write."""
    read, write = os.pipe()
    # The child waits for a line on stdin, sent once the read end is closed.
    proc = _python("import sys\nsys.stdin.readline()", ["devices"], stdin=subprocess.PIPE,
                   stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    os.close(read)
    _, err = proc.communicate("go\n", timeout=120)
    assert err == "", err
    assert proc.returncode == 1


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_on_stdout_is_one_line():
    """``atrous-cl devices > /dev/full``: one error line, not 'Exception ignored ...'."""
    with open("/dev/full", "w") as full:
        proc = _python("", ["devices"], stdout=full, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == cli.USAGE_ERROR, err
    (line,) = err.strip().splitlines()
    assert line.startswith("atrous-cl devices: error: ") and "No space left on device" in line


def test_closed_stdout_runs_quietly():
    """``atrous-cl devices >&-``: Python gives no sys.stdout; nothing to flush."""
    proc = _python("", ["devices"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                   preexec_fn=lambda: os.close(1))
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and proc.returncode == 0, err


def test_sigterm_while_saving_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    """SIGTERM (``kill``, a scheduler's time limit) arriving while a model is written: the
    command ends with 143 and one line, the temporary file is removed, the destination
    left as it was; and the previous SIGTERM handler is back after main returns."""
    pytest.importorskip("onnx")
    from onnx_export import saving

    np.save(tmp_path / "f.npy", np.ones((3, 3, 2, 4), np.float32))
    (tmp_path / "m.onnx").write_bytes(b"old")
    real_fsync = os.fsync

    def killed_while_writing(fd):  # the temporary file holds the model's bytes by now
        real_fsync(fd)
        os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(saving.os, "fsync", killed_while_writing)
    before = signal.getsignal(signal.SIGTERM)
    rc = cli.main(["export", str(tmp_path / "f.npy"), "--value-shape", "1", "7", "6", "4",
                   "--rate", "2", "-o", str(tmp_path / "m.onnx")])
    assert rc == cli.TERMINATED == 143
    assert capsys.readouterr().err.strip() == "atrous-cl export: terminated"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy", "m.onnx"]
    assert (tmp_path / "m.onnx").read_bytes() == b"old"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_file_name_the_terminal_cannot_encode_is_escaped():
    """A name that is not UTF-8 (bytes 0xff) under a strict UTF-8 stdout: the model is
    written and its summary printed with the byte escaped, status 0 (the summary raised
    UnicodeEncodeError after the file was written, and the command exited 2)."""
    pytest.importorskip("onnx")
    folder = tempfile.mkdtemp()
    try:
        np.save(os.path.join(folder, "f.npy"), np.ones((3, 3, 2, 4), np.float32))
        out = os.path.join(os.fsencode(folder), b"m\xff.onnx")
        proc = _python("", ["export", os.path.join(folder, "f.npy"), "--value-shape", "1", "7",
                            "6", "4", "--rate", "2", "-o", os.fsdecode(out)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env_extra={"PYTHONIOENCODING": "utf-8:strict"})
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert stdout.startswith(os.fsencode(folder) + b"/m\\udcff.onnx: opset 17"), stdout
        assert os.path.isfile(out)
    finally:
        shutil.rmtree(folder)
