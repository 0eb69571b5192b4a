# SPDX-License-Identifier: Apache-2.0
"""The environment atrous-cl runs in: cache homes that cannot be written, pyopencl's binary cache
and its lock file, and the vendors folder that registers Intel's runtime with the ICD loader.

Behaviour fixed at import time runs in child processes, each with the environment under test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array
import pytest
from pyopencl.characterize import has_src_build_cache

from atrous_cl import cache, discovery, icd, programs

#: Run in a child: the devices it sees, then the op on its default device against the reference.
_CHILD = """
import json, warnings
import numpy as np
import atrous_cl
from atrous_cl import reference
seen = [(d.selector, d.platform, d.name) for d in atrous_cl.devices()]
rng = np.random.default_rng()
v = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
f = rng.standard_normal((3, 3, 4, 3)).astype(np.float32)
got = atrous_cl.atrous_conv2d_transpose(v, f, (2, 7, 9, 4), 2, "SAME")
want = reference.atrous_conv2d_transpose(v, f, (2, 7, 9, 4), 2, "SAME")
device = atrous_cl.get_queue().device
print(json.dumps({"devices": seen, "ran_on": [device.platform.name.strip(), device.name.strip()],
                  "error": float(np.max(np.abs(got - want)) / np.max(np.abs(want)))}))
