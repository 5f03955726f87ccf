"""Device profiles: what runs best on each edge target, and why.

People pick a board or a phone, not a file format. A `DeviceProfile` names the format and
precision to export, the input layout, the delegate or execution provider that should run the
file there, the threads to use, the board's limits, and the Python packages its runtime needs.

Formats are named by string (``"edgetpu"``), not by `Format` row: a profile may name a format
this edgepilot does not have yet, and `DeviceProfile.resolve_format` says so in one line until
it lands in `edgepilot.formats.FORMATS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgepilot.errors import EdgepilotError, UnsupportedFormatError, did_you_mean

__all__ = ["DeviceProfile", "PROFILES", "UnknownDeviceError", "profile_by_name",
           "register_profile"]


class UnknownDeviceError(EdgepilotError, KeyError):
    """A device name that is not in the profile registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class DeviceProfile:
    """One edge target.

    Attributes:
        name: what users type (``--device rpi5``).
        title: the hardware in words.
        format: format name in `edgepilot.formats` (may not be built yet).
        precision: precision to export.
        layout: input layout of the exported file ("NHWC" or "NCHW").
        accelerator: the delegate or execution provider that should run it there.
        threads: inference threads (None: the runtime's default).
        arch: CPU architecture of the target (`platform.machine()` there).
        limits: memory and other limits that shape the choice.
        why: one line saying why this format and precision.
        io_dtype: boundary type of int8 files (None: the exporter's default).
        providers: ONNX execution providers to ask for, best first.
    """

    name: str
    title: str
    format: str
    precision: str
    layout: str
    accelerator: str
    threads: int | None
    arch: str
    limits: str
    why: str
    io_dtype: str | None = None
    providers: tuple[str, ...] = ()

    @property
    def requirements(self) -> tuple[str, ...]:
        """Names of the packages the runtime needs there (never torch): the format table's
        `Format.runtime_requirements`, the one place that says them."""
        return tuple(re.split(r"[<>=!~;\s\[]", r, maxsplit=1)[0]
                     for r in self.resolve_format().runtime_requirements)

    def resolve_format(self):
        """The `Format` row of this profile, or a one-line error when it is not built yet."""
        from edgepilot.formats import FORMATS

        for fmt in FORMATS:
            if fmt.name == self.format:
                return fmt
        raise UnsupportedFormatError(
            f"Device '{self.name}' runs the '{self.format}' format, which this edgepilot does "
            f"not have yet (formats here: {', '.join(f.name for f in FORMATS)}). Pass "
            "formats= and precision= to export for it anyway."
        )

    @property
    def available(self) -> bool:
        """Whether this edgepilot has the profile's format."""
        try:
            self.resolve_format()
        except UnsupportedFormatError:
            return False
        return True

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self), "available": self.available}


_REGISTRY: dict[str, DeviceProfile] = {}


def register_profile(profile: DeviceProfile) -> DeviceProfile:
    """Add a profile to the registry (a duplicate name is a programming error)."""
    if profile.name in _REGISTRY:
        raise ValueError(f"device profile '{profile.name}' is registered twice")
    _REGISTRY[profile.name] = profile
    return profile


def profile_by_name(name: str) -> DeviceProfile:
    """The profile called `name`, or an error listing the known devices."""
    key = name.strip().lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    raise UnknownDeviceError(
        f"Unknown device '{name}'.{did_you_mean(key, _REGISTRY)} "
        f"Devices: {', '.join(_REGISTRY)} (see 'edgepilot devices')"
    )


