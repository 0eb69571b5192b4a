# SPDX-License-Identifier: Apache-2.0
"""Fold tf2onnx's chains of ``atrous_conv2d_transpose`` (and ``atrous_conv2d``) into one node each.

tf2onnx 1.17 writes TF's ``SpaceToBatchND -> conv -> BatchToSpaceND`` as a chain
around an undilated ``ConvTranspose`` (or ``Conv``): Pad, Transposes and
Reshapes, SpaceToDepth, the conv, DepthToSpace, Slice; with a dynamic batch the
pads, crops and shapes are computed at run time from ``Shape`` (about 100
nodes per op). Its own rewriter folds such chains only for the forward op with
static shapes.

One rule, after onnxscript's rewriter: a *pattern* (an undilated conv whose
input comes through data-movement nodes from a SpaceToDepth and whose output
goes through a DepthToSpace; :mod:`onnx_export.chains`), a *check* that proves
the match or says why not (:mod:`onnx_export.proof`), and a *replacement*
written by the emitter's :func:`~onnx_export.emitter.emit_conv` (here).

The check is by evaluation, not by reading each node: every node between the
op's value and the conv's input, and between the conv's output and the op's
result, only moves or zero-pads data, so running those two subgraphs (onnx's
``ReferenceEvaluator``) on a tensor of distinct values shows exactly where
each element goes. They must equal NumPy's space-to-batch of TF's padded value
and TF's batch-to-space with its crops, computed from TF's own formulas for
some padding (SAME or VALID), for every batch size tried (1, 2 and 3 for a
symbolic batch, with the spatial dims known), in some 4-D layout of the value
and of the result. Run-time pad arithmetic is thus shown constant in the
batch; a chain that passes computes exactly TF's op, and a chain that fails is
left as it was and reported.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx
from google.protobuf.message import EncodeError
from onnx import helper

from atrous_cl import geometry
from onnx_export.api import check_choice, check_flag
from onnx_export.chains import TOO_LARGE, Graph, NoProof, node_key, outer_reads
from onnx_export.constants import MIN_OPSET, PAD_FORMS
from onnx_export.emitter import conv_form_exact, conv_node, emit_conv, transpose_node
from onnx_export.proof import Match, prove


class ChainReport(NamedTuple):
    """One chain found by :func:`fold_with_report`.

    Attributes:
        conv: name of the chain's undilated conv node.
        folded: whether it was replaced.
        detail: what it was folded into (op, rate, padding, kernel), or why not.
        nodes_removed: chain nodes that the rewrite made unused and removed.
    """

    conv: str
    folded: bool
    detail: str
    nodes_removed: int = 0


class FoldResult(NamedTuple):
    """The folded model and one :class:`ChainReport` per chain found."""

    model: onnx.ModelProto
    chains: list


def fold_atrous_chains(model: onnx.ModelProto, *, conv_form: bool = False,
                       pad_form: str = "portable") -> onnx.ModelProto:
    """Replace every provable tf2onnx chain of the atrous ops by one dilated node.

    Each ``atrous_conv2d_transpose`` chain becomes a ``ConvTranspose`` with
    ``dilations=[rate, rate]`` and explicit pads (or, with ``conv_form=True``,
    the equivalent ``Conv``); each forward ``atrous_conv2d`` chain that
    tf2onnx left becomes a dilated ``Conv``. Transposes are added only where
    the chain's value or result is not NCHW. Nodes and initializers the chains
    no longer need are removed; everything else, names included, is kept. A
    folded model folds to itself.

    Args:
        model: the model, as tf2onnx wrote it (not changed).
        conv_form: write transposed ops as the equivalent forward Conv
            (faster in onnxruntime's CPU provider); a chain with Inf or NaN
            weights, for which it is not equivalent, gets the ConvTranspose.
        pad_form: as for :func:`~onnx_export.export_atrous_conv2d_transpose`;
            ``'portable'`` (default) never writes an asymmetric ConvTranspose,
            ``'single'`` always writes the one exact node.

    Returns:
        A new model. Chains that could not be proved stay as they were; see
        :func:`fold_with_report` for why.

    Raises:
        TypeError: ``model`` is not an ``onnx.ModelProto``, or a flag not a bool.
        ValueError: ``pad_form`` is not one of :data:`PAD_FORMS`, or the model is
            over protobuf's 2 GiB limit (which onnx's checker needs to serialise it).
    """
    return fold_with_report(model, conv_form=conv_form, pad_form=pad_form).model


def fold_with_report(model: onnx.ModelProto, *, conv_form: bool = False,
                     pad_form: str = "portable") -> FoldResult:
    """:func:`fold_atrous_chains`, also returning a report per chain found."""
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model must be an onnx.ModelProto, got {type(model).__name__}")
    conv_form = check_flag(conv_form, "conv_form")
    pad_form = check_choice(pad_form, "pad_form", PAD_FORMS)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    why = None
    if opset is not None and opset < MIN_OPSET:
        # The replacement's Slice takes its starts and ends as inputs (opset 10),
        # and ConvTranspose's pads mean what the emitter writes from opset 11.
        why = (f"the model's opset {opset} is below {MIN_OPSET}, the oldest the replacement's "
               f"nodes are written for; convert it first (onnx.version_converter)")
    else:
        # The proof runs chains in onnx's reference evaluator, which also runs nodes
        # the standard forbids (a Slice naming an axis twice, a Reshape to -2): a
        # model that runtimes refuse must not fold into one they run.
        try:
            onnx.checker.check_model(out, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            why = f"the model fails onnx.checker, so its chains are left as they are: {e}"
        except EncodeError:
            raise ValueError(TOO_LARGE) from None
    if why is not None:
        return FoldResult(out, [ChainReport(n.name, False, why) for n in Graph(out).chain_convs()])
    folded, failed = [], {}
    progress = True
    while progress:
        # One chain at a time, then look again: folding one makes the shapes
        # after it static, which a chain that failed before may need.
        progress = False
        graph = Graph(out)
        for conv in graph.chain_convs():
            try:
                match = prove(graph, conv)
            except NoProof as e:
                failed[conv.name] = str(e)
                continue
            # The Conv form only where it is exact: finite weights (conv_form_exact).
            as_conv = conv_form and (match.op == "atrous_conv2d" or conv_form_exact(
                match.weight))
            removed = _rewrite(out, graph, match, as_conv, pad_form, len(folded) + 1)
            detail = _describe(match, as_conv) + ("" if as_conv == conv_form else
                                                  " (weights Inf or NaN: the Conv form would "
                                                  "turn its zero padding into NaN)")
            folded.append(ChainReport(conv.name, True, detail, removed))
            failed.pop(conv.name, None)
            progress = True
            break
    graph = Graph(out)
    left = [ChainReport(n.name, False, failed.get(n.name, "not proved"))
            for n in graph.chain_convs()]
    return FoldResult(out, folded + left)


def _describe(m: Match, conv_form: bool) -> str:
    kh, kw = m.weight.shape[2:]
    node = "Conv" if conv_form or m.op == "atrous_conv2d" else "ConvTranspose"
    return f"{m.op} k{kh}x{kw} rate {m.rate} {m.padding} -> {node}"


# --- the replacement ----------------------------------------------------------------------------

def _rewrite(model, graph: Graph, m: Match, conv_form: bool, pad_form: str, index: int) -> int:
    """Put the emitter's nodes in place of the chain's last node; drop what is then unused."""
    prefix = _unique_prefix(graph, f"atrous_fold{index}/")
    kh, kw = m.weight.shape[2:]
    pads = geometry.pads((kh, kw), m.rate, m.padding)
    if m.op == "atrous_conv2d_transpose":
        filters = m.weight.transpose(2, 3, 1, 0)       # ONNX [in, out, kh, kw] -> TF's layout
        op_type, weight, node_pads, crop = transpose_node(filters, pads, m.output_hw, m.rate,
                                                          pad_form, conv_form)
    else:
        op_type, weight = "Conv", m.weight
        node_pads, crop = conv_node(pads, m.output_hw, pad_form)
    new_nodes = []
    x = m.value
    to_nchw = tuple(int(i) for i in np.argsort(m.value_perm)[[0, 3, 1, 2]])
    if to_nchw != (0, 1, 2, 3):
        new_nodes.append(helper.make_node("Transpose", [x], [prefix + "value_nchw"],
                                          name=prefix + "to_nchw", perm=list(to_nchw)))
        x = prefix + "value_nchw"
    from_nchw = tuple((0, 2, 3, 1)[i] for i in m.result_perm)
    y = m.result if from_nchw == (0, 1, 2, 3) else prefix + "result_nchw"
    nodes, inits = emit_conv(op_type, weight, m.rate, node_pads, crop, x, y, prefix, m.bias)
    new_nodes += nodes
    if y != m.result:
        new_nodes.append(helper.make_node("Transpose", [y], [m.result], name=prefix + "to_result",
                                          perm=list(from_nchw)))
    last = node_key(graph.producer[m.result])
    ancestors = _ancestors(graph, m.result)
    before = len(model.graph.node)
    kept = []
    for n in model.graph.node:
        kept += new_nodes if node_key(n) == last else [n]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(inits)
    _drop_unused(model, ancestors)
    return before + len(new_nodes) - len(model.graph.node)


def _ancestors(graph: Graph, name: str) -> set:
    """Keys of every node ``name`` depends on, its producer included."""
    seen, todo = set(), [name]
    while todo:
        node = graph.producer.get(todo.pop())
        if node is None or node_key(node) in seen:
            continue
        seen.add(node_key(node))
        todo += list(node.input)
    return seen


def _unique_prefix(graph: Graph, prefix: str) -> str:
    g = graph.model.graph
    names = (set(graph.producer) | {t.name for t in g.initializer} | {i.name for i in g.input}
             | {n.name for n in graph.nodes})
    k = 0
    while any(n.startswith(prefix) for n in names):
        k += 1
        prefix = f"{prefix.rstrip('/')}_{k}/"
    return prefix


def _drop_unused(model: onnx.ModelProto, candidates: set) -> None:
    """Remove ``candidates`` (node keys) whose outputs nothing uses, then initializers they freed.

    The candidates are the replaced node and everything it depended on: only
    the chain's nodes and the run-time arithmetic feeding them can become
    unused; every other node keeps a consumer or is a graph output.
    """
    g = model.graph
    # Graph outputs, and initializers that are graph inputs (a caller may feed them).
    outputs = {o.name for o in g.output} | {i.name for i in g.input}
    freed = set()

    def reads(n) -> set:
        return {*n.input, *outer_reads(n)}
    while True:
        used = {i for n in g.node for i in reads(n)} | outputs
        dead = {node_key(n) for n in g.node
                if node_key(n) in candidates and not any(o in used for o in n.output if o)}
        if not dead:
            break
        freed |= {t for n in g.node if node_key(n) in dead for t in [*n.input, *n.output]}
        kept = [n for n in g.node if node_key(n) not in dead]
        del g.node[:]
        g.node.extend(kept)
    used = {i for n in g.node for i in reads(n)} | outputs
    kept = [t for t in g.initializer if t.name in used or t.name not in freed]
    if len(kept) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(kept)
    # Shapes recorded for the removed tensors would describe nothing.
    produced = {o for n in g.node for o in n.output}
    infos = [v for v in g.value_info if v.name in produced or v.name not in freed]
    if len(infos) != len(g.value_info):
        del g.value_info[:]
        g.value_info.extend(infos)
