# SPDX-License-Identifier: Apache-2.0
"""The ``export`` command: filters from a ``.npy`` file to a checked ONNX model.

:func:`add_arguments` and :func:`run` are what ``atrous-cl export`` wires in;
``python -m onnx_export`` runs the same command on its own. This module must
import without onnx (onnx is imported inside :func:`run`), so that ``export
--help`` lists the options where the ``onnx`` extra is missing.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from onnx_export.constants import (DEFAULT_INPUT_NAME, DEFAULT_OPSET, DEFAULT_OUTPUT_NAME,
                                   EXPORT_DTYPES, LAYOUTS, MAX_OPSET, MIN_OPSET)

#: Exit status of every error the user can fix (argparse's too).
USAGE_ERROR = 2

OPS = ("atrous_conv2d_transpose", "atrous_conv2d")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the export options to ``parser`` and return it."""
    parser.add_argument("filters", help="filters as a .npy file in TF's layout, float32 or "
                                        "float16: [kh, kw, out_channels, in_channels] for the "
                                        "transpose op, [kh, kw, in_channels, out_channels] for "
                                        "atrous_conv2d")
    parser.add_argument("--op", choices=OPS, default=OPS[0],
                        help="the TF op to export (default: %(default)s); atrous_conv2d is one "
                             "Conv node and takes neither --output-shape nor --conv-form")
    parser.add_argument("--value-shape", nargs=4, type=int, required=True,
                        metavar=("N", "H", "W", "C"),
                        help="shape of the value (NHWC); N is not used with --dynamic-batch")
    parser.add_argument("--output-shape", nargs=4, type=int, metavar=("N", "H", "W", "C"),
                        help="TF's output_shape (NHWC); computed from the geometry when "
                             "omitted, checked when given")
    parser.add_argument("--rate", type=int, required=True, help="dilation rate (>= 1)")
    parser.add_argument("--padding", choices=("SAME", "VALID"), default="SAME",
                        help="TF's padding mode (default: %(default)s)")
    parser.add_argument("-o", "--output", required=True, help="path of the .onnx file to write")
    parser.add_argument("--layout", choices=LAYOUTS, default="NHWC",
                        help="model input/output layout; NHWC wraps the node in two "
                             "Transposes (default: %(default)s)")
    parser.add_argument("--dynamic-batch", action="store_true",
                        help="symbolic batch dimension: the model runs with any batch size")
    parser.add_argument("--opset", type=int, default=None,
                        help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default: {DEFAULT_OPSET})")
    parser.add_argument("--symmetric-pads", action="store_true",
                        help="symmetric node pads plus a Slice, for runtimes that mishandle "
                             "asymmetric pads (e.g. onnxruntime's CUDA provider)")
    parser.add_argument("--conv-form", action="store_true",
                        help="emit the equivalent forward Conv with flipped weights")
    parser.add_argument("--dtype", choices=[d.name for d in EXPORT_DTYPES], default=None,
                        help="cast the filters to this dtype first (default: the file's dtype)")
    parser.add_argument("--input-name", default=DEFAULT_INPUT_NAME,
                        help="graph input name (default: %(default)s)")
    parser.add_argument("--output-name", default=DEFAULT_OUTPUT_NAME,
                        help="graph output name (default: %(default)s)")
    return parser


def _shape_str(value_info) -> str:
    import onnx

    t = value_info.type.tensor_type
    dims = ",".join(d.dim_param or str(d.dim_value) for d in t.shape.dim)
    return f"{value_info.name} {onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}[{dims}]"


def summary(model, path: str) -> str:
    """One line: path, opset, nodes, input and output shapes with dtype."""
    ops = ", ".join(n.op_type for n in model.graph.node)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return (f"{path}: opset {opset}, {len(model.graph.node)} node(s) ({ops}), "
            f"{_shape_str(model.graph.input[0])} -> {_shape_str(model.graph.output[0])}")


def _error(msg: str, status: int = USAGE_ERROR) -> int:
    print(f"atrous-cl export: error: {msg}", file=sys.stderr)
    return status


