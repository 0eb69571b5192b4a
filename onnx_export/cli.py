# SPDX-License-Identifier: Apache-2.0
"""The ``export`` command: filters from a ``.npy`` file to a checked ONNX model; and ``fold``.

:func:`add_arguments` and :func:`run` are what ``atrous-cl export`` wires in;
``python -m onnx_export`` runs the same command on its own;
:func:`add_fold_arguments` and :func:`run_fold` are ``atrous-cl fold``. This
module must import without onnx (onnx is imported inside :func:`run` and
:func:`run_fold`), so that ``export --help`` and ``fold --help`` list the
options where the ``onnx`` extra is missing.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from onnx_export.constants import (DEFAULT_INPUT_NAME, DEFAULT_OPSET, DEFAULT_OUTPUT_NAME,
                                   EXPORT_DTYPES, LAYOUTS, MAX_OPSET, MIN_OPSET, PAD_FORMS)

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
    parser.add_argument("--pad-form", choices=PAD_FORMS, default="portable",
                        help="asymmetric pads: 'portable' (default) writes a ConvTranspose "
                             "with symmetric pads plus a Slice, which every runtime tried "
                             "loads; 'single' the one exact node; 'symmetric' symmetric pads "
                             "plus a Slice for Conv too")
    parser.add_argument("--symmetric-pads", action="store_true",
                        help="the same as --pad-form symmetric")
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


def _same_file(target: str, path: str) -> bool:
    """Whether the file :func:`saving.save_model` would replace (``target``) is ``path``'s,
    by name or by a link."""
    try:
        return os.path.samefile(target, path)
    except OSError:  # either is missing: a new file is nobody's
        return False


def run(args: argparse.Namespace) -> int:
    """Export, check (``full_check=True``), save atomically, print a summary.

    Returns:
        0 on success; 2 (:data:`USAGE_ERROR`) on an error the user can fix,
        printed to stderr as one line without a traceback; 1 if the exported
        model fails onnx's checker (a bug).
    """
    try:
        import onnx

        from onnx_export import api, saving
    except ImportError as e:
        if (e.name or "").split(".")[0] != "onnx":
            raise  # a bug, not a missing extra
        from onnx_export import MISSING_ONNX

        return _error(f"{MISSING_ONNX} ({e})")
    try:
        target = saving.save_target(os.fsdecode(args.output))
    except (OSError, ValueError) as e:
        return _error(f"cannot write {args.output!r}: {e}")
    if _same_file(target, args.filters):
        return _error(f"the output {args.output!r} is the filters file {args.filters!r}: the "
                      f"model would replace the filters; choose another -o")
    try:
        filters = load_filters(args.filters, args.dtype)
    except ValueError as e:
        return _error(str(e))
    if filters.dtype == np.float64:  # np.save's default: the API's advice is for Python
        return _error(f"filters in {args.filters!r} are float64, which no ONNX runtime's Conv "
                      f"or ConvTranspose runs; pass --dtype float32 (or float16) to cast them")
    common = dict(layout=args.layout, dynamic_batch=args.dynamic_batch, opset=args.opset,
                  pad_form=args.pad_form, symmetric_pads=args.symmetric_pads or None,
                  input_name=args.input_name,
                  output_name=args.output_name)
    try:
        if args.op == "atrous_conv2d":
            if args.output_shape is not None or args.conv_form:
                return _error("--output-shape and --conv-form are for atrous_conv2d_transpose; "
                              "atrous_conv2d's output shape follows from --value-shape")
            model = api.export_atrous_conv2d(filters, args.value_shape, args.rate, args.padding,
                                             **common)
        else:
            model = api.export_atrous_conv2d_transpose(
                filters, args.value_shape, args.output_shape, args.rate, args.padding,
                conv_form=args.conv_form, **common)
    except (ValueError, TypeError) as e:
        return _error(str(e))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return _error(f"the exported model fails onnx.checker (a bug, please report it): {e}", 1)
    try:
        path = saving.save_model(model, args.output)
    except (OSError, ValueError) as e:
        return _error(f"cannot write {args.output!r}: {e}")
    print(summary(model, path))
    return 0



# --- atrous-cl fold ------------------------------------------------------------------------------

#: Sizes a symbolic input dimension is given by ``fold --check``; the
#: fallback ones only where the original model runs at none of them (a
#: symbolic height under a 3x3 VALID conv cannot be 1 or 2).
CHECK_DIM_SIZES = (1, 2, 3)
CHECK_FALLBACK_DIM_SIZES = (16, 33)
#: Max |folded - original| over max |original| that ``fold --check`` accepts.
CHECK_TOLERANCE = {"float16": 1e-2, "float32": 1e-4, "float64": 1e-10}


def add_fold_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``fold`` options to ``parser`` and return it."""
    parser.add_argument("input", help="the .onnx model to fold, e.g. as tf2onnx wrote it")
    parser.add_argument("-o", "--output", required=True, help="path of the folded .onnx to write")
    parser.add_argument("--conv-form", action="store_true",
                        help="write transposed ops as the equivalent forward Conv")
    parser.add_argument("--pad-form", choices=PAD_FORMS, default="portable",
                        help="asymmetric pads: 'portable' never writes an asymmetric "
                             "ConvTranspose, 'single' keeps one exact node (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="run both models in onnxruntime on random inputs (symbolic dims "
                             f"set to {', '.join(map(str, CHECK_DIM_SIZES))}, or "
                             f"{', '.join(map(str, CHECK_FALLBACK_DIM_SIZES))} where the model "
                             "runs at none of those) and fail if they differ")
    return parser


def _fold_error(msg: str, status: int = USAGE_ERROR) -> int:
    print(f"atrous-cl fold: error: {msg}", file=sys.stderr)
    return status


class CheckNotRun(Exception):
    """``fold --check`` cannot compare the models: an input or output it cannot make or
    compare, or no symbolic dim size the original model runs at."""


def _numeric_dtype(value_info) -> np.dtype | None:
    """The NumPy dtype of a graph input or output that is a tensor of real numbers or
    booleans (what ``fold --check`` can make at random and compare); else None."""
    import onnx

    if value_info.type.WhichOneof("value") != "tensor_type":
        return None
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type))
    except (KeyError, TypeError, ValueError):
        return None
    return dtype if dtype.kind in "fiub" else None  # not strings, bfloat16, float8 ...


