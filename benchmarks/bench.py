# SPDX-License-Identifier: Apache-2.0
"""Time atrous-cl against its peers: ``python benchmarks/bench.py [--rounds N] [--plot out.png]``.

The same as ``atrous-cl bench``; see atrous_cl/bench.py for what is measured.
For NumPy's BLAS ceiling to be fair, run it with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE ...``).
"""

import sys

from atrous_cl.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
