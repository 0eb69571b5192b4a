# SPDX-License-Identifier: Apache-2.0
"""Folding tf2onnx's chains of the atrous ops: the committed models against TF's outputs.

``tests/models/*.onnx`` are tf2onnx 1.17's conversions of small TF graphs and
``*.npz`` TF's outputs for them (``tests/models/make_models.py``); TensorFlow
is not needed here.
"""

from __future__ import annotations

import os
import pathlib
import stat

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from atrous_cl import cli as main_cli
from onnx_export import fold
from onnx_export.chains import MOVE_OPS, Graph, NoProof

MODELS_DIR = pathlib.Path(__file__).parent / "models"
#: model -> (chains it holds, node count tf2onnx wrote, node count folded with the defaults)
MODELS = {
    "single_b1": (1, 11, 3),
    "single_b3_valid": (1, 9, 3),
    "dynamic_even_odd": (2, 197, 5),
    "decoder": (3, 276, 17),
}
#: Max |error| over max |TF's output| (float32), as the issue asks.
TOL = 1e-4
FORMS = {"portable": {}, "single": dict(pad_form="single"), "conv": dict(conv_form=True),
         "conv-symmetric": dict(conv_form=True, pad_form="symmetric")}


def load(name):
    return onnx.load(MODELS_DIR / f"{name}.onnx"), np.load(MODELS_DIR / f"{name}.npz")


def run_ort(model, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {model.graph.input[0].name: x})[0]


def assert_close(got, want, what):
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    err = np.abs(got.astype(np.float64) - want).max() / np.abs(want).max()
    assert err <= TOL, f"{what}: max |error| is {err:.3g} of max |TF|, bound {TOL:g}"


def tf_cases(data):
    return [(data[k], data["y" + k[1:]], int(k[1:])) for k in data.files if k.startswith("x")]


def check_full(model, out_shape):
    """``check_model(full_check=True)``, and strict shape inference alone finds TF's output shape.

    tf2onnx leaves the spatial dims of a dynamic chain's output unknown; once
    folded they are static, so all but the batch must be inferred.
    """
    onnx.checker.check_model(model, full_check=True)
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    bare.graph.output[0].type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(bare, strict_mode=True).graph.output[0]
    got = [d.dim_value for d in inferred.type.tensor_type.shape.dim]
    assert got[1:] == list(out_shape[1:])


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", MODELS)
def test_folded_models_match_tf(name, form):
    model, data = load(name)
    chains, nodes_before, _ = MODELS[name]
    result = fold.fold_with_report(model, **FORMS[form])
    assert [c.folded for c in result.chains] == [True] * chains, result.chains
    folded = result.model
    ops = [n.op_type for n in folded.graph.node]
    assert "SpaceToDepth" not in ops and "DepthToSpace" not in ops and "Pad" not in ops
    assert len(model.graph.node) == nodes_before
    check_full(folded, tf_cases(data)[0][1].shape)
    for x, want, batch in tf_cases(data):
        assert_close(run_ort(folded, x), want, f"{name} {form} batch {batch}")


@pytest.mark.parametrize("name", MODELS)
def test_tf2onnx_models_match_tf(name):
    """The committed conversions themselves compute TF's outputs (the ground the rest stands on)."""
    model, data = load(name)
    for x, want, batch in tf_cases(data):
        assert_close(run_ort(model, x), want, f"{name} as tf2onnx wrote it, batch {batch}")


def test_node_counts():
    for name, (_, before, after) in MODELS.items():
        model, _ = load(name)
        assert (len(model.graph.node), len(fold.fold_atrous_chains(model).graph.node)) == \
            (before, after), name


def test_dynamic_batch_beyond_the_proved_sizes():
    # The proof evaluates batches 1-3; the folded model must hold for others too.
    model, _ = load("decoder")
    folded = fold.fold_atrous_chains(model, conv_form=True)
    x = np.random.default_rng(5).standard_normal((5, 32, 32, 16)).astype(np.float32)
    assert_close(run_ort(folded, x), run_ort(model, x).astype(np.float64), "decoder batch 5")


def test_forms_write_the_expected_nodes():
    model, _ = load("dynamic_even_odd")   # k4 rate 3 SAME (asymmetric crop), then k2 rate 5 VALID
    ops = lambda m: [n.op_type for n in m.graph.node]  # noqa: E731
    assert ops(fold.fold_atrous_chains(model)) == \
        ["Transpose", "ConvTranspose", "Slice", "ConvTranspose", "Transpose"]
    single = fold.fold_atrous_chains(model, pad_form="single")
    assert ops(single) == ["Transpose", "ConvTranspose", "ConvTranspose", "Transpose"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in single.graph.node[1].attribute}
    assert attrs["dilations"] == [3, 3] and attrs["pads"] == [4, 4, 5, 5]
    assert ops(fold.fold_atrous_chains(model, conv_form=True)) == \
        ["Transpose", "Conv", "Conv", "Transpose"]


