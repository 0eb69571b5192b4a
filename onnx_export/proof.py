# SPDX-License-Identifier: Apache-2.0
"""The fold pass's check: a chain found by :mod:`onnx_export.chains` proved to be TF's op, or not.

:func:`prove` runs the nodes between the op's value and the conv, and between
the conv and the op's result, on tensors of distinct values, and compares them
with NumPy's space-to-batch and batch-to-space written from TF's own formulas
(``tensorflow/python/ops/nn_ops.py``) for SAME and VALID, in every 4-D layout,
at several batch sizes where the batch is symbolic. A chain that passes is a
:class:`Match`; one that does not raises :class:`~onnx_export.chains.NoProof`
saying why.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
from onnx import helper

from atrous_cl import geometry
from onnx_export.chains import Graph, NoProof, node_attr

#: Batch sizes a symbolic batch is proved at.
PROOF_BATCHES = (1, 2, 3)
_PERMS = tuple(itertools.permutations(range(4)))


class Match(NamedTuple):
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


# --- the check ----------------------------------------------------------------------------------

def prove(graph: Graph, conv) -> Match:
    """The chain around ``conv`` as a :class:`Match`.

    Raises:
        NoProof: the chain is not TF's op, or could not be shown to be; the
            message says why.
    """
    op = "atrous_conv2d_transpose" if conv.op_type == "ConvTranspose" else "atrous_conv2d"
    _check_undilated_valid(conv)
    weight = graph.constant(conv.input[1])
    if conv.input[1] in graph.defaults:
        raise NoProof(f"the weight {conv.input[1]!r} of {conv.name!r} is a graph input whose "
                      f"initializer is only a default (a caller may feed other filters), so the "
                      f"chain is left as it is")
    if weight is None or weight.ndim != 4:
        raise NoProof(f"the weight {conv.input[1]!r} of {conv.name!r} is not a 4-D constant")
    bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
    rate = next(node_attr(node, "blocksize", 0) for node, _ in graph.walk_up(conv.input[0])
                if node.op_type == "SpaceToDepth")
    reasons = []
    for value, value_perm, padding, batch in _value_candidates(graph, conv, op, weight, rate,
                                                              reasons):
        result, result_perm, output_hw = _prove_result(graph, conv, op, weight, rate, padding,
                                                       value, value_perm, batch, reasons)
        if result is not None:
            return Match(op, value, value_perm, result, result_perm, weight, bias, rate,
                          padding, output_hw)
    # The highest candidates come first and say the most; repeats say nothing.
    raise NoProof("; ".join(list(dict.fromkeys(reasons))[:2]) or "no candidate for the op's value")


def _check_undilated_valid(conv):
    bad = {k: v for k, v in (("strides", node_attr(conv, "strides", [1, 1])),
                              ("pads", node_attr(conv, "pads", [0, 0, 0, 0])),
                              ("group", [node_attr(conv, "group", 1)]),
                              ("output_padding", node_attr(conv, "output_padding", [0, 0])))
           if any(x != (1 if k in ("strides", "group") else 0) for x in v)}
    auto_pad = node_attr(conv, "auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", b"VALID"):
        bad["auto_pad"] = auto_pad
    if node_attr(conv, "output_shape", None) is not None:
        bad["output_shape"] = node_attr(conv, "output_shape", None)
    if bad:
        raise NoProof(f"{conv.name!r} is not TF's undilated VALID step: {bad}")


def _distinct(shape, elem) -> np.ndarray:
    """Values 1, 2, ... in ``shape``: each element's path is visible and zero pads stand out.

    A float16 chain gets float32 values: float16 tells only 2048 integers apart,
    and the nodes evaluated only move and zero-pad data, whatever its type.
    """
    dtype = helper.tensor_dtype_to_np_dtype(elem) if elem else np.dtype(np.float32)
    if np.dtype(dtype) == np.float16:
        dtype = np.dtype(np.float32)
    size = int(np.prod(shape))
    exact = 2 ** 24 if np.dtype(dtype) == np.float32 else 2 ** 53
    if size >= exact:
        raise NoProof(f"{size} elements are too many to tell apart in {np.dtype(dtype).name}")
    return np.arange(1, size + 1, dtype=np.float64).reshape(shape).astype(dtype)


class _Batch(NamedTuple):
    """How the op's value varies: ``sizes`` its batch is proved at (``(None,)``: static),
    the value tensor's ``axis`` that holds it and its ``symbol`` (None: static)."""

    sizes: tuple
    axis: int | None
    symbol: str | None


