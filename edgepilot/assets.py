"""Models shipped inside the package, so a runtime-only install can predict without training."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from edgepilot.errors import ModelFileError

__all__ = ["shipped_model", "resolve_model", "SHIPPED"]

#: Names users can pass instead of a path (e.g. ``edgepilot predict stoplight photo.jpg``),
#: and the file stem each stands for.
SHIPPED = {"stoplight": "stoplight", "stoplight-detector": "stoplight_detector"}


def shipped_model(name: str = "stoplight", suffix: str = ".onnx") -> Path:
    """Path of a shipped model file: ``.onnx`` (runtime) or ``.pt`` (checkpoint, for export);
    the detector also ships ``_int8.tflite`` (the live demo's)."""
    stem = SHIPPED.get(name, name)
    path = Path(str(resources.files("edgepilot") / "assets" / f"{stem}{suffix}"))
    if name not in SHIPPED or not path.is_file():
        raise ModelFileError(
            f"No shipped model '{name}{suffix}'. Shipped models: {', '.join(SHIPPED)} "
            "(.onnx, .pt). Reinstall edgepilot if a shipped file is missing."
        )
    return path


def resolve_model(spec: str) -> Path:
    """A model path as given, or the shipped model when `spec` is a shipped name."""
    path = Path(spec)
    if not path.exists() and spec in SHIPPED:
        return shipped_model(spec)
    return path