def _check_checkable(model) -> None:
    """Raise :class:`CheckNotRun` for a graph input or output ``fold --check`` cannot make
    or compare: a sequence, map or optional, or a tensor of strings, bfloat16 or float8."""
    import onnx

    inits = {t.name for t in model.graph.initializer}
    for kind, infos in (("input", model.graph.input), ("output", model.graph.output)):
        for vi in infos:
            if vi.name not in inits and _numeric_dtype(vi) is None:
                what = vi.type.WhichOneof("value")
                if what == "tensor_type":
                    what = (f"tensor of "
                            f"{onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)}")
                else:
                    what = (what or "value of no type").removesuffix("_type").replace("_", " ")
                article = "an" if what[0] in "aeiou" else "a"
                raise CheckNotRun(f"{kind} {vi.name!r} is {article} {what}, and --check makes and "
                                  f"compares tensors of real numbers or booleans only")


def _check_inputs(model, size: int, rng) -> dict:
    """Random inputs for every graph input, each symbolic dim set to ``size``."""
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dtype = _numeric_dtype(vi)
        shape = [d.dim_value if d.HasField("dim_value") else size for d in t.shape.dim]
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def compare_in_onnxruntime(original, folded, seed: int = 0) -> tuple[list[str], list[int]]:
    """Run both models on the same random inputs, each symbolic dim set to each of
    :data:`CHECK_DIM_SIZES` (or :data:`CHECK_FALLBACK_DIM_SIZES` where the
    original model runs at none of them).

    Returns:
        ``(problems, sizes)``: one line per output and size that differs (or
        where only the folded model fails), and the sizes compared.

    Raises:
        CheckNotRun: an input or output is not a tensor of real numbers or booleans, or the
            original model fails in onnxruntime at every size.
    """
    import onnxruntime as ort

    _check_checkable(original)

    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                for m in (original, folded)]
    rng = np.random.default_rng(seed)
    problems, checked, refused = [], [], []
    for size in (*CHECK_DIM_SIZES, *CHECK_FALLBACK_DIM_SIZES):
        if checked and size in CHECK_FALLBACK_DIM_SIZES:
            break
        feeds = _check_inputs(original, size, rng)
        try:
            want = sessions[0].run(None, feeds)
        except Exception as e:  # onnxruntime's own errors have no common base class
            refused.append(f"{size}: {type(e).__name__}: {e}")
            continue
        checked.append(size)
        try:
            got = sessions[1].run(None, feeds)
        except Exception as e:
            problems.append(f"at dim size {size} the folded model fails where the original "
                            f"runs: {type(e).__name__}: {e}")
            continue
        for vi, a, b in zip(original.graph.output, want, got):
            if a.shape != b.shape:
                problems.append(f"{vi.name} at dim size {size}: shape {b.shape}, "
                                f"expected {a.shape}")
                continue
            diff = float(np.abs(a.astype(np.float64) - b).max(initial=0.0))
            scale = max(float(np.abs(a.astype(np.float64)).max(initial=0.0)), 1e-30)
            tol = CHECK_TOLERANCE.get(a.dtype.name, 0.0)
            if diff > tol * scale:
                problems.append(f"{vi.name} at dim size {size}: max |error| {diff:.3g} is "
                                f"{diff / scale:.3g} of max |original|, bound {tol:g}")
    if not checked:
        raise CheckNotRun("the original model does not run in onnxruntime with its symbolic "
                          "dims set to any of "
                          + ", ".join(map(str, (*CHECK_DIM_SIZES, *CHECK_FALLBACK_DIM_SIZES)))
                          + " (" + "; ".join(refused)[:600] + ")")
    return problems, checked


