# SPDX-License-Identifier: Apache-2.0
"""The fold pass's pattern: tf2onnx's chains around an undilated conv, read from a graph.

:class:`Graph` indexes one model (producers, consumers, constants, inferred
shapes), finds the convs that match the pattern (:meth:`Graph.chain_convs`: a
SpaceToDepth above, a DepthToSpace below, only :data:`MOVE_OPS` between), and
cuts out and runs the subgraphs that :mod:`onnx_export.proof` checks. Nothing
here changes a model; :mod:`onnx_export.fold` rewrites.
"""

from __future__ import annotations

import numpy as np
import onnx
from google.protobuf.message import EncodeError
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

#: Nodes that only move, reshape or zero-pad data: what may stand between the
#: op's value, the conv and the op's result.
MOVE_OPS = frozenset({"Transpose", "Reshape", "SpaceToDepth", "DepthToSpace", "Pad", "Slice",
                      "Squeeze", "Unsqueeze", "Identity"})
#: How many nodes up or down from the conv the chain's ends are looked for.
MAX_WALK = 12
#: Why a model protobuf cannot serialise is not read.
TOO_LARGE = ("the model is over protobuf's 2 GiB limit (its weights included, where external "
             "data was loaded with it), which onnx's shape inference and checker need to "
             "serialise it: fold cannot read it")


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with onnx's shape inference, or as it is where inference fails."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return model
    except EncodeError:
        raise ValueError(TOO_LARGE) from None


class NoProof(Exception):
    """A chain that could not be proved to be the op; the message says why."""


