# SPDX-License-Identifier: Apache-2.0
"""atrous-cl: TensorFlow-exact transposed atrous convolution on any OpenCL device."""

from atrous_cl import cache as _cache
from atrous_cl import icd as _icd

# Before anything asks the ICD loader for platforms or builds (see each).
_cache.provide_cache_home()
_icd.register_pip_icds()

from atrous_cl import geometry, reference  # noqa: E402
from atrous_cl.errors import AtrousCLError, DeviceCapabilityError, DeviceError  # noqa: E402
from atrous_cl.ops import atrous_conv2d_transpose  # noqa: E402
from atrous_cl.discovery import DeviceInfo, default_device, devices, get_queue  # noqa: E402
from atrous_cl.training import (atrous_conv2d, atrous_conv2d_transpose_vjp,  # noqa: E402
                                atrous_conv2d_vjp)

__version__ = "0.1.0"

__all__ = [
    "AtrousCLError", "DeviceCapabilityError", "DeviceError", "DeviceInfo",
    "atrous_conv2d", "atrous_conv2d_transpose", "atrous_conv2d_transpose_vjp", "atrous_conv2d_vjp",
    "default_device", "devices", "geometry", "get_queue", "reference",
]
