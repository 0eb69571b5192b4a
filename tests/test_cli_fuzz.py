# SPDX-License-Identifier: Apache-2.0
"""Fuzz of the ``atrous-cl`` command line: hypothesis over its arguments.

Whatever the arguments, ``cli.main(argv)`` returns 0, or exits 2 with a line
``atrous-cl <command>: error: ...`` on stderr; it never raises (a traceback). Arguments known to be bad must give 2. Everything runs in this
process; Ctrl-C and a closed pipe, which end a process, are in test_cli.py.
``bench`` is only given arguments with a bad one among them, and its
``run`` fails the test if reached, so no benchmark ever runs.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from atrous_cl import cli


def fuzz(**kwargs) -> settings:
    """The profile's settings (conftest.py), with fixtures shared by the examples."""
    return settings(suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow], deadline=None, **kwargs)


def run_main(argv, capsys) -> tuple[int, str, str]:
    """``cli.main(argv)``: (status, stdout, stderr). Any exception but argparse's exit fails."""
    capsys.readouterr()
    try:
        status = cli.main(argv)
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_outcome(status, err, command: str | None, bad: bool) -> None:
    """0 or 2, and 2 if ``bad``; with 2 an error line of ``command`` (``None``: of any)."""
    assert "Traceback" not in err, err
    if bad:
        assert status == cli.USAGE_ERROR, (status, err)
    assert status in (0, cli.USAGE_ERROR), (status, err)
    if status == cli.USAGE_ERROR:
        prefix = re.escape(f"atrous-cl {command}: ") if command else r"atrous-cl( \w+)?: "
        # One line of ours; argparse's usage comes before its own. (An argument with a
        # newline in it may continue the line: hence any line, not the last.)
        assert any(re.match(prefix + "error: ", line) for line in err.splitlines()), err


NOT_INTS = st.sampled_from(["x", "1.5", "", "0x10", "one", "2e3", "--"])
NON_POSITIVE = st.sampled_from([0, -1, -3, -(2**63)])


def positive(low: int, high: int, huge=()):
    """Good: small ints; bad: <= 0, not an int, or ``huge`` (too big to allocate)."""
    return st.integers(low, high), st.one_of(NON_POSITIVE, NOT_INTS,
                                             *([st.sampled_from(huge)] if huge else []))


@st.composite
def options(draw, table: dict, spoil: bool | None = None) -> tuple[list[str], bool]:
    """Some of ``table``'s options (name -> (good, bad) strategies of a value or a list of
    them) in any order: all good about half the time, else one or more bad (always, with
    ``spoil``). Returns (argv, whether any is bad)."""
    names = draw(st.lists(st.sampled_from(sorted(table)), unique=True, min_size=int(bool(spoil))))
    spoil = draw(st.booleans()) if spoil is None else spoil
    spoilt = set(draw(st.lists(st.sampled_from(names), unique=True, min_size=1))
                 if names and spoil else [])
    argv = []
    for name in draw(st.permutations(names)):
        value = draw(table[name][name in spoilt])
        argv += [name, *(map(str, value) if isinstance(value, list) else [str(value)])]
    return argv, bool(spoilt)


# --- demo: tiny real runs, and every kind of bad value -------------------------------------------

@st.composite
def demo_argv(draw, selector: str, fp64: bool):
    table = {
        "--size": positive(1, 6, huge=[10**5, 2**40]),
        "--batch": positive(1, 2, huge=[2**40]),
        "--channels": positive(1, 4, huge=[2**40]),
        "--kernel": positive(1, 3, huge=[2**40]),
        "--rate": positive(1, 3),
        "--repeat": positive(1, 2),
        "--padding": (st.sampled_from(["SAME", "VALID"]), st.sampled_from(["same", "FULL", ""])),
        "--dtype": (st.sampled_from(["float32", "float16"] + (["float64"] if fp64 else [])),
                    st.sampled_from(["int8", "float", "bfloat16"])),
        "--device": (st.just(selector), st.sampled_from(["9:9", "nonsense", "0:-1"])),
    }
    argv, bad = draw(options(table))
    # The defaults are 64x64 pixels, 64 channels, and the default device: keep a run small,
    # on the device under test.
    for name, value in (("--size", "4"), ("--channels", "3"), ("--device", selector)):
        if name not in argv:
            argv += [name, value]
    return argv, bad


