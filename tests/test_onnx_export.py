# SPDX-License-Identifier: Apache-2.0
"""The ONNX exporter against the NumPy reference, in onnxruntime and onnx's reference.

Inputs are random with a fixed seed per case, derived from the case's id: a
failure reproduces exactly from its test id, and the seed is in every failure
message. Coverage of the geometry comes from the parameter table (and the
hypothesis test), not from re-rolling the values.
"""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
import warnings
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator

import onnx_export
from atrous_cl import geometry
from atrous_cl.reference import atrous_conv2d as reference_conv
from atrous_cl.reference import atrous_conv2d_transpose as reference
from onnx_export import cli, emitter

# Max |error| over max |reference|. float16: onnx's ReferenceEvaluator sums in
# float16 (measured up to ~2.3e-3 for 64 channels x 7x7 taps); onnxruntime
# stays near 3e-4. A wrong pad, flip or layout gives errors of order 1.
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 1e-2}

# (N, H, W, Cin, Cout, kh, kw, rate, padding): the core op's geometry table.
CASES = [
    (1, 5, 7, 3, 2, 3, 3, 2, "SAME"),
    (2, 6, 5, 4, 3, 2, 2, 3, "SAME"),      # even kernel, odd rate: odd pad remainder
    (3, 4, 9, 2, 5, 4, 3, 1, "SAME"),      # rate 1, even kh
    (1, 1, 1, 1, 1, 1, 1, 1, "VALID"),     # the smallest op
    (2, 1, 1, 3, 4, 7, 7, 8, "SAME"),      # 1x1 input, dilated kernel 49x49
    (4, 3, 2, 2, 2, 5, 2, 5, "VALID"),     # dilated kernel larger than the input, kh != kw
    (1, 8, 8, 64, 64, 3, 3, 2, "SAME"),    # many channels
    (2, 7, 3, 16, 1, 6, 1, 7, "SAME"),     # even kh, odd rate, one output channel
    (1, 4, 4, 1, 64, 2, 7, 4, "VALID"),
    (1, 12, 10, 8, 8, 7, 7, 6, "SAME"),
    (2, 9, 6, 5, 7, 1, 4, 8, "SAME"),      # 1-tap height, even width kernel
    (3, 5, 5, 4, 4, 3, 5, 3, "VALID"),
]
ZERO_BATCH = (0, 5, 6, 2, 3, 3, 3, 2, "SAME")

DTYPES = [np.float32, np.float16]

#: Export options beyond the default NHWC ConvTranspose (portable pads).
VARIANTS = {
    "single": dict(pad_form="single"),
    "nchw": dict(layout="NCHW"),
    "symmetric": dict(symmetric_pads=True),
    "conv": dict(conv_form=True),
    "conv-symmetric-nchw": dict(conv_form=True, symmetric_pads=True, layout="NCHW"),
    "conv-symmetric-form": dict(conv_form=True, pad_form="symmetric"),
}


def case_id(case) -> str:
    n, h, w, cin, cout, kh, kw, rate, padding = case
    return f"n{n}-{h}x{w}-{cin}to{cout}-k{kh}x{kw}-r{rate}-{padding}"


def seed_of(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def make_inputs(case, dtype, seed):
    n, h, w, cin, cout, kh, kw, rate, padding = case
    rng = np.random.default_rng(seed)
    value = rng.standard_normal((n, h, w, cin)).astype(dtype)
    filters = rng.standard_normal((kh, kw, cout, cin)).astype(dtype)
    out_hw = geometry.transpose_output_hw((h, w), (kh, kw), rate, padding)
    return value, filters, (n, *out_hw, cout)


def run_onnxruntime(model, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {model.graph.input[0].name: x})[0]


def run_onnx_reference(model, x):
    return ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x})[0]


RUNNERS = {"onnxruntime": run_onnxruntime, "onnx-reference": run_onnx_reference}


def onnxruntime_refuses(opset) -> str | None:
    """Why the installed onnxruntime will not load a model of ``opset``, or None.

    An onnx newer than onnxruntime can write opsets that onnxruntime still
    calls "under development" and refuses to load (onnx 1.23.1 with
    onnxruntime 1.30 at opset 27, say). Probed with a one-node model.
    """
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own pybind Fail type
        return f"onnxruntime {ort.__version__} refuses opset {opset}: {str(e)[-120:]}"
    return None


def to_model_layout(x, layout):
    return x if layout == "NHWC" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def from_model_layout(y, layout):
    return y if layout == "NHWC" else y.transpose(0, 2, 3, 1)


def assert_close(got, want, what, scale=None):
    """The one comparison: dtype, shape, then max error relative to max |want|, or to
    ``scale`` where the caller knows the size of the terms summed (:func:`_terms`)."""
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, expected {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).max(initial=0.0)
    of = "max |reference|" if scale is None else "the largest output's terms"
    if scale is None:
        scale = np.abs(want.astype(np.float64)).max(initial=0.0)
    scale = max(float(scale), np.finfo(np.float64).tiny)
    assert diff / scale <= TOL[want.dtype], (
        f"{what}: max |error| {diff:.3g} is {diff / scale:.3g} of {of} {scale:.3g}, "
        f"bound {TOL[want.dtype]:g}")


def check_model_and_shapes(model, out_shape):
    """``check_model(full_check=True)``, and inference alone finds ``out_shape``."""
    onnx.checker.check_model(model, full_check=True)
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    bare.graph.output[0].type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(bare, strict_mode=True).graph.output[0]
    dims = tuple(d.dim_param or d.dim_value for d in inferred.type.tensor_type.shape.dim)
    assert dims == tuple(out_shape)


def export_and_compare(case, dtype, runner, seed_parts, batches=None, **options):
    """Export ``case`` with ``options``, run it on every batch size, compare."""
    seed = seed_of(case_id(case), np.dtype(dtype).name, *seed_parts)
    n, h, w, cin, cout, kh, kw, rate, padding = case
    layout = options.get("layout", "NHWC")
    value, filters, out_shape = make_inputs(case, dtype, seed)
    model = onnx_export.export_atrous_conv2d_transpose(filters, value.shape, out_shape, rate,
                                                       padding, **options)
    dyn_out = ("N", *out_shape[1:]) if options.get("dynamic_batch") else out_shape
    check_model_and_shapes(model, dyn_out if layout == "NHWC"
                           else tuple(dyn_out[i] for i in (0, 3, 1, 2)))
    rng = np.random.default_rng(seed + 1)
    for batch in batches or [n]:
        x = value if batch == n else rng.standard_normal((batch, h, w, cin)).astype(dtype)
        want = reference(x, filters, (batch, *out_shape[1:]), rate, padding)
        got = from_model_layout(RUNNERS[runner](model, to_model_layout(x, layout)), layout)
        assert_close(got, want, f"{runner} {case_id(case)} {np.dtype(dtype).name} {options} "
                                f"batch {batch} seed {seed}")


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case, dtype, runner):
    export_and_compare(case, dtype, runner, ())


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_variants_match_reference(case, variant, runner):
    export_and_compare(case, np.float32, runner, (variant,), **VARIANTS[variant])


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("variant", ["default", *VARIANTS])
@pytest.mark.parametrize("case", [CASES[1], CASES[5], CASES[7]], ids=case_id)
def test_dynamic_batch_runs_any_batch(case, variant, runner):
    export_and_compare(case, np.float32, runner, ("dynamic", variant), batches=[1, 3],
                       dynamic_batch=True, **VARIANTS.get(variant, {}))


