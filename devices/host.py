"""Describe the machine edgepilot runs on and pick the device profile that fits it.

Everything is read from files under a root folder (``/`` by default): ``/proc/cpuinfo``,
``/proc/meminfo``, the device tree's ``model`` and ``compatible`` (Raspberry Pi, Jetson, Coral
Dev Board), ``/etc/nv_tegra_release`` (Jetson L4T), ``/etc/os-release``, USB ids in
``/sys/bus/usb/devices`` (the Coral USB Accelerator) and ``/dev/video*``. Tests point the root
at a fake tree. Which runtimes, delegates and execution providers import is checked in this
Python, whatever the root.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgepilot.devices.profiles import DeviceProfile, profile_by_name

__all__ = ["HostInfo", "detect_host", "match_profile", "CPU_FEATURES"]

#: cpuinfo flag -> the name users know, for the features int8 and fp16 kernels use.
CPU_FEATURES = {
    # x86 ("flags")
    "sse4_2": "SSE4.2", "avx": "AVX", "avx2": "AVX2", "fma": "FMA", "f16c": "F16C",
    "avx512f": "AVX-512", "avx512bw": "AVX-512BW", "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI", "avx512_bf16": "AVX-512 BF16", "amx_int8": "AMX-INT8",
    # ARM ("Features"): NEON is "asimd" on aarch64 and "neon" on 32-bit kernels
    "asimd": "NEON", "neon": "NEON", "asimdhp": "fp16 arithmetic", "asimddp": "dotprod",
    "i8mm": "i8mm", "bf16": "bf16", "sve": "SVE", "sve2": "SVE2",
}

# (name shown, module to import, distribution for the version). Imported for real, so a
# broken native wheel shows as such. coremltools and executorch are only looked up: importing
# them imports torch, which `edgepilot devices` must not pay for.
_RUNTIMES = (("onnxruntime", "onnxruntime", "onnxruntime"),
             ("ai-edge-litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
             ("tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime"),
             ("pycoral", "pycoral.utils.edgetpu", "pycoral"),
             ("tensorrt", "tensorrt", "tensorrt"))
_LOOKED_UP = (("coremltools", "coremltools"), ("executorch", "executorch"))

# USB ids of the Coral USB Accelerator: before and after its firmware is loaded.
_CORAL_USB_IDS = {("1a6e", "089a"), ("18d1", "9302")}


@dataclass
class HostInfo:
    """What this machine is and what can run here."""

    os: str = ""
    kernel: str = ""
    arch: str = ""
    cores: int = 0
    cpu: str = ""
    cpu_features: list[str] = field(default_factory=list)
    board: str = ""
    soc: list[str] = field(default_factory=list)  # device-tree "compatible" strings
    l4t: str = ""  # Jetson Linux release, e.g. "R35.4.1"
    memory_mb: int = 0
    memory_available_mb: int = 0
    runtimes: dict[str, str] = field(default_factory=dict)  # name -> version or "not installed"
    providers: list[str] = field(default_factory=list)  # onnxruntime execution providers
    delegates: list[str] = field(default_factory=list)  # LiteRT delegates usable here
    accelerators: list[str] = field(default_factory=list)  # USB/PCIe accelerators found
    cameras: list[str] = field(default_factory=list)
    userland_bits: int = 0  # 64 or 32: this Python's pointers (a 32-bit OS on a 64-bit kernel)
    profile: str = ""
    profile_reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line: board or CPU, cores, memory, OS."""
        what = self.board or self.cpu or self.arch
        return (f"{what}, {self.arch}, {self.cores} cores, {self.memory_mb / 1024:.1f} GB, "
                f"{self.os or 'unknown OS'}")


def _read(root: Path, *paths: str) -> str:
    """The text of the first of `paths` (under `root`) that reads, or ''."""
    for rel in paths:
        try:
            data = (root / rel.lstrip("/")).read_bytes()
        except OSError:
            continue
        return data.decode("utf-8", "replace")
    return ""


