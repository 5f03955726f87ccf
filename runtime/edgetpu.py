"""Coral Edge TPU backend: an _edgetpu.tflite run by the LiteRT interpreter with the libedgetpu
delegate, on the device a selector names (pycoral's grammar: ``usb``, ``usb:1``, ``pci:0``).

Never a silent fallback: without libedgetpu or the device, `load` fails in one line saying
what to install and what runs here instead (the int8 .tflite on the CPU).
"""

from __future__ import annotations

import importlib
import platform
import re
from pathlib import Path

from edgepilot.errors import EdgepilotError, InputError
from edgepilot.runtime.backend import (
    file_errors,
    meta_entry,
    quiet_native_stderr,
)
from edgepilot.runtime.edgetpu_check import check_model
from edgepilot.runtime.litert import InterpreterBackend, interpreter_module
from edgepilot.runtime.tflite_metadata import read_metadata

__all__ = ["EdgeTPUBackend", "parse_device", "delegate_library", "cannot_run_here",
           "RUNTIME_URL"]

RUNTIME_URL = "https://coral.ai/software/#edgetpu-runtime"
_DEVICE = re.compile(r"^(?:(usb|pci)(?::(\d{1,3}))?|:(\d{1,3}))$")
#: libedgetpu's file name per OS (what pycoral loads).
_LIBRARIES = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib",
              "Windows": "edgetpu.dll"}


def parse_device(device: str | None) -> str | None:
    """Check an Edge TPU device selector; returns it normalised (None: the first device).

    Valid: ``usb`` / ``pci`` (the first of that kind), ``usb:N`` / ``pci:N`` (the N-th of
    that kind, from 0), ``:N`` (the N-th of any kind).

    Raises:
        InputError: naming the valid forms.
    """
    if device is None or device == "":
        return None
    match = _DEVICE.match(device.strip().lower())
    if not match:
        raise InputError(f"Edge TPU device '{device}' is not a device selector. Valid: usb, "
                         "usb:N, pci, pci:N, :N (N counts from 0), or none for the first device")
    kind, index, any_index = match.groups()
    if kind:
        return kind if index is None else f"{kind}:{int(index)}"
    return f":{int(any_index)}"


def delegate_library() -> str:
    """libedgetpu's file name on this OS."""
    return _LIBRARIES.get(platform.system(), _LIBRARIES["Linux"])


def cannot_run_here() -> str | None:
    """Why no Edge TPU file can run on this machine (libedgetpu absent), or None."""
    import ctypes

    try:
        ctypes.CDLL(delegate_library())
    except OSError:
        return (f"no Edge TPU runtime here ({delegate_library()} is not installed): the file "
                "was checked op by op, not run; its int8 graph runs on the CPU as --format "
                "tflite --precision int8")
    return None


class EdgeTPUBackend(InterpreterBackend):
    """Runs an _edgetpu.tflite on a Coral Edge TPU.

    Args:
        path: the _edgetpu.tflite file.
        threads: CPU threads for the ops that stay on the CPU.
        accelerator: ``usb``, ``usb:1``, ``pci:0``, ``:0`` ... (None: the first Edge TPU found).
    """

    def __init__(self, path: Path, *, threads: int | None = None,
                 accelerator: str | None = None) -> None:
        path = Path(path)
        selector = parse_device(accelerator)
        module, dist = interpreter_module()
        data = path.read_bytes()
        with file_errors(dist, path):
            self.metadata = read_metadata(data, path)
            verdict = check_model(data, path)
        delegate = self._delegate(module, selector, path)
        with file_errors(dist, path):
            with quiet_native_stderr():
                self.interpreter = module.Interpreter(model_content=data, num_threads=threads,
                                                      experimental_delegates=[delegate])
                self.interpreter.allocate_tensors()
            self._bind()
            self.meta_json = meta_entry(self.metadata.edgepilot_json)
        version = getattr(importlib.import_module(dist.replace("-", "_")), "__version__", "")
        where = "compiled" if verdict.compiled else "NOT compiled: every op runs on the CPU"
        self.description = (f"{dist} {version} + libedgetpu ({selector or 'first device'}; "
                            f"{where}; {len(verdict.on_cpu)} op(s) on the CPU)")

    @staticmethod
    def _delegate(module, selector: str | None, path: Path):
        library = delegate_library()
        if cannot_run_here():
            raise EdgepilotError(
                f"Cannot run '{path.name}' on a Coral Edge TPU: {library} (the Edge TPU runtime) "
                f"is not installed. Install libedgetpu1-std ({RUNTIME_URL}) and plug in the "
                "device; on this machine run the int8 file on the CPU instead (the same graph: "
                "edgepilot.load('<model>_int8.tflite'))")
        try:
            with quiet_native_stderr():
                return module.load_delegate(library, {"device": selector} if selector else {})
        except (ValueError, OSError, RuntimeError) as err:
            raise EdgepilotError(
                f"Cannot run '{path.name}' on a Coral Edge TPU: libedgetpu found no Edge TPU "
                f"{'at ' + selector if selector else 'on USB or PCIe'}. Plug it in (USB "
                "accelerators need a USB 3 port for full speed) or pick another with "
                "accelerator='usb:1' / 'pci:0'; on this machine run the int8 file on the CPU "
                "instead (edgepilot.load('<model>_int8.tflite'))") from err