def test_float16_variants():
    for variant, options in VARIANTS.items():
        for runner in RUNNERS:
            export_and_compare(CASES[1], np.float16, runner, (variant,), **options)


def test_zero_batch_runs_in_onnxruntime():
    # onnx's ReferenceEvaluator fails on an empty batch (ConvTranspose, onnx 1.23),
    # so only onnxruntime runs it.
    for options in [{}, *VARIANTS.values(), {"dynamic_batch": True}]:
        export_and_compare(ZERO_BATCH, np.float32, "onnxruntime", ("zero",), **options)


@pytest.mark.parametrize("opset", onnx_export.TESTED_OPSETS)
def test_every_tested_opset(opset):
    if opset > onnx.defs.onnx_opset_version():
        pytest.skip(f"the installed onnx {onnx.__version__} predates opset {opset}")
    runners = list(RUNNERS)
    if refused := onnxruntime_refuses(opset):
        # Still checked in onnx's reference; skipping all of it would hide that.
        runners.remove("onnxruntime")
        warnings.warn(refused, stacklevel=1)
    case = (2, 5, 4, 3, 2, 4, 3, 3, "SAME")
    for options in [{}, dict(symmetric_pads=True, dynamic_batch=True), dict(conv_form=True)]:
        for runner in runners:
            export_and_compare(case, np.float32, runner, (opset,), opset=opset, **options)


def test_default_opset_is_in_tested_range():
    assert onnx_export.DEFAULT_OPSET in onnx_export.TESTED_OPSETS
    model = onnx_export.export_atrous_conv2d_transpose(np.ones((3, 3, 2, 2), np.float32),
                                                       (1, 4, 4, 2), None, 2, "SAME")
    assert [(o.domain, o.version) for o in model.opset_import] == [("", onnx_export.DEFAULT_OPSET)]
    assert model.ir_version == onnx.helper.find_min_ir_version_for(model.opset_import)


@settings(max_examples=150, deadline=None, database=None)
@given(n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), cin=st.integers(1, 6),
       cout=st.integers(1, 6), kh=st.integers(1, 7), kw=st.integers(1, 7), rate=st.integers(1, 8),
       padding=st.sampled_from(geometry.PADDINGS),
       variant=st.sampled_from(["default", *VARIANTS]))
def test_random_geometry_in_onnxruntime(n, h, w, cin, cout, kh, kw, rate, padding, variant):
    export_and_compare((n, h, w, cin, cout, kh, kw, rate, padding), np.float32, "onnxruntime",
                       (variant,), **VARIANTS.get(variant, {}))


# --- the graph itself --------------------------------------------------------------------------

def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_node_is_one_convtranspose_with_tf_pads(case):
    value, filters, out_shape = make_inputs(case, np.float32, seed_of(case_id(case), "graph"))
    rate, padding = case[7], case[8]
    nhwc = export(filters, value.shape, out_shape, rate, padding, pad_form="single")
    nchw = export(filters, value.shape, out_shape, rate, padding, layout="NCHW", pad_form="single")
    assert [n.op_type for n in nhwc.graph.node] == ["Transpose", "ConvTranspose", "Transpose"]
    assert [n.op_type for n in nchw.graph.node] == ["ConvTranspose"]
    node = nchw.graph.node[0]
    a = attrs(node)
    assert a["dilations"] == [rate, rate] and a["strides"] == [1, 1]
    assert a["pads"] == list(geometry.pads(case[5:7], rate, padding))
    assert "output_shape" not in a and "auto_pad" not in a
    (weight,) = nchw.graph.initializer
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(weight), filters.transpose(3, 2, 0, 1))
    assert [i.name for i in nchw.graph.input] == [onnx_export.DEFAULT_INPUT_NAME]
    assert [o.name for o in nchw.graph.output] == [onnx_export.DEFAULT_OUTPUT_NAME]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_default_is_portable(case):
    # The default never writes an asymmetric ConvTranspose (IREE, onnx2torch and
    # pnnx/ncnn refuse one): symmetric pads plus a Slice where TF's are not.
    value, filters, out_shape = make_inputs(case, np.float32, seed_of(case_id(case), "portable"))
    rate, padding = case[7], case[8]
    tf_pads = geometry.pads(case[5:7], rate, padding)
    model = export(filters, value.shape, out_shape, rate, padding, layout="NCHW")
    node_pads = attrs(model.graph.node[0])["pads"]
    assert node_pads[:2] == node_pads[2:]
    want_ops = ["ConvTranspose"] if tf_pads[:2] == tf_pads[2:] else ["ConvTranspose", "Slice"]
    assert [n.op_type for n in model.graph.node] == want_ops
    # The Conv form keeps its exact asymmetric pads: every runtime tried accepts them.
    conv = export(filters, value.shape, out_shape, rate, padding, layout="NCHW", conv_form=True)
    assert [n.op_type for n in conv.graph.node] == ["Conv"]


@pytest.mark.parametrize("pad_form, symmetric_pads", [("single", True), ("symmetric", False)])
def test_pad_form_contradicting_symmetric_pads(pad_form, symmetric_pads):
    with pytest.raises(ValueError, match=r"contradicts pad_form"):
        export(pad_form=pad_form, symmetric_pads=symmetric_pads)


def test_error_pad_form():
    with pytest.raises(ValueError, match=r"pad_form must be one of .* got 'exact'"):
        export(pad_form="exact")
    with pytest.raises(TypeError, match=r"pad_form must be one of .* got 1 of type int"):
        export(pad_form=1)


def test_symmetric_pads_crop_the_remainder():
    # k=2, rate=3: SAME crops (1, 1, 2, 2) -> node pads (1, 1, 1, 1) and a Slice of 1 at the end.
    filters = np.ones((2, 2, 3, 4), np.float32)
    model = onnx_export.export_atrous_conv2d_transpose(filters, (1, 6, 5, 4), None, 3, "SAME",
                                                       symmetric_pads=True, layout="NCHW")
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose", "Slice"]
    assert attrs(model.graph.node[0])["pads"] == [1, 1, 1, 1]
    inits = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in model.graph.initializer}
    assert inits["crop_starts"] == [0, 0] and inits["crop_ends"] == [6, 5]
    # Already symmetric (odd kernel): no Slice.
    model = onnx_export.export_atrous_conv2d_transpose(np.ones((3, 3, 3, 4), np.float32),
                                                       (1, 6, 5, 4), None, 2, "SAME",
                                                       symmetric_pads=True, layout="NCHW")
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose"]


def test_conv_form_weights_and_pads():
    rng = np.random.default_rng(seed_of("conv-form"))
    filters = rng.standard_normal((4, 3, 5, 2)).astype(np.float32)
    pads = geometry.pads((4, 3), 3, "SAME")          # (4, 3, 5, 3)
    assert tuple(onnx_export.conv_pads(pads, (4, 3), 3)) == (5, 3, 4, 3)
    model = onnx_export.export_atrous_conv2d_transpose(filters, (1, 6, 5, 2), None, 3, "SAME",
                                                       conv_form=True, layout="NCHW")
    (node,) = model.graph.node
    assert node.op_type == "Conv" and attrs(node)["pads"] == [5, 3, 4, 3]
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(w, filters[::-1, ::-1].transpose(2, 3, 0, 1))


