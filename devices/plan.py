"""What `export --device NAME` writes: the profile's format and precision, unless the user said
otherwise (explicit flags win, with a warning where they contradict the device)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from edgepilot.devices.profiles import DeviceProfile, profile_by_name

__all__ = ["ExportPlan", "export_plan"]


@dataclass
class ExportPlan:
    """Formats, precisions and int8 boundary type to export, and the warnings to show."""

    formats: list[str]
    precisions: list[str] | None
    io_dtype: str | None
    profile: DeviceProfile | None = None
    warnings: list[str] = field(default_factory=list)


def export_plan(device: str | None, formats: Sequence[str] | None,
                precisions: Sequence[str] | None, io_dtype: str | None) -> ExportPlan:
    """Merge a device profile with the flags given (None: flag not given).

    Raises `UnsupportedFormatError` when the device's format is not built yet and no
    ``--format`` was given, and `UnknownDeviceError` for an unknown device.
    """
    if device is None:
        return ExportPlan(list(formats or ["onnx"]), list(precisions) if precisions else None,
                          io_dtype)
    profile = profile_by_name(device)
    plan = ExportPlan([], None, io_dtype, profile)
    if formats:
        plan.formats = list(formats)
        if profile.format not in plan.formats:
            plan.warnings.append(f"--format {' '.join(formats)} instead of '{profile.format}', "
                                 f"which runs best on {profile.name}: {profile.why}")
    else:
        plan.formats = [profile.resolve_format().name]
    if precisions:
        plan.precisions = list(precisions)
        if profile.precision not in plan.precisions:
            plan.warnings.append(f"--precision {' '.join(precisions)} instead of "
                                 f"'{profile.precision}', which {profile.name} is profiled for")
    else:
        plan.precisions = [profile.precision]
    if io_dtype is None:
        plan.io_dtype = profile.io_dtype if plan.formats == [profile.format] else None
    elif profile.io_dtype and io_dtype != profile.io_dtype:
        plan.warnings.append(f"--io-dtype {io_dtype} instead of '{profile.io_dtype}', which "
                             f"{profile.name}'s runtime expects ({profile.limits})")
    return plan