@pytest.mark.parametrize("name", MODELS)
def test_folding_a_folded_model_changes_nothing(name):
    model, _ = load(name)
    once = fold.fold_atrous_chains(model)
    again = fold.fold_with_report(once)
    assert again.chains == []
    assert again.model.SerializeToString() == once.SerializeToString()


@pytest.mark.parametrize("name", MODELS)
def test_nothing_else_changes(name):
    model, _ = load(name)
    folded = fold.fold_atrous_chains(model)
    new = {n.SerializeToString() for n in folded.graph.node}
    old = {n.SerializeToString() for n in model.graph.node}
    kept = old & new
    # Every original node still there is byte-identical, and no node outside the
    # chains went: each removed one was a chain's (data movement, the undilated
    # conv, or run-time shape arithmetic).
    chain_ops = {*MOVE_OPS, "Conv", "ConvTranspose", "Shape", "Gather", "Cast", "Concat",
                 "Add", "Sub", "Mul", "Div", "Mod", "Split", "Equal", "Not", "Neg", "Where",
                 "Constant"}
    removed = [n for n in model.graph.node if n.SerializeToString() not in kept]
    assert removed and {n.op_type for n in removed} <= chain_ops
    for n in model.graph.node:
        if n.op_type not in chain_ops:      # Relu, the forward Conv tf2onnx folded, ...
            assert n.SerializeToString() in kept, n.name
    assert folded.graph.input == model.graph.input and folded.graph.output == model.graph.output
    old_inits = {t.name: t for t in model.graph.initializer}
    for t in folded.graph.initializer:
        if t.name in old_inits:
            assert t == old_inits[t.name]
    assert [(o.domain, o.version) for o in folded.opset_import] == \
        [(o.domain, o.version) for o in model.opset_import]


def test_shared_transpose_is_kept():
    """A chain node whose output a neighbour also reads stays; the rest of the chain goes."""
    model, data = load("single_b1")
    shared = next(n for n in model.graph.node if n.op_type == "Transpose")
    model.graph.node.append(onnx.helper.make_node("Relu", [shared.output[0]], ["side"],
                                                  name="neighbour"))
    model.graph.output.append(onnx.helper.make_tensor_value_info("side", onnx.TensorProto.FLOAT,
                                                                 [None] * 4))
    result = fold.fold_with_report(model)
    assert [c.folded for c in result.chains] == [True]
    folded = result.model
    assert any(n.SerializeToString() == shared.SerializeToString() for n in folded.graph.node)
    assert "SpaceToDepth" not in [n.op_type for n in folded.graph.node]
    x, want, _ = tf_cases(data)[0]
    sess = lambda m: ort.InferenceSession(m.SerializeToString(),  # noqa: E731
                                          providers=["CPUExecutionProvider"])
    got, side = sess(folded).run(None, {"x": x})
    assert_close(got, want, "shared transpose")
    np.testing.assert_array_equal(side, sess(model).run(None, {"x": x})[1])


def _set_init(model, name, fn):
    t = next(t for t in model.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t)), name))


def _node_input_init(model, op_type, index):
    node = next(n for n in model.graph.node if n.op_type == op_type)
    return node.input[index]


def _break_crop(model):
    _set_init(model, _node_input_init(model, "Slice", 1), lambda s: s + 1)
    _set_init(model, _node_input_init(model, "Slice", 2), lambda e: e + 1)


def _break_block(model):
    for n in model.graph.node:
        if n.op_type == "DepthToSpace":
            n.attribute.append(onnx.helper.make_attribute("mode", "CRD"))


def _break_conv_pads(model):
    conv = next(n for n in model.graph.node if n.op_type == "ConvTranspose")
    for a in conv.attribute:
        if a.name == "pads":
            a.CopyFrom(onnx.helper.make_attribute("pads", [1, 1, 1, 1]))


def _conv_attribute(name, value, drop=()):
    """A breaker that gives the chain's ConvTranspose ``name=value`` (without the attributes
    ``drop``): each of these makes it something other than TF's undilated VALID step, so
    the chain must not fold."""
    def breaker(model):
        conv = next(n for n in model.graph.node if n.op_type == "ConvTranspose")
        kept = [a for a in conv.attribute if a.name != name and a.name not in drop]
        del conv.attribute[:]
        conv.attribute.extend([*kept, onnx.helper.make_attribute(name, value)])
    return breaker


def _break_perm(model):
    for n in model.graph.node:
        if n.op_type == "Transpose" and list(n.attribute[0].ints) == [1, 0, 2, 3]:
            n.attribute[0].CopyFrom(onnx.helper.make_attribute("perm", [0, 1, 3, 2]))
            return