@fuzz()
@given(data=st.data())
def test_demo_fuzz(device_info, capsys, data):
    if device_info is None:
        pytest.skip("no OpenCL device")
    fp64 = "cl_khr_fp64" in device_info.device.extensions.split()
    argv, bad = data.draw(demo_argv(device_info.selector, fp64))
    event("good arguments" if not bad else "bad arguments")
    status, out, err = run_main(["demo", *argv], capsys)
    assert_outcome(status, err, "demo", bad)
    if not bad:
        assert status == 0 and "result:  OK" in out, (argv, out, err)


# --- bench: never a valid set, never a benchmark ---------------------------------------------------

@pytest.fixture
def no_benchmark(monkeypatch):
    from atrous_cl import bench

    def never(*args, **kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(bench, "run", never)
    monkeypatch.setattr(bench, "sgemm_gflops", never)


@st.composite
def bench_argv(draw, folder: str):
    """Always at least one bad argument."""
    join = lambda name: os.path.join(folder, name)  # noqa: E731
    table = {
        "--rounds": (st.integers(1, 9), st.one_of(NON_POSITIVE, NOT_INTS)),
        "--workloads": (st.lists(st.sampled_from("ABCDEF"), max_size=3),
                        st.tuples(st.lists(st.sampled_from("ABC"), max_size=2),
                                  st.lists(st.sampled_from(["Z", "a", "", "AB", "G", "-"]),
                                           min_size=1, max_size=2)).map(lambda t: t[0] + t[1])),
        "--plot": (st.sampled_from(["p.png", "p.svg", "p.pdf"]).map(join),
                   st.sampled_from([join("missing/p.png"), join("p.xyz"), join("p"), folder,
                                    join("dir.png"), join("fifo.png"), ""])),
    }
    argv, _ = draw(options(table, spoil=True))
    return argv + (["--back-to-back"] if draw(st.booleans()) else [])


@fuzz()
@given(data=st.data())
def test_bench_fuzz_refuses_before_running(tmp_path, capsys, no_benchmark, data):
    pytest.importorskip("matplotlib")
    (tmp_path / "dir.png").mkdir(exist_ok=True)
    if not (tmp_path / "fifo.png").exists():
        os.mkfifo(tmp_path / "fifo.png")
    argv = data.draw(bench_argv(str(tmp_path)))
    status, _, err = run_main(["bench", *argv], capsys)
    assert_outcome(status, err, "bench", bad=True)
    assert sorted(os.listdir(tmp_path)) == ["dir.png", "fifo.png"]


# --- export: filter files, shapes, options and output paths of every kind -------------------------

FILTERS = (2, 3, 5, 4)  # kh, kw, out, in: a good value has 4 channels


@pytest.fixture(scope="module")
def filter_files(tmp_path_factory):
    """name -> (path, good): ``good`` files export as they are or with --dtype."""
    folder = tmp_path_factory.mktemp("filters")
    w = np.random.default_rng(14).standard_normal(FILTERS)
    files = {}
    for name, array, good in (("f32", w.astype(np.float32), True),
                              ("f64", w, True),  # needs --dtype
                              ("big-endian", w.astype(">f4"), True),
                              ("f16", w.astype(np.float16), True),
                              ("int", np.ones(FILTERS, np.int32), True),  # needs --dtype
                              ("complex", w.astype(np.complex64), False),
                              ("3d", w[0].astype(np.float32), False),
                              ("scalar", np.float32(1), False)):
        files[name] = (str(folder / f"{name}.npy"), good)
        np.save(files[name][0], array)
    (folder / "empty.npy").write_bytes(b"")
    (folder / "text.npy").write_text("1 2 3\n")
    np.savez(folder / "arch.npz", f=w)
    files.update(empty=(str(folder / "empty.npy"), False), text=(str(folder / "text.npy"), False),
                 npz=(str(folder / "arch.npz"), False), missing=(str(folder / "no.npy"), False),
                 folder=(str(folder), False))
    return files


#: Output targets: name -> whether the export may write there.
TARGETS = {"new": True, "existing": True, "link": True, "dangling": True, "fifo": False,
           "devnull": False, "directory": False, "missing-parent": False, "slash": False,
           "loop": False}


def make_target(folder: str, kind: str) -> str:
    path = os.path.join(folder, "m.onnx")
    if kind == "existing":
        with open(path, "wb") as f:
            f.write(b"old")
    elif kind == "link":
        with open(os.path.join(folder, "real.onnx"), "wb") as f:
            f.write(b"old")
        os.symlink("real.onnx", path)
    elif kind == "dangling":
        os.symlink("real.onnx", path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "devnull":
        os.symlink(os.devnull, path)
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "missing-parent":
        path = os.path.join(folder, "missing", "m.onnx")
    elif kind == "slash":
        path += os.sep
    elif kind == "loop":
        os.symlink("m.onnx", path)
    return path


def snapshot(folder: str) -> dict:
    """Each entry's kind: the export may write regular files, never change a link or a FIFO."""
    kinds = {}
    for name in os.listdir(folder):
        mode = os.lstat(os.path.join(folder, name)).st_mode
        kinds[name] = ("link" if stat.S_ISLNK(mode) else "fifo" if stat.S_ISFIFO(mode)
                       else "dir" if stat.S_ISDIR(mode) else "file")
    return kinds


FILE_NEEDS_DTYPE = ("f64", "int")


@st.composite
def good_export_argv(draw, files):
    """Arguments the export must accept: a model is written."""
    name = draw(st.sampled_from(sorted(n for n, (_, good) in files.items() if good)))
    op = draw(st.sampled_from(["atrous_conv2d_transpose", "atrous_conv2d"]))
    kh, kw, a, b = FILTERS  # [kh, kw, out, in] for the transpose op, [kh, kw, in, out] forward
    rate = draw(st.integers(1, 3))
    padding = draw(st.sampled_from(["SAME", "VALID"]))
    n = draw(st.integers(0, 2))
    low_h, low_w = (1, 1) if op != "atrous_conv2d" or padding == "SAME" else \
        ((kh - 1) * rate + 1, (kw - 1) * rate + 1)  # VALID: the dilated kernel must fit
    h, w = draw(st.integers(low_h, low_h + 4)), draw(st.integers(low_w, low_w + 4))
    argv = [files[name][0], "--op", op, "--value-shape", *map(str, (n, h, w, b if op ==
            "atrous_conv2d_transpose" else a)), "--rate", str(rate), "--padding", padding]
    if op == "atrous_conv2d_transpose" and draw(st.booleans()):
        oh, ow = (h, w) if padding == "SAME" else (h + (kh - 1) * rate, w + (kw - 1) * rate)
        argv += ["--output-shape", str(n), str(oh), str(ow), str(a)]
        if draw(st.booleans()):
            argv.append("--conv-form")
    flags = ["--dynamic-batch", "--symmetric-pads"]
    argv += [f for f in flags if draw(st.booleans())]
    for opt, values in (("--layout", ["NHWC", "NCHW"]), ("--opset", ["11", "17", "28"]),
                        ("--dtype", ["float32", "float16"]), ("--input-name", ["x", "value"]),
                        ("--output-name", ["y", "output"])):
        if draw(st.booleans()) or (opt == "--dtype" and name in FILE_NEEDS_DTYPE):
            argv += [opt, draw(st.sampled_from(values))]
    target = draw(st.sampled_from(sorted(t for t, ok in TARGETS.items() if ok)))
    return argv, False, target


SHAPE_DIM = st.one_of(st.integers(1, 6), st.sampled_from([0, -1, 2**31, 2**63]))


@st.composite
def any_export_argv(draw, files):
    """Anything, bad more often than not; ``bad`` where some argument is known to be."""
    name = draw(st.sampled_from(sorted(files)))
    path, good_file = files[name]
    argv, bad = [path], not good_file
    op = draw(st.sampled_from([None, "atrous_conv2d_transpose", "atrous_conv2d", "conv2d"]))
    if op is not None:
        argv += ["--op", op]
        bad |= op == "conv2d"
    value_shape = [draw(st.one_of(st.integers(0, 2), st.just(-1))), draw(SHAPE_DIM),
                   draw(SHAPE_DIM), draw(st.sampled_from([4, 5, 0]))]
    argv += ["--value-shape", *map(str, value_shape)]
    bad |= any(not 0 <= d < 2**31 for d in value_shape)
    rate = draw(st.one_of(st.integers(1, 3).map(str), st.sampled_from(
        ["0", "-2", "x", str(2**31), str(2**64)])))
    argv += ["--rate", rate]
    bad |= rate in ("0", "-2", "x", str(2**31), str(2**64))
    argv += [f for f in ("--dynamic-batch", "--symmetric-pads", "--conv-form") if draw(st.booleans())]
    for opt, good, wrong in (("--padding", ["SAME", "VALID"], ["same", "FULL"]),
                             ("--layout", ["NHWC", "NCHW"], ["nhwc", "HWC"]),
                             ("--opset", ["11", "17", "28"], ["10", "29", "x", "-1"]),
                             ("--dtype", ["float32", "float16"], ["float64", "int8"]),
                             ("--input-name", ["x", "value"], ["", "filters", "conv_out"]),
                             ("--output-name", ["y"], ["", "value_nchw", "crop_axes"])):
        choice = draw(st.sampled_from([None, *good, *wrong]))
        if choice is not None:
            argv += [opt, choice]
            bad |= choice in wrong
    bad |= name in FILE_NEEDS_DTYPE and "--dtype" not in argv
    if draw(st.booleans()):
        argv += ["--output-shape", *map(str, draw(st.lists(st.integers(0, 9), min_size=4,
                                                           max_size=4)))]
    target = draw(st.sampled_from(sorted(TARGETS)))
    return argv, bad or not TARGETS[target], target


@fuzz(max_examples=80)
@given(data=st.data())
def test_export_fuzz(filter_files, capsys, data):
    pytest.importorskip("onnx")
    good = data.draw(st.booleans(), label="good")
    argv, bad, target = data.draw((good_export_argv if good else any_export_argv)(filter_files))
    with tempfile.TemporaryDirectory() as folder:
        out = make_target(folder, target)
        before = snapshot(folder)
        status, stdout, err = run_main(["export", *argv, "-o", out], capsys)
        event(f"status {status}")
        assert_outcome(status, err, "export", bad)
        assert status == 0 or not good, err
        assert_written(folder, target, before, status)
        if status == 0:
            assert stdout.startswith(f"{out}: opset ")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def assert_written(folder: str, target: str, before: dict, status: int) -> None:
    """A model that checks where ``target`` leads if ``status`` is 0, else nothing new; no
    temporary file left, and every entry of ``before`` still of its kind."""
    after = snapshot(folder)
    assert not [n for n in after if n.endswith(".tmp")], after
    written = {"link": "real.onnx", "dangling": "real.onnx"}.get(target, "m.onnx")
    if status == 0:
        import onnx

        onnx.checker.check_model(os.path.join(folder, written), full_check=True)
        before = {**before, written: before.get(written, "file")}
    assert after == before  # kinds kept: links stay links, the FIFO a FIFO


# --- fold: models, non-models and options in, output paths of every kind -------------------------

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")


@pytest.fixture(scope="module")
def fold_inputs(tmp_path_factory):
    """name -> (path, good): ``good`` files are ONNX models (with chains to fold, or none)."""
    folder = tmp_path_factory.mktemp("fold-inputs")
    files = {name: (os.path.join(MODELS_DIR, f"{name}.onnx"), True)
             for name in ("single_b1", "single_b3_valid")}
    files["npz"] = (os.path.join(MODELS_DIR, "single_b1.npz"), False)
    (folder / "empty.onnx").write_bytes(b"")       # parses as a ModelProto with nothing in it
    (folder / "junk.onnx").write_bytes(b"\xff not a model")
    os.mkfifo(folder / "fifo.onnx")
    files.update({name: (str(folder / f"{name}.onnx"), False) for name in ("empty", "junk", "fifo")})
    files.update(missing=(str(folder / "no.onnx"), False), folder=(str(folder), False))
    try:
        from onnx_export import export_atrous_conv2d_transpose, save_model
    except ImportError:
        return files
    save_model(export_atrous_conv2d_transpose(np.ones((2, 2, 3, 4), np.float32), (1, 5, 5, 4),
                                              None, 2, "SAME"), folder / "no_chain.onnx")
    files["no_chain"] = (str(folder / "no_chain.onnx"), True)
    return files


@fuzz(max_examples=40)
@given(data=st.data())
def test_fold_fuzz(fold_inputs, capsys, data):
    pytest.importorskip("onnx")
    good = data.draw(st.booleans(), label="good")
    name = data.draw(st.sampled_from(sorted(n for n, (_, ok) in fold_inputs.items()
                                            if ok or not good)), label="input")
    path, bad = fold_inputs[name][0], not fold_inputs[name][1]
    argv = [path] + [f for f in ("--conv-form", "--check") if data.draw(st.booleans())]
    forms = [None, "portable", "single", "symmetric"] + ([] if good else ["SINGLE", ""])
    pad_form = data.draw(st.sampled_from(forms), label="pad_form")
    if pad_form is not None:
        argv += ["--pad-form", pad_form]
        bad |= pad_form not in ("portable", "single", "symmetric")
    target = data.draw(st.sampled_from(sorted(t for t, ok in TARGETS.items() if ok or not good)),
                       label="target")
    with tempfile.TemporaryDirectory() as folder:
        out = make_target(folder, target)
        before = snapshot(folder)
        status, stdout, err = run_main(["fold", *argv, "-o", out], capsys)
        event(f"status {status}")
        assert_outcome(status, err, "fold", bad or not TARGETS[target])
        assert status == 0 or not good, err
        assert_written(folder, target, before, status)
        if status == 0:
            assert stdout.rstrip().endswith(f"wrote {out}"), stdout