# Raspberry Pi OS (Bookworm) is 64-bit on every board below; LiteRT's CPU path is XNNPACK,
# whose int8 kernels use NEON (and the dot-product instructions on the Pi 5's Cortex-A76).
for _profile in (
    DeviceProfile(
        name="rpi-zero2", title="Raspberry Pi Zero 2 W (4x Cortex-A53, 512 MB)",
        format="tflite", precision="int8", layout="NHWC", accelerator="XNNPACK (CPU)",
        threads=4, arch="aarch64",
        limits="512 MB RAM shared with the GPU; keep models small; 64-bit OS only (no 32-bit "
               "ARM wheels exist)",
        why="full int8 is 4x smaller than fp32 and XNNPACK's int8 NEON kernels are the fastest "
            "path on the A53"),
    DeviceProfile(
        name="rpi4", title="Raspberry Pi 4 / 400 / CM4 (4x Cortex-A72)",
        format="tflite", precision="int8", layout="NHWC", accelerator="XNNPACK (CPU)",
        threads=4, arch="aarch64",
        limits="1-8 GB RAM; the A72 has NEON but no dot-product; 64-bit OS only (no 32-bit "
               "ARM wheels exist)",
        why="LiteRT with XNNPACK, full int8: ~3x faster than fp32 on NEON"),
    DeviceProfile(
        name="rpi5", title="Raspberry Pi 5 (4x Cortex-A76)",
        format="tflite", precision="int8", layout="NHWC", accelerator="XNNPACK (CPU)",
        threads=4, arch="aarch64",
        limits="2-16 GB RAM; the A76 has NEON with dot-product; 64-bit OS only",
        why="LiteRT with XNNPACK, full int8: the A76's dot-product instructions run int8 "
            "convolutions fastest"),
    DeviceProfile(
        name="coral-usb", title="Coral USB Accelerator (Edge TPU on USB, any Linux host)",
        format="edgetpu", precision="int8", layout="NHWC", accelerator="Edge TPU delegate "
        "(libedgetpu)", threads=1, arch="any",
        limits="8 MB on-chip parameter cache; only ops the compiler maps run on the TPU",
        why="the Edge TPU runs only fully int8-quantized TFLite compiled by edgetpu_compiler",
        io_dtype="uint8"),
    DeviceProfile(
        name="coral-devboard", title="Coral Dev Board (NXP i.MX 8M + Edge TPU, Mendel Linux)",
        format="edgetpu", precision="int8", layout="NHWC",
        accelerator="Edge TPU delegate (libedgetpu)", threads=1, arch="aarch64",
        limits="1-4 GB RAM; compile on an x86 host (no ARM edgetpu_compiler since 2.1)",
        why="the Edge TPU runs only fully int8-quantized TFLite compiled by edgetpu_compiler",
        io_dtype="uint8"),
    DeviceProfile(
        name="android", title="Android phone (LiteRT: CPU int8; fp16 for the GPU delegate)",
        format="tflite", precision="int8", layout="NHWC",
        accelerator="XNNPACK (CPU); use fp16 with the GPU delegate", threads=4, arch="aarch64",
        limits="the task libraries and MediaPipe need uint8 inputs",
        why="int8 is fastest on the big cores; the GPU delegate computes in fp16, so export "
            "fp16 for it",
        io_dtype="uint8"),
    DeviceProfile(
        name="iphone", title="iPhone / iPad (Core ML, Neural Engine)",
        format="coreml", precision="fp16", layout="NCHW", accelerator="Neural Engine "
        "(Core ML computeUnits=ALL)", threads=None, arch="arm64",
        limits="the Neural Engine computes in fp16; unsupported layers fall back to GPU/CPU",
        why="Core ML is the only way onto the Neural Engine, which runs fp16 natively"),
    DeviceProfile(
        name="mac", title="Apple silicon Mac (Core ML, Neural Engine)",
        format="coreml", precision="fp16", layout="NCHW", accelerator="Neural Engine "
        "(Core ML computeUnits=ALL)", threads=None, arch="arm64",
        limits="unified memory; unsupported layers fall back to GPU/CPU",
        why="Core ML is the only way onto the Neural Engine, which runs fp16 natively"),
    DeviceProfile(
        name="jetson", title="NVIDIA Jetson (Orin, Xavier; JetPack)",
        format="onnx", precision="fp16", layout="NCHW",
        accelerator="TensorRT, then CUDA execution provider", threads=None, arch="aarch64",
        limits="CPU and GPU share the RAM; onnxruntime-gpu comes from NVIDIA's JetPack index",
        why="ONNX is what TensorRT and the CUDA provider take; fp16 runs on the tensor cores",
        providers=("TensorrtExecutionProvider", "CUDAExecutionProvider")),
    DeviceProfile(
        name="x86", title="x86-64 PC or server (CPU)",
        format="onnx", precision="int8", layout="NCHW",
        accelerator="onnxruntime CPU (AVX2 / AVX-512 VNNI int8 kernels)", threads=None,
        arch="x86_64", limits="none that matter for small vision models",
        why="onnxruntime's int8 QDQ kernels use VNNI where present: ~2x faster than fp32"),
):
    register_profile(_profile)

#: Every registered profile, in registration order.
PROFILES: tuple[DeviceProfile, ...] = tuple(_REGISTRY.values())
