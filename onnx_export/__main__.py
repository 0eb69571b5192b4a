# SPDX-License-Identifier: Apache-2.0
"""``python -m onnx_export``: the ``atrous-cl export`` command on its own.

It runs through ``atrous_cl.cli.main``, so that both report errors, Ctrl-C
and a closed pipe alike. (Here, at the top, rather than in ``onnx_export.cli``,
which ``atrous_cl.cli`` imports: no import circle.)
"""

import sys

from atrous_cl import cli

sys.exit(cli.main(["export", *sys.argv[1:]]))