def run_fold(args: argparse.Namespace) -> int:
    """Fold, check (``full_check=True``, and in onnxruntime with ``--check``), save atomically.

    The output path is checked before anything is read: as for ``export``, a
    regular file or a new path is replaced, a symlink followed, and a
    directory, FIFO, device or socket refused.

    Returns:
        0 on success; 2 (:data:`USAGE_ERROR`) on an error the user can fix,
        printed to stderr as one line without a traceback; 1 if the folded
        model fails onnx's checker (a bug) or differs from the original under
        ``--check``.
    """
    try:
        import onnx
        from google.protobuf.message import EncodeError

        from onnx_export import fold, saving
        from onnx_export.chains import TOO_LARGE
    except ImportError as e:
        if (e.name or "").split(".")[0] != "onnx":
            raise  # a bug, not a missing extra
        from onnx_export import MISSING_ONNX

        return _fold_error(f"{MISSING_ONNX} ({e})")
    if args.check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            return _fold_error(f"--check needs onnxruntime, part of the onnx extra: "
                               f"pip install 'atrous-cl[onnx]' ({e})")
    try:
        folder = os.path.dirname(saving.save_target(os.fsdecode(args.output)))
    except (OSError, ValueError) as e:
        return _fold_error(f"cannot write {args.output!r}: {e}")
    if not os.path.isdir(folder):
        return _fold_error(f"cannot write {args.output!r}: the folder {folder!r} does not exist")
    if os.path.exists(args.input) and not os.path.isfile(args.input):  # a FIFO would block
        return _fold_error(f"cannot read a model from {args.input!r}: not a regular file")
    try:
        model = onnx.load(args.input)
    except OSError as e:
        return _fold_error(f"cannot read a model from {args.input!r}: {e}")
    except Exception as e:  # protobuf's DecodeError and others for a file that is not a model
        return _fold_error(f"cannot read a model from {args.input!r}: {type(e).__name__}: {e}")
    try:
        # Any bytes that parse (an empty file does) are a ModelProto: without this
        # a broken input would surface as the folded model failing the checker.
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return _fold_error(f"cannot read a model from {args.input!r}: it fails onnx.checker: {e}")
    except EncodeError:
        return _fold_error(f"cannot fold {args.input!r}: {TOO_LARGE}; nothing written")
    result = fold.fold_with_report(model, conv_form=args.conv_form, pad_form=args.pad_form)
    for c in result.chains:
        if c.folded:
            print(f"folded {c.conv}: {c.detail}, {c.nodes_removed} nodes replaced")
        else:
            print(f"skipped {c.conv}: {c.detail}")
    print(f"nodes: {len(model.graph.node)} -> {len(result.model.graph.node)}")
    try:
        onnx.checker.check_model(result.model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return _fold_error(f"the folded model fails onnx.checker (a bug, please report it): {e}",
                           1)
    if args.check:
        try:
            problems, sizes = compare_in_onnxruntime(model, result.model)
        except CheckNotRun as e:
            return _fold_error(f"--check cannot compare the models: {e}; nothing written")
        if problems:
            return _fold_error("the folded model differs from the original in onnxruntime: "
                               + "; ".join(problems), 1)
        print(f"check: the outputs agree in onnxruntime at symbolic dim sizes "
              f"{', '.join(map(str, sizes))}")
    try:
        path = saving.save_model(result.model, args.output)
    except (OSError, ValueError) as e:
        return _fold_error(f"cannot write {args.output!r}: {e}")
    print(f"wrote {path}")
    return 0
