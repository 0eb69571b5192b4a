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
goes through a DepthToSpace), a *check* that proves the match or says why not
(:class:`NoProof`), and a *replacement* written by the emitter's
:func:`~onnx_export.emitter.emit_conv`.

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

import itertools
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from atrous_cl import geometry
from onnx_export.api import check_choice, check_flag
from onnx_export.constants import PAD_FORMS
from onnx_export.emitter import conv_node, emit_conv, transpose_node

#: Nodes that only move, reshape or zero-pad data: what may stand between the
#: op's value, the conv and the op's result.
MOVE_OPS = frozenset({"Transpose", "Reshape", "SpaceToDepth", "DepthToSpace", "Pad", "Slice",
                      "Squeeze", "Unsqueeze", "Identity"})
#: Batch sizes a symbolic batch is proved at.
PROOF_BATCHES = (1, 2, 3)
#: How many nodes up or down from the conv the chain's ends are looked for.
MAX_WALK = 12
_PERMS = tuple(itertools.permutations(range(4)))


class NoProof(Exception):
    """A chain that could not be proved to be the op; the message says why."""


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


class _Match(NamedTuple):
    """A proved chain: what the replacement needs."""

    op: str                 # 'atrous_conv2d_transpose' or 'atrous_conv2d'
    value: str              # the op's input tensor
    value_perm: tuple       # value tensor = NHWC value.transpose(value_perm)
    result: str             # the op's result tensor
    result_perm: tuple      # result tensor = NHWC result.transpose(result_perm)
    weight: np.ndarray      # the conv's ONNX weight
    bias: str | None        # the conv's bias input, carried over
    rate: int
    padding: str
    output_hw: tuple


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
            (faster in onnxruntime's CPU provider).
        pad_form: as for :func:`~onnx_export.export_atrous_conv2d_transpose`;
            ``'portable'`` (default) never writes an asymmetric ConvTranspose,
            ``'single'`` always writes the one exact node.

    Returns:
        A new model. Chains that could not be proved stay as they were; see
        :func:`fold_with_report` for why.

    Raises:
        TypeError: ``model`` is not an ``onnx.ModelProto``, or a flag not a bool.
        ValueError: ``pad_form`` is not one of :data:`PAD_FORMS`.
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
    folded, failed = [], {}
    progress = True
    while progress:
        # One chain at a time, then look again: folding one makes the shapes
        # after it static, which a chain that failed before may need.
        progress = False
        graph = _Graph(out)
        for conv in graph.chain_convs():
            try:
                match = _prove(graph, conv)
            except NoProof as e:
                failed[conv.name] = str(e)
                continue
            removed = _rewrite(out, graph, match, conv_form, pad_form, len(folded) + 1)
            folded.append(ChainReport(conv.name, True, _describe(match, conv_form), removed))
            failed.pop(conv.name, None)
            progress = True
            break
    graph = _Graph(out)
    left = [ChainReport(n.name, False, failed.get(n.name, "not proved"))
            for n in graph.chain_convs()]
    return FoldResult(out, folded + left)


def _describe(m: _Match, conv_form: bool) -> str:
    kh, kw = m.weight.shape[2:]
    node = "Conv" if conv_form or m.op == "atrous_conv2d" else "ConvTranspose"
    return f"{m.op} k{kh}x{kw} rate {m.rate} {m.padding} -> {node}"


# --- the graph, read-only -----------------------------------------------------------------------

class _Graph:
    """Producers, consumers, constants and inferred shapes of one model."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.nodes = list(model.graph.node)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in model.graph.initializer}
        self.outputs = {o.name for o in model.graph.output}
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
            inferred = model
        self.shapes = {}
        g = inferred.graph
        for vi in [*g.input, *g.value_info, *g.output]:
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else
                                             (d.dim_param or None) for d in t.shape.dim)
        self.elem = {vi.name: vi.type.tensor_type.elem_type
                     for vi in [*g.input, *g.value_info, *g.output]}

    def chain_convs(self):
        """Undilated convs with a SpaceToDepth above and a DepthToSpace below: the pattern."""
        for n in self.nodes:
            if n.op_type not in ("ConvTranspose", "Conv") or n.domain not in ("", "ai.onnx"):
                continue
            if any(x != 1 for x in _attr(n, "dilations", [1])):
                continue
            ups = [node.op_type for node, _ in self.walk_up(n.input[0])]
            downs = [node.op_type for node, _ in self.walk_down(n.output[0])]
            if "SpaceToDepth" in ups and "DepthToSpace" in downs:
                yield n

    def walk_up(self, name: str):
        """``(node, its data input)`` going up from ``name`` through :data:`MOVE_OPS`."""
        for _ in range(MAX_WALK):
            node = self.producer.get(name)
            if node is None or node.op_type not in MOVE_OPS or node.op_type == "DepthToSpace":
                return
            name = node.input[0]
            yield node, name

    def walk_down(self, name: str):
        """``(node, its output)`` going down from ``name`` while it has one move-only consumer.

        ``Shape`` consumers (the run-time crop arithmetic) read no data and are
        allowed besides it.
        """
        for _ in range(MAX_WALK):
            users = [n for n in self.consumers.get(name, []) if n.op_type != "Shape"]
            if len(users) != 1 or name in self.outputs:
                return
            node = users[0]
            if node.op_type not in MOVE_OPS or node.op_type == "SpaceToDepth" \
                    or node.input[0] != name:
                return
            name = node.output[0]
            yield node, name

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it depends on initializers and Constants alone, else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        try:
            nodes, inits, feeds = self.subgraph(name, None, 1)
        except NoProof:
            return None
        if feeds:
            return None
        return self.evaluate(nodes, inits, {}, name)

    def subgraph(self, target: str, source: str | None, batch: int):
        """The nodes computing ``target`` from ``source``, initializers and fabricated shapes.

        A ``Shape`` of a tensor that ``source`` does not determine (the
        model's input, say, in ``tf.stack([tf.shape(x)[0], ...])``) is fed
        with that tensor's inferred shape, its symbolic dims set to ``batch``.

        Returns:
            ``(nodes in graph order, initializer names, {tensor: fed value})``.

        Raises:
            NoProof: ``target`` depends on data other than ``source``'s.
        """
        keep, inits, feeds, done = set(), set(), {}, {}

        def resolve(t: str) -> bool:
            if t == source or t == "" or t in inits:
                return True
            if t in done:
                return done[t]
            if t in self.inits:
                inits.add(t)
                return True
            node = self.producer.get(t)
            ok = node is not None
            if ok and node.op_type == "Shape" and not resolve(node.input[0]):
                feeds[t] = self._fabricated_shape(node, batch)
            elif ok:
                ok = all(resolve(i) for i in node.input)
                if ok:
                    keep.add(_key(node))
            done[t] = ok
            return ok

        if not resolve(target):
            raise NoProof(f"{target!r} depends on data other than the op's value")
        return [n for n in self.nodes if _key(n) in keep], sorted(inits), feeds

    def _fabricated_shape(self, shape_node, batch: int) -> np.ndarray:
        dims = self.shapes.get(shape_node.input[0])
        if dims is None or None in dims:
            raise NoProof(f"the shape of {shape_node.input[0]!r} is not known")
        dims = [batch if isinstance(d, str) else d for d in dims]
        start, end = _attr(shape_node, "start", 0), _attr(shape_node, "end", len(dims))
        return np.array(dims[start:end], np.int64)

    def evaluate(self, nodes, inits, feeds: dict, target: str) -> np.ndarray:
        """Run ``nodes`` in onnx's ReferenceEvaluator and return ``target``."""
        # Copied with their value types only where known; the evaluator needs none.
        inputs = [helper.make_empty_tensor_value_info(name) for name in feeds]
        graph = helper.make_graph(nodes, "proof", inputs,
                                  [helper.make_empty_tensor_value_info(target)],
                                  [self.inits[i] for i in inits])
        sub = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        sub.ir_version = self.model.ir_version
        if not nodes:
            return feeds[target] if target in feeds else numpy_helper.to_array(self.inits[target])
        try:
            return ReferenceEvaluator(sub).run([target], feeds)[0]
        except Exception as e:  # the evaluator raises many types for a graph it cannot run
            raise NoProof(f"cannot evaluate the subgraph feeding {target!r}: "
                          f"{type(e).__name__}: {e}") from None


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# --- the check ----------------------------------------------------------------------------------

def _prove(graph: _Graph, conv) -> _Match:
    """The chain around ``conv`` as a :class:`_Match`, or :class:`NoProof` saying why not."""
    op = "atrous_conv2d_transpose" if conv.op_type == "ConvTranspose" else "atrous_conv2d"
    _check_undilated_valid(conv)
    weight = graph.constant(conv.input[1])
    if weight is None or weight.ndim != 4:
        raise NoProof(f"the weight {conv.input[1]!r} of {conv.name!r} is not a 4-D constant")
    bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
    rate = next(_attr(node, "blocksize", 0) for node, _ in graph.walk_up(conv.input[0])
                if node.op_type == "SpaceToDepth")
    reasons = []
    for value, value_perm, padding, batches in _value_candidates(graph, conv, op, weight, rate,
                                                                reasons):
        result, result_perm, output_hw = _prove_result(graph, conv, op, weight, rate, padding,
                                                       value, value_perm, batches, reasons)
        if result is not None:
            return _Match(op, value, value_perm, result, result_perm, weight, bias, rate,
                          padding, output_hw)
    # The highest candidates come first and say the most; repeats say nothing.
    raise NoProof("; ".join(list(dict.fromkeys(reasons))[:2]) or "no candidate for the op's value")


def _check_undilated_valid(conv):
    bad = {k: v for k, v in (("strides", _attr(conv, "strides", [1, 1])),
                              ("pads", _attr(conv, "pads", [0, 0, 0, 0])),
                              ("group", [_attr(conv, "group", 1)]),
                              ("output_padding", _attr(conv, "output_padding", [0, 0])))
           if any(x != (1 if k in ("strides", "group") else 0) for x in v)}
    auto_pad = _attr(conv, "auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", b"VALID"):
        bad["auto_pad"] = auto_pad
    if _attr(conv, "output_shape", None) is not None:
        bad["output_shape"] = _attr(conv, "output_shape", None)
    if bad:
        raise NoProof(f"{conv.name!r} is not TF's undilated VALID step: {bad}")


def _distinct(shape, elem) -> np.ndarray:
    """Values 1, 2, ... in ``shape``: each element's path is visible and zero pads stand out."""
    dtype = helper.tensor_dtype_to_np_dtype(elem) if elem else np.dtype(np.float32)
    size = int(np.prod(shape))
    exact = {np.dtype(np.float16): 2 ** 11, np.dtype(np.float32): 2 ** 24}.get(np.dtype(dtype),
                                                                             2 ** 53)
    if size >= exact:
        raise NoProof(f"{size} elements are too many to tell apart in {np.dtype(dtype).name}")
    return np.arange(1, size + 1, dtype=np.float64).reshape(shape).astype(dtype)


def _batches(dims) -> tuple:
    symbolic = {d for d in dims if isinstance(d, str) or d is None}
    if None in symbolic or len(symbolic) > 1:
        raise NoProof(f"shape {dims} has unknown dims besides one symbolic batch")
    return PROOF_BATCHES if symbolic else (None,)


def _concrete(dims, batch):
    return tuple(batch if isinstance(d, str) else d for d in dims)


def _value_candidates(graph, conv, op, weight, rate, reasons):
    """Tensors above the conv proved to be the op's value, ``(name, perm, padding, batches)``.

    The highest first, so that the fold removes the most nodes.
    """
    target = conv.input[0]
    for _, name in reversed(list(graph.walk_up(target))):
        dims = graph.shapes.get(name)
        if dims is None or len(dims) != 4:
            continue
        try:
            batches = _batches(dims)
            runs = []
            for b in batches:
                x = _distinct(_concrete(dims, b), graph.elem.get(name))
                nodes, inits, feeds = graph.subgraph(target, name, b or 1)
                runs.append((x, graph.evaluate(nodes, inits, {**feeds, name: x}, target)))
        except NoProof as e:
            reasons.append(str(e))
            continue
        for perm, padding in itertools.product(_PERMS, ("SAME", "VALID")):
            if all(_space_to_batch_ok(op, x, got, perm, weight, rate, padding) for x, got in runs):
                yield name, perm, padding, batches
        reasons.append(f"the nodes from {name!r} to {conv.name!r} are not TF's space-to-batch "
                       f"for rate {rate} in any layout or padding")


def _prove_result(graph, conv, op, weight, rate, padding, value, value_perm, batches, reasons):
    """The tensor below the conv proved to be the op's result, ``(name, perm, output_hw)``."""
    vdims = graph.shapes[value]
    source = conv.output[0]
    for _, name in reversed(list(graph.walk_down(source))):
        try:
            runs = []
            for b in batches:
                n, h, w, _ = (_concrete(vdims, b)[i] for i in np.argsort(value_perm))
                plan = _tf_plan(op, (h, w), weight, rate, padding)
                cout = weight.shape[1] if op == "atrous_conv2d_transpose" else weight.shape[0]
                u = _distinct((rate * rate * n, cout, *plan.conv_out_hw), graph.elem.get(value))
                nodes, inits, feeds = graph.subgraph(name, source, b or 1)
                runs.append((u, plan, graph.evaluate(nodes, inits, {**feeds, source: u}, name)))
        except NoProof as e:
            reasons.append(str(e))
            continue
        for perm in _PERMS:
            if all(_batch_to_space_ok(u, got, perm, rate, plan) for u, plan, got in runs):
                return name, perm, runs[0][1].output_hw
        reasons.append(f"the nodes from {conv.name!r} to {name!r} are not TF's batch-to-space "
                       f"for rate {rate}, {padding}")
    return None, None, None


# --- TF's formulas (tensorflow/python/ops/nn_ops.py), in NumPy ------------------------------------

class _TFPlan(NamedTuple):
    """TF's space-to-batch paddings and batch-to-space crops for one op."""

    s2b_pads: tuple        # ((top, bottom), (left, right)) zero pads before space-to-batch
    crops: tuple           # ((top, bottom), (left, right)) crops after batch-to-space
    conv_out_hw: tuple     # the undilated conv's output (height, width)
    output_hw: tuple       # the op's output (height, width)


def _tf_plan(op: str, value_hw, weight, rate: int, padding: str) -> _TFPlan:
    """What TF's ``atrous_conv2d_transpose`` / ``atrous_conv2d`` pad and crop around the conv.

    Transposed op: SAME crops ``geometry.pads`` of the full result, then each
    side is padded to a multiple of ``rate`` at the end (``pad_*_extra``).
    Forward op (``required_space_to_batch_paddings``): TF's pads plus the
    same extra at the end, which the crop takes back.
    """
    kh, kw = weight.shape[2:]
    pads = geometry.pads((kh, kw), rate, padding)
    if op == "atrous_conv2d_transpose":
        out = geometry.transpose_output_hw(value_hw, (kh, kw), rate, padding)
        extra = [(-(o + a + b)) % rate for o, a, b in
                 zip(out, (pads.top, pads.left), (pads.bottom, pads.right))]
        s2b = ((0, extra[0]), (0, extra[1]))
        crops = ((pads.top, pads.bottom + extra[0]), (pads.left, pads.right + extra[1]))
        conv_hw = tuple((v + e) // rate + k - 1 for v, e, k in zip(value_hw, extra, (kh, kw)))
    else:
        if min(geometry.conv_output_hw(value_hw, (kh, kw), rate, padding)) < 1:
            raise NoProof(f"{padding} leaves no output for {value_hw} and rate {rate}")
        out = geometry.conv_output_hw(value_hw, (kh, kw), rate, padding)
        full = [v + a + b for v, a, b in zip(value_hw, (pads.top, pads.left),
                                             (pads.bottom, pads.right))]
        extra = [(-f) % rate for f in full]
        s2b = ((pads.top, pads.bottom + extra[0]), (pads.left, pads.right + extra[1]))
        crops = ((0, extra[0]), (0, extra[1]))
        conv_hw = tuple((f + e) // rate - k + 1 for f, e, k in zip(full, extra, (kh, kw)))
    return _TFPlan(s2b, crops, conv_hw, tuple(out))


def _space_to_batch_ok(op, x, got, perm, weight, rate, padding) -> bool:
    """Whether ``got`` (NCHW) is TF's space-to-batch of the value ``x`` read in layout ``perm``."""
    v = x.transpose(np.argsort(perm))          # the NHWC value
    n, h, w, c = v.shape
    cin = weight.shape[0] if op == "atrous_conv2d_transpose" else weight.shape[1]
    if c != cin:
        return False
    try:
        plan = _tf_plan(op, (h, w), weight, rate, padding)
    except NoProof:
        return False
    padded = np.pad(v, ((0, 0), *plan.s2b_pads, (0, 0)))
    hp, wp = padded.shape[1:3]
    if hp % rate or wp % rate:
        return False
    s2b = padded.reshape(n, hp // rate, rate, wp // rate, rate, c).transpose(2, 4, 0, 1, 3, 5)
    want = s2b.reshape(rate * rate * n, hp // rate, wp // rate, c).transpose(0, 3, 1, 2)
    return got.shape == want.shape and np.array_equal(got, want)


def _batch_to_space_ok(u, got, perm, rate, plan: _TFPlan) -> bool:
    """Whether ``got`` is TF's cropped batch-to-space of the conv's NCHW output ``u``, in ``perm``."""
    b, c, hc, wc = u.shape
    n = b // (rate * rate)
    full = u.transpose(0, 2, 3, 1).reshape(rate, rate, n, hc, wc, c).transpose(2, 3, 0, 4, 1, 5)
    full = full.reshape(n, hc * rate, wc * rate, c)
    (t, bo), (le, ri) = plan.crops
    want = full[:, t:full.shape[1] - bo, le:full.shape[2] - ri].transpose(perm)
    return got.shape == want.shape and np.array_equal(got, want)


# --- the replacement ----------------------------------------------------------------------------

def _rewrite(model, graph: _Graph, m: _Match, conv_form: bool, pad_form: str, index: int) -> int:
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
    last = _key(graph.producer[m.result])
    ancestors = _ancestors(graph, m.result)
    before = len(model.graph.node)
    kept = []
    for n in model.graph.node:
        kept += new_nodes if _key(n) == last else [n]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(inits)
    _drop_unused(model, ancestors)
    return before + len(new_nodes) - len(model.graph.node)


def _key(node) -> tuple:
    """A node's identity that survives protobuf's copying: its outputs (unique in a graph)."""
    return tuple(node.output)


def _ancestors(graph: _Graph, name: str) -> set:
    """Keys of every node ``name`` depends on, its producer included."""
    seen, todo = set(), [name]
    while todo:
        node = graph.producer.get(todo.pop())
        if node is None or _key(node) in seen:
            continue
        seen.add(_key(node))
        todo += list(node.input)
    return seen


def _unique_prefix(graph: _Graph, prefix: str) -> str:
    names = set(graph.producer) | set(graph.inits) | {n.name for n in graph.nodes}
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
    outputs = {o.name for o in g.output}
    freed = set()
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = {_key(n) for n in g.node
                if _key(n) in candidates and not any(o in used for o in n.output if o)}
        if not dead:
            break
        freed |= {t for n in g.node if _key(n) in dead for t in [*n.input, *n.output]}
        kept = [n for n in g.node if _key(n) not in dead]
        del g.node[:]
        g.node.extend(kept)
    used = {i for n in g.node for i in n.input} | outputs
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