def test_a_changed_crop_stays_and_the_rest_folds():
    """With the crop shifted, what remains before it is still an op (k3 rate 2 VALID).

    The fold proves the longest stretch it can: the changed Slice stays as it
    is and the model computes what it computed before.
    """
    model, data = load("single_b1")
    _break_crop(model)
    broken = next(n for n in model.graph.node if n.op_type == "Slice")
    result = fold.fold_with_report(model)
    assert [c.folded for c in result.chains] == [True]
    assert any(n == broken for n in result.model.graph.node)
    x = tf_cases(data)[0][0]
    assert_close(run_ort(result.model, x), run_ort(model, x).astype(np.float64), "broken")


@pytest.mark.parametrize("name, breaker, why", [
    # DCR and CRD differ only with more than one image per block: batch 3.
    ("single_b3_valid", _break_block, "not TF's batch-to-space"),
    ("single_b1", _break_conv_pads, "not TF's undilated VALID step"),
    ("single_b1", _conv_attribute("output_padding", [1, 1]), "not TF's undilated VALID step"),
    ("single_b1", _conv_attribute("auto_pad", "SAME_UPPER", drop=["pads"]), "not TF's undilated VALID step"),
    ("single_b1", _conv_attribute("output_shape", [9, 9]), "not TF's undilated VALID step"),
    ("single_b1", _conv_attribute("strides", [2, 2]), "not TF's undilated VALID step"),
    ("single_b1", _break_perm, "space-to-batch"),
    ("dynamic_even_odd", _break_perm, "space-to-batch"),
], ids=["block-mode", "conv-pads", "output-padding", "auto-pad", "output-shape", "strides", "perm",
        "perm-dynamic"])
def test_unprovable_chain_is_left_and_reported(name, breaker, why):
    model, _ = load(name)
    breaker(model)
    result = fold.fold_with_report(model)
    assert not result.chains[0].folded and why in result.chains[0].detail
    assert result.model.SerializeToString() == model.SerializeToString()


def test_filters_a_caller_may_feed_are_not_folded():
    """An initializer that is also a graph input is a default the caller may replace
    (older exporters write every weight so): folding it in would ignore what is fed."""
    model, data = load("single_b1")
    conv = next(n for n in model.graph.node if n.op_type == "ConvTranspose")
    w = next(t for t in model.graph.initializer if t.name == conv.input[1])
    model.graph.input.append(onnx.helper.make_tensor_value_info(w.name, w.data_type, w.dims))
    onnx.checker.check_model(model, full_check=True)
    result = fold.fold_with_report(model)
    assert [c.folded for c in result.chains] == [False]
    assert "graph input" in result.chains[0].detail and w.name in result.chains[0].detail
    assert result.model.SerializeToString() == model.SerializeToString()


def test_a_chain_tensor_read_inside_a_subgraph_is_kept():
    """A chain tensor read from an If branch (outer scope) stays; the chain folds around it."""
    model, data = load("single_b1")
    pad = next(n for n in model.graph.node if n.op_type == "SpaceToDepth").input[0]
    branch = lambda name, k: onnx.helper.make_graph(  # noqa: E731
        [onnx.helper.make_node("ReduceSum", [pad], [name + "_s"], keepdims=0),
         onnx.helper.make_node("Mul", [name + "_s", name + "_k"], [name + "_o"])], name, [],
        [onnx.helper.make_tensor_value_info(name + "_o", onnx.TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.array(k, np.float32), name + "_k")])
    model.graph.input.append(onnx.helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []))
    model.graph.node.append(onnx.helper.make_node("If", ["cond"], ["side"],
                                                  then_branch=branch("then", 1.0),
                                                  else_branch=branch("else", 0.0)))
    model.graph.output.append(onnx.helper.make_tensor_value_info("side", onnx.TensorProto.FLOAT, []))
    result = fold.fold_with_report(model)
    assert [c.folded for c in result.chains] == [True]
    onnx.checker.check_model(result.model, full_check=True)
    assert pad in {o for n in result.model.graph.node for o in n.output}
    x, want, _ = tf_cases(data)[0]
    feeds = {"x": x, "cond": np.array(True)}
    sess = lambda m: ort.InferenceSession(m.SerializeToString(),  # noqa: E731
                                          providers=["CPUExecutionProvider"])
    got, side = sess(result.model).run(None, feeds)
    assert_close(got, want, "subgraph reader")
    np.testing.assert_array_equal(side, sess(model).run(None, feeds)[1])


def test_a_dynamic_height_is_not_taken_for_the_batch():
    """A static batch and a dynamic height (audio's [1, T, F, C]): the proof tries its
    sizes only for a symbolic batch, so the chain stays in every form, and the model
    still gives TF's output at every height (it gave height 1's, cropped, when folded)."""
    model, data = load("dynamic_height")
    for form in FORMS.values():
        result = fold.fold_with_report(model, **form)
        assert [c.folded for c in result.chains] == [False], result.chains
        assert result.model.SerializeToString() == model.SerializeToString()
    for x, want, h in tf_cases(data):  # (height 1 gives zeros: every tap lies outside)
        np.testing.assert_allclose(run_ort(model, x), want, rtol=1e-4, atol=1e-5,
                                   err_msg=f"height {h}")


