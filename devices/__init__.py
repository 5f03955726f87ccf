"""edgepilot.devices: edge targets as profiles, and what the machine edgepilot runs on is.

    >>> from edgepilot.devices import profile_by_name, detect_host
    >>> profile_by_name("rpi5").format, profile_by_name("rpi5").precision
    ('tflite', 'int8')
    >>> detect_host().profile
    'x86'

Kept torch-free like the runtime: nothing here imports torch, onnx or TensorFlow.
"""

from edgepilot.devices.host import HostInfo, detect_host, match_profile
from edgepilot.devices.profiles import (
    PROFILES,
    DeviceProfile,
    UnknownDeviceError,
    profile_by_name,
    register_profile,
)

__all__ = ["PROFILES", "DeviceProfile", "HostInfo", "UnknownDeviceError", "detect_host",
           "match_profile", "profile_by_name", "register_profile"]
