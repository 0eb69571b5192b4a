# SPDX-License-Identifier: Apache-2.0
"""Export ``atrous_conv2d_transpose`` (or the forward ``atrous_conv2d``) with fixed filters as ONNX.

The public function reads as: validate -> geometry -> plan -> emit. Validation
and pad arithmetic come from :mod:`atrous_cl.validation` and
:mod:`atrous_cl.geometry`; this module only converts their canonical crop pads
into the two other forms a node may need (symmetric pads plus a crop, or the
pads of the equivalent forward ``Conv``), each in one named function, and
:func:`emit_model` is the only place that writes nodes.

Differences from the peers:
    * tf2onnx converts TF's op (SpaceToBatchND -> Conv2DBackpropInput ->
      BatchToSpaceND) into a 9- to 11-node chain; here it is one
      ``ConvTranspose`` with ``dilations=[rate, rate]``.
    * ONNX's ``output_shape`` attribute and ``auto_pad=SAME_*`` put the odd pad
      at the start for ``ConvTranspose``; TF puts it at the end. The exporter
      therefore always writes explicit ``pads`` and never ``output_shape``.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from atrous_cl import geometry
from atrous_cl.validation import (check_array_shape, check_int, check_conv_args, check_padding,
                                  check_rate, check_shape4, check_transpose_args)
from onnx_export.constants import (BATCH_DIM, DEFAULT_INPUT_NAME, DEFAULT_OPSET,  # noqa: F401
                                   DEFAULT_OUTPUT_NAME, EXPORT_DTYPES, LAYOUTS, MAX_OPSET,
                                   MIN_OPSET, PAD_FORMS, TESTED_OPSETS)


#: Values the emitted graph names itself; the graph input and output may not
#: take them (a graph defines each name once). Keep in step with emit_model
#: and emit_conv (with its empty prefix).
INTERNAL_NAMES = frozenset({"filters", "value_nchw", "conv_out", "cropped", "crop_starts",
                            "crop_ends", "crop_axes"})
#: Dimensions and the rate must stay below 2**31, as the op requires: the op
#: passes them to its kernels as 32-bit ints, and runtimes size int64 pads and
#: shapes from them.
MAX_DIM = 2**31 - 1
#: Protobuf caps a serialised message, so a whole ONNX model, at 2**31 - 1
#: bytes; the filters may take all of it but 64 KiB left for the graph.
MAX_FILTER_BYTES = 2**31 - 1 - 2**16

_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)


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


def _native_filters(filters) -> np.ndarray:
    """``filters`` as an array in the machine's byte order (a big-endian ``.npy`` loads as
    ``>f4``, which is float32 all the same); no copy where it already is."""
    filters = np.asarray(filters)
    if filters.dtype.kind in "fiuc" and not filters.dtype.isnative:
        filters = filters.astype(filters.dtype.newbyteorder("="))
    return filters


def _check_export_dtype(filters: np.ndarray) -> np.dtype:
    """The model's dtype: the filters', which must be one :data:`EXPORT_DTYPES` holds."""
    dtype = filters.dtype
    if dtype == np.float64:
        raise TypeError(
            "filters of dtype float64 cannot be exported: onnxruntime has no float64 kernel for "
            "ConvTranspose or Conv at any opset, so the model would run nowhere but onnx's "
            "Python reference; cast with filters.astype(np.float32) (or np.float16)")
    if dtype not in EXPORT_DTYPES:
        raise TypeError(f"filters must have dtype {' or '.join(d.name for d in EXPORT_DTYPES)} "
                        f"to be exported; got {dtype.name}")
    if filters.nbytes > MAX_FILTER_BYTES:
        # Refused before any copy: building the model would copy them, and
        # serialising it would then fail on protobuf's limit.
        raise ValueError(f"filters take {filters.nbytes} bytes (shape {filters.shape}, "
                         f"{dtype.name}), more than an ONNX model can hold: protobuf limits a "
                         f"model to 2 GiB (2**31 - 1 bytes), so at most {MAX_FILTER_BYTES} "
                         f"bytes of filters; use fewer channels"
                         f"{' or float16' if dtype != np.float16 else ''}")
    return dtype


def _check_limits(args) -> None:
    """Every dimension and the rate below 2**31, as the op requires (:data:`MAX_DIM`)."""
    for what, shape in (("value_shape", args.value_shape), ("filters", args.filters_shape),
                        ("output_shape", args.output_shape)):
        if max(shape) > MAX_DIM:
            raise ValueError(f"{what} dimensions must be below 2**31, got {list(shape)}")
    if args.rate > MAX_DIM:
        raise ValueError(f"rate must be below 2**31, got {args.rate}")


def _check_opset(opset) -> int:
    if opset is None:
        return DEFAULT_OPSET
    opset = check_int(opset, "opset")
    newest = min(MAX_OPSET, onnx.defs.onnx_opset_version())
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be between {MIN_OPSET} and {newest} (the tested range with "
                         f"the installed onnx {onnx.__version__}), got {opset}")
    return opset


def _check_choice(x, what: str, choices: tuple[str, ...]) -> str:
    if not isinstance(x, str):
        raise TypeError(f"{what} must be one of {choices}, got {x!r} of type {type(x).__name__}")
    if x not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {x!r}")
    return x


def _check_name(x, what: str) -> str:
    if not isinstance(x, str):
        raise TypeError(f"{what} must be a str, got {x!r} of type {type(x).__name__}")
    if not x:
        raise ValueError(f"{what} must be a non-empty string")
    return x


def _check_flag(x, what: str) -> bool:
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{what} must be True or False, got {x!r} of type {type(x).__name__}")
    return bool(x)


def _batch_free_shape(shape, what: str):
    """``shape`` with its batch entry checked apart: ``(batch or None, rest)``.

    With a symbolic batch the entry is not used, so ``None`` is accepted there
    besides a non-negative int.
    """
    if shape is not None and not isinstance(shape, (str, bytes)) and hasattr(shape, "__len__") \
            and len(shape) == 4 and shape[0] is None:
        return None, check_shape4([0, *list(shape)[1:]], what, "NHWC")[1:]
    dims = check_shape4(shape, what, "NHWC")
    return dims[0], dims[1:]


def export_atrous_conv2d_transpose(filters, value_shape, output_shape, rate, padding,
                                   *, layout: str = "NHWC", dynamic_batch: bool = False,
                                   opset: int | None = None, pad_form: str = "portable",
                                   conv_form: bool = False, input_name: str = DEFAULT_INPUT_NAME,
                                   output_name: str = DEFAULT_OUTPUT_NAME,
                                   symmetric_pads: bool | None = None) -> onnx.ModelProto:
    """An ONNX model computing ``atrous_conv2d_transpose(value, filters, ...)``.

    The model has one input (the value) and one output; the filters are an
    initializer and the model's dtype is theirs. The node is a
    ``ConvTranspose`` with ``dilations=[rate, rate]``, ``strides=[1, 1]``, the
    explicit crop pads of :func:`atrous_cl.geometry.pads` and weight
    ``filters.transpose(3, 2, 0, 1)``; never the ``output_shape`` attribute,
    whose odd-pad placement is the opposite of TF's. Where those pads are
    asymmetric (an even kernel with an odd rate under SAME) the default
    ``pad_form='portable'`` writes symmetric node pads plus a Slice instead.

    Args:
        filters: array ``[kh, kw, out_channels, in_channels]`` (TF's layout),
            float32 or float16.
        value_shape: the value's shape, 4 ints NHWC. With
            ``dynamic_batch=True`` the batch entry is not used and may be
            ``None``.
        output_shape: TF's ``output_shape`` (NHWC), or ``None`` to compute it
            from the geometry; given, it is checked as the op checks it (with
            ``dynamic_batch=True`` its batch may be ``None``).
        rate: dilation rate, a positive int.
        padding: ``'SAME'`` or ``'VALID'``.
        layout: ``'NHWC'`` (TF's; the node is wrapped in two Transposes) or
            ``'NCHW'`` (the input is ``[N, Cin, H, W]``, the output
            ``[N, Cout, OH, OW]``, and the graph is the node alone).
        dynamic_batch: write the batch dimension as the symbolic ``'N'``; the
            model then runs with any batch size.
        opset: the default-domain opset, ``MIN_OPSET..MAX_OPSET``; ``None``
            means :data:`DEFAULT_OPSET`.
        pad_form: one of :data:`PAD_FORMS`. ``'portable'`` (default): a
            ConvTranspose with asymmetric pads gets symmetric ones (the smaller
            of each pair) and a Slice crops the rest, which every runtime
            tried loads (IREE, onnx2torch and pnnx/ncnn refuse asymmetric
            ConvTranspose pads); the Conv form keeps its exact pads.
            ``'single'``: the one exact node, asymmetric pads and all.
            ``'symmetric'``: symmetric pads plus a Slice for the Conv form too.
            Every form is a no-op where the pads are symmetric.
        conv_form: emit the equivalent forward ``Conv`` (kernel flipped,
            channels swapped, pads ``k_eff - 1 - crop``) instead of
            ``ConvTranspose``. onnxruntime's CPU provider runs it in
            0.3-0.9x the time of ConvTranspose (its NCHWc Conv kernels, see
            ``benchmarks/bench_onnx.py``); other runtimes may differ.
        input_name: name of the graph input.
        output_name: name of the graph output.
        symmetric_pads: the older spelling of ``pad_form``: ``True`` is
            ``'symmetric'``, ``False`` is ``'single'``; ``None`` (default)
            leaves ``pad_form`` to decide.

    Returns:
        The model, not yet checked or saved (see :func:`save_model`).

    Raises:
        ValueError: a shape, value or option is inconsistent (the op's
            errors), a dimension or the rate is 2**31 or more (the op's
            limits), the filters exceed :data:`MAX_FILTER_BYTES` (protobuf's
            2 GiB), or a name is one of :data:`INTERNAL_NAMES`.
        TypeError: an argument has the wrong type, or the filters a dtype no
            runtime runs (float64). Big-endian floats are converted, not refused.
    """
    filters = _native_filters(filters)
    opts = _check_options(filters, layout, dynamic_batch, opset, pad_form, symmetric_pads,
                          input_name, output_name)
    conv_form = _check_flag(conv_form, "conv_form")
    value_shape = _check_value_shape(value_shape, opts.dynamic_batch)
    if output_shape is None:
        output_shape = _geometry_output_shape(value_shape, filters.shape, rate, padding)
    elif opts.dynamic_batch:
        obatch, orest = _batch_free_shape(output_shape, "output_shape")
        output_shape = (value_shape[0] if obatch is None else obatch, *orest)
    args = check_transpose_args(value_shape, filters.shape, output_shape, rate, padding)
    _check_limits(args)
    op_type, weight, node_pads, crop = transpose_node(filters, args.pads, args.output_shape[1:3],
                                                      args.rate, opts.pad_form, conv_form)
    return _emit(opts, op_type, weight, args, node_pads, crop, "atrous_conv2d_transpose")


def transpose_node(filters: np.ndarray, pads: geometry.Pads, output_hw, rate: int,
                   pad_form: str, conv_form: bool):
    """What :func:`emit_conv` writes for the transposed op: the one place the pad form is chosen.

    Args:
        filters: TF's ``[kh, kw, out, in]`` filters.
        pads: the op's crop pads (:func:`atrous_cl.geometry.pads`).
        output_hw: the op's output (height, width).
        rate: the dilation rate.
        pad_form: one of :data:`PAD_FORMS`.
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


def export_atrous_conv2d(filters, value_shape, rate, padding, *, layout: str = "NHWC",
                         dynamic_batch: bool = False, opset: int | None = None,
                         pad_form: str = "portable", input_name: str = DEFAULT_INPUT_NAME,
                         output_name: str = DEFAULT_OUTPUT_NAME,
                         symmetric_pads: bool | None = None) -> onnx.ModelProto:
    """An ONNX model computing the forward ``atrous_conv2d(value, filters, rate, padding)``.

    The same as :func:`export_atrous_conv2d_transpose` for the forward op
    (``tf.nn.atrous_conv2d``): one input, one output, the filters an
    initializer. The node is a ``Conv`` with ``dilations=[rate, rate]``,
    ``strides=[1, 1]``, TF's zero pads ``[top, left, bottom, right]`` from
    :func:`atrous_cl.geometry.pads` (SAME's odd remainder at the bottom/right,
    never ``auto_pad``) and weight ``filters.transpose(3, 2, 0, 1)``.

    Args:
        filters: array ``[kh, kw, in_channels, out_channels]`` (TF's layout
            for ``atrous_conv2d``), float32 or float16.
        value_shape: the value's shape, 4 ints NHWC. With
            ``dynamic_batch=True`` the batch entry is not used and may be
            ``None``.
        rate: dilation rate, a positive int.
        padding: ``'SAME'`` or ``'VALID'``; VALID with a dilated kernel larger
            than the value is refused, as the op refuses it.
        layout, dynamic_batch, opset, input_name, output_name, symmetric_pads:
            as for :func:`export_atrous_conv2d_transpose`.
        pad_form: ``'portable'`` (default) and ``'single'`` write the one
            exact Conv (every runtime tried accepts its asymmetric pads);
            ``'symmetric'`` gives the node the larger pad of each pair on both
            sides and Slices off the extra leading rows/columns; a no-op where
            the pads are symmetric.

    Returns:
        The model, not yet checked or saved (see :func:`save_model`).

    Raises:
        ValueError: a shape, value or option is inconsistent (the op's
            errors), a dimension or the rate is 2**31 or more (the op's
            limits), the filters exceed :data:`MAX_FILTER_BYTES` (protobuf's
            2 GiB), or a name is one of :data:`INTERNAL_NAMES`.
        TypeError: an argument has the wrong type, or the filters a dtype no
            runtime runs (float64). Big-endian floats are converted, not refused.
    """
    filters = _native_filters(filters)
    opts = _check_options(filters, layout, dynamic_batch, opset, pad_form, symmetric_pads,
                          input_name, output_name)
    value_shape = _check_value_shape(value_shape, opts.dynamic_batch)
    args = check_conv_args(value_shape, filters.shape, rate, padding)
    _check_limits(args)
    weight = np.ascontiguousarray(filters.transpose(3, 2, 0, 1))
    node_pads, crop = conv_node(args.pads, args.output_shape[1:3], opts.pad_form)
    return _emit(opts, "Conv", weight, args, node_pads, crop, "atrous_conv2d")


class _Options(NamedTuple):
    layout: str
    dynamic_batch: bool
    opset: int
    pad_form: str
    input_name: str
    output_name: str


def _check_options(filters, layout, dynamic_batch, opset, pad_form, symmetric_pads, input_name,
                   output_name) -> _Options:
    """The checks both exports share, before any shape is looked at."""
    _check_export_dtype(filters)
    layout = _check_choice(layout, "layout", LAYOUTS)
    dynamic_batch = _check_flag(dynamic_batch, "dynamic_batch")
    pad_form = _check_choice(pad_form, "pad_form", PAD_FORMS)
    if symmetric_pads is not None:
        legacy = "symmetric" if _check_flag(symmetric_pads, "symmetric_pads") else "single"
        if pad_form not in ("portable", legacy):
            raise ValueError(f"symmetric_pads={symmetric_pads} asks for pad_form={legacy!r}, "
                             f"which contradicts pad_form={pad_form!r}; give only pad_form")
        pad_form = legacy
    opset = _check_opset(opset)
    input_name = _check_name(input_name, "input_name")
    output_name = _check_name(output_name, "output_name")
    for what, name in (("input_name", input_name), ("output_name", output_name)):
        if name in INTERNAL_NAMES:
            raise ValueError(f"{what} must not be one of the names the graph uses itself "
                             f"({', '.join(sorted(INTERNAL_NAMES))}), got {name!r}")
    if input_name == output_name:
        raise ValueError(f"input_name and output_name must differ, both are {input_name!r}")
    return _Options(layout, dynamic_batch, opset, pad_form, input_name, output_name)


def _check_value_shape(value_shape, dynamic_batch: bool) -> tuple:
    """``value_shape`` checked; with a dynamic batch its batch entry may be ``None`` (read as 1)."""
    if dynamic_batch:
        vbatch, vrest = _batch_free_shape(value_shape, "value_shape")
        return (1 if vbatch is None else vbatch, *vrest)
    return check_shape4(value_shape, "value_shape", "NHWC")


def _crop(starts: tuple[int, int], output_hw) -> tuple[tuple[int, int], tuple[int, int]]:
    """The Slice over (H, W) of the node's NCHW output that keeps ``output_hw`` pixels."""
    return starts, (starts[0] + output_hw[0], starts[1] + output_hw[1])


def _emit(opts: _Options, op_type: str, weight: np.ndarray, args, node_pads, crop,
          op_name: str) -> onnx.ModelProto:
    """The model's input/output shapes in ``opts.layout``, then :func:`emit_model`."""
    batch = BATCH_DIM if opts.dynamic_batch else args.value_shape[0]
    in_shape, out_shape = (batch, *args.value_shape[1:]), (batch, *args.output_shape[1:])
    if opts.layout == "NCHW":
        in_shape = tuple(in_shape[i] for i in _NHWC_TO_NCHW)
        out_shape = tuple(out_shape[i] for i in _NHWC_TO_NCHW)
    return emit_model(ExportPlan(op_type, weight, args.rate, tuple(node_pads), crop, opts.layout,
                                 in_shape, out_shape, opts.input_name, opts.output_name,
                                 opts.opset, op_name))


def _geometry_output_shape(value_shape, filters_shape, rate, padding) -> tuple:
    """TF's ``output_shape`` for these arguments, from the geometry.

    Arguments too bad for the geometry get a shape that
    ``check_transpose_args`` then rejects with the op's own message.
    """
    fshape = check_array_shape(filters_shape, "filters", "[kh, kw, out_channels, in_channels]")
    rate, padding = check_rate(rate), check_padding(padding)
    if fshape[0] < 1 or fshape[1] < 1:
        return (value_shape[0], 0, 0, fshape[2])
    oh, ow = geometry.transpose_output_hw(value_shape[1:3], fshape[:2], rate, padding)
    return (value_shape[0], oh, ow, fshape[2])


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
            :func:`export_atrous_conv2d_transpose`.

    Returns:
        The model, with the lowest IR version the opset allows so that older
        runtimes load it.
    """
    elem = helper.np_dtype_to_tensor_dtype(plan.weight.dtype)
    nodes, inits = [], []
    x = plan.input_name
    if plan.layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["value_nchw"], name="to_nchw",
                                      perm=list(_NHWC_TO_NCHW)))
        x = "value_nchw"
    last = plan.output_name if plan.layout == "NCHW" else "cropped" if plan.crop else "conv_out"
    conv_nodes, conv_inits = emit_conv(plan.op_type, plan.weight, plan.rate, plan.pads, plan.crop,
                                       x, last)
    nodes += conv_nodes
    inits += conv_inits
    if plan.layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [last], [plan.output_name], name="to_nhwc",
                                      perm=list(_NCHW_TO_NHWC)))
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


def save_model(model: onnx.ModelProto, path) -> str:
    """Write ``model`` to ``path`` atomically; return the path written.

    The bytes go to a temporary file in the destination's directory, which is
    then renamed over it with :func:`os.replace`. On any failure (Ctrl-C
    included) the temporary file is removed and the destination is left as it
    was, so no half-written model is ever seen there.

    Only a regular file or a new path is replaced. A symlink is followed: the
    model replaces its target (or creates it, for a dangling link) and the
    link stays. A directory, FIFO, device or socket is refused without being
    opened, so nothing blocks on a FIFO and no device node is replaced.

    Raises:
        IsADirectoryError: ``path`` is, or names, a directory.
        ValueError: ``path`` is a FIFO, device or socket; or ``model`` cannot
            be serialised (over protobuf's 2 GiB).
        OSError: the directory is missing or not writable, a symlink loops,
            or the write failed.
    """
    path = os.fsdecode(os.fspath(path))
    target = _save_target(path)
    directory = os.path.dirname(target)
    data = model.SerializeToString()
    tmp = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: never write through someone else's file; 0o666 lets the umask set
    # the final file's mode as for any other new file.
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise type(e)(e.errno, f"cannot create a file in {directory!r}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _keep_mode(target, tmp)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _save_target(path: str) -> str:
    """The absolute file :func:`save_model` replaces for ``path``: a regular file or a new one."""
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise IsADirectoryError(errno.EISDIR, "names a directory, not a model file path", path)
    target = os.path.realpath(path)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return target  # a new file (also a dangling symlink's target)
    if stat.S_ISREG(st.st_mode):
        return target
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a model file path", path)
    if stat.S_ISLNK(st.st_mode):  # realpath stops at a loop
        raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
    kind = next((name for is_kind, name in _SPECIAL_FILES if is_kind(st.st_mode)),
                "not a regular file")
    link = "" if target == os.path.abspath(path) else f" (a link to {target!r})"
    raise ValueError(f"path {path!r}{link} is {kind}: save_model replaces only regular files "
                     f"(or creates new ones)")


def _keep_mode(target: str, tmp: str) -> None:
    """Give the new file the permission bits of the file it replaces, if any."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return
    os.chmod(tmp, mode)