def _with_external_weights(model, folder, scale):
    """``model`` with its float initializers times ``scale``, saved in ``folder`` as
    model.onnx and weights.data (every initializer of 1 KiB or more)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * scale, t.name))
    folder.mkdir()
    onnx.save(m, folder / "model.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.data", size_threshold=1024)
    return folder / "model.onnx"


def test_weights_in_external_data_not_loaded_are_not_read(tmp_path, monkeypatch):
    """A model loaded without its external data (load_external_data=False): the proof
    would read the weights relative to the current directory, another model's there
    (a wrong fold that ran); the chain stays, saying why. Loaded with it, it folds."""
    model, data = load("single_b1")
    mine = _with_external_weights(model, tmp_path / "a", 1.0)
    _with_external_weights(model, tmp_path / "b", -3.0)
    lazy = onnx.load(mine, load_external_data=False)
    monkeypatch.chdir(tmp_path / "b")  # holds a weights.data, of other weights
    result = fold.fold_with_report(lazy)
    assert [c.folded for c in result.chains] == [False]
    assert "external data" in result.chains[0].detail, result.chains
    assert result.model.SerializeToString() == lazy.SerializeToString()
    # The weight loaded, but another of the chain's initializers not:
    conv = next(n for n in lazy.graph.node if n.op_type == "ConvTranspose")
    weight = next(t for t in lazy.graph.initializer if t.name == conv.input[1])
    onnx.external_data_helper.load_external_data_for_tensor(weight, str(tmp_path / "a"))
    weight.data_location = onnx.TensorProto.DEFAULT
    del weight.external_data[:]
    pads = next(n for n in lazy.graph.node if n.op_type == "Pad").input[1]
    pads = next(t for t in lazy.graph.initializer if t.name == pads)
    onnx.external_data_helper.set_external_data(pads, "weights.data", offset=0, length=64)
    pads.ClearField("raw_data")
    pads.data_location = onnx.TensorProto.EXTERNAL
    result = fold.fold_with_report(lazy)
    assert [c.folded for c in result.chains] == [False]
    assert "external data" in result.chains[0].detail and pads.name in result.chains[0].detail
    monkeypatch.chdir(tmp_path)
    result = fold.fold_with_report(onnx.load(mine))
    assert [c.folded for c in result.chains] == [True]
    x, want, _ = tf_cases(data)[0]
    assert_close(run_ort(result.model, x), want, "loaded with its data")


def test_a_pad_that_reads_the_values_data_is_not_folded():
    """A pad computed from the input's data (one row when it holds a negative number,
    shifted back by a Slice), not its shape: the proof's values are all positive, so
    a proof from the input would hold and the fold drop the shift. Only shapes,
    constants and initializers may feed a pad, a shape or a slice's bounds: the fold
    takes the shifted tensor for the op's value (the chain's own Pad adds nothing
    here), and the model gives what it gave."""
    model, data = load("single_b1")
    g = model.graph
    pad = next(n for n in g.node if n.op_type == "Pad")
    shifted = pad.output[0]
    pad.input[1], pad.output[0] = "data_pads", "padded"
    make = onnx.helper.make_node
    nodes = [make("ReduceMin", ["x"], ["least"], keepdims=0),
             make("Less", ["least", "zero"], ["negative"]),
             make("Cast", ["negative"], ["rows0"], to=onnx.TensorProto.INT64),
             make("Reshape", ["rows0", "one"], ["rows"]),
             make("Concat", ["z1", "rows", "z6"], ["data_pads"], axis=0)]
    g.initializer.extend(numpy_helper.from_array(np.array(v, dtype), name) for name, v, dtype in (
        ("zero", 0, np.float32), ("one", [1], np.int64), ("z1", [0], np.int64),
        ("z6", [0] * 6, np.int64), ("s0", [0], np.int64), ("s16", [16], np.int64),
        ("ax1", [1], np.int64)))
    at = list(g.node).index(pad)
    kept = [*g.node[:at], *nodes, pad, make("Slice", ["padded", "s0", "s16", "ax1"], [shifted]),
            *g.node[at + 1:]]
    del g.node[:]
    g.node.extend(kept)
    onnx.checker.check_model(model, full_check=True)
    result = fold.fold_with_report(model)
    assert [c.folded for c in result.chains] == [True], result.chains
    assert "ReduceMin" in [n.op_type for n in result.model.graph.node]
    x = tf_cases(data)[0][0]
    assert x.min() < 0
    np.testing.assert_allclose(run_ort(result.model, x), run_ort(model, x), rtol=1e-5, atol=1e-6)
    # From the input alone, the chain is not proved:
    graph = Graph(model)
    with pytest.raises(NoProof, match="data movement"):
        graph.subgraph(next(n for n in g.node if n.op_type == "SpaceToDepth").input[0], "x", 1)


def test_a_shape_with_a_symbolic_dim_besides_the_batch_is_not_fabricated():
    """The chain's crop arithmetic reading the shape of another input, whose symbolic
    dim is not the op's batch: the proof would give both the same size, and a fold
    then ignore the other input; the chain stays."""
    model, _ = load("dynamic_even_odd")
    shape = next(n for n in model.graph.node if n.op_type == "Shape" and n.input[0] == "x")
    shape.input[0] = "other"
    model.graph.input.append(onnx.helper.make_tensor_value_info(
        "other", onnx.TensorProto.FLOAT, ["M", 11, 9, 4]))
    onnx.checker.check_model(model, full_check=True)
    result = fold.fold_with_report(model)
    assert not result.chains[0].folded, result.chains
    assert "besides the op's batch" in result.chains[0].detail


@pytest.mark.parametrize("change", ["slice-axis-twice", "reshape-to-minus-two"])
def test_a_model_the_standard_forbids_is_left(change):
    """onnx's reference evaluator, which the proof runs, takes nodes the standard
    forbids (and runtimes refuse): such a model must not fold into one they run."""
    model, _ = load("single_b1" if change.startswith("slice") else "dynamic_even_odd")
    if change.startswith("slice"):
        axes = next(n for n in model.graph.node if n.op_type == "Slice").input[3]
        _set_init(model, axes, lambda a: np.full_like(a, a[-1]))
    else:
        shape = next(n for n in model.graph.node if n.op_type == "Reshape").input[1]
        _set_init(model, shape, lambda s: np.where(s == -1, -2, s))
    result = fold.fold_with_report(model)
    assert not any(c.folded for c in result.chains)
    assert all("fails onnx.checker" in c.detail for c in result.chains), result.chains
    assert result.model.SerializeToString() == model.SerializeToString()


def test_a_model_past_protobufs_limit_is_a_clear_error(tmp_path, capsys, monkeypatch):
    """Over 2 GiB (weights loaded inline) onnx cannot serialise a model for its checker
    or shape inference: fold says so, and the CLI writes nothing."""
    from google.protobuf.message import EncodeError

    def too_large(*a, **k):
        raise EncodeError("Failed to serialize proto")

    monkeypatch.setattr(onnx.checker, "check_model", too_large)
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", too_large)
    with pytest.raises(ValueError, match="over protobuf's 2 GiB limit"):
        fold.fold_atrous_chains(load("single_b1")[0])
    out = tmp_path / "o.onnx"
    assert main_cli.main(["fold", str(MODELS_DIR / "single_b1.onnx"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("atrous-cl fold: error: cannot fold") and "2 GiB" in err
    assert "nothing written" in err and not out.exists()


def test_the_conv_form_is_not_written_for_non_finite_weights():
    """With Inf or NaN weights the Conv form would multiply its zero padding by them (NaN
    where TF's op adds no term): conv_form folds such a chain as the ConvTranspose, and
    says so; the result keeps TF's NaN and infinities."""
    model, data = load("single_b1")
    conv = next(n for n in model.graph.node if n.op_type == "ConvTranspose")
    _set_init(model, conv.input[1], lambda w: np.where(np.arange(w.size).reshape(w.shape) % 97
                                                       == 5, np.inf, w))
    result = fold.fold_with_report(model, conv_form=True)
    assert [c.folded for c in result.chains] == [True]
    assert "ConvTranspose (weights Inf or NaN" in result.chains[0].detail, result.chains
    assert "ConvTranspose" in [n.op_type for n in result.model.graph.node]
    x = tf_cases(data)[0][0]
    got, want = run_ort(result.model, x), run_ort(model, x)
    assert np.isnan(want).any() and np.isinf(want).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_model_below_the_oldest_opset_is_left():
    model, _ = load("single_b1")
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 10
    result = fold.fold_with_report(model)
    assert [c.folded for c in result.chains] == [False] and "opset 10" in result.chains[0].detail
    assert result.model.SerializeToString() == model.SerializeToString()


def _as_float16(model):
    """The model with its float tensors in float16, as tf2onnx writes a float16 graph."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    for t in half.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in [*half.graph.input, *half.graph.output]:
        vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    del half.graph.value_info[:]
    return half


def test_float16_chains_fold():
    """The proof tells elements apart with float32 values: float16 holds only 2048
    integers exactly, fewer than this chain's conv output (3200 elements)."""
    model, data = load("single_b1")
    half = _as_float16(model)
    onnx.checker.check_model(half, full_check=True)
    result = fold.fold_with_report(half)
    assert [c.folded for c in result.chains] == [True], result.chains
    x = tf_cases(data)[0][0].astype(np.float16)
    want = run_ort(half, x).astype(np.float64)
    got = run_ort(result.model, x).astype(np.float64)
    assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max()


def test_an_export_has_no_chain():
    from onnx_export import export_atrous_conv2d_transpose

    model = export_atrous_conv2d_transpose(np.ones((3, 3, 2, 2), np.float32), (1, 8, 8, 2), None,
                                           2, "SAME", dynamic_batch=True)
    result = fold.fold_with_report(model)
    assert result.chains == [] and result.model.SerializeToString() == model.SerializeToString()


def test_a_chain_after_an_op_onnx_cannot_infer_folds_from_the_recorded_shapes():
    """An op of a domain onnx does not know stops shape inference; the shapes the model
    records past it (as tf2onnx writes them) still let the chain below fold."""
    model, data = load("single_b1")
    g = model.graph
    first = next(n for n in g.node if "x" in n.input)
    first.input[list(first.input).index("x")] = "x_passed"
    g.node.insert(0, onnx.helper.make_node("Passthrough", ["x"], ["x_passed"], domain="com.example"))
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    inferred = onnx.shape_inference.infer_shapes(load("single_b1")[0]).graph
    g.value_info.extend([onnx.helper.make_tensor_value_info("x_passed", onnx.TensorProto.FLOAT,
                                                            [1, 16, 16, 6]),
                         *inferred.value_info])
    onnx.checker.check_model(model, full_check=True)
    result = fold.fold_with_report(model)
    assert [c.folded for c in result.chains] == [True], result.chains
    assert "Passthrough" in [n.op_type for n in result.model.graph.node]


def test_shapes_recorded_for_removed_tensors_go():
    model, data = load("decoder")
    inferred = onnx.shape_inference.infer_shapes(model)
    assert len(inferred.graph.value_info) > 200
    folded = fold.fold_atrous_chains(inferred)
    produced = {o for n in folded.graph.node for o in n.output}
    kept = [v.name for v in folded.graph.value_info]
    # The ReLUs' and biases' outputs stay, and their recorded shapes with them.
    assert "Relu:0" in kept and all(name in produced for name in kept)
    check_full(folded, data["y1"].shape)


def test_input_not_changed():
    model, _ = load("decoder")
    before = model.SerializeToString()
    fold.fold_atrous_chains(model, conv_form=True)
    assert model.SerializeToString() == before


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(model=b"bytes"), TypeError, r"model must be an onnx.ModelProto, got bytes"),
    (dict(conv_form="yes"), TypeError, r"conv_form must be True or False, got 'yes'"),
    (dict(pad_form="exact"), ValueError, r"pad_form must be one of .* got 'exact'"),
    (dict(pad_form=None), TypeError, r"pad_form must be one of .* got None"),
])
def test_errors(kwargs, error, match):
    model = kwargs.pop("model", load("single_b1")[0])
    with pytest.raises(error, match=match):
        fold.fold_atrous_chains(model, **kwargs)


