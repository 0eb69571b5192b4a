# SPDX-License-Identifier: Apache-2.0
"""The exporter's options and limits, importable without onnx.

``atrous-cl export --help`` declares its options from these, so the help shows
even where the ``onnx`` extra is not installed; :mod:`onnx_export.api` and
:mod:`onnx_export.fold` take them from here.
"""

from __future__ import annotations

import numpy as np

#: Opset written when none is asked for. ConvTranspose, Conv, Transpose and
#: Slice have had the semantics used here since opset 11 (ConvTranspose-22
#: only adds bfloat16); 17 (ONNX 1.12, 2022) is old enough for the deployment
#: runtimes in common use and is the opset most exporters write by default.
DEFAULT_OPSET = 17
#: Oldest opset accepted: ConvTranspose-11 fixed the pad semantics, and Slice
#: takes its starts/ends as inputs (so they can be initializers) since 10.
MIN_OPSET = 11
#: Newest opset accepted: the newest tested (onnx 1.23, onnxruntime 1.32).
MAX_OPSET = 28
#: The opsets the test suite runs through onnxruntime and onnx's reference.
TESTED_OPSETS = range(MIN_OPSET, MAX_OPSET + 1)

LAYOUTS = ("NHWC", "NCHW")
#: How a node's asymmetric pads are written. ``'portable'`` (the default): a
#: ConvTranspose whose pads are asymmetric gets symmetric pads plus a Slice,
#: since IREE, onnx2torch and pnnx/ncnn refuse asymmetric ConvTranspose pads;
#: a Conv keeps its exact pads (every runtime tried accepts them).
#: ``'single'``: always the one exact node. ``'symmetric'``: symmetric pads
#: plus a Slice for every node, Conv included.
PAD_FORMS = ("portable", "single", "symmetric")
#: dtypes onnxruntime's CPU provider has ConvTranspose and Conv kernels for.
#: float64 has neither at any opset (checked up to onnxruntime 1.32), so a
#: float64 model would only run in onnx's Python ReferenceEvaluator.
EXPORT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))

DEFAULT_INPUT_NAME = "value"
DEFAULT_OUTPUT_NAME = "output"
#: Name of the symbolic batch dimension written when ``dynamic_batch=True``.
BATCH_DIM = "N"