def _batches(dims) -> _Batch:
    """The value's batch: its one symbolic dim, if any (which must prove to be the batch)."""
    symbolic = [i for i, d in enumerate(dims) if isinstance(d, str) or d is None]
    if any(dims[i] is None for i in symbolic) or len(symbolic) > 1:
        raise NoProof(f"shape {dims} has unknown dims besides one symbolic batch")
    if not symbolic:
        return _Batch((None,), None, None)
    return _Batch(PROOF_BATCHES, symbolic[0], dims[symbolic[0]])


def _concrete(dims, batch):
    return tuple(batch if isinstance(d, str) else d for d in dims)


def _value_candidates(graph, conv, op, weight, rate, reasons):
    """Tensors above the conv proved to be the op's value, ``(name, perm, padding, batch)``.

    The highest first, so that the fold removes the most nodes.
    """
    target = conv.input[0]
    for _, name in reversed(list(graph.walk_up(target))):
        dims = graph.shapes.get(name)
        if dims is None or len(dims) != 4:
            continue
        try:
            batch = _batches(dims)
            runs = []
            for b in batch.sizes:
                x = _distinct(_concrete(dims, b), graph.elem.get(name))
                nodes, inits, feeds = graph.subgraph(target, name, b or 1, batch.symbol)
                runs.append((x, graph.evaluate(nodes, inits, {**feeds, name: x}, target)))
        except NoProof as e:
            reasons.append(str(e))
            continue
        for perm, padding in itertools.product(_PERMS, ("SAME", "VALID")):
            # A symbolic dim must be the batch: only there do the sizes tried stand
            # for every size (a symbolic height would change the output's).
            if batch.axis is not None and perm[batch.axis] != 0:
                continue
            if all(_space_to_batch_ok(op, x, got, perm, weight, rate, padding) for x, got in runs):
                yield name, perm, padding, batch
        reasons.append(f"the nodes from {name!r} to {conv.name!r} are not TF's space-to-batch "
                       f"for rate {rate} in any layout or padding")


def _prove_result(graph, conv, op, weight, rate, padding, value, value_perm, batch, reasons):
    """The tensor below the conv proved to be the op's result, ``(name, perm, output_hw)``."""
    vdims = graph.shapes[value]
    source = conv.output[0]
    for _, name in reversed(list(graph.walk_down(source))):
        try:
            runs = []
            for b in batch.sizes:
                n, h, w, _ = (_concrete(vdims, b)[i] for i in np.argsort(value_perm))
                plan = _tf_plan(op, (h, w), weight, rate, padding)
                cout = weight.shape[1] if op == "atrous_conv2d_transpose" else weight.shape[0]
                u = _distinct((rate * rate * n, cout, *plan.conv_out_hw), graph.elem.get(value))
                nodes, inits, feeds = graph.subgraph(name, source, b or 1, batch.symbol)
                runs.append((u, plan, graph.evaluate(nodes, inits, {**feeds, source: u}, name)))
        except NoProof as e:
            reasons.append(str(e))
            continue
        if len({plan.output_hw for _, plan, _ in runs}) > 1:
            # The replacement crops to one output size; a size that varies with the
            # symbolic dim is not the op's (never, with that dim the batch).
            reasons.append(f"the output's height and width vary with {batch.symbol!r}")
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