# --- atrous-cl fold ------------------------------------------------------------------------------

def test_cli_folds_checks_and_writes(tmp_path, capsys):
    out = tmp_path / "folded.onnx"
    code = main_cli.main(["fold", str(MODELS_DIR / "decoder.onnx"), "-o", str(out), "--check",
                          "--conv-form"])
    text = capsys.readouterr().out
    assert code == 0, text
    lines = text.splitlines()
    assert sum(line.startswith("folded ") for line in lines) == 3
    assert "nodes: 276 -> 17" in lines and any(line.startswith("check: ") for line in lines)
    folded = onnx.load(out)
    _, data = load("decoder")
    for x, want, batch in tf_cases(data):
        assert_close(run_ort(folded, x), want, f"cli decoder batch {batch}")
    assert os.listdir(tmp_path) == ["folded.onnx"]   # no temporary file left


def test_cli_check_fails_on_a_wrong_fold(tmp_path, capsys, monkeypatch):
    real = fold.fold_with_report

    def wrong(model, **kw):
        result = real(model, **kw)
        t = result.model.graph.initializer[-1]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.01, t.name))
        return result
    monkeypatch.setattr(fold, "fold_with_report", wrong)
    out = tmp_path / "folded.onnx"
    assert main_cli.main(["fold", str(MODELS_DIR / "single_b1.onnx"), "-o", str(out),
                          "--check"]) == 1
    assert "differs from the original in onnxruntime" in capsys.readouterr().err
    assert not out.exists()