def load_filters(path: str, dtype: str | None = None) -> np.ndarray:
    """The filters array in the ``.npy`` file ``path``, cast to ``dtype`` if given.

    Raises:
        ValueError: the file is missing, unreadable, empty, not a regular
            file (a FIFO would block), not a ``.npy`` (an ``.npz`` archive,
            text, a pickle), holds no real numbers, or holds finite values
            beyond ``dtype``'s range.
    """
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"cannot read filters from {path!r}: not a regular file; expected a "
                         f".npy file written by np.save")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        # np.load raises EOFError for an empty file, ValueError for text or a pickle.
        detail = "the file is empty" if isinstance(e, EOFError) else str(e)
        raise ValueError(f"cannot read filters from {path!r}: {detail}; expected a .npy file "
                         f"written by np.save") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        names = ", ".join(loaded.files)
        loaded.close()
        raise ValueError(f"filters file {path!r} is an .npz archive (arrays: {names or 'none'}); "
                         f"expected one array in a .npy file: np.save(path, filters)")
    if loaded.dtype.kind not in "fiu":
        raise ValueError(f"filters in {path!r} must be real numbers, got dtype {loaded.dtype} "
                         f"with shape {loaded.shape}")
    if dtype is None:
        return loaded
    with np.errstate(over="ignore", invalid="ignore"):
        cast = loaded.astype(dtype)
    beyond = np.isinf(cast) & np.isfinite(loaded)
    if beyond.any():
        # astype turns them into inf with only a warning: a model of infinities.
        raise ValueError(f"filters in {path!r} hold {int(beyond.sum())} value(s) beyond "
                         f"{dtype}'s range (largest {float(np.finfo(dtype).max):g}), e.g. "
                         f"{loaded[beyond].flat[0]!r}; scale them or keep a wider --dtype")
    return cast


def run(args: argparse.Namespace) -> int:
    """Export, check (``full_check=True``), save atomically, print a summary.

    Returns:
        0 on success; 2 (:data:`USAGE_ERROR`) on an error the user can fix,
        printed to stderr as one line without a traceback; 1 if the exported
        model fails onnx's checker (a bug).
    """
    try:
        import onnx

        from onnx_export import exporter
    except ImportError as e:
        if (e.name or "").split(".")[0] != "onnx":
            raise  # a bug, not a missing extra
        from onnx_export import MISSING_ONNX

        return _error(f"{MISSING_ONNX} ({e})")
    try:
        filters = load_filters(args.filters, args.dtype)
    except ValueError as e:
        return _error(str(e))
    common = dict(layout=args.layout, dynamic_batch=args.dynamic_batch, opset=args.opset,
                  symmetric_pads=args.symmetric_pads, input_name=args.input_name,
                  output_name=args.output_name)
    try:
        if args.op == "atrous_conv2d":
            if args.output_shape is not None or args.conv_form:
                return _error("--output-shape and --conv-form are for atrous_conv2d_transpose; "
                              "atrous_conv2d's output shape follows from --value-shape")
            model = exporter.export_atrous_conv2d(filters, args.value_shape, args.rate,
                                                  args.padding, **common)
        else:
            model = exporter.export_atrous_conv2d_transpose(
                filters, args.value_shape, args.output_shape, args.rate, args.padding,
                conv_form=args.conv_form, **common)
    except (ValueError, TypeError) as e:
        return _error(str(e))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return _error(f"the exported model fails onnx.checker (a bug, please report it): {e}", 1)
    try:
        path = exporter.save_model(model, args.output)
    except (OSError, ValueError) as e:
        return _error(f"cannot write {args.output!r}: {e}")
    print(summary(model, path))
    return 0


def main(argv=None) -> int:
    """``python -m onnx_export``: ``atrous-cl export`` with ``argv``, so that both report
    errors, Ctrl-C and a closed pipe alike."""
    from atrous_cl import cli

    return cli.main(["export", *(sys.argv[1:] if argv is None else argv)])
