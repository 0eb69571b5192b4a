# SPDX-License-Identifier: Apache-2.0
"""``python -m onnx_export``: the ``atrous-cl export`` command on its own."""

import sys

from onnx_export.cli import main

sys.exit(main())