"""


def _child_env(**changes) -> dict:
    """This process's environment for a child that registers its own drivers: without the
    OCL_ICD_VENDORS that importing atrous_cl set here (a user's own setting stays)."""
    env = dict(os.environ)
    if env.get("OCL_ICD_VENDORS", "").startswith(str(cache.cache_dir())):
        del env["OCL_ICD_VENDORS"]
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _run(code: str, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _selector(queue) -> str:
    return next(d.selector for d in discovery.devices() if d.device == queue.device)


def _op_in_child(env: dict) -> tuple[dict, str]:
    done = _run(_CHILD, env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


@pytest.mark.parametrize("case", ["HOME unset, XDG_CACHE_HOME under a file",
                                  "HOME a file, XDG_CACHE_HOME unset",
                                  "HOME a file, XDG_CACHE_HOME a file"])
def test_without_a_writable_cache_home_devices_stay_and_the_op_works(queue, tmp_path, case):
    """PoCL hid its devices, Intel's registration vanished (shifting indices), pyopencl raised a
    bare KeyError. Now a private temporary cache stands in, with a warning naming the unwritable
    folder, and is removed at exit. (Root writes through chmod 000, so files stand in for
    read-only folders.)"""
    selector = _selector(queue)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    home, xdg = {"HOME unset, XDG_CACHE_HOME under a file": (None, blocker / "cache"),
                 "HOME a file, XDG_CACHE_HOME unset": (blocker, None),
                 "HOME a file, XDG_CACHE_HOME a file": (blocker, blocker)}[case]
    unwritable = (xdg if xdg else home / ".cache") / "atrous-cl"
    normal, _ = _op_in_child(_child_env(XDG_CACHE_HOME=str(tmp_path / "cache"), PYOPENCL_CTX=selector))
    broken, stderr = _op_in_child(_child_env(
        PYOPENCL_CTX=selector, HOME=home and str(home), XDG_CACHE_HOME=xdg and str(xdg)))
    assert broken["devices"] == normal["devices"]
    assert broken["ran_on"] == normal["ran_on"] == [queue.device.platform.name.strip(),
                                                    queue.device.name.strip()]
    assert broken["error"] <= 1e-5
    assert f"cannot write its cache folder {unwritable} (Not a directory)" in stderr
    private = re.search(r"; using (\S+) for this process", stderr).group(1)
    assert not os.path.exists(private)  # removed at exit


@pytest.mark.parametrize("xdg, expected", [("relcache", "home/.cache"), ("", "home/.cache"),
                                           ("/abs/cache", "/abs/cache")])
def test_a_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch, xdg, expected):
    """The XDG spec: relative paths in its variables are invalid and ignored."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    assert cache._home_cache() == tmp_path / expected


def test_the_private_cache_stands_in_and_holds_the_registration(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    lib = tmp_path / "libintelocl.so"
    lib.write_bytes(b"")
    monkeypatch.setattr(icd, "_pip_intel_runtime", lambda: lib)
    monkeypatch.setattr(icd, "_SYSTEM_VENDORS", tmp_path / "no-vendors")
    monkeypatch.setattr(cache, "_private", None)
    monkeypatch.setattr(cache, "_cache_dirs", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setenv("OCL_ICD_VENDORS", "")  # recorded, so the test's changes are undone
    monkeypatch.delenv("OCL_ICD_VENDORS")
    monkeypatch.setattr(cache.tempfile, "tempdir", str(tmp_path))
    with pytest.warns(RuntimeWarning, match=f"cannot write its cache folder {blocker}/atrous-cl "
                                            r"\(Not a directory\); using .*atrous-cl-cache-"):
        home = cache.provide_cache_home()
    assert home is not None and os.environ["XDG_CACHE_HOME"] == home
    assert cache.cache_dir() == cache._private / "atrous-cl"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # told once
        folder = icd.register_pip_icds()
    assert folder.startswith(home) and (Path(folder) / "atrous-cl-intel-cpu.icd").read_text() == f"{lib}\n"


def test_a_child_of_a_parent_whose_private_cache_went_takes_its_own(tmp_path, monkeypatch):
    """Its parent's temporary cache home, inherited in XDG_CACHE_HOME and removed at the
    parent's exit, is not made again (nothing would remove it): the child takes a private
    cache of its own, removed at its own exit."""
    monkeypatch.setattr(cache, "_private", None)
    monkeypatch.setattr(cache, "_cache_dirs", {})
    monkeypatch.setattr(cache.tempfile, "tempdir", str(tmp_path))
    gone = tmp_path / "atrous-cl-cache-parent"
    monkeypatch.setenv("XDG_CACHE_HOME", str(gone))
    with pytest.warns(RuntimeWarning, match="a parent's temporary cache, removed at its exit"):
        folder = cache.cache_dir()
    assert not gone.exists() and folder == cache._private / "atrous-cl"
    assert cache._private.parent == tmp_path and cache._private != gone


def test_no_writable_folder_at_all_is_named(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(cache, "_private", None)
    monkeypatch.setattr(cache, "_cache_dirs", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(cache.tempfile, "tempdir", str(blocker))
    with pytest.raises(OSError, match=f"cannot write its cache folder {blocker}/atrous-cl .*nor a "
                                      f"temporary folder in {blocker}"):
        cache.cache_dir()


def _pyopencl_caches(queue) -> None:
    if has_src_build_cache(queue.device):
        pytest.skip(f"pyopencl leaves caching to {queue.device.platform.name.strip()}'s driver")


def test_a_stale_pyopencl_cache_lock_does_not_stall_builds(queue, tmp_path):
    """A process killed during a build leaves pyopencl's lock file behind; every later build then
    waited 60 s and raised KeyError('PYOPENCL_CACHE_FAILURE_FATAL'). Planted in pyopencl's own
    folder and in the one we once gave pyopencl, it must not stop a build (we keep binaries
    ourselves now, never through pyopencl's cache)."""
    _pyopencl_caches(queue)
    py = ".".join(map(str, sys.version_info))
    for folder in (tmp_path / "pyopencl" / f"pyopencl-compiler-cache-v2-py{py}",
                   tmp_path / "atrous-cl" / f"programs-py{sys.version_info[0]}.{sys.version_info[1]}"):
        folder.mkdir(parents=True)
        (folder / "lock").write_text("")
    env = _child_env(XDG_CACHE_HOME=str(tmp_path), PYOPENCL_CTX=_selector(queue))
    env.pop("PYOPENCL_CACHE_FAILURE_FATAL", None)
    result, stderr = _op_in_child(env)
    assert result["error"] <= 1e-5, stderr
    assert "Could not obtain cache lock" not in stderr


_SOURCE = "__kernel void k(__global float *a) { a[get_global_id(0)] = 2.0f * get_global_id(0); }"


def _runs(context, program) -> None:
    """``program``'s kernel ``k`` computes what its source says on the context's first device."""
    queue = cl.CommandQueue(context)
    a = cl_array.to_device(queue, np.full(37, np.nan, np.float32))  # fill() would build a program
    program.k(queue, (37,), None, a.data)
    np.testing.assert_array_equal(a.get(), 2.0 * np.arange(37, dtype=np.float32))


def _build(context, source, options=()):
    """programs._build, under filters that make any warning an error: Intel's driver returns
    a log on success, which pyopencl's own build turns into a CompilerWarning, and
    programs builds so that none is raised (programs.build_quietly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", cl.CompilerWarning)
        return programs._build(context, source, options)


def _transpose_options() -> tuple[str, ...]:
    """Build options of the transpose kernel file for a small float32 problem."""
    from atrous_cl import launch, validation
    from atrous_cl.tiles import Tile

    args = validation.check_transpose_args((1, 5, 5, 2), (3, 3, 2, 2), (1, 5, 5, 2), 2, "SAME")
    return launch.build_options(np.dtype(np.float32), args, Tile(4, 2))


def test_a_build_leaves_the_warning_filters_alone(queue, monkeypatch):
    """A filter another thread sets while a program builds (seconds) is still there after
    it: the build does not swap the process's filters (warnings.catch_warnings) to keep
    pyopencl's CompilerWarning quiet, and raises none, even where warnings are errors."""
    real = programs._build

    def build_while_another_thread_sets_a_filter(context, source, options):
        warnings.filterwarnings("ignore", message="set during a build")
        return real(context, source, options)

    monkeypatch.setattr(programs, "_build", build_while_another_thread_sets_a_filter)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unique = (f"-DATROUS_CL_TEST_BUILD={np.random.default_rng().integers(1 << 62)}",)
        programs.get_kernels(queue.context, "atrous_conv2d_transpose.cl",
                             _transpose_options() + unique)
        assert any(f[1] is not None and f[1].pattern == "set during a build"
                   for f in warnings.filters)


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    """A cache home of the test's own; the folder of program binaries in it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cache, "_warned", set())
    return tmp_path / "atrous-cl" / "binaries"


@pytest.fixture
def binaries(queue, cache_home):
    """:func:`cache_home`, for a device whose binaries we keep ourselves."""
    if programs.keeps_own_builds(queue.device):
        pytest.skip(f"{queue.device.platform.name} keeps its own builds (test below)")
    return cache_home


def test_a_driver_that_keeps_its_own_builds_gets_the_same_options_from_every_venv(
        queue, cache_home, monkeypatch):
    """PoCL caches builds from source by their options: pyopencl's ``-I <its own folder>``
    would make every new virtual environment miss (minutes per CI run); asking for the
    binaries to keep ourselves compiled every kernel once more (programs.keeps_own_builds)."""
    if not programs.keeps_own_builds(queue.device):
        pytest.skip(f"{queue.device.platform.name}: we keep its binaries (tests above)")

    def options(program):
        return program.get_build_info(queue.device, cl.program_build_info.OPTIONS).strip()

    monkeypatch.delenv("PYOPENCL_BUILD_OPTIONS", raising=False)
    first = _build(queue.context, _SOURCE, ("-DX=1",))
    monkeypatch.setattr(cl, "_DEFAULT_INCLUDE_OPTIONS", ["-I", "/elsewhere/pyopencl/cl"])
    again = _build(queue.context, _SOURCE, ("-DX=1",))
    _runs(queue.context, again)
    assert options(first) == options(again) == "-DX=1"
    monkeypatch.setenv("PYOPENCL_BUILD_OPTIONS", "-cl-fast-relaxed-math")
    assert options(_build(queue.context, _SOURCE, ("-DX=1",))) == "-DX=1 -cl-fast-relaxed-math"
    assert not cache_home.exists()  # nothing of ours: the driver keeps the build


class _Built:
    """Records whether each program programs makes is of binaries or of source."""

    def __init__(self, monkeypatch):
        self.made = []
        real = programs.unbuilt_program
        made = self.made

        def program(context, *args):
            made.append("binaries" if len(args) == 2 else "source")
            return real(context, *args)

        monkeypatch.setattr(programs, "unbuilt_program", program)


def test_a_program_built_once_comes_from_the_binary_cache(queue, binaries, monkeypatch):
    """Also after pyopencl moves (a new virtual environment): pyopencl adds ``-I <its own
    folder>`` to every build and keys its own cache by it, so every new venv built every
    program afresh (minutes on PoCL in each CI run)."""
    built = _Built(monkeypatch)
    _runs(queue.context, _build(queue.context, _SOURCE, ("-DX=1",)))
    assert len(list(binaries.glob("*/*"))) == len(queue.context.devices)
    monkeypatch.setattr(cl, "_DEFAULT_INCLUDE_OPTIONS", ["-I", "/elsewhere/pyopencl/cl"])
    _runs(queue.context, _build(queue.context, _SOURCE, ("-DX=1",)))
    _runs(queue.context, _build(queue.context, _SOURCE, ("-DX=2",)))  # other options
    assert built.made == ["source", "binaries", "source"]


def test_the_binary_cache_keeps_to_its_size_dropping_the_least_recently_used(queue, binaries,
                                                                            monkeypatch):
    """Past BINARY_CACHE_BYTES, storing a binary deletes the binaries used longest ago
    (reading one marks it used), never the one just stored; a temporary file a killed
    process left a day ago goes too, one being written now stays."""
    import os
    import time

    built = _Built(monkeypatch)
    sources = [_SOURCE.replace("2.0f", f"{k}.0f") for k in (2, 3, 4)]
    _runs(queue.context, _build(queue.context, sources[0]))
    (entry,) = binaries.glob("*/*")
    one = entry.stat().st_size
    monkeypatch.setattr(programs, "BINARY_CACHE_BYTES", 2 * one + one // 2)
    stale, fresh = entry.parent / ".stale.tmp", entry.parent / ".fresh.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (day_ago, day_ago))
    os.utime(entry, (day_ago, day_ago))
    _build(queue.context, sources[1])
    time.sleep(0.05)  # file times are as fine as the kernel's clock tick, a few ms
    _build(queue.context, sources[0])  # read back: now the most recently used
    assert built.made == ["source", "source", "binaries"]
    time.sleep(0.05)
    _build(queue.context, sources[2])  # three binaries: the least recently used goes
    kept = sorted(p.name for p in binaries.glob("*/*") if not p.name.startswith("."))
    assert len(kept) == 2 and entry.name in kept
    assert not stale.exists() and fresh.exists()
    built.made.clear()
    _runs(queue.context, _build(queue.context, sources[0]))
    _build(queue.context, sources[2])
    assert built.made == ["binaries", "binaries"]  # the two kept load; sources[1] would build


def test_the_binary_key_names_what_decides_the_binary(queue, monkeypatch):
    key = programs._binary_key(queue.device, _SOURCE, ("-DX=1",))
    assert programs._binary_key(queue.device, _SOURCE + " ", ("-DX=1",)) != key
    assert programs._binary_key(queue.device, _SOURCE, ("-DX=1", "-DY")) != key
    assert programs._binary_key(queue.device, _SOURCE, ("-DX=1 -DY",)) != \
        programs._binary_key(queue.device, _SOURCE, ("-DX=1", "-DY"))
    monkeypatch.setenv("PYOPENCL_BUILD_OPTIONS", "-cl-fast-relaxed-math")
    assert programs._binary_key(queue.device, _SOURCE, ("-DX=1",)) != key
    others = [d for p in cl.get_platforms() for d in p.get_devices()
              if (d.platform.name, d.name) != (queue.device.platform.name, queue.device.name)]
    assert all(programs._binary_key(d, _SOURCE, ("-DX=1",)) != key for d in others)


def test_the_kernel_sources_are_read_once_for_the_whole_process(monkeypatch):
    """All of them with the first: a package upgraded under a running process does not
    pair its new kernels with the old host code."""
    import pathlib

    programs.kernel_source("prelude.cl")

    def upgraded(*args, **kwargs):
        raise AssertionError("a kernel file read after the first")

    monkeypatch.setattr(pathlib.Path, "read_text", upgraded)
    for name in ("atrous_conv2d_transpose.cl", "atrous_conv2d_transpose_winograd.cl",
                 "atrous_conv2d_transpose_local.cl", "atrous_conv2d.cl"):
        assert "__kernel" in programs.program_source(name)
    with pytest.raises(FileNotFoundError, match="no kernel file 'missing.cl'"):
        programs.kernel_source("missing.cl")


@pytest.mark.parametrize("damage", ["truncated", "a byte flipped", "empty", "another key's file",
                                    "refused by the driver", "a FIFO", "a link to /dev/zero"])
def test_a_damaged_cache_entry_is_built_from_source_and_replaced(queue, binaries, monkeypatch,
                                                                 damage):
    """No silent wrong program: a file cut short, changed, copied from another key or
    holding a binary the driver refuses is never used; the source build replaces it."""
    _build(queue.context, _SOURCE, ())
    _build(queue.context, "__kernel void other(__global float *a) { a[0] = 1.0f; }", ())
    key = programs._binary_key(queue.device, _SOURCE, ())
    path = binaries / key[:2] / key
    good = path.read_bytes()
    other = next(f for f in binaries.glob("*/*") if f.name != key)
    if damage in ("a FIFO", "a link to /dev/zero"):  # a plain read: forever, or unbounded
        path.unlink()
        if damage == "a FIFO":
            os.mkfifo(path)
        else:
            path.symlink_to("/dev/zero")
    else:
        path.write_bytes({
            "truncated": good[:len(good) // 2],
            "a byte flipped": good[:-7] + bytes([good[-7] ^ 1]) + good[-6:],
            "empty": b"",
            "another key's file": other.read_bytes(),
            "refused by the driver": programs._entry(key, b"not a program binary" * 8),
        }[damage])
    built = _Built(monkeypatch)
    _runs(queue.context, _build(queue.context, _SOURCE, ()))
    assert built.made == (["binaries", "source"] if damage == "refused by the driver" else ["source"])
    assert path.read_bytes() == good or programs._read_binary(binaries, key) is not None


def test_an_unwritable_cache_still_builds(queue, binaries, monkeypatch):
    """The cache only saves time: a folder that cannot hold the binaries (a file in its
    place) gives uncached builds and one warning, never a failed op."""
    binaries.mkdir(parents=True)
    key = programs._binary_key(queue.device, _SOURCE, ())
    (binaries / key[:2]).write_text("a file where a folder should be")
    with pytest.warns(RuntimeWarning, match=r"cannot store a compiled program in .*binaries"):
        _runs(queue.context, _build(queue.context, _SOURCE, ()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _runs(queue.context, _build(queue.context, _SOURCE, ()))  # warned once
    assert not list(binaries.glob(f"{key[:2]}/*"))


def test_ctrl_c_while_storing_a_program_leaves_no_part_behind(queue, binaries, monkeypatch):
    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(programs.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _build(queue.context, _SOURCE, ())
    assert not [f for f in binaries.rglob("*") if f.is_file()]


def test_processes_building_at_once_all_get_whole_programs(queue, tmp_path):
    """Writers rename whole files into place, so concurrent cold builds neither fail nor
    leave a part behind."""
    env = _child_env(XDG_CACHE_HOME=str(tmp_path), PYOPENCL_CTX=_selector(queue),
                     POCL_CACHE_DIR=str(tmp_path / "pocl"))  # PoCL's builds cold too
    children = [subprocess.Popen([sys.executable, "-c", _CHILD], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        assert json.loads(out)["error"] <= 1e-5
    if programs.keeps_own_builds(queue.device):
        return  # the binaries are PoCL's
    folder = tmp_path / "atrous-cl" / "binaries"
    files = list(folder.glob("*/*"))
    assert files and all(programs._read_binary(folder, f.name) is not None for f in files)
    assert not list(folder.glob("*/.*"))  # no temporary file left


def _register(tmp_path, monkeypatch, system):
    lib = tmp_path / "prefix" / "lib" / "libintelocl.so"
    lib.parent.mkdir(parents=True, exist_ok=True)
    lib.write_bytes(b"")
    monkeypatch.setattr(icd, "_pip_intel_runtime", lambda: lib)
    monkeypatch.setattr(icd, "_SYSTEM_VENDORS", system)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("OCL_ICD_VENDORS", "")  # recorded, so the test's own setting is undone
    monkeypatch.delenv("OCL_ICD_VENDORS")
    folder = icd.register_pip_icds()
    assert folder is not None and os.environ["OCL_ICD_VENDORS"] == folder
    return lib, Path(folder)


def test_machines_sharing_a_cache_home_keep_their_own_vendors(tmp_path, monkeypatch):
    """A home on NFS: a machine without the GPU driver registering must not remove the
    entry another machine's loader is about to read (its GPU would silently become a
    CPU device, every index shifted)."""
    gpu_node, login_node = tmp_path / "gpu-node", tmp_path / "login-node"
    for system in (gpu_node, login_node):
        system.mkdir()
        (system / "pocl.icd").write_text("libpocl.so.2\n")
    (gpu_node / "nvidia.icd").write_text("libnvidia-opencl.so.1\n")
    _, gpu_folder = _register(tmp_path, monkeypatch, gpu_node)
    monkeypatch.delenv("OCL_ICD_VENDORS")
    _, login_folder = _register(tmp_path, monkeypatch, login_node)
    assert login_folder != gpu_folder
    assert sorted(p.name for p in gpu_folder.glob("*.icd")) == [
        "atrous-cl-intel-cpu.icd", "nvidia.icd", "pocl.icd"]
    assert sorted(p.name for p in login_folder.glob("*.icd")) == [
        "atrous-cl-intel-cpu.icd", "pocl.icd"]


def test_a_child_whose_parents_private_vendors_went_registers_again(tmp_path, monkeypatch):
    """A child that outlived its parent inherits OCL_ICD_VENDORS naming a folder in the
    parent's private cache home, removed at the parent's exit: registering again gives it
    its devices back; a folder of the user's own, even a missing one, still wins."""
    system = tmp_path / "vendors"
    system.mkdir()
    lib, folder = _register(tmp_path, monkeypatch, system)
    gone = tmp_path / "atrous-cl-cache-x" / "atrous-cl" / "icd" / "0123456789ab"
    monkeypatch.setenv("OCL_ICD_VENDORS", str(gone))
    assert icd.register_pip_icds() == str(folder)
    for users in (tmp_path / "my-vendors", tmp_path / "src" / "atrous-cl" / "icd" / "my.icd"):
        monkeypatch.setenv("OCL_ICD_VENDORS", str(users))
        assert icd.register_pip_icds() is None and os.environ["OCL_ICD_VENDORS"] == str(users)
    monkeypatch.setattr(icd, "_pip_intel_runtime", lambda: None)  # cannot register here:
    monkeypatch.setenv("OCL_ICD_VENDORS", str(gone))  # the dead setting still goes
    assert icd.register_pip_icds() is None and "OCL_ICD_VENDORS" not in os.environ


def test_registered_vendors_follow_the_system(tmp_path, monkeypatch):
    """A removed system driver must not come back from the registration (shifting every later
    platform index), an edited one shows through, an added one appears."""
    system = tmp_path / "vendors"
    system.mkdir()
    (system / "gpu.icd").write_text("/opt/vendor/libgpu.so\n")
    (system / "old.icd").write_text("/opt/old/libold.so\n")
    lib, folder = _register(tmp_path, monkeypatch, system)
    assert {p.name: p.read_text() for p in folder.glob("*.icd")} == {
        "atrous-cl-intel-cpu.icd": f"{lib}\n", "gpu.icd": "/opt/vendor/libgpu.so\n",
        "old.icd": "/opt/old/libold.so\n"}
    (system / "old.icd").unlink()
    (system / "gpu.icd").write_text("/opt/vendor/libgpu.so.2\n")
    (system / "new.icd").write_text("/opt/new/libnew.so\n")
    monkeypatch.delenv("OCL_ICD_VENDORS")
    folder = _register(tmp_path, monkeypatch, system)[1]
    assert {p.name: p.read_text() for p in folder.glob("*.icd")} == {
        "atrous-cl-intel-cpu.icd": f"{lib}\n", "gpu.icd": "/opt/vendor/libgpu.so.2\n",
        "new.icd": "/opt/new/libnew.so\n"}
    (system / "gpu.icd").write_text("/opt/vendor/libgpu.so.3\n")  # seen without registering again
    assert (folder / "gpu.icd").read_text() == "/opt/vendor/libgpu.so.3\n"


def test_copies_from_an_older_version_are_replaced(tmp_path, monkeypatch):
    """Folders written by earlier versions hold copies: a stale one for a removed driver goes."""
    system = tmp_path / "vendors"
    system.mkdir()
    (system / "gpu.icd").write_text("/opt/vendor/libgpu.so.2\n")
    lib, folder = _register(tmp_path, monkeypatch, system)
    (folder / "gpu.icd").unlink()
    (folder / "gpu.icd").write_text("/opt/vendor/libgpu.so\n")  # an old copy
    (folder / "gone.icd").write_text("/opt/gone/libgone.so\n")  # copied, since removed
    monkeypatch.delenv("OCL_ICD_VENDORS")
    _register(tmp_path, monkeypatch, system)
    assert {p.name: p.read_text() for p in folder.glob("*.icd")} == {
        "atrous-cl-intel-cpu.icd": f"{lib}\n", "gpu.icd": "/opt/vendor/libgpu.so.2\n"}


def test_without_system_vendors_only_intel_is_registered(tmp_path, monkeypatch):
    system = tmp_path / "vendors"
    system.mkdir()
    (system / "gpu.icd").write_text("/opt/vendor/libgpu.so\n")
    lib, folder = _register(tmp_path, monkeypatch, system)
    for entry in system.iterdir():
        entry.unlink()
    system.rmdir()
    monkeypatch.delenv("OCL_ICD_VENDORS")
    folder = _register(tmp_path, monkeypatch, system)[1]
    assert [p.name for p in folder.glob("*.icd")] == ["atrous-cl-intel-cpu.icd"]


def test_registration_that_cannot_be_written_says_so(tmp_path, monkeypatch):
    """Not silently: a warning names the runtime and the folder."""
    system = tmp_path / "vendors"
    lib = tmp_path / "libintelocl.so"
    lib.write_bytes(b"")
    monkeypatch.setattr(icd, "_pip_intel_runtime", lambda: lib)
    monkeypatch.setattr(icd, "_SYSTEM_VENDORS", system)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("OCL_ICD_VENDORS", "")
    monkeypatch.delenv("OCL_ICD_VENDORS")
    folder = cache.cache_dir() / "icd"
    folder.write_text("")  # a file where the folder goes
    with pytest.warns(RuntimeWarning, match=f"could not register Intel's OpenCL runtime \\({lib}\\)"):
        assert icd.register_pip_icds() is None
    assert "OCL_ICD_VENDORS" not in os.environ


#: A stand-in for a library that exports LLVM globally (TensorFlow's framework
#: library does): its cl::Option::addArgument ends the process with 42, so a
#: driver whose static initialisers bind to it shows, where TensorFlow's
#: real copy crashes the ICD loader's first platform query.
_FAKE_LLVM = "#include <unistd.h>\nvoid _ZN4llvm2cl6Option11addArgumentEv(void *o) { (void)o; _exit(42); }\n"

_GLOBAL_LLVM_CHILD = """
import ctypes, json, os, sys
ctypes.CDLL(sys.argv[1], mode=os.RTLD_GLOBAL | os.RTLD_NOW)
import numpy as np
import atrous_cl
from atrous_cl import discovery, icd, reference
if sys.argv[2] == "unshielded":
    icd._shielded.append(None)  # as if already done: the drivers load as the ICD loader would
rng = np.random.default_rng()
v = rng.standard_normal((1, 6, 7, 2)).astype(np.float32)
f = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
want = reference.atrous_conv2d_transpose(v, f, (1, 6, 7, 3), 2, "SAME")
errors = {}
for d in atrous_cl.devices():
    if discovery.unusable_reason(d.device) is None:
        got = atrous_cl.atrous_conv2d_transpose(v, f, (1, 6, 7, 3), 2, "SAME", device=d.device)
        errors[d.selector] = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
print(json.dumps({"shielded": len(icd._shielded), "errors": errors}))
"""


def test_drivers_run_beside_a_global_llvm(tmp_path):
    """TensorFlow imported first (a global LLVM) must not crash or break the drivers' own LLVM:
    each usable device runs the op right, with the vendor libraries loaded deep-bound."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the stand-in global LLVM")
    (tmp_path / "fake_llvm.c").write_text(_FAKE_LLVM)
    lib = tmp_path / "libfake_llvm.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "fake_llvm.c")], check=True)
    done = _run(_GLOBAL_LLVM_CHILD, _child_env(), str(lib), "shielded")
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    got = json.loads(done.stdout)
    assert got["shielded"] > 0 and got["errors"], got
    assert max(got["errors"].values()) < 1e-5, got
    if any("libpocl.so.2" in name for name in icd._icd_libraries()):
        # Debian's PoCL links LLVM as a shared library: without the shield its
        # initialisers reach the global copy (the stand-in exits with 42).
        assert _run(_GLOBAL_LLVM_CHILD, _child_env(), str(lib), "unshielded").returncode == 42


def test_icd_libraries_are_the_loaders(tmp_path, monkeypatch):
    """The libraries shielded are those the ICD loader opens: OCL_ICD_VENDORS (folder or
    file) in place of the system folder, OCL_ICD_FILENAMES, and pyopencl's own folder."""
    import pyopencl

    wheels = [str(p.parent / p.read_text().strip()) for p in
              sorted((Path(pyopencl.__file__).parent / ".libs").glob("*.icd"))]
    vendors = tmp_path / "vendors"
    vendors.mkdir()
    (vendors / "a.icd").write_text("/opt/a/liba.so\n")
    (vendors / "b.icd").write_text("libb.so.1\n")
    (vendors / "notes.txt").write_text("/opt/not/an/icd.so\n")
    monkeypatch.setenv("OCL_ICD_VENDORS", str(vendors))
    monkeypatch.setenv("OCL_ICD_FILENAMES", "/opt/x/libx.so:liby.so")
    assert icd._icd_libraries() == [*wheels, "/opt/a/liba.so", "libb.so.1", "/opt/x/libx.so", "liby.so"]
    monkeypatch.setenv("OCL_ICD_VENDORS", str(vendors / "b.icd"))
    monkeypatch.delenv("OCL_ICD_FILENAMES")
    assert icd._icd_libraries() == [*wheels, "libb.so.1"]


def test_every_threads_first_call_waits_for_the_shield(monkeypatch):
    """A second thread's first call must not query platforms while the first is still
    deep-binding the drivers (the shield's libraries load one by one, for seconds)."""
    import threading
    import time

    events = []

    def slow_shield():
        events.append("shield starts")
        time.sleep(0.5)
        events.append("shield done")
        return []

    monkeypatch.setattr(discovery, "_opencl_pid", None)
    monkeypatch.setattr(icd, "shield_from_global_llvm", slow_shield)
    first = threading.Thread(target=discovery.check_not_forked)
    first.start()
    while not events:
        time.sleep(0.01)
    discovery.check_not_forked()  # this thread's first call, during the shield
    events.append("second thread goes on")
    first.join()
    assert events == ["shield starts", "shield done", "second thread goes on"]


def test_the_shield_loads_nothing_without_a_global_llvm(monkeypatch):
    """A process without a global LLVM must load its drivers exactly as the ICD loader does."""
    loads = []

    class Scope:  # the process's global scope, without LLVM in it
        def __init__(self, name, mode=0):
            loads.append((name, mode))

    monkeypatch.setattr(icd, "_shielded", [])
    monkeypatch.setattr(icd.ctypes, "CDLL", Scope)
    assert icd.shield_from_global_llvm() == [] and loads == [(None, 0)]

    class LLVMScope(Scope):  # with it: each vendor library deep-bound, once
        _ZN4llvm2cl6Option11addArgumentEv = object()

    monkeypatch.setattr(icd.ctypes, "CDLL", LLVMScope)
    monkeypatch.setattr(icd, "_icd_libraries", lambda: ["liba.so", "libb.so"])
    loads.clear()
    assert icd.shield_from_global_llvm() == ["liba.so", "libb.so"]
    deep = os.RTLD_NOW | os.RTLD_LOCAL | os.RTLD_DEEPBIND
    assert loads == [(None, 0), ("liba.so", deep), ("libb.so", deep)]
    loads.clear()
    assert icd.shield_from_global_llvm() == [] and loads == []
