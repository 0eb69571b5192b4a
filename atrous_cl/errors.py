# SPDX-License-Identifier: Apache-2.0
"""Exceptions of atrous-cl.

Bad arguments raise the built-in ``ValueError``/``TypeError``. Failures of the
OpenCL device or driver surface as :class:`DeviceError`, which carries the
OpenCL status name and, where known, the kernel file and build options.
"""

from __future__ import annotations

import pickle


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


class VectorWidthError(DeviceCapabilityError):
    """A tile's vectors are wider than the device's compiler builds without crashing the
    process (:func:`atrous_cl.facts.max_vector_bytes`). Only hand-made tiles and layouts
    ask for them there; the defaults and ``atrous-cl tune`` keep within the limit."""


def picklable_chain(error: BaseException) -> BaseException:
    """``error`` with each ``__cause__``/``__context__`` that does not pickle replaced by its text.

    Dask's distributed workers pickle an exception together with its chain
    (tblib); pyopencl's errors hold an ``_ErrorRecord`` that does not pickle,
    so a :class:`DeviceError` raised ``from`` one would reach the client only
    as a bare ``Exception`` with its repr. Each such link becomes a
    ``RuntimeError`` naming the original type and message, keeping the rest
    of the chain; ``error`` itself (type, message, attributes) is kept and
    changed in place.

    Returns:
        ``error``, for ``raise picklable_chain(e)``.
    """
    seen, todo = set(), [error]
    while todo:
        link = todo.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        for attr in ("__cause__", "__context__"):
            inner = getattr(link, attr)
            if inner is not None and not _pickles(inner):
                inner = _stand_in(inner)
                setattr(link, attr, inner)
            if inner is not None:
                todo.append(inner)
    return error


def _pickles(error: BaseException) -> bool:
    """Whether ``error`` alone (its reduce tuple, not its chain) survives a pickle round trip."""
    try:
        pickle.loads(pickle.dumps(error.__reduce__()))
    except Exception:  # pickling raises TypeError, PicklingError, AttributeError, ...
        return False
    return True


def _stand_in(error: BaseException) -> RuntimeError:
    kind = type(error)
    stand_in = RuntimeError(f"{kind.__module__}.{kind.__qualname__}: {error}")
    stand_in.__cause__, stand_in.__context__ = error.__cause__, error.__context__
    stand_in.__suppress_context__ = error.__suppress_context__
    return stand_in.with_traceback(error.__traceback__)
