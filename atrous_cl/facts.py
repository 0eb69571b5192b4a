# SPDX-License-Identifier: Apache-2.0
"""What the op needs to know about a device, read once, and the checks built on it.

:func:`facts` caches a device's properties (every ``clGetDeviceInfo`` is a
driver round trip); the checks refuse a dtype or a size a device cannot take
before anything is allocated, with messages that name the device.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyopencl as cl

from atrous_cl.errors import DeviceCapabilityError

#: Platforms never picked by default: simulators are for checking, not speed.
SIMULATORS = ("oclgrind",)


def is_simulator(device: cl.Device) -> bool:
    """Whether ``device`` belongs to a simulator platform (:data:`SIMULATORS`)."""
    return any(s in facts(device).platform.lower() for s in SIMULATORS)


class Facts(NamedTuple):
    """What the op asks of a device on every call, read from the driver once."""

    name: str
    platform: str
    driver: str
    version: str  # CL_DEVICE_VERSION; PoCL names its LLVM CPU target there
    type: int
    extensions: frozenset
    max_alloc: int
    global_mem: int
    system_svm: bool  # kernels may take plain host pointers (fine-grained system SVM)
    fine_grain_buffers: bool  # SVM allocations the host and kernels share without maps
    local_mem: int = 0  # bytes of local memory a work-group may use
    float_width: int = 0  # CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT: 8 for AVX2, 0 unknown
    max_group: int = 0  # CL_DEVICE_MAX_WORK_GROUP_SIZE, 0 unknown
    max_item_sizes: tuple = ()  # CL_DEVICE_MAX_WORK_ITEM_SIZES, per axis
    compute_units: int = 1  # CL_DEVICE_MAX_COMPUTE_UNITS


def _svm_capabilities(device) -> int:
    try:
        return device.svm_capabilities
    except (cl.Error, AttributeError):  # OpenCL 1.x: no SVM query
        return 0


_facts: dict[int, Facts] = {}


def facts(device: cl.Device) -> Facts:
    """The device's :class:`Facts`, cached per device.

    Each ``clGetDeviceInfo`` round trip is cheap on a CPU driver but not on
    every GPU driver, and a call asks a dozen of them; they never change for a
    device. Objects that are not ``cl.Device`` (test stubs) are read afresh.
    """
    key = device.int_ptr if isinstance(device, cl.Device) else None
    found = _facts.get(key) if key is not None else None
    if found is None:
        svm = _svm_capabilities(device)
        found = Facts(device.name.strip(), device.platform.name.strip(), device.driver_version,
                      device.version, int(device.type), frozenset(device.extensions.split()),
                      device.max_mem_alloc_size, device.global_mem_size,
                      bool(svm & cl.device_svm_capabilities.FINE_GRAIN_SYSTEM),
                      bool(svm & cl.device_svm_capabilities.FINE_GRAIN_BUFFER),
                      int(getattr(device, "local_mem_size", 0) or 0),
                      int(getattr(device, "native_vector_width_float", 0) or 0),
                      int(getattr(device, "max_work_group_size", 0) or 0),
                      tuple(getattr(device, "max_work_item_sizes", ()) or ()),
                      int(getattr(device, "max_compute_units", 1) or 1))
        if key is not None:
            _facts[key] = found
    return found


def is_intel_cpu(device: cl.Device) -> bool:
    """Whether ``device`` is Intel's CPU runtime (the ``intel`` extra)."""
    f = facts(device)
    return "intel" in f.platform.lower() and bool(f.type & cl.device_type.CPU)


def is_pocl(device: cl.Device) -> bool:
    """Whether ``device`` is PoCL's (any of its drivers: PyPI's, Debian's, ...)."""
    return "portable computing language" in facts(device).platform.lower()


def max_vector_bytes(device: cl.Device) -> int | None:
    """The widest vector, in bytes, that ``device``'s compiler builds without crashing the
    process: 32 for PoCL building for an AVX2 CPU target (:data:`_AVX2_TARGETS`, from the
    device version's ``HSTR: pthread-<triple>-<cpu>``) while it reports native float
    vectors of 16 (the host's AVX-512 features on), else None (no limit known).

    PyPI's PoCL 3.0 (LLVM 14) on AMD Zen 4 (family 25 model 17; its LLVM names it
    ``znver3`` and adds the host's AVX-512 features), 2026-12-06: kernels with vectors
    of 16 floats or 8 doubles abort the process at their first launch ("LLVM ERROR: Do not
    know how to scalarize this operator's operand") or crash it, and leave PoCL's kernel
    cache holding a program without kernels for later processes. A probe kernel that only
    copies a ``float16`` (``vload16``, ``vstore16``) aborts the same way; ``float8`` code
    runs. The same PoCL on Zen 3 (AVX2, native float vectors of 8) builds 16-float vectors
    as two of 8.
    """
    f = facts(device)
    if is_pocl(device) and f.float_width >= 16 and _targets(device, _AVX2_TARGETS):
        return 32
    return None