class Graph:
    """Producers, consumers, constants and inferred shapes of one model."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.nodes = list(model.graph.node)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in [*n.input, *sorted(outer_reads(n))]:
                self.consumers.setdefault(i, []).append(n)
        # An initializer that is also a graph input is only a default: the caller
        # may feed another value, so it is data, not a constant.
        inputs = {i.name for i in model.graph.input}
        self.inits = {t.name: t for t in model.graph.initializer if t.name not in inputs}
        self.defaults = {t.name for t in model.graph.initializer if t.name in inputs}
        # Initializers whose data is in a file the model was loaded without: onnx would
        # read it relative to the current directory, which may hold another model's.
        self.external = {t.name for t in model.graph.initializer
                         if t.data_location == onnx.TensorProto.EXTERNAL}
        self.outputs = {o.name for o in model.graph.output}
        # Inferred afresh, without the shapes the model records for its tensors: those
        # may be stale (a model inferred before an earlier chain was folded), and a
        # symbolic dim must keep one name through the chain (see subgraph). Where that
        # leaves tensors without a shape (after an op of a domain onnx does not know,
        # say), inferred again from the recorded shapes, for those tensors alone: their
        # symbols may not be the first inference's, which then proves nothing (see
        # subgraph) but folds nothing wrong.
        recorded = list(model.graph.value_info)
        del model.graph.value_info[:]
        try:
            graphs = [_inferred(model).graph]
        finally:
            model.graph.value_info.extend(recorded)
        produced = {o for n in self.nodes for o in n.output if o}
        shaped = {vi.name for vi in [*graphs[0].value_info, *graphs[0].output]
                  if vi.type.tensor_type.HasField("shape")}
        if recorded and not produced <= shaped:
            graphs.append(_inferred(model).graph)
        self.shapes, self.elem = {}, {}
        for g in graphs:
            for vi in [*g.input, *g.value_info, *g.output]:
                t = vi.type.tensor_type
                if t.HasField("shape") and vi.name not in self.shapes:
                    self.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else
                                                 (d.dim_param or None) for d in t.shape.dim)
                self.elem.setdefault(vi.name, t.elem_type)

    def chain_convs(self):
        """Undilated convs with a SpaceToDepth above and a DepthToSpace below: the pattern."""
        for n in self.nodes:
            if n.op_type not in ("ConvTranspose", "Conv") or n.domain not in ("", "ai.onnx"):
                continue
            if any(x != 1 for x in node_attr(n, "dilations", [1])):
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
        """The value of ``name`` if it depends on initializers and Constants alone, else None.

        Raises:
            NoProof: it needs an initializer whose data was not loaded (:meth:`check_loaded`).
        """
        if name in self.inits:
            self.check_loaded(name)
            return numpy_helper.to_array(self.inits[name])
        try:
            nodes, inits, feeds = self.subgraph(name, None, 1)
        except NoProof:
            return None
        if feeds:
            return None
        return self.evaluate(nodes, inits, {}, name)

    def check_loaded(self, name: str) -> None:
        """Raise :class:`NoProof` if initializer ``name``'s data lies in an external file
        the model was loaded without."""
        if name in self.external:
            raise NoProof(f"the initializer {name!r} is stored in an external data file that "
                          f"was not loaded with the model (onnx.load(path) loads it; "
                          f"load_external_data=False does not)")

    def subgraph(self, target: str, source: str | None, batch: int, symbol: str | None = None):
        """The nodes computing ``target`` from ``source``, initializers and fabricated shapes.

        Only data movement may carry ``source``'s data to ``target``: on that path
        every node is one of :data:`MOVE_OPS`, reading it as its first input, and
        every other input (a pad, a shape, a slice's bounds) depends on
        initializers, Constants and tensors' shapes alone, never on data, so that
        what the proof sees on its inputs holds for every input.

        A ``Shape`` of a tensor that ``source`` does not determine so (the
        model's input, say, in ``tf.stack([tf.shape(x)[0], ...])``) is fed
        with that tensor's inferred shape, its symbolic dims set to ``batch``:
        they must all be ``symbol``, the op's batch (none where it has none).

        Returns:
            ``(nodes in graph order, initializer names, {tensor: fed value})``.

        Raises:
            NoProof: ``target`` depends on data other than ``source``'s, or on it
                otherwise than by data movement.
        """
        keep, inits, feeds, done = set(), set(), {}, {}

        def resolve(t: str, data: bool) -> bool:
            """Whether ``t`` is computed as allowed: ``data``, from source by data movement;
            else (a node's other inputs) without reading any tensor's data."""
            if t == source:
                return data
            if t == "" or t in inits:
                return True
            if (t, data) in done:
                return done[t, data]
            if t in self.inits:
                self.check_loaded(t)
                inits.add(t)
                return True
            node = self.producer.get(t)
            ok = node is not None
            if ok and node.op_type == "Shape":
                if not resolve(node.input[0], True):
                    feeds[t] = self._fabricated_shape(node, batch, symbol)
            elif ok and data:
                ok = (node.op_type in MOVE_OPS and resolve(node.input[0], True)
                      and all(resolve(i, False) for i in node.input[1:]))
            elif ok:
                ok = all(resolve(i, False) for i in [*node.input, *sorted(outer_reads(node))])
            if ok and t not in feeds:
                keep.add(node_key(node))
            done[t, data] = ok
            return ok

        if not resolve(target, source is not None):
            raise NoProof(f"{target!r} depends on data other than the op's value, or on it "
                          f"otherwise than by data movement")
        return [n for n in self.nodes if node_key(n) in keep], sorted(inits), feeds

    def _fabricated_shape(self, shape_node, batch: int, symbol: str | None) -> np.ndarray:
        dims = self.shapes.get(shape_node.input[0])
        if dims is None or None in dims:
            raise NoProof(f"the shape of {shape_node.input[0]!r} is not known")
        other = sorted({d for d in dims if isinstance(d, str) and d != symbol})
        if other:
            raise NoProof(f"the shape of {shape_node.input[0]!r} has symbolic dims {other} "
                          f"besides the op's batch")
        dims = [batch if isinstance(d, str) else d for d in dims]
        start, end = node_attr(shape_node, "start", 0), node_attr(shape_node, "end", len(dims))
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


def outer_reads(node) -> set:
    """Names ``node``'s subgraphs (an If's branches, a Loop's body, ...) may read from
    the graph around them: every input named inside them, at any depth. Some may
    be the subgraphs' own tensors; counting those too only keeps more nodes."""
    names = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                  a.graphs if a.type == onnx.AttributeProto.GRAPHS else []):
            for n in g.node:
                names.update(i for i in n.input if i)
                names |= outer_reads(n)
            names.update(o.name for o in g.output)
    return names


def node_attr(node, name, default):
    """The value of ``node``'s attribute ``name``, or ``default`` where it has none."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def node_key(node) -> tuple:
    """A node's identity that survives protobuf's copying: its outputs (unique in a graph)."""
    return tuple(node.output)
