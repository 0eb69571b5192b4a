# SPDX-License-Identifier: Apache-2.0
"""Exported and folded models in every ONNX runtime installed here.

Each runtime is skipped when its package is missing: onnxruntime and onnx's
ReferenceEvaluator always run; CI also installs OpenVINO (``openvino``) and
tract (``tract``); IREE (``iree-base-compiler``, ``iree-base-runtime``),
onnx2torch (``onnx2torch`` with ``torch``), TVM (``apache-tvm``) and
pnnx/ncnn (``pnnx``, ``ncnn``; batch 1 only) run where installed. The exports
are compared with the NumPy reference, the folded tf2onnx models with TF's
outputs, all within 1e-4 of the largest value (float32).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from atrous_cl import geometry
from atrous_cl.reference import atrous_conv2d_transpose as reference
from onnx_export import export_atrous_conv2d_transpose, fold

MODELS_DIR = pathlib.Path(__file__).parent / "models"
TOL = 1e-4


def _save(model, tmp_path) -> str:
    path = os.fspath(tmp_path / "model.onnx")
    onnx.save(model, path)
    return path


def run_onnxruntime(model, x, tmp_path):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {model.graph.input[0].name: x})[0]


def run_onnx_reference(model, x, tmp_path):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x})[0]


def run_openvino(model, x, tmp_path):
    import openvino as ov

    # f32: on CPUs with bf16 instructions OpenVINO otherwise runs Conv in bf16
    # (3.6e-3 relative error measured here).
    compiled = ov.Core().compile_model(_save(model, tmp_path), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(x)[compiled.output(0)]


def run_tract(model, x, tmp_path):
    import tract

    inference = tract.onnx().load(_save(model, tmp_path))
    inference.set_input_fact(0, ",".join(map(str, x.shape)) + ",f32")
    return inference.into_model().into_runnable().run([x])[0].to_numpy()


def run_onnx2torch(model, x, tmp_path):
    import torch
    from onnx2torch import convert

    with torch.no_grad():
        return convert(model)(torch.from_numpy(x)).numpy()


def run_iree(model, x, tmp_path):
    import iree.runtime as rt

    tools = pathlib.Path(sys.executable).parent
    path = _save(model, tmp_path)
    for cmd in ([tools / "iree-import-onnx", path, "-o", path + ".mlir"],
                [tools / "iree-compile", path + ".mlir", "--iree-hal-target-device=local",
                 "--iree-hal-local-target-device-backends=llvm-cpu", "-o", path + ".vmfb"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode:
            raise RuntimeError(f"{pathlib.Path(cmd[0]).name} failed: {proc.stderr[-2000:]}")
    ctx = rt.SystemContext(config=rt.Config("local-task"))
    vmfb = pathlib.Path(path + ".vmfb").read_bytes()
    ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb))
    return np.asarray(ctx.modules.module[model.graph.name.replace("/", "_")](x))


def run_tvm(model, x, tmp_path):
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(model, shape_dict={model.graph.input[0].name: list(x.shape)})
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def run_ncnn(model, x, tmp_path):
    import ncnn

    if x.shape[0] != 1:
        pytest.skip("ncnn: its blobs have no batch dimension")
    path = _save(model, tmp_path)
    pnnx = pathlib.Path(sys.executable).parent / "pnnx"
    # fp16=0: pnnx otherwise stores the weights in float16 (1.7e-4 relative error here).
    shape = "inputshape=[" + ",".join(map(str, x.shape)) + "]"
    proc = subprocess.run([pnnx, path, shape, "fp16=0"], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    if proc.returncode:
        raise RuntimeError(f"pnnx failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    net = ncnn.Net()
    for opt in ("use_vulkan_compute", "use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic",
                "use_bf16_storage"):
        setattr(net.opt, opt, False)
    stem = path[:-len(".onnx")]
    if net.load_param(stem + ".ncnn.param") or net.load_model(stem + ".ncnn.bin"):
        raise RuntimeError("ncnn cannot load pnnx's conversion")
    extractor = net.create_extractor()
    extractor.input("in0", ncnn.Mat(np.ascontiguousarray(x[0])))
    status, out = extractor.extract("out0")
    if status:
        raise RuntimeError(f"ncnn extract returned {status}")
    return np.array(out)[None]


#: runtime -> (runner, the modules it needs)
RUNTIMES = {
    "onnxruntime": (run_onnxruntime, ["onnxruntime"]),
    "onnx-reference": (run_onnx_reference, ["onnx"]),
    "openvino": (run_openvino, ["openvino"]),
    "tract": (run_tract, ["tract"]),
    "onnx2torch": (run_onnx2torch, ["onnx2torch", "torch"]),
    "iree": (run_iree, ["iree.compiler", "iree.runtime"]),
    "tvm": (run_tvm, ["tvm"]),
    "pnnx-ncnn": (run_ncnn, ["ncnn", "pnnx"]),
}
#: (runtime, form) pairs known to refuse an asymmetric ConvTranspose: asserted, so a fix shows.
REFUSES_SINGLE = {"iree", "onnx2torch", "pnnx-ncnn"}


def runner(name):
    fn, modules = RUNTIMES[name]
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f"{name}: {module} is not installed")
    tools = os.path.dirname(sys.executable)
    if name == "iree" and shutil.which("iree-import-onnx", path=tools) is None:
        pytest.skip("iree: iree-import-onnx is not next to this Python")
    return fn


def assert_close(got, want, what):
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    err = np.abs(got.astype(np.float64) - want).max() / np.abs(want).max()
    assert err <= TOL, f"{what}: max |error| is {err:.3g} of max |want|, bound {TOL:g}"


#: (N, H, W, Cin, Cout, k, rate, padding): even kernels with odd rates (asymmetric SAME pads)
#: and one symmetric case.
EXPORT_CASES = [(2, 7, 6, 3, 5, 4, 3, "SAME"), (1, 9, 8, 4, 2, 2, 5, "SAME"),
                (3, 5, 6, 2, 3, 3, 2, "VALID")]
EXPORT_FORMS = {"default": {}, "default-dynamic": dict(dynamic_batch=True),
                "single": dict(pad_form="single"), "conv": dict(conv_form=True)}


@pytest.mark.parametrize("form", EXPORT_FORMS)
@pytest.mark.parametrize("case", EXPORT_CASES,
                         ids=lambda c: "n{}-{}x{}-{}to{}-k{}-r{}-{}".format(*c))
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_export_runs(runtime, case, form, tmp_path):
    run = runner(runtime)
    n, h, w, cin, cout, k, rate, padding = case
    rng = np.random.default_rng(sum(map(ord, f"{case}{form}")))
    x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
    filters = rng.standard_normal((k, k, cout, cin)).astype(np.float32)
    out_shape = (n, *geometry.transpose_output_hw((h, w), (k, k), rate, padding), cout)
    model = export_atrous_conv2d_transpose(filters, x.shape, None, rate, padding,
                                           **EXPORT_FORMS[form])
    pads = geometry.pads((k, k), rate, padding)
    asymmetric = pads[:2] != pads[2:]
    if form == "single" and asymmetric and runtime in REFUSES_SINGLE:
        with pytest.raises(Exception):
            run(model, x, tmp_path)
        return
    assert_close(run(model, x, tmp_path), reference(x, filters, out_shape, rate, padding),
                 f"{runtime} {form} {case}")


FOLD_FORMS = {"default": {}, "conv": dict(conv_form=True)}


@pytest.mark.parametrize("form", FOLD_FORMS)
@pytest.mark.parametrize("name", ["single_b1", "single_b3_valid", "dynamic_even_odd", "decoder"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_folded_model_runs(runtime, name, form, tmp_path):
    run = runner(runtime)
    model = fold.fold_atrous_chains(onnx.load(MODELS_DIR / f"{name}.onnx"), **FOLD_FORMS[form])
    data = np.load(MODELS_DIR / f"{name}.npz")
    for key in data.files:
        if key.startswith("x"):
            assert_close(run(model, data[key], tmp_path), data["y" + key[1:]],
                         f"{runtime} {name} {form} batch {key[1:]}")
