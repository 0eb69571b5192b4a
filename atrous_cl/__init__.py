# SPDX-License-Identifier: Apache-2.0
"""atrous-cl: TensorFlow-exact transposed atrous convolution on any OpenCL device."""

from atrous_cl import geometry, reference
from atrous_cl.errors import AtrousCLError, DeviceCapabilityError, DeviceError
from atrous_cl.ops import atrous_conv2d_transpose
from atrous_cl.runtime import DeviceInfo, default_device, devices, get_queue

__version__ = "0.1.0"

__all__ = [
    "AtrousCLError", "DeviceCapabilityError", "DeviceError", "DeviceInfo",
    "atrous_conv2d_transpose", "default_device", "devices", "geometry", "get_queue", "reference",
]