def _cpuinfo(text: str) -> dict:
    """cores, cpu, cpu_features, arch and board (32-bit Pi kernels name it) from cpuinfo."""
    cores, name, flags, arch, board = 0, "", set(), "", ""
    implementer = part = ""
    for line in text.splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "processor" and value.isdigit():
            cores += 1
        elif key == "model name" and not name:
            name = value
        elif key == "Model":  # Raspberry Pi kernels: the board, not the CPU
            board = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
        elif key == "CPU architecture":
            arch = "aarch64" if value in ("8", "AArch64") else f"armv{value}l"
        elif key == "CPU implementer":
            implementer = value
        elif key == "CPU part":
            part = value.lower()
    if not arch and "lm" in flags:
        arch = "x86_64"
    if implementer and (not name or name.startswith("ARMv")):
        name = _ARM_CORES.get((implementer, part), name or f"ARM core {implementer}/{part}")
    features = list(dict.fromkeys(CPU_FEATURES[f] for f in CPU_FEATURES if f in flags))
    return {"cores": cores, "cpu": name, "cpu_features": features, "arch": arch,
            "board": board}


# (implementer, part) -> core, for the boards edgepilot has profiles for.
_ARM_CORES = {("0x41", "0xd03"): "Cortex-A53", ("0x41", "0xd08"): "Cortex-A72",
              ("0x41", "0xd0b"): "Cortex-A76", ("0x41", "0xd42"): "Cortex-A78AE",
              ("0x41", "0xd05"): "Cortex-A55", ("0x4e", "0x004"): "NVIDIA Carmel"}


def _meminfo(text: str) -> tuple[int, int]:
    values = {}
    for line in text.splitlines():
        match = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if match:
            values[match[1]] = int(match[2]) // 1024
    return values.get("MemTotal", 0), values.get("MemAvailable", values.get("MemFree", 0))