#: LLVM CPU names of x86-64 CPUs without AVX-512: a PoCL targeting one of them while it
#: reports 16-wide float vectors runs an LLVM that did not know the host CPU
#: (:func:`max_vector_bytes`). A newer LLVM's own name (znver4, sapphirerapids, ...) is
#: not limited.
_AVX2_TARGETS = frozenset({"haswell", "broadwell", "skylake", "znver1", "znver2", "znver3",
                           "alderlake", "raptorlake", "meteorlake", "x86-64-v3", "core-avx2"})


def pocl_avx512(device: cl.Device) -> bool:
    """Whether ``device`` is PoCL building for an x86-64 CPU target with AVX-512: its
    device version (``HSTR: pthread-<triple>-<cpu>``) ends in a name of
    :data:`_AVX512_TARGETS` or names ``avx512``.

    PyPI's PoCL 3.0 (LLVM 14) names an Intel Xeon it does not know by its features:
    ``icelake-client`` on a 2-core Xeon of family 6 model 207 (AVX-512, 2026-12-07), where
    it builds and runs 16-float vectors.
    """
    return is_pocl(device) and ("avx512" in facts(device).version.lower()
                                or _targets(device, _AVX512_TARGETS))


def _targets(device: cl.Device, names: frozenset) -> bool:
    """Whether ``device``'s version ends in ``-<cpu>`` for one of the LLVM CPU ``names``
    (whole names: ``x86-64-v3`` and ``icelake-client`` hold hyphens)."""
    version = facts(device).version.strip().lower()
    return any(version.endswith("-" + cpu) for cpu in names)


#: LLVM CPU names of x86-64 CPUs with AVX-512 (:func:`pocl_avx512`).
_AVX512_TARGETS = frozenset({
    "knl", "knm", "skx", "cascadelake", "cooperlake", "cannonlake", "icelake-client",
    "icelake-server", "rocketlake", "tigerlake", "sapphirerapids", "emeraldrapids",
    "graniterapids", "graniterapids-d", "diamondrapids", "znver4", "znver5", "x86-64-v4"})


def describe(device: cl.Device) -> str:
    """``'name (platform, driver version)'`` for messages."""
    f = facts(device)
    return f"{f.name} ({f.platform}, driver {f.driver})"


def check_dtype_support(device: cl.Device, dtype: np.dtype) -> None:
    """Refuse float64 on devices without ``cl_khr_fp64``.

    float16 is stored and loaded with ``vload_half``/``vstore_half`` and summed
    in float32, which core OpenCL supports without ``cl_khr_fp16``.

    Raises:
        DeviceCapabilityError: the device lacks the extension the dtype needs.
    """
    if np.dtype(dtype) == np.float64 and "cl_khr_fp64" not in facts(device).extensions:
        raise DeviceCapabilityError(f"float64 needs the OpenCL extension cl_khr_fp64, which device "
                                    f"{describe(device)} lacks; use float32 or another device")


def check_allocation(device: cl.Device, what: str, nbytes: int) -> None:
    """Refuse a buffer larger than the device can allocate, before trying.

    Raises:
        DeviceCapabilityError: ``nbytes`` exceeds the device's limits.
    """
    limit = facts(device).max_alloc
    if nbytes > limit:
        raise DeviceCapabilityError(f"{what} needs {nbytes} bytes, more than the largest buffer "
                                    f"device {describe(device)} can allocate ({limit} bytes)")


def check_fits(device: cl.Device, dtype: np.dtype, counts: dict[str, int],
               together: str | None = None) -> None:
    """Refuse, by name and size, tensors the device cannot allocate or hold at once.

    Args:
        counts: element counts by the name used in messages.
        together: how the message names them all (default: the names joined).

    Raises:
        DeviceCapabilityError: one tensor exceeds the largest allocation, or
            all of them the global memory.
    """
    itemsize = np.dtype(dtype).itemsize
    for what, count in counts.items():
        check_allocation(device, what, count * itemsize)
    total, memory = sum(counts.values()) * itemsize, facts(device).global_mem
    if total > memory:
        raise DeviceCapabilityError(f"{together or ', '.join(counts)} need {total} bytes together, "
                                    f"more than the {memory} bytes of global memory of device "
                                    f"{describe(device)}")


def status_name(error: cl.Error) -> str | None:
    """The OpenCL status name of a pyopencl error, e.g. ``'CL_OUT_OF_RESOURCES'``."""
    try:
        return "CL_" + cl.status_code.to_string(error.code)
    except (AttributeError, ValueError, TypeError):
        return None