def test_custom_names():
    filters = np.ones((3, 3, 2, 2), np.float32)
    model = onnx_export.export_atrous_conv2d_transpose(filters, (1, 4, 4, 2), None, 2, "SAME",
                                                       input_name="x", output_name="y")
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].name == "x" and model.graph.output[0].name == "y"
    x = np.ones((1, 4, 4, 2), np.float32)
    assert_close(run_onnxruntime(model, x), reference(x, filters, (1, 4, 4, 2), 2, "SAME"), "names")


def test_file_round_trip(tmp_path):
    case = CASES[1]
    value, filters, out_shape = make_inputs(case, np.float16, seed_of("round-trip"))
    model = onnx_export.export_atrous_conv2d_transpose(filters, value.shape, out_shape, case[7],
                                                       case[8], dynamic_batch=True)
    path = tmp_path / "atrous.onnx"
    assert onnx_export.save_model(model, path) == str(path)
    loaded = onnx.load(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    assert loaded.SerializeToString() == model.SerializeToString()
    want = reference(value, filters, out_shape, case[7], case[8])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert_close(sess.run(None, {"value": value})[0], want, "from file")
    assert_close(run_onnx_reference(loaded, value), want, "from file, onnx reference")
    assert os.listdir(tmp_path) == ["atrous.onnx"]


# --- float64 ------------------------------------------------------------------------------------

def test_float64_is_refused_with_the_reason():
    with pytest.raises(TypeError, match=r"float64.*onnxruntime has no float64 kernel.*float32"):
        onnx_export.export_atrous_conv2d_transpose(np.ones((3, 3, 2, 2)), (1, 4, 4, 2), None, 2,
                                                   "SAME")


@pytest.mark.parametrize("op_type", ["ConvTranspose", "Conv"])
def test_onnxruntime_still_lacks_float64(op_type):
    """Canary: if this fails, onnxruntime gained float64 and the exporter may allow it."""
    plan = onnx_export.ExportPlan(op_type, np.ones((2, 2, 3, 3)), 2, (2, 2, 2, 2), None, "NCHW",
                                  (1, 2, 5, 5), (1, 2, 5, 5), "value", "output",
                                  onnx_export.DEFAULT_OPSET)
    model = onnx_export.emit_model(plan)
    onnx.checker.check_model(model, full_check=True)
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# --- validation: one test per error --------------------------------------------------------------

F = np.ones((3, 3, 2, 4), np.float32)      # kh, kw, out=2, in=4
V = (1, 5, 5, 4)


def export(filters=F, value_shape=V, output_shape=None, rate=2, padding="SAME", **kw):
    return onnx_export.export_atrous_conv2d_transpose(filters, value_shape, output_shape, rate,
                                                      padding, **kw)


def test_error_rate_zero():
    with pytest.raises(ValueError, match=r"rate must be a positive integer .* got 0"):
        export(rate=0)


def test_error_rate_float():
    with pytest.raises(TypeError, match=r"rate must be an integer, got 2\.0"):
        export(rate=2.0)


def test_error_padding_lower_case():
    with pytest.raises(ValueError, match=r"padding must be 'SAME' or 'VALID', got 'same'.*upper"):
        export(padding="same")


def test_error_padding_type():
    with pytest.raises(TypeError, match="padding must be the string"):
        export(padding=None)


def test_error_filters_not_4d():
    with pytest.raises(ValueError, match=r"filters must be 4-D"):
        export(filters=np.ones((3, 3, 2), np.float32))


@pytest.mark.parametrize("op, filters, value_shape, padding", [
    ("transpose", (3, 3, 2, 4), (1, 0, 8, 4), "SAME"),
    ("transpose", (3, 3, 2, 4), (1, 8, 0, 4), "SAME"),
    ("forward", (3, 3, 4, 2), (1, 0, 8, 4), "SAME"),
])
def test_error_an_empty_output_image(op, filters, value_shape, padding):
    """onnxruntime refuses a Conv or ConvTranspose with no output rows or columns
    (checked: "Computed output dimension is <= 0"), so such a model is not written.
    An empty batch runs, and stays exportable (ZERO_BATCH)."""
    args = (np.ones(filters, np.float32), value_shape) + ((None,) if op == "transpose" else ())
    export = (onnx_export.export_atrous_conv2d_transpose if op == "transpose"
              else onnx_export.export_atrous_conv2d)
    with pytest.raises(ValueError, match=r"output: onnxruntime refuses a Conv or ConvTranspose "
                                         r"with no output rows or columns"):
        export(*args, 2, padding)


@pytest.mark.parametrize("op, filters", [
    ("transpose", (3, 3, 0, 4)), ("transpose", (3, 3, 2, 0)),
    ("forward", (3, 3, 0, 2)), ("forward", (3, 3, 4, 0)),
])
def test_error_filters_without_channels(op, filters):
    """OpenVINO refuses a Conv or ConvTranspose without input or output channels, and
    onnx's reference a ConvTranspose without output channels: not written either."""
    cin = filters[3] if op == "transpose" else filters[2]
    args = (np.ones(filters, np.float32), (1, 5, 5, cin)) + ((None,) if op == "transpose" else ())
    export = (onnx_export.export_atrous_conv2d_transpose if op == "transpose"
              else onnx_export.export_atrous_conv2d)
    with pytest.raises(ValueError, match=r"no input or output channels: OpenVINO refuses"):
        export(*args, 2, "SAME")


def _non_finite_filters(shape, dtype=np.float32):
    """Random filters with +Inf, -Inf and NaN at a corner tap and in the middle."""
    f = np.random.default_rng().standard_normal(shape).astype(dtype)
    f[0, 0, 0, 0], f[-1, -1, -1, -1], f[shape[0] // 2, 0, -1, 0] = np.inf, np.nan, -np.inf
    return f


def _terms(op, value, filters, *args):
    """``op`` on |value| and |filters| with their Inf and NaN taken out: at each output, the
    size of the finite terms it sums, which its rounding scales with. With Inf and NaN
    at three of nine taps few outputs stay finite, and a sum of a few terms can cancel far
    below them (a 1-channel output of 2.5e-4 off by 3.4e-5 of itself in onnxruntime)."""
    return op(np.abs(value), np.nan_to_num(np.abs(filters), nan=0.0, posinf=0.0), *args)


def _same_non_finite(got, want, what, terms):
    """NaN and infinities where TF's op has them, the finite values close: within the
    dtype's bound of the largest finite output's terms (:func:`_terms`)."""
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(got), test(want), err_msg=f"{what}: {test.__name__}")
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    finite = np.isfinite(want)  # none in the forward Conv's whose every output reads a NaN
    assert_close(got[finite], want[finite], what, scale=terms[finite].max(initial=0.0))


@pytest.mark.parametrize("case", [(1, 5, 5, 1, 1, 3, 3, 1, "SAME"), (1, 9, 8, 35, 23, 5, 5, 2,
                                                                       "VALID"),
                                  (2, 6, 5, 4, 3, 2, 2, 3, "SAME")], ids=case_id)
def test_non_finite_filters_reach_only_their_taps(case):
    """The ConvTranspose forms keep TF's semantics with Inf and NaN weights (a tap outside
    the image adds no term) in onnxruntime and onnx's reference; the Conv form would
    multiply its zero padding by them (0 * Inf = NaN), so it is refused."""
    n, h, w, cin, cout, kh, kw, rate, padding = case
    filters = _non_finite_filters((kh, kw, cout, cin))
    value = np.random.default_rng().standard_normal((n, h, w, cin)).astype(np.float32)
    shape = (n, *geometry.transpose_output_hw((h, w), (kh, kw), rate, padding), cout)
    want = reference(value, filters, shape, rate, padding)
    terms = _terms(reference, value, filters, shape, rate, padding)
    for options in ({}, dict(pad_form="single"), dict(layout="NCHW")):
        model = onnx_export.export_atrous_conv2d_transpose(filters, value.shape, None, rate,
                                                           padding, **options)
        layout = options.get("layout", "NHWC")
        for runner, run in RUNNERS.items():
            got = from_model_layout(run(model, to_model_layout(value, layout)), layout)
            _same_non_finite(got, want, f"{runner} {options}", terms)
    with pytest.raises(ValueError, match=r"conv_form=True with filters holding Inf or NaN"):
        onnx_export.export_atrous_conv2d_transpose(filters, value.shape, None, rate, padding,
                                                   conv_form=True)


def test_the_forward_export_multiplies_its_padding_as_tf_does():
    """The forward Conv's zero padding times an Inf weight is NaN in TF and by the ONNX
    standard (onnx's reference), which the model follows; onnxruntime and OpenVINO skip
    those terms (docs/onnx.md), a deviation of theirs."""
    filters = _non_finite_filters((3, 3, 1, 1))
    value = np.random.default_rng().standard_normal((1, 5, 5, 1)).astype(np.float32)
    want = reference_conv(value, filters, 1, "SAME")
    assert np.isnan(want).sum() > np.isnan(want[:, 1:-1, 1:-1]).sum()  # NaN on the border
    model = onnx_export.export_atrous_conv2d(filters, value.shape, 1, "SAME")
    _same_non_finite(run_onnx_reference(model, value), want, "onnx reference",
                     _terms(reference_conv, value, filters, 1, "SAME"))


def test_error_filters_empty_kernel():
    with pytest.raises(ValueError, match=r"spatial size of at least 1x1"):
        export(filters=np.ones((0, 3, 2, 4), np.float32))


def test_error_filters_integer_dtype():
    with pytest.raises(TypeError, match=r"filters must have dtype float32 or float16 .* got int64"):
        export(filters=np.ones((3, 3, 2, 4), np.int64))


def test_error_value_shape_length():
    with pytest.raises(ValueError, match=r"value_shape must have 4 entries"):
        export(value_shape=(5, 5, 4))


def test_error_value_shape_type():
    with pytest.raises(TypeError, match=r"value_shape must be a list, tuple"):
        export(value_shape="1554")


def test_error_value_shape_negative():
    with pytest.raises(ValueError, match=r"value_shape must be non-negative"):
        export(value_shape=(1, -5, 5, 4))


def test_error_value_batch_none_without_dynamic_batch():
    with pytest.raises(TypeError, match=r"value_shape\[0\] must be an integer, got None"):
        export(value_shape=(None, 5, 5, 4))


def test_error_channels_mismatch():
    with pytest.raises(ValueError, match=r"value's channels .* must equal filters' in_channels"):
        export(value_shape=(1, 5, 5, 3))


def test_error_output_channels():
    with pytest.raises(ValueError, match=r"output_shape\[3\] .* must equal filters' out_channels"):
        export(output_shape=(1, 5, 5, 3))


def test_error_output_batch():
    with pytest.raises(ValueError, match=r"output_shape\[0\] \(batch\) must equal value's batch"):
        export(output_shape=(2, 5, 5, 2))


def test_error_output_batch_with_dynamic_batch():
    with pytest.raises(ValueError, match=r"output_shape\[0\] \(batch\) must equal value's batch"):
        export(value_shape=(1, 5, 5, 4), output_shape=(2, 5, 5, 2), dynamic_batch=True)


def test_error_output_hw():
    with pytest.raises(ValueError, match=r"output_shape\[1:3\].*expected \[9, 9\], got \[5, 5\]"):
        export(output_shape=(1, 5, 5, 2), padding="VALID")


def test_error_float64():
    with pytest.raises(TypeError, match="cannot be exported"):
        export(filters=F.astype(np.float64))


def test_error_layout():
    with pytest.raises(ValueError, match=r"layout must be one of \('NHWC', 'NCHW'\), got 'NWHC'"):
        export(layout="NWHC")


def test_error_opset_range():
    with pytest.raises(ValueError, match=r"opset must be between 11 and \d+ .* got 10"):
        export(opset=10)


def test_error_opset_type():
    with pytest.raises(TypeError, match=r"opset must be an integer"):
        export(opset="17")


def test_error_flag_type():
    with pytest.raises(TypeError, match=r"symmetric_pads must be True or False"):
        export(symmetric_pads="yes")


def test_error_same_names():
    with pytest.raises(ValueError, match=r"input_name and output_name must differ"):
        export(input_name="x", output_name="x")


def test_error_empty_name():
    with pytest.raises(ValueError, match=r"input_name must be a non-empty string"):
        export(input_name="")


def test_error_output_batch_against_a_symbolic_batch():
    with pytest.raises(ValueError, match=r"output_shape's batch 7 cannot match the symbolic "
                                         r"batch value_shape gives \(None\)"):
        export(value_shape=(None, 5, 5, 4), output_shape=(7, 5, 5, 2), dynamic_batch=True)


def test_dynamic_batch_accepts_none_batches():
    model = export(value_shape=(None, 5, 5, 4), output_shape=(None, 5, 5, 2), dynamic_batch=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == onnx_export.BATCH_DIM


# --- limits, reserved names and byte order (the op's checks, issue 14 item 12) -----------------

@pytest.mark.parametrize("overrides, pattern", [
    (dict(value_shape=(1, 2**31, 5, 4)), r"value_shape dimensions must be below 2\*\*31"),
    (dict(value_shape=(2**31, 5, 5, 4)), r"value_shape dimensions must be below 2\*\*31"),
    (dict(rate=2**31 - 1, padding="VALID"), r"output_shape dimensions must be below 2\*\*31"),
    (dict(rate=2**31), r"rate must be below 2\*\*31, got 2147483648"),
    (dict(rate=2**40), r"rate must be below 2\*\*31"),
    (dict(rate=2**63), r"rate must be below 2\*\*31"),
    (dict(rate=2**64 + 3), r"rate must be below 2\*\*31"),
])
def test_error_beyond_the_ops_limits(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        export(**overrides)


@pytest.mark.parametrize("rate", [2**31, 2**63])
def test_error_forward_rate_beyond_the_limit(rate):
    with pytest.raises(ValueError, match=r"rate must be below 2\*\*31"):
        onnx_export.export_atrous_conv2d(np.ones((3, 3, 4, 2), np.float32), V, rate, "SAME")


@pytest.mark.parametrize("name", sorted(emitter.INTERNAL_NAMES))
@pytest.mark.parametrize("which", ["input_name", "output_name"])
def test_error_name_the_graph_uses_itself(name, which):
    with pytest.raises(ValueError, match=f"{which} must not be one of the names the graph uses "
                                         f"itself .*got '{name}'"):
        export(**{which: name})
    with pytest.raises(ValueError, match=f"{which} must not be one of the names"):
        onnx_export.export_atrous_conv2d(np.ones((3, 3, 4, 2), np.float32), V, 2, "SAME",
                                         **{which: name})


@pytest.mark.parametrize("variant", [{}, *VARIANTS.values()])
@pytest.mark.parametrize("case", [CASES[1], CASES[5]], ids=case_id)
def test_internal_names_are_all_declared(case, variant):
    """Every value the graph names, besides its input and output, is in INTERNAL_NAMES
    (so the check above refuses every name that could collide)."""
    _, filters, out_shape = make_inputs(case, np.float32, seed_of("names"))
    for model in (export(filters, case[:4], out_shape, case[7], case[8], **variant),
                  onnx_export.export_atrous_conv2d(
                      filters.transpose(0, 1, 3, 2), case[:4], case[7], "SAME",
                      **{k: v for k, v in variant.items() if k != "conv_form"})):
        g = model.graph
        names = {i.name for i in g.initializer} | {o for n in g.node for o in n.output}
        assert names - {g.output[0].name} <= emitter.INTERNAL_NAMES


@pytest.mark.parametrize("dtype", [">f4", ">f2"])
def test_big_endian_filters_are_converted(dtype):
    case = CASES[1]
    value, filters, out_shape = make_inputs(case, np.dtype(dtype).newbyteorder("="),
                                            seed_of("big-endian", dtype))
    model = export(filters.astype(dtype), value.shape, out_shape, case[7], case[8])
    assert model.SerializeToString() == export(filters, value.shape, out_shape, case[7],
                                               case[8]).SerializeToString()
    assert_close(run_onnxruntime(model, value),
                 reference(value, filters, out_shape, case[7], case[8]), f"big-endian {dtype}")


def test_big_endian_float64_gets_the_float64_reason():
    with pytest.raises(TypeError, match="filters of dtype float64 cannot be exported"):
        export(F.astype(">f8"))


@pytest.mark.parametrize("op", ["transpose", "forward"])
def test_error_filters_beyond_protobufs_2_gib(op):
    """Refused before any copy: the filters here are 2 GiB of one broadcast zero."""
    filters = np.broadcast_to(np.float16(0), (1, 1, 2**15, 2**15))
    assert filters.nbytes == 2**31
    with pytest.raises(ValueError, match=r"filters take 2147483648 bytes .* more than an ONNX "
                                         r"model can hold: protobuf limits a model to 2 GiB"):
        if op == "transpose":
            export(filters, (1, 1, 1, 2**15))
        else:
            onnx_export.export_atrous_conv2d(filters, (1, 1, 1, 2**15), 1, "SAME")


# --- atomic save --------------------------------------------------------------------------------

def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        onnx_export.save_model(export(), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old model")

    def broken_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="Input/output error"):
        onnx_export.save_model(export(), path)
    assert os.listdir(tmp_path) == ["m.onnx"] and path.read_bytes() == b"old model"


def test_save_into_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot create a file in"):
        onnx_export.save_model(export(), tmp_path / "missing" / "m.onnx")


def test_save_onto_a_directory(tmp_path):
    with pytest.raises(IsADirectoryError):
        onnx_export.save_model(export(), tmp_path)
    assert os.listdir(tmp_path) == []


def _leftovers(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_save_onto_a_fifo_refuses_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"is a FIFO: save_model replaces only regular files"):
        onnx_export.save_model(export(), fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and _leftovers(tmp_path) == []


def test_save_through_a_link_to_a_device_refuses(tmp_path):
    """A link to /dev/null (a character device): the device stays, and so does the link.
    (The link keeps a failing save_model from replacing the real /dev/null as root.)"""
    link = tmp_path / "null.onnx"
    link.symlink_to(os.devnull)
    with pytest.raises(ValueError, match=r"\(a link to '/dev/null'\) is a character device: "
                                         r"save_model replaces only regular files"):
        onnx_export.save_model(export(), link)
    assert os.readlink(link) == os.devnull and stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert _leftovers(tmp_path) == []


def test_save_through_a_symlink_writes_its_target(tmp_path):
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "real.onnx"
    target.write_bytes(b"old model")
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    model = export()
    assert onnx_export.save_model(model, link) == str(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == model.SerializeToString()
    assert _leftovers(tmp_path) == [] and os.listdir(tmp_path / "models") == ["real.onnx"]


def test_save_through_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link.onnx"
    link.symlink_to("new.onnx")
    model = export()
    onnx_export.save_model(model, link)
    assert link.is_symlink() and (tmp_path / "new.onnx").read_bytes() == model.SerializeToString()
    assert sorted(os.listdir(tmp_path)) == ["link.onnx", "new.onnx"]


def test_save_through_a_symlink_loop_refuses(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError, match="symbolic links"):
        onnx_export.save_model(export(), tmp_path / "a")
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_save_to_a_path_ending_in_a_separator_refuses(tmp_path):
    with pytest.raises(IsADirectoryError, match="names a directory"):
        onnx_export.save_model(export(), f"{tmp_path}/new/")
    assert os.listdir(tmp_path) == []


def test_save_keeps_the_replaced_files_mode(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old model")
    path.chmod(0o600)
    onnx_export.save_model(export(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() != b"old model"


@pytest.mark.parametrize("mode", [0o444, 0o400, 0o000])
@pytest.mark.parametrize("through_link", [False, True])
def test_save_onto_a_read_only_file_refuses(mode, through_link, tmp_path):
    """A read-only file is not replaced, as ``open(path, "w")`` would not write it (root
    included): the atomic rename would need only the folder's write permission."""
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old model")
    path.chmod(mode)
    name = path
    if through_link:
        name = tmp_path / "link.onnx"
        name.symlink_to(path)
    try:
        with pytest.raises(PermissionError, match=rf"is read-only \(mode {mode:04o}\); make it "
                                                  rf"writable to replace it"):
            onnx_export.save_model(export(), name)
        assert stat.S_IMODE(path.stat().st_mode) == mode and _leftovers(tmp_path) == []
    finally:
        path.chmod(0o600)
    assert path.read_bytes() == b"old model"
    onnx_export.save_model(export(), name)  # writable again: replaced
    assert path.read_bytes() != b"old model"


@pytest.mark.parametrize("read_only_fs, why", [
    (True, "is on a read-only file system"),
    (False, r"is not writable by this user \(mode 0644, owner uid \d+\); choose another path"),
])
def test_save_onto_a_file_this_user_may_not_write_says_why(read_only_fs, why, tmp_path,
                                                            monkeypatch):
    """Write bits set but no write allowed (another user's file, a read-only mount): the
    message names the reason, not the mode, which chmod could not change."""
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old model")
    path.chmod(0o644)
    real_statvfs = os.statvfs

    class Flags:
        def __init__(self, real):
            self.f_flag = real.f_flag | (os.ST_RDONLY if read_only_fs else 0)

    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False)
    monkeypatch.setattr(os, "statvfs", lambda p: Flags(real_statvfs(p)))
    with pytest.raises(PermissionError, match=why):
        onnx_export.save_model(export(), path)
    assert path.read_bytes() == b"old model" and _leftovers(tmp_path) == []


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        onnx_export.save_model(export(), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_save_into_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="cannot create a file in"):
            onnx_export.save_model(export(), folder / "m.onnx")
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o700)


# --- command line -------------------------------------------------------------------------------

def run_cli(argv):
    parser = cli.add_arguments(argparse.ArgumentParser(prog="atrous-cl export"))
    return cli.run(parser.parse_args(argv))


@pytest.fixture
def filters_file(tmp_path):
    path = tmp_path / "filters.npy"
    np.save(path, np.random.default_rng(seed_of("cli")).standard_normal((2, 3, 5, 4)))
    return path


def test_cli_exports_a_checked_model(tmp_path, filters_file, capsys):
    out = tmp_path / "m.onnx"
    rc = run_cli([str(filters_file), "--value-shape", "2", "7", "6", "4", "--rate", "3",
                  "--dtype", "float32", "--dynamic-batch", "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.count("\n") == 1 and captured.err == ""
    # k2 rate 3 SAME pads asymmetrically: the portable default crops with a Slice.
    assert f"{out}: opset {onnx_export.DEFAULT_OPSET}, 4 node(s) (Transpose, ConvTranspose, Slice, " \
        "Transpose)" in captured.out
    assert "value float32[N,7,6,4] -> output float32[N,7,6,5]" in captured.out
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(seed_of("cli-x")).standard_normal((3, 7, 6, 4)).astype(np.float32)
    filters = np.load(filters_file).astype(np.float32)
    assert_close(run_onnxruntime(model, x), reference(x, filters, (3, 7, 6, 5), 3, "SAME"), "cli")


@pytest.mark.parametrize("flags, ops", [
    (["--pad-form", "single"], "3 node(s) (Transpose, ConvTranspose, Transpose)"),
    (["--pad-form", "portable"], "4 node(s) (Transpose, ConvTranspose, Slice, Transpose)"),
    (["--symmetric-pads"], "4 node(s) (Transpose, ConvTranspose, Slice, Transpose)"),
    (["--conv-form", "--pad-form", "symmetric"], "4 node(s) (Transpose, Conv, Slice, Transpose)"),
])
def test_cli_pad_forms(tmp_path, filters_file, capsys, flags, ops):
    out = tmp_path / "m.onnx"
    rc = run_cli([str(filters_file), "--value-shape", "1", "7", "6", "4", "--rate", "3",
                  "--dtype", "float32", "-o", str(out), *flags])
    assert rc == 0, capsys.readouterr().err
    assert ops in capsys.readouterr().out
    x = np.random.default_rng(seed_of("cli-pad", *flags)).standard_normal((1, 7, 6, 4))
    x = x.astype(np.float32)
    filters = np.load(filters_file).astype(np.float32)
    assert_close(run_onnxruntime(onnx.load(str(out)), x),
                 reference(x, filters, (1, 7, 6, 5), 3, "SAME"), f"cli {flags}")


def test_cli_pad_form_contradicting_symmetric_pads(tmp_path, filters_file, capsys):
    rc = run_cli([str(filters_file), "--value-shape", "1", "7", "6", "4", "--rate", "3",
                  "--dtype", "float32", "--symmetric-pads", "--pad-form", "single",
                  "-o", str(tmp_path / "m.onnx")])
    assert rc == cli.USAGE_ERROR and "contradicts pad_form='single'" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_options(tmp_path, filters_file, capsys):
    out = tmp_path / "m.onnx"
    rc = run_cli([str(filters_file), "--value-shape", "1", "7", "6", "4", "--output-shape", "1",
                  "9", "10", "5", "--rate", "2", "--padding", "VALID", "--dtype", "float16",
                  "--layout", "NCHW", "--conv-form", "--symmetric-pads", "--opset", "13",
                  "--input-name", "x", "--output-name", "y", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "opset 13, 1 node(s) (Conv), x float16[1,4,7,6] -> y float16[1,5,9,10]" in \
        capsys.readouterr().out


def test_cli_reports_bad_arguments(tmp_path, filters_file, capsys):
    out = tmp_path / "m.onnx"
    rc = run_cli([str(filters_file), "--value-shape", "1", "7", "6", "3", "--rate", "2",
                  "--dtype", "float32", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == cli.USAGE_ERROR and "Traceback" not in err
    assert err.startswith("atrous-cl export: error: value's channels")
    assert os.listdir(tmp_path) == ["filters.npy"]


def test_cli_reports_float64_without_dtype(tmp_path, filters_file, capsys):
    rc = run_cli([str(filters_file), "--value-shape", "1", "7", "6", "4", "--rate", "2",
                  "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == cli.USAGE_ERROR and "are float64" in err and "pass --dtype float32" in err


@pytest.mark.parametrize("name", ["m" * 250, "\U0001F600" * 62], ids=["ascii", "4-byte"])
def test_cli_saves_under_a_name_at_the_file_system_limit(tmp_path, capsys, name):
    """The temporary file beside the destination must fit too (255-byte names, counted in
    bytes: 62 four-byte characters and ".onnx" are 253)."""
    np.save(tmp_path / "f.npy", np.ones((3, 3, 2, 4), np.float32))
    out = tmp_path / (name + ".onnx")
    assert run_cli([str(tmp_path / "f.npy"), "--value-shape", "1", "7", "6", "4", "--rate", "2",
                    "-o", str(out)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy", out.name]


@pytest.mark.parametrize("through", ["same-path", "symlink", "hard-link"])
def test_cli_refuses_to_write_the_model_over_its_filters(tmp_path, capsys, through):
    """-o naming the filters file (directly or by a link) would replace the user's filters
    with the model: refused before anything is written."""
    filters = tmp_path / "f.npy"
    np.save(filters, np.ones((3, 3, 2, 4), np.float32))
    kept = filters.read_bytes()
    out = filters
    if through == "symlink":
        out = tmp_path / "m.onnx"
        out.symlink_to(filters)
    elif through == "hard-link":
        out = tmp_path / "m.onnx"
        os.link(filters, out)
    rc = run_cli([str(filters), "--value-shape", "1", "7", "6", "4", "--rate", "2",
                  "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == cli.USAGE_ERROR and err.count("\n") == 1
    assert "is the filters file" in err
    assert filters.read_bytes() == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"f.npy", out.name})


def test_cli_reports_unreadable_filters(tmp_path, capsys):
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    rc = run_cli([str(tmp_path / "bad.npy"), "--value-shape", "1", "7", "6", "4", "--rate", "2",
                  "-o", str(tmp_path / "m.onnx")])
    assert rc == cli.USAGE_ERROR and "cannot read filters" in capsys.readouterr().err


def test_cli_reports_unwritable_output(tmp_path, filters_file, capsys):
    rc = run_cli([str(filters_file), "--value-shape", "1", "7", "6", "4", "--rate", "2",
                  "--dtype", "float32", "-o", str(tmp_path / "no" / "m.onnx")])
    assert rc == cli.USAGE_ERROR and "cannot write" in capsys.readouterr().err


def test_cli_refuses_a_read_only_output_before_exporting(tmp_path, filters_file, capsys,
                                                         monkeypatch):
    from onnx_export import api

    def never(*args, **kwargs):
        raise AssertionError("exported")

    monkeypatch.setattr(api, "export_atrous_conv2d_transpose", never)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old model")
    out.chmod(0o444)
    rc = run_cli([str(filters_file), "--value-shape", "1", "7", "6", "4", "--rate", "2",
                  "--dtype", "float32", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == cli.USAGE_ERROR and "is read-only (mode 0444)" in err, err
    assert out.read_bytes() == b"old model"


def _write_bad_filters(path, kind: str):
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("1 2 3\n4 5 6\n")
    elif kind == "npz":
        np.savez(path.with_suffix(".npz"), f=np.ones((3, 3, 5, 4), np.float32))
        os.replace(path.with_suffix(".npz"), path)
    elif kind == "complex":
        np.save(path, np.ones((3, 3, 5, 4), np.complex64))
    elif kind == "strings":
        np.save(path, np.full((3, 3, 5, 4), "a"))
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # np.load would wait for a writer forever
    elif kind == "beyond-float16":
        np.save(path, np.full((3, 3, 5, 4), 1e5))


@pytest.mark.parametrize("kind, fragment", [
    ("empty", "the file is empty; expected a .npy file written by np.save"),
    ("text", "cannot read filters from"),
    ("npz", "is an .npz archive (arrays: f); expected one array in a .npy file"),
    ("complex", "must be real numbers, got dtype complex64"),
    ("strings", "must be real numbers, got dtype <U1"),
    ("directory", "not a regular file"),
    ("fifo", "not a regular file"),
    ("missing", "cannot read filters from"),
])
@pytest.mark.parametrize("dtype", [[], ["--dtype", "float32"]], ids=["file-dtype", "cast"])
def test_cli_reports_bad_filter_files(tmp_path, capsys, kind, fragment, dtype):
    path = tmp_path / "f.npy"
    _write_bad_filters(path, kind)
    rc = run_cli([str(path), "--value-shape", "1", "7", "6", "4", "--rate", "2", *dtype,
                  "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == cli.USAGE_ERROR and "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("atrous-cl export: error: ") and fragment in err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_refuses_a_cast_to_infinities(tmp_path, capsys):
    path = tmp_path / "f.npy"
    _write_bad_filters(path, "beyond-float16")
    rc = run_cli([str(path), "--value-shape", "1", "7", "6", "4", "--rate", "2", "--dtype",
                  "float16", "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == cli.USAGE_ERROR and err.count("\n") == 1
    assert "hold 180 value(s) beyond float16's range (largest 65504), e.g. " in err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_reads_big_endian_filters(tmp_path, capsys):
    path = tmp_path / "f.npy"
    filters = np.random.default_rng(seed_of("cli-be")).standard_normal((2, 3, 5, 4))
    np.save(path, filters.astype(">f4"))
    rc = run_cli([str(path), "--value-shape", "1", "7", "6", "4", "--rate", "2",
                  "-o", str(tmp_path / "m.onnx")])
    assert rc == 0, capsys.readouterr().err
    x = np.random.default_rng(seed_of("cli-be-x")).standard_normal((1, 7, 6, 4)).astype(np.float32)
    assert_close(run_onnxruntime(onnx.load(str(tmp_path / "m.onnx")), x),
                 reference(x, filters.astype(np.float32), (1, 7, 6, 5), 2, "SAME"), "big-endian")


@pytest.mark.parametrize("target", ["fifo", "devnull-link", "directory", "loop", "empty"])
def test_cli_refuses_special_outputs(tmp_path, filters_file, capsys, target, monkeypatch):
    out = tmp_path / "out.onnx"
    if target == "empty":  # not the current directory, which realpath('') gives
        monkeypatch.chdir(tmp_path)
        out = ""
    elif target == "fifo":
        os.mkfifo(out)
    elif target == "devnull-link":
        out.symlink_to(os.devnull)
    elif target == "directory":
        out.mkdir()
    else:
        out.symlink_to(out)
    before = sorted(os.listdir(tmp_path))
    rc = run_cli([str(filters_file), "--value-shape", "1", "7", "6", "4", "--rate", "2",
                  "--dtype", "float32", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == cli.USAGE_ERROR
    assert err.startswith(f"atrous-cl export: error: cannot write {str(out)!r}")
    assert target != "empty" or "the output path is empty" in err
    assert sorted(os.listdir(tmp_path)) == before
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def _without_onnx(argv, tmp_path):
    """``atrous-cl argv`` in a fresh interpreter where ``import onnx`` fails."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get(
        "PYTHONPATH")])))
    code = ("import sys\nsys.modules['onnx'] = None\nfrom atrous_cl import cli\n"
            f"sys.exit(cli.main({argv!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)


def test_export_help_without_onnx_lists_the_options(tmp_path):
    done = _without_onnx(["export", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    for option in ("--value-shape", "--rate", "--output", "--layout", "--opset", "--dtype",
                   "--input-name", "--pad-form"):
        assert option in done.stdout
    done = _without_onnx(["fold", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    for option in ("--output", "--conv-form", "--pad-form", "--check"):
        assert option in done.stdout


def test_export_without_onnx_names_the_extra(tmp_path, filters_file):
    done = _without_onnx(["export", str(filters_file), "--value-shape", "1", "7", "6", "4",
                          "--rate", "2", "-o", "m.onnx"], tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("atrous-cl export: error: ONNX export needs the onnx extra: "
                                  "pip install 'atrous-cl[onnx]'")
    assert not (tmp_path / "m.onnx").exists()


def test_fold_without_onnx_names_the_extra(tmp_path):
    (tmp_path / "in.onnx").write_bytes(b"")
    done = _without_onnx(["fold", "in.onnx", "-o", "out.onnx"], tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("atrous-cl fold: error: ONNX export needs the onnx extra: "
                                  "pip install 'atrous-cl[onnx]'")
    assert not (tmp_path / "out.onnx").exists()


def test_python_dash_m(tmp_path, filters_file):
    out = tmp_path / "m.onnx"
    argv = [sys.executable, "-m", "onnx_export", str(filters_file), "--value-shape", "1", "7", "6",
            "4", "--rate", "2", "--dtype", "float16", "-o", str(out)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get(
        "PYTHONPATH")])))
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{out}: opset") and out.exists()
    no_rate = [a for a in argv if a not in ("--rate", "2")]
    bad = subprocess.run(no_rate, capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--rate" in bad.stderr


# --- the forward op, atrous_conv2d: one Conv node -------------------------------------------

#: (N, H, W, Cin, Cout, kh, kw, rate, padding) of atrous_conv2d; VALID needs the
#: dilated kernel to fit in the value (the op refuses it otherwise).
CONV_CASES = [
    (1, 5, 7, 3, 2, 3, 3, 2, "SAME"),
    (2, 6, 5, 4, 3, 2, 2, 3, "SAME"),      # even kernel, odd rate: the odd pad at the bottom/right
    (3, 4, 9, 2, 5, 4, 3, 1, "SAME"),      # rate 1, even kh
    (1, 1, 1, 1, 1, 1, 1, 1, "VALID"),     # the smallest op
    (2, 1, 1, 3, 4, 7, 7, 8, "SAME"),      # 1x1 input, dilated kernel 49x49
    (4, 9, 12, 2, 2, 5, 2, 2, "VALID"),    # kh != kw
    (1, 8, 8, 64, 64, 3, 3, 2, "SAME"),    # many channels
    (2, 7, 3, 16, 1, 6, 1, 7, "SAME"),     # even kh, odd rate, one output channel
    (1, 11, 13, 1, 64, 2, 3, 5, "VALID"),  # one input channel; dilated height 6 of 11
    (1, 12, 10, 8, 8, 7, 7, 6, "SAME"),
    (2, 9, 6, 5, 7, 1, 4, 8, "SAME"),      # 1-tap height, even width kernel
    (3, 9, 9, 4, 4, 3, 5, 2, "VALID"),
    (0, 5, 6, 2, 3, 3, 3, 2, "SAME"),      # empty batch (onnxruntime only)
]
CONV_VARIANTS = {"default": {}, "nchw": dict(layout="NCHW"), "symmetric": dict(symmetric_pads=True),
                 "symmetric-form": dict(pad_form="symmetric"),
                 "symmetric-nchw-dynamic": dict(symmetric_pads=True, layout="NCHW",
                                                dynamic_batch=True)}


def export_conv_and_compare(case, dtype, runner, seed_parts, batches=None, **options):
    """Export the forward op for ``case``, run it on every batch size, compare with the reference."""
    seed = seed_of("conv", case_id(case), np.dtype(dtype).name, *seed_parts)
    n, h, w, cin, cout, kh, kw, rate, padding = case
    layout = options.get("layout", "NHWC")
    rng = np.random.default_rng(seed)
    filters = rng.standard_normal((kh, kw, cin, cout)).astype(dtype)
    model = onnx_export.export_atrous_conv2d(filters, (n, h, w, cin), rate, padding, **options)
    out_hw = geometry.conv_output_hw((h, w), (kh, kw), rate, padding)
    out_shape = ("N" if options.get("dynamic_batch") else n, *out_hw, cout)
    check_model_and_shapes(model, out_shape if layout == "NHWC"
                           else tuple(out_shape[i] for i in (0, 3, 1, 2)))
    for batch in batches or [n]:
        x = rng.standard_normal((batch, h, w, cin)).astype(dtype)
        want = reference_conv(x, filters, rate, padding)
        got = from_model_layout(RUNNERS[runner](model, to_model_layout(x, layout)), layout)
        assert_close(got, want, f"conv {runner} {case_id(case)} {np.dtype(dtype).name} {options} "
                                f"batch {batch} seed {seed}")


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("variant", CONV_VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_conv_matches_reference(case, dtype, variant, runner):
    if case[0] == 0 and runner == "onnx-reference":
        pytest.skip("onnx's ReferenceEvaluator fails on an empty batch (onnx 1.23)")
    export_conv_and_compare(case, dtype, runner, (variant,), **CONV_VARIANTS[variant])


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("variant", ["default", "symmetric"])
def test_conv_dynamic_batch_runs_any_batch(variant, runner):
    export_conv_and_compare(CONV_CASES[1], np.float32, runner, ("dynamic", variant), batches=[1, 4],
                            dynamic_batch=True, **CONV_VARIANTS[variant])


@settings(max_examples=100, deadline=None, database=None)
@given(n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), cin=st.integers(1, 6),
       cout=st.integers(1, 6), kh=st.integers(1, 7), kw=st.integers(1, 7), rate=st.integers(1, 8),
       padding=st.sampled_from(geometry.PADDINGS), variant=st.sampled_from(list(CONV_VARIANTS)))
def test_conv_random_geometry_in_onnxruntime(n, h, w, cin, cout, kh, kw, rate, padding, variant):
    if padding == "VALID" and (geometry.effective_kernel_size(kh, rate) > h
                               or geometry.effective_kernel_size(kw, rate) > w):
        with pytest.raises(ValueError, match="padding 'VALID' has no output"):
            onnx_export.export_atrous_conv2d(np.ones((kh, kw, cin, cout), np.float32),
                                             (n, h, w, cin), rate, padding)
        return
    export_conv_and_compare((n, h, w, cin, cout, kh, kw, rate, padding), np.float32,
                            "onnxruntime", (variant,), **CONV_VARIANTS[variant])


def test_conv_node_is_one_conv_with_tf_pads():
    filters = np.random.default_rng(seed_of("conv-node")).standard_normal((4, 3, 5, 2)).astype(np.float32)
    model = onnx_export.export_atrous_conv2d(filters, (1, 9, 8, 5), 3, "SAME", layout="NCHW")
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    a = attrs(model.graph.node[0])
    # SAME, k 4x3 at rate 3: totals 9 and 6; TF puts the odd remainder at the bottom.
    assert a["pads"] == [4, 3, 5, 3] and a["dilations"] == [3, 3] and a["strides"] == [1, 1]
    assert "auto_pad" not in a
    weight = onnx.numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(weight, filters.transpose(3, 2, 0, 1))
    assert model.graph.name == "atrous_conv2d" and "tf.nn.atrous_conv2d " in model.doc_string
    sym = onnx_export.export_atrous_conv2d(filters, (1, 9, 8, 5), 3, "SAME", layout="NCHW",
                                           symmetric_pads=True)
    assert [n.op_type for n in sym.graph.node] == ["Conv", "Slice"]
    assert attrs(sym.graph.node[0])["pads"] == [5, 3, 5, 3]


@pytest.mark.parametrize("overrides, exc, pattern", [
    (dict(rate=0), ValueError, r"rate must be a positive integer"),
    (dict(padding="same"), ValueError, r"padding must be 'SAME' or 'VALID'"),
    (dict(value_shape=(1, 6, 6, 3)), ValueError, r"value's channels .* in_channels"),
    (dict(value_shape=(1, 6, 6)), ValueError, r"value_shape must have 4 entries"),
    (dict(padding="VALID", rate=4), ValueError, r"padding 'VALID' has no output"),
    (dict(filters=np.ones((3, 3, 2, 4))), TypeError, r"float64 cannot be exported"),
    (dict(layout="NHCW"), ValueError, r"layout must be one of"),
    (dict(symmetric_pads=1), TypeError, r"symmetric_pads must be True or False"),
    (dict(opset=10), ValueError, r"opset must be between"),
], ids=["rate", "padding", "channels", "value-3d", "valid-too-large", "float64", "layout", "flag",
        "opset"])
def test_conv_export_errors(overrides, exc, pattern):
    kwargs = dict(filters=np.ones((3, 3, 2, 4), np.float32), value_shape=(1, 6, 6, 2), rate=2,
                  padding="SAME") | overrides
    with pytest.raises(exc, match=pattern):
        onnx_export.export_atrous_conv2d(kwargs.pop("filters"), kwargs.pop("value_shape"),
                                         kwargs.pop("rate"), kwargs.pop("padding"), **kwargs)


def test_cli_exports_the_forward_op(tmp_path, capsys):
    path = tmp_path / "f.npy"
    filters = np.random.default_rng(seed_of("cli-conv")).standard_normal((3, 2, 4, 5))
    np.save(path, filters.astype(np.float32))
    out = tmp_path / "c.onnx"
    rc = run_cli([str(path), "--op", "atrous_conv2d", "--value-shape", "2", "7", "6", "4",
                  "--rate", "2", "--padding", "VALID", "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "3 node(s) (Transpose, Conv, Transpose), value float32[2,7,6,4] -> " \
           "output float32[2,3,4,5]" in captured.out
    x = np.random.default_rng(seed_of("cli-conv-x")).standard_normal((2, 7, 6, 4)).astype(np.float32)
    assert_close(run_onnxruntime(onnx.load(str(out)), x),
                 reference_conv(x, filters.astype(np.float32), 2, "VALID"), "cli conv")
    rc = run_cli([str(path), "--op", "atrous_conv2d", "--value-shape", "2", "7", "6", "4",
                  "--rate", "2", "--conv-form", "-o", str(tmp_path / "d.onnx")])
    assert rc == cli.USAGE_ERROR and "--output-shape and --conv-form are for atrous_conv2d_transpose" in \
        capsys.readouterr().err
    assert not (tmp_path / "d.onnx").exists()
