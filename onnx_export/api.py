# SPDX-License-Identifier: Apache-2.0
"""The export API: ``export_atrous_conv2d_transpose`` and ``export_atrous_conv2d``, and their checks.

Each export reads as: validate -> geometry -> plan -> emit. The op's own checks
and pad arithmetic come from :mod:`atrous_cl.validation` and
:mod:`atrous_cl.geometry`; this module adds what only an export has (dtype and
size limits of a model, opset, layout, pad form, graph names) and hands the
computed attributes to :mod:`onnx_export.emitter`. Saving is
:mod:`onnx_export.saving`'s.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx

from atrous_cl import geometry
from atrous_cl.validation import (check_array_shape, check_conv_args, check_int, check_padding,
                                  check_rate, check_shape4, check_transpose_args)
from onnx_export.constants import (BATCH_DIM, DEFAULT_INPUT_NAME, DEFAULT_OPSET,
                                   DEFAULT_OUTPUT_NAME, EXPORT_DTYPES, LAYOUTS, MAX_OPSET,
                                   MIN_OPSET, PAD_FORMS)
from onnx_export.emitter import (INTERNAL_NAMES, NHWC_TO_NCHW, ExportPlan, conv_form_exact,
                                 conv_node, emit_model, transpose_node)

#: Dimensions and the rate must stay below 2**31, as the op requires: the op
#: passes them to its kernels as 32-bit ints, and runtimes size int64 pads and
#: shapes from them.
MAX_DIM = 2**31 - 1
#: Protobuf caps a serialised message, so a whole ONNX model, at 2**31 - 1
#: bytes; the filters may take all of it but 64 KiB left for the graph.
MAX_FILTER_BYTES = 2**31 - 1 - 2**16


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


def check_choice(x, what: str, choices: tuple[str, ...]) -> str:
    """``x``, one of ``choices``: a ``TypeError`` for a non-str, a ``ValueError`` for another str."""
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


def check_flag(x, what: str) -> bool:
    """``x`` as a bool; only ``bool`` and ``np.bool_`` are taken (not 0 or 1), else ``TypeError``."""
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
            ``benchmarks/bench_onnx.py``); other runtimes may differ. Equivalent
            for finite filters only (its zero padding times an Inf weight is
            NaN), so refused for others.
        input_name: name of the graph input.
        output_name: name of the graph output.
        symmetric_pads: the older spelling of ``pad_form``: ``True`` is
            ``'symmetric'``, ``False`` is ``'single'``; ``None`` (default)
            leaves ``pad_form`` to decide.

    Returns:
        The model, not yet checked or saved (see :func:`onnx_export.saving.save_model`).

    Raises:
        ValueError: a shape, value or option is inconsistent (the op's
            errors), a dimension or the rate is 2**31 or more (the op's
            limits), the filters exceed :data:`MAX_FILTER_BYTES` (protobuf's
            2 GiB) or have no input or output channels, ``conv_form`` with
            non-finite filters, or a name is one of :data:`INTERNAL_NAMES`.
        TypeError: an argument has the wrong type, or the filters a dtype no
            runtime runs (float64). Big-endian floats are converted, not refused.
    """
    filters = _native_filters(filters)
    opts = _check_options(filters, layout, dynamic_batch, opset, pad_form, symmetric_pads,
                          input_name, output_name)
    conv_form = check_flag(conv_form, "conv_form")
    symbolic = opts.dynamic_batch and _batch_free_shape(value_shape, "value_shape")[0] is None
    value_shape = _check_value_shape(value_shape, opts.dynamic_batch)
    if output_shape is None:
        output_shape = _geometry_output_shape(value_shape, filters.shape, rate, padding)
    elif opts.dynamic_batch:
        obatch, orest = _batch_free_shape(output_shape, "output_shape")
        if symbolic and obatch is not None:
            raise ValueError(f"output_shape's batch {obatch} cannot match the symbolic batch "
                             f"value_shape gives (None): with dynamic_batch=True give None "
                             f"there too, or value's batch")
        output_shape = (value_shape[0] if obatch is None else obatch, *orest)
    args = check_transpose_args(value_shape, filters.shape, output_shape, rate, padding)
    _check_limits(args)
    if conv_form and not conv_form_exact(filters):
        raise ValueError("conv_form=True with filters holding Inf or NaN: the Conv form pads "
                         "the value with zeros and multiplies them by the weights, and 0 * Inf "
                         "is NaN where TF's op adds no term; export without conv_form (the "
                         "ConvTranspose forms are exact)")
    op_type, weight, node_pads, crop = transpose_node(filters, args.pads, args.output_shape[1:3],
                                                      args.rate, opts.pad_form, conv_form)
    return _emit(opts, op_type, weight, args, node_pads, crop, "atrous_conv2d_transpose")


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
        The model, not yet checked or saved.

    Raises:
        ValueError, TypeError: as :func:`export_atrous_conv2d_transpose` raises them.
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
    layout = check_choice(layout, "layout", LAYOUTS)
    dynamic_batch = check_flag(dynamic_batch, "dynamic_batch")
    pad_form = check_choice(pad_form, "pad_form", PAD_FORMS)
    if symmetric_pads is not None:
        legacy = "symmetric" if check_flag(symmetric_pads, "symmetric_pads") else "single"
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


def _emit(opts: _Options, op_type: str, weight: np.ndarray, args, node_pads, crop,
          op_name: str) -> onnx.ModelProto:
    """The model's input/output shapes in ``opts.layout``, then :func:`emit_model`."""
    kh, kw, *channels = args.filters_shape
    if 0 in channels:
        raise ValueError(f"{op_name} with filters of shape {list(args.filters_shape)}, no input "
                         f"or output channels: OpenVINO refuses such a model and onnx's "
                         f"reference a ConvTranspose without output channels, so it would not "
                         f"run everywhere; export filters with channels (the op itself returns "
                         f"zeros or an empty array here)")
    if 0 in args.output_shape[1:3]:
        h, w = args.output_shape[1:3]
        raise ValueError(f"{op_name} of a {args.value_shape[1]}x{args.value_shape[2]} value with "
                         f"{args.padding} has a {h}x{w} output: onnxruntime refuses a Conv or "
                         f"ConvTranspose with no output rows or columns, so the model would not "
                         f"run; export it for a non-empty image (the op itself returns an empty "
                         f"array here)")
    batch = BATCH_DIM if opts.dynamic_batch else args.value_shape[0]
    in_shape, out_shape = (batch, *args.value_shape[1:]), (batch, *args.output_shape[1:])
    if opts.layout == "NCHW":
        in_shape = tuple(in_shape[i] for i in NHWC_TO_NCHW)
        out_shape = tuple(out_shape[i] for i in NHWC_TO_NCHW)
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
