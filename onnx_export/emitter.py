# SPDX-License-Identifier: Apache-2.0
"""The ONNX plan and its emitter: what the nodes are, and the one place that writes them.

:func:`transpose_node` and :func:`conv_node` turn the op's canonical crop pads
(:func:`atrous_cl.geometry.pads`) into a node's attributes, converting them into
the two other forms a node may need (symmetric pads plus a crop, or the pads of
the equivalent forward ``Conv``) each in one named function. :func:`emit_conv`
writes the node (and its Slice) and :func:`emit_model` the whole graph; the
export API (:mod:`onnx_export.api`) and the fold pass (:mod:`onnx_export.fold`)
both write through them.

Differences from the peers:
    * tf2onnx converts TF's op (SpaceToBatchND -> Conv2DBackpropInput ->
      BatchToSpaceND) into a 9- to 11-node chain; here it is one
      ``ConvTranspose`` with ``dilations=[rate, rate]``.
    * ONNX's ``output_shape`` attribute and ``auto_pad=SAME_*`` put the odd pad
      at the start for ``ConvTranspose``; TF puts it at the end. The emitter
      therefore always writes explicit ``pads`` and never ``output_shape``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from atrous_cl import geometry

#: Values the emitted graph names itself; the graph input and output may not
#: take them (a graph defines each name once). Keep in step with emit_model
#: and emit_conv (with its empty prefix).
INTERNAL_NAMES = frozenset({"filters", "value_nchw", "conv_out", "cropped", "crop_starts",
                            "crop_ends", "crop_axes"})
#: Axis orders between TF's layout and the nodes' (ONNX's NCHW).
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)


class ExportPlan(NamedTuple):
    """Everything :func:`emit_model` writes, already computed.

    Attributes:
        op_type: ``'ConvTranspose'`` or ``'Conv'``.
        weight: the node's weight in ONNX layout (``[Cin, Cout, kh, kw]`` for
            ConvTranspose, ``[Cout, Cin, kh, kw]`` for Conv).
        rate: the dilation of both spatial axes.
        pads: the node's ``pads`` attribute, ``(top, left, bottom, right)``.
        crop: ``None``, or ``(starts, ends)`` over axes (H, W) of the node's
            NCHW output, written as a Slice.
        layout: ``'NHWC'`` (Transposes around the node) or ``'NCHW'``.
        input_shape: the model input's shape in ``layout``; the batch entry is
            an int, or a str naming a symbolic dimension.
        output_shape: the model output's shape in ``layout``, likewise.
        input_name: name of the graph input.
        output_name: name of the graph output.
        opset: the default-domain opset imported.
        op_name: the TF op the model computes, ``'atrous_conv2d_transpose'``
            or ``'atrous_conv2d'``: the graph's name, and its doc string names it.
    """

    op_type: str
    weight: np.ndarray
    rate: int
    pads: tuple[int, int, int, int]
    crop: tuple[tuple[int, int], tuple[int, int]] | None
    layout: str
    input_shape: tuple
    output_shape: tuple
    input_name: str
    output_name: str
    opset: int
    op_name: str = "atrous_conv2d_transpose"


def tf_filters_to_onnx(filters: np.ndarray) -> np.ndarray:
    """TF's ``[kh, kw, out, in]`` filters as ONNX ConvTranspose's ``[in, out, kh, kw]``."""
    return np.ascontiguousarray(filters.transpose(3, 2, 0, 1))


def tf_filters_to_onnx_conv(filters: np.ndarray) -> np.ndarray:
    """TF's ``[kh, kw, out, in]`` filters as the equivalent Conv's ``[out, in, kh, kw]``.

    A stride-1 transposed convolution is the forward convolution with the
    kernel flipped in both spatial axes and its in/out channels swapped:
    ``W_conv[o, i, a, b] = filters[kh - 1 - a, kw - 1 - b, o, i]``.
    """
    return np.ascontiguousarray(filters.transpose(2, 3, 0, 1)[:, :, ::-1, ::-1])


def symmetric_split(pads: geometry.Pads) -> tuple[geometry.Pads, tuple[int, int, int, int]]:
    """Split crop pads into symmetric node pads and the remainder to Slice off.

    Node pads are ``m_h = min(top, bottom)`` and ``m_w = min(left, right)`` on
    both sides; the remainder is ``(top - m_h, left - m_w, bottom - m_h,
    right - m_w)``. For TF's geometry only bottom/right are ever non-zero
    (the odd remainder of SAME).
    """
    mh, mw = min(pads.top, pads.bottom), min(pads.left, pads.right)
    rest = (pads.top - mh, pads.left - mw, pads.bottom - mh, pads.right - mw)
    return geometry.Pads(mh, mw, mh, mw), rest


def conv_pads(pads: geometry.Pads, kernel_hw: tuple[int, int], rate: int) -> geometry.Pads:
    """Crop pads of the transposed conv as zero pads of the equivalent forward Conv.

    The full transposed result equals a Conv with the flipped kernel over the
    input zero-padded by ``k_eff - 1`` on every side, ``k_eff = (k - 1) * rate
    + 1``. Cropping ``p`` from a side is padding ``k_eff - 1 - p`` instead, so
    ``conv_pad = k_eff - 1 - crop_pad`` per side (never negative, since a
    side's crop is at most ``k_eff - 1``). TF's odd SAME remainder thus moves
    to the start (top/left) in the Conv form.
    """
    eh = geometry.effective_kernel_size(kernel_hw[0], rate) - 1
    ew = geometry.effective_kernel_size(kernel_hw[1], rate) - 1
    return geometry.Pads(eh - pads.top, ew - pads.left, eh - pads.bottom, ew - pads.right)


def conv_form_exact(filters: np.ndarray) -> bool:
    """Whether the Conv form of the transposed op computes it exactly with ``filters``: where
    every weight is finite. The Conv form multiplies its zero padding by the weights, which
    adds nothing then, but NaN for an Inf or NaN weight where TF's op adds no term."""
    return bool(np.isfinite(filters).all())


def transpose_node(filters: np.ndarray, pads: geometry.Pads, output_hw, rate: int,
                   pad_form: str, conv_form: bool):
    """What :func:`emit_conv` writes for the transposed op: the one place the pad form is chosen.

    Args:
        filters: TF's ``[kh, kw, out, in]`` filters.
        pads: the op's crop pads (:func:`atrous_cl.geometry.pads`).
        output_hw: the op's output (height, width).
        rate: the dilation rate.
        pad_form: one of :data:`~onnx_export.constants.PAD_FORMS`.
        conv_form: write the equivalent forward Conv.

    Returns:
        ``(op_type, weight, node_pads, crop)`` as in :class:`ExportPlan`.
    """
    node_pads, crop = pads, None
    if pad_form == "symmetric" or (pad_form == "portable" and not conv_form):
        node_pads, rest = symmetric_split(pads)
        if any(rest):
            # Slice over (H, W) of the node's NCHW output, whose size is the full
            # result minus the symmetric pads.
            crop = _crop((rest[0], rest[1]), output_hw)
    if conv_form:
        return ("Conv", tf_filters_to_onnx_conv(filters),
                conv_pads(node_pads, filters.shape[:2], rate), crop)
    return "ConvTranspose", tf_filters_to_onnx(filters), node_pads, crop


def conv_node(pads: geometry.Pads, output_hw, pad_form: str):
    """``(node_pads, crop)`` of the forward op's Conv for ``pad_form``; TF's zero ``pads`` in."""
    if pad_form != "symmetric":
        return pads, None
    # Padding a side more adds outputs there: with top' = max(top, bottom)
    # the result starts top' - top rows early, which the Slice drops.
    mh, mw = max(pads.top, pads.bottom), max(pads.left, pads.right)
    node_pads = geometry.Pads(mh, mw, mh, mw)
    starts = (mh - pads.top, mw - pads.left)
    if any(starts) or node_pads != pads:
        return node_pads, _crop(starts, output_hw)
    return node_pads, None


def _crop(starts: tuple[int, int], output_hw) -> tuple[tuple[int, int], tuple[int, int]]:
    """The Slice over (H, W) of the node's NCHW output that keeps ``output_hw`` pixels."""
    return starts, (starts[0] + output_hw[0], starts[1] + output_hw[1])


def emit_conv(op_type: str, weight: np.ndarray, rate: int, pads, crop, x: str, y: str,
              prefix: str = "", bias: str | None = None
              ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The node (and the Slice of ``crop``) taking NCHW ``x`` to NCHW ``y``.

    The one place that writes the convolution; :func:`emit_model` and
    :func:`onnx_export.fold.fold_atrous_chains` both call it.

    Args:
        op_type, weight, rate, pads, crop: as in :class:`ExportPlan`.
        x: name of the NCHW input.
        y: name of the NCHW output.
        prefix: put before every node, initializer and intermediate name, so
            that several emissions can share one graph.
        bias: name of a per-channel bias tensor for the node's third input.

    Returns:
        ``(nodes, initializers)``.
    """
    kh, kw = weight.shape[2:]
    inits = [numpy_helper.from_array(weight, prefix + "filters")]
    last = y if crop is None else prefix + "conv_out"
    inputs = [x, prefix + "filters"] + ([bias] if bias else [])
    nodes = [helper.make_node(op_type, inputs, [last],
                              name=prefix + op_type.lower(), dilations=[rate, rate],
                              strides=[1, 1], kernel_shape=[kh, kw], pads=list(pads), group=1)]
    if crop is not None:
        (sh, sw), (eh, ew) = crop
        names = [prefix + n for n in ("crop_starts", "crop_ends", "crop_axes")]
        for name, vals in zip(names, ([sh, sw], [eh, ew], [2, 3])):
            inits.append(numpy_helper.from_array(np.array(vals, np.int64), name))
        nodes.append(helper.make_node("Slice", [last, *names], [y], name=prefix + "crop"))
    return nodes, inits


def emit_model(plan: ExportPlan) -> onnx.ModelProto:
    """Write the graph of ``plan``: :func:`emit_conv`, between two Transposes for NHWC.

    Args:
        plan: attributes already computed by
            :func:`~onnx_export.api.export_atrous_conv2d_transpose`.

    Returns:
        The model, with the lowest IR version the opset allows so that older
        runtimes load it.
    """
    elem = helper.np_dtype_to_tensor_dtype(plan.weight.dtype)
    nodes, inits = [], []
    x = plan.input_name
    if plan.layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["value_nchw"], name="to_nchw",
                                      perm=list(NHWC_TO_NCHW)))
        x = "value_nchw"
    last = plan.output_name if plan.layout == "NCHW" else "cropped" if plan.crop else "conv_out"
    conv_nodes, conv_inits = emit_conv(plan.op_type, plan.weight, plan.rate, plan.pads, plan.crop,
                                       x, last)
    nodes += conv_nodes
    inits += conv_inits
    if plan.layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [last], [plan.output_name], name="to_nhwc",
                                      perm=list(NCHW_TO_NHWC)))
    graph = helper.make_graph(
        nodes, plan.op_name,
        [helper.make_tensor_value_info(plan.input_name, elem, list(plan.input_shape))],
        [helper.make_tensor_value_info(plan.output_name, elem, list(plan.output_shape))],
        inits)
    opsets = [helper.make_opsetid("", plan.opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="atrous-cl",
                              doc_string=f"tf.nn.{plan.op_name} with fixed filters")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model
