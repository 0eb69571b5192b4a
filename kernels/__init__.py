# SPDX-License-Identifier: Apache-2.0
"""The OpenCL C sources, shipped as the package ``atrous_cl.kernels``: a regular package, so
that ``importlib.resources`` finds them in a zip archive (a zipapp, a PEX) as well as on disk."""
