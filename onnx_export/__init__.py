# SPDX-License-Identifier: Apache-2.0
"""ONNX export of ``atrous_conv2d_transpose`` (one ConvTranspose node) and ``atrous_conv2d`` (one Conv).

:func:`fold_atrous_chains` turns tf2onnx's chains of the same ops in a whole
model back into such nodes.

Example::

    from onnx_export import export_atrous_conv2d_transpose, save_model
    model = export_atrous_conv2d_transpose(filters, (1, 64, 64, 32), None, rate=2,
                                           padding="SAME", dynamic_batch=True)
    save_model(model, "atrous.onnx")

Modules: :mod:`~onnx_export.api` (the export functions and their checks),
:mod:`~onnx_export.emitter` (the ONNX plan and the one node/graph writer),
:mod:`~onnx_export.saving` (atomic saving), :mod:`~onnx_export.fold` (the
fold pass), :mod:`~onnx_export.constants` and :mod:`~onnx_export.cli`.

The package imports without onnx (so ``atrous-cl export --help`` works without
the extra); its functions then raise an ``ImportError`` that names the extra.
"""

__all__ = [
    "BATCH_DIM", "DEFAULT_INPUT_NAME", "DEFAULT_OPSET", "DEFAULT_OUTPUT_NAME", "EXPORT_DTYPES",
    "LAYOUTS", "MAX_OPSET", "MIN_OPSET", "PAD_FORMS", "TESTED_OPSETS", "ChainReport", "ExportPlan",
    "FoldResult", "conv_pads", "emit_conv", "emit_model", "export_atrous_conv2d",
    "export_atrous_conv2d_transpose", "fold_atrous_chains", "fold_with_report", "save_model",
    "symmetric_split", "tf_filters_to_onnx", "tf_filters_to_onnx_conv",
]

#: What to tell someone without onnx.
MISSING_ONNX = "ONNX export needs the onnx extra: pip install 'atrous-cl[onnx]'"

try:
    from onnx_export.api import export_atrous_conv2d, export_atrous_conv2d_transpose
    from onnx_export.constants import (BATCH_DIM, DEFAULT_INPUT_NAME, DEFAULT_OPSET,
                                       DEFAULT_OUTPUT_NAME, EXPORT_DTYPES, LAYOUTS, MAX_OPSET,
                                       MIN_OPSET, PAD_FORMS, TESTED_OPSETS)
    from onnx_export.emitter import (ExportPlan, conv_pads, emit_conv, emit_model, symmetric_split,
                                     tf_filters_to_onnx, tf_filters_to_onnx_conv)
    from onnx_export.fold import ChainReport, FoldResult, fold_atrous_chains, fold_with_report
    from onnx_export.saving import save_model
except ModuleNotFoundError as _missing:
    if (_missing.name or "").split(".")[0] != "onnx":
        raise
    _onnx_error = _missing

    def __getattr__(name):
        if name in __all__:
            raise ImportError(f"onnx_export.{name}: {MISSING_ONNX} ({_onnx_error})")
        raise AttributeError(f"module 'onnx_export' has no attribute {name!r}")