def test_cli_reports_skipped_chains(tmp_path, capsys):
    model, _ = load("single_b3_valid")
    _break_block(model)
    src = tmp_path / "broken.onnx"
    onnx.save(model, src)
    assert main_cli.main(["fold", str(src), "-o", str(tmp_path / "out.onnx")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("skipped ") and "nodes: 9 -> 9" in out


def test_cli_writes_as_export_does(tmp_path, capsys):
    """A directory, FIFO, read-only file or missing folder is refused before folding (exit
    2); a symlink is followed, as save_model does: its target gets the model and the link
    stays."""
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    read_only = tmp_path / "read-only.onnx"
    read_only.write_bytes(b"old")
    read_only.chmod(0o444)
    for dest, why in ((tmp_path, "is a directory"), (fifo, "is a FIFO"),
                      (read_only, "is read-only (mode 0444)"),
                      (tmp_path / "missing" / "o.onnx", "does not exist")):
        assert main_cli.main(["fold", str(MODELS_DIR / "single_b1.onnx"), "-o", str(dest)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"atrous-cl fold: error: cannot write {str(dest)!r}") and why in err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and read_only.read_bytes() == b"old"
    target = tmp_path / "real.onnx"
    target.write_bytes(b"old")
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    assert main_cli.main(["fold", str(MODELS_DIR / "single_b1.onnx"), "-o", str(link)]) == 0
    assert link.is_symlink()
    onnx.checker.check_model(onnx.load(target), full_check=True)


def test_cli_bad_input(tmp_path, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff not a model")
    empty = tmp_path / "empty.onnx"   # parses: an empty ModelProto, which the checker refuses
    empty.write_bytes(b"")
    for src in (junk, tmp_path / "missing.onnx", empty):
        assert main_cli.main(["fold", str(src), "-o", str(tmp_path / "o.onnx")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"atrous-cl fold: error: cannot read a model from {str(src)!r}")
    assert "fails onnx.checker: " in err and "ir_version" in err
    assert not (tmp_path / "o.onnx").exists()


def _conv_model(path, k):
    """A valid model with a symbolic height and width: a kxk VALID Conv (no chain)."""
    w = numpy_helper.from_array(np.ones((2, 2, k, k), np.float32), "w")
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, "H", "W"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2, None, None])],
        [w])
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_cli_check_with_symbolic_spatial_dims(tmp_path, capsys):
    """--check sets symbolic dims to 1, 2, 3; where the model itself cannot run at a size
    (a 3x3 VALID conv at height 1) that size is passed over, not a crash; where it runs at
    none (a 40x40 one), the fallback sizes, then a clear error and nothing written."""
    _conv_model(tmp_path / "k3.onnx", 3)
    assert main_cli.main(["fold", str(tmp_path / "k3.onnx"), "-o", str(tmp_path / "o3.onnx"),
                          "--check"]) == 0
    assert "check: the outputs agree in onnxruntime at symbolic dim sizes 3\n" in \
        capsys.readouterr().out
    _conv_model(tmp_path / "k20.onnx", 20)
    assert main_cli.main(["fold", str(tmp_path / "k20.onnx"), "-o", str(tmp_path / "o20.onnx"),
                          "--check"]) == 0
    assert "at symbolic dim sizes 33\n" in capsys.readouterr().out
    _conv_model(tmp_path / "k40.onnx", 40)
    assert main_cli.main(["fold", str(tmp_path / "k40.onnx"), "-o", str(tmp_path / "o40.onnx"),
                          "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("atrous-cl fold: error: --check cannot compare the models: the "
                          "original model does not run in onnxruntime") and "nothing written" in err
    assert not (tmp_path / "o40.onnx").exists()


def _with_extra(model, kind):
    """``model`` with a graph input (or, for "bfloat16-output", an output) --check cannot make
    or compare."""
    h, tp = onnx.helper, onnx.TensorProto
    if kind == "bfloat16-output":
        y = model.graph.output[0].name
        model.graph.node.append(h.make_node("Cast", [y], ["y16"], to=tp.BFLOAT16))
        dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
        model.graph.output.append(h.make_tensor_value_info("y16", tp.BFLOAT16, dims))
        return model
    tensor = h.make_tensor_type_proto(tp.FLOAT, [2])
    extra = {"sequence": h.make_value_info("extra", h.make_sequence_type_proto(tensor)),
             "optional": h.make_value_info("extra", h.make_optional_type_proto(tensor)),
             "string": h.make_tensor_value_info("extra", tp.STRING, [2]),
             "bfloat16": h.make_tensor_value_info("extra", tp.BFLOAT16, [2])}[kind]
    model.graph.input.append(extra)
    return model


@pytest.mark.parametrize("kind, what", [
    ("sequence", "input 'extra' is a sequence, and --check makes and compares tensors of real"),
    ("optional", "input 'extra' is an optional,"),
    ("string", "input 'extra' is a tensor of STRING,"),
    ("bfloat16", "input 'extra' is a tensor of BFLOAT16,"),
    ("bfloat16-output", "output 'y16' is a tensor of BFLOAT16,"),
])
def test_cli_check_refuses_what_it_cannot_make_or_compare(tmp_path, capsys, kind, what):
    """A valid model with an input or output that is not a tensor of real numbers: --check
    says so in one line and writes nothing (it raised KeyError from onnx's dtype table, or
    failed inside NumPy)."""
    model, _ = load("single_b1")
    src = tmp_path / "extra.onnx"
    onnx.save(_with_extra(model, kind), src)
    out = tmp_path / "o.onnx"
    assert main_cli.main(["fold", str(src), "-o", str(out), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("atrous-cl fold: error: --check cannot compare the models: ")
    assert what in err and "nothing written" in err and err.count("\n") == 1
    assert not out.exists()


def test_the_proofs_values_tell_every_element_apart():
    """A proof traces each element by its value: float16 chains get float32 values (float16
    tells only 2048 integers apart), and a tensor past float32's exact integers is refused,
    not proved with values that collide."""
    from onnx_export import proof

    for elem in (onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        values = proof._distinct((1, 64, 64, 1), elem)
        assert np.unique(values).size == values.size == 4096 and values.min() == 1
    with pytest.raises(NoProof, match="too many to tell apart in float32"):
        proof._distinct((1, 4097, 4096, 1), onnx.TensorProto.FLOAT)
    assert np.unique(proof._distinct((1, 4097, 4096, 1), onnx.TensorProto.DOUBLE)).size == 4097 * 4096


def _run_ort_feeds(model, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def test_a_crop_a_caller_may_feed_stays_as_fed():
    """The crop's starts and ends as initializers that are also graph inputs: defaults the
    caller may replace. The fold must not bake them in: fed a shifted crop, the folded model
    computes what the original does."""
    model, data = load("single_b1")
    bounds = [_node_input_init(model, "Slice", i) for i in (1, 2)]
    defaults = {}
    for name in bounds:
        init = next(t for t in model.graph.initializer if t.name == name)
        model.graph.input.append(onnx.helper.make_tensor_value_info(name, init.data_type, init.dims))
        defaults[name] = numpy_helper.to_array(init)
    onnx.checker.check_model(model, full_check=True)
    result = fold.fold_with_report(model)
    onnx.checker.check_model(result.model, full_check=True)
    x = tf_cases(data)[0][0]
    for shift in (0, 1):
        feeds = {"x": x, **{name: d + shift for name, d in defaults.items()}}
        assert_close(_run_ort_feeds(result.model, feeds),
                     _run_ort_feeds(model, feeds).astype(np.float64), f"crop shifted by {shift}")


def test_the_folds_names_avoid_every_name_the_model_has():
    """A node output already named as the fold would name its filters: the fold takes
    another prefix, and the model stays valid (single assignment) and computes the same."""
    model, data = load("single_b1")
    model.graph.node.append(onnx.helper.make_node("Identity", ["x"], ["atrous_fold1/filters"]))
    clash = onnx.ValueInfoProto()
    clash.CopyFrom(model.graph.input[0])
    clash.name = "atrous_fold1/filters"
    model.graph.output.append(clash)
    onnx.checker.check_model(model, full_check=True)
    result = fold.fold_with_report(model)
    assert [c.folded for c in result.chains] == [True]
    onnx.checker.check_model(result.model, full_check=True)
    names = [o for n in result.model.graph.node for o in n.output]
    names += [t.name for t in result.model.graph.initializer]
    assert len(names) == len(set(names)) and names.count("atrous_fold1/filters") == 1
    x = tf_cases(data)[0][0]
    assert_close(run_ort(result.model, x), run_ort(model, x).astype(np.float64), "clash")


def test_a_crop_that_moves_from_batch_three_on_is_not_proved():
    """The proof runs a symbolic batch at 1, 2 and 3: a crop shifted by max(N - 2, 0)
    matches TF's at batches 1 and 2 only, so the chain must not fold (a model folded on
    two batches would differ from the original from batch 3 on)."""
    model, _ = load("dynamic_even_odd")
    g = model.graph
    at = next(k for k, n in enumerate(g.node)
              if n.op_type == "Slice" and n.input[0].startswith("DepthToSpace"))
    crop = g.node[at]
    g.initializer.extend([numpy_helper.from_array(np.array(0, np.int64), "t_zero"),
                          numpy_helper.from_array(np.array(2, np.int64), "t_two")])
    shift = [
        onnx.helper.make_node("Shape", ["x"], ["t_shape"], start=0, end=1),
        onnx.helper.make_node("Squeeze", ["t_shape"], ["t_batch"]),
        onnx.helper.make_node("Sub", ["t_batch", "t_two"], ["t_less"]),
        onnx.helper.make_node("Max", ["t_less", "t_zero"], ["t_shift"]),
        onnx.helper.make_node("Add", [crop.input[1], "t_shift"], ["t_starts"]),
        onnx.helper.make_node("Add", [crop.input[2], "t_shift"], ["t_ends"]),
    ]
    crop.input[1], crop.input[2] = "t_starts", "t_ends"
    nodes = [*g.node[:at], *shift, *g.node[at:]]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    result = fold.fold_with_report(model)
    assert not result.chains[0].folded, result.chains
