# SPDX-License-Identifier: Apache-2.0
"""The ``atrous-cl`` command and the packaging it relies on."""

from __future__ import annotations

import importlib.resources
import importlib.util
import shutil
import subprocess

import numpy as np
import pytest

from atrous_cl import cli, runtime


def test_devices_lists_the_default(queue, capsys):
    assert cli.main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "*" in out and "default (*):" in out
    assert queue.device.name.strip() in out


def test_demo_checks_against_the_reference(queue, capsys, monkeypatch):
    monkeypatch.setenv("PYOPENCL_CTX", next(d.selector for d in runtime.devices()
                                            if d.device == queue.device))
    code = cli.main(["demo", "--size", "12", "--channels", "8", "--rate", "3", "--repeat", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "result:  OK" in out and "error:" in out and "GFLOP/s" in out


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
    assert "__kernel" in runtime.kernel_source("atrous_conv2d_transpose.cl")


@pytest.mark.skipif(shutil.which("atrous-cl") is None, reason="console script not installed")
def test_console_script_runs():
    proc = subprocess.run(["atrous-cl", "devices"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "default (*):" in proc.stdout


def test_tune_command_caches_a_winner(queue, capsys, monkeypatch, tmp_path):
    from atrous_cl import tuning

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(tuning, "_loaded", None)
    selector = next(d.selector for d in runtime.devices() if d.device == queue.device)
    code = cli.main(["tune", "--device", selector, "--shape", "1", "6", "9", "3", "4", "3", "2",
                     "--repeat", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "best tile" in out and (tmp_path / "atrous-cl" / "tuning.json").is_file()
    tuning._loaded = None


def test_bench_prints_a_checked_table(queue, capsys, monkeypatch):
    from atrous_cl import bench

    tiny = bench.Workload("T", 2, 6, 7, 3, 4, 3, 2, "SAME")
    monkeypatch.setattr(bench, "WORKLOADS", [tiny])
    monkeypatch.setattr(bench, "sgemm_gflops", lambda: 100.0)
    assert cli.main(["bench", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "| T: 2x6x7x3->4 k3 r2 SAME | atrous-cl" in out and "% ceiling" in out


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


def test_bench_rejects_a_peer_that_computes_something_else():
    from atrous_cl import bench

    wl = bench.Workload("T", 1, 4, 4, 2, 2, 3, 1, "SAME")
    wrong = {"wrong": bench.Impl(lambda wl, value, filters: lambda: np.zeros(wl.output_shape, np.float32))}
    with pytest.raises(RuntimeError, match="wrong disagrees with the reference on T"):
        bench.run([wl], rounds=1, warmup=0, impls=wrong)
