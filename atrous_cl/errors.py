# SPDX-License-Identifier: Apache-2.0
"""Exceptions of atrous-cl.

Bad arguments raise the built-in ``ValueError``/``TypeError``. Failures of the
OpenCL device or driver surface as :class:`DeviceError`, which carries the
OpenCL status name and, where known, the kernel file and build options.
"""

from __future__ import annotations


class AtrousCLError(Exception):
    """Base class of the exceptions raised by atrous-cl itself."""


class DeviceError(AtrousCLError, RuntimeError):
    """The OpenCL device or driver failed (build error, out of resources, ...).

    Attributes:
        status: the OpenCL status name, e.g. ``'CL_BUILD_PROGRAM_FAILURE'``, if known.
        source: the kernel file involved, if any.
        options: the build options involved, if any.
    """

    def __init__(self, message: str, *, status: str | None = None,
                 source: str | None = None, options: tuple[str, ...] = ()):
        details = [f"status {status}"] if status else []
        if source:
            details.append(f"kernel {source}")
        if options:
            details.append(f"options {' '.join(options)}")
        super().__init__(f"{message} ({'; '.join(details)})" if details else message)
        self.status, self.source, self.options = status, source, options


class DeviceCapabilityError(AtrousCLError, ValueError):
    """The request is valid but the chosen device cannot run it.

    For example float64 on a device without ``cl_khr_fp64``, or a tensor larger
    than the device's maximum allocation. Raised before any device work.
    """