def _os_name(root: Path) -> str:
    for line in _read(root, "etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return ""


def _l4t(text: str) -> str:
    """'# R35 (release), REVISION: 4.1, ...' -> 'R35.4.1'."""
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{match[1]}.{match[2]}" if match else ""


def _usb_accelerators(root: Path) -> list[str]:
    found = []
    for device in sorted((root / "sys/bus/usb/devices").glob("*")):
        vendor = _read(device, "idVendor").strip().lower()
        product = _read(device, "idProduct").strip().lower()
        if (vendor, product) in _CORAL_USB_IDS:
            found.append(f"Coral USB Accelerator ({vendor}:{product})")
    return found


def _cameras(root: Path) -> list[str]:
    def number(path: Path) -> int:
        digits = path.name.removeprefix("video")
        return int(digits) if digits.isdigit() else 1 << 30

    return [f"/{p.relative_to(root).as_posix()}" for p in sorted((root / "dev").glob("video*"),
                                                                  key=number)]


def _runtimes() -> tuple[dict[str, str], list[str], list[str]]:
    """(runtime -> version or why not, onnxruntime providers, LiteRT delegates)."""
    found, providers, delegates = {}, [], []
    for name, module, dist in _RUNTIMES:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            found[name] = "not installed"
            continue
        try:
            imported = importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - a broken wheel is reported, not fatal
            found[name] = f"broken: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            continue
        found[name] = _version(dist)
        if name == "onnxruntime":
            providers = list(imported.get_available_providers())
        if name in ("ai-edge-litert", "tflite-runtime") and "XNNPACK" not in delegates:
            delegates.append("XNNPACK")  # built into the interpreter on every CPU
    for name, dist in _LOOKED_UP:
        installed = importlib.util.find_spec(name) is not None
        found[name] = f"{_version(dist)} (installed, not imported)" if installed \
            else "not installed"
    if _edgetpu_library():
        delegates.append("Edge TPU (libedgetpu)")
    return found, providers, delegates


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def _edgetpu_library() -> bool:
    import ctypes.util

    return ctypes.util.find_library("edgetpu") is not None


def detect_host(root: str | Path = "/", *, runtimes: bool = True) -> HostInfo:
    """Describe this machine (or the fake tree at `root`) and match a device profile.

    Args:
        root: where /proc, /sys, /etc and /dev are read from.
        runtimes: also check which runtimes, providers and delegates import in this Python.

    Example:
        >>> host = edgepilot.devices.detect_host()
        >>> host.profile, host.cpu_features
        ('x86', ['AVX', 'AVX2', 'FMA'])
    """
    root = Path(root)
    real = root.resolve() == Path("/")
    info = HostInfo()
    cpu = _cpuinfo(_read(root, "proc/cpuinfo"))
    info.cores, info.cpu, info.cpu_features, info.arch = (cpu["cores"], cpu["cpu"],
                                                          cpu["cpu_features"], cpu["arch"])
    if real:
        info.arch = platform.machine() or info.arch
        info.userland_bits = 8 * struct.calcsize("P")
        info.kernel = platform.release()
        info.cores = os.cpu_count() or info.cores
    info.os = _os_name(root) or (platform.system() if real else "")
    if real and platform.system() == "Darwin":
        info.os, info.cpu = f"macOS {platform.mac_ver()[0]}", info.cpu or platform.processor()
    info.board = _read(root, "sys/firmware/devicetree/base/model",
                       "proc/device-tree/model").strip("\x00 \n") or cpu["board"]
    compatible = _read(root, "sys/firmware/devicetree/base/compatible",
                       "proc/device-tree/compatible")
    info.soc = [s for s in compatible.split("\x00") if s.strip()]
    info.l4t = _l4t(_read(root, "etc/nv_tegra_release"))
    info.memory_mb, info.memory_available_mb = _meminfo(_read(root, "proc/meminfo"))
    info.accelerators = _usb_accelerators(root)
    info.cameras = _cameras(root)
    if runtimes:
        info.runtimes, info.providers, info.delegates = _runtimes()
    profile, info.profile_reason = match_profile(info)
    info.profile = profile.name if profile else ""
    return info


def match_profile(host: HostInfo) -> tuple[DeviceProfile | None, str]:
    """The profile that fits `host`, and why (or None and why not)."""
    board = host.board.lower()
    soc = " ".join(host.soc).lower()
    if ("raspberry pi" in board or "bcm27" in soc) and (host.arch.startswith("armv") or
                                                        host.userland_bits == 32):
        return None, (f"'{host.board}' runs a 32-bit OS ({host.arch}): numpy, onnxruntime, "
                      "ai-edge-litert and OpenCV publish no 32-bit ARM wheels; install the "
                      "64-bit Raspberry Pi OS")
    rules = (
        (host.accelerators and any("Coral" in a for a in host.accelerators), "coral-usb",
         "a Coral USB Accelerator is plugged in"),
        ("phanbell" in board or "coral" in board, "coral-devboard",
         f"the device tree names the board '{host.board}'"),
        ("raspberry pi 5" in board or "bcm2712" in soc, "rpi5",
         f"the device tree names the board '{host.board}'"),
        (re.search(r"raspberry pi (4|400|compute module 4)", board) or "bcm2711" in soc, "rpi4",
         f"the device tree names the board '{host.board}'"),
        ("raspberry pi zero 2" in board, "rpi-zero2",
         f"the device tree names the board '{host.board}'"),
        (bool(host.l4t) or "jetson" in board or "tegra" in soc, "jetson",
         f"a Jetson ({host.board or 'tegra SoC'}, L4T {host.l4t or 'unknown'})"),
        (host.os.startswith("macOS") and host.arch == "arm64", "mac",
         "macOS on Apple silicon"),
        (host.arch in ("x86_64", "AMD64"), "x86", f"an {host.arch} CPU"),
    )
    for matched, name, reason in rules:
        if matched:
            return profile_by_name(name), reason
    return None, (f"no profile fits (board '{host.board or 'unknown'}', {host.arch or 'unknown'}"
                  " architecture); pick one with --device")
