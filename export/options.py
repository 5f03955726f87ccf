"""What every exporter is given: one options type, so an option is declared once, and a name no
format knows is refused with the valid ones instead of silently dropped.

    >>> options = ExportOptions(meta=meta, precision="int8", calibration=images)
    >>> notes = exporter.export(module, sample, path, options)

Options only some formats take (Core ML's ``compute_units``) are listed in the format table
(`Format.options`); `export()` passes them through ``**format_options`` after
`check_format_options` has checked their names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgepilot.errors import InputError, did_you_mean
from edgepilot.formats import FORMATS

if TYPE_CHECKING:
    import numpy as np

    from edgepilot.export.guard import Guard
    from edgepilot.meta import ModelMeta

__all__ = ["ExportOptions", "check_format_options"]


@dataclass(frozen=True)
class ExportOptions:
    """Everything an exporter needs besides the module, its sample input and the path.

    Attributes:
        meta: labels and preprocessing to embed.
        precision: one of the format's precisions.
        calibration: int8 calibration inputs, already prepared for the model.
        method: the calibration method (``minmax``, ``entropy``, ``percentile``).
        guard: the int8 accuracy guard, or None.
        io_dtype: boundary type of int8 files (``int8``/``uint8`` for tflite).
        dynamic_batch: ask for a dynamic batch dimension.
        compute_units: Core ML only: ``ALL``, ``CPU_ONLY``, ``CPU_AND_GPU``, ``CPU_AND_NE``.
        full_integer: int8 TFLite only: every op integer, a detector's head too (the Edge
            TPU's compiler puts float ops on the CPU).
    """

    meta: ModelMeta | None = None
    precision: str = "fp32"
    calibration: np.ndarray | None = None
    method: str = "minmax"
    guard: Guard | None = None
    io_dtype: str | None = None
    dynamic_batch: bool = False
    compute_units: str | None = None
    full_integer: bool = False

    def replace(self, **changes: Any) -> ExportOptions:
        return dataclasses.replace(self, **changes)


def check_format_options(options: Mapping[str, Any]) -> None:
    """Refuse an option name no format takes (a typo such as ``compute_unit``), naming the
    valid ones and the formats that take them."""
    takes = {name: [f.name for f in FORMATS if name in f.options]
             for fmt in FORMATS for name in fmt.options}
    for name in options:
        if name not in takes:
            valid = ", ".join(f"{n} ({', '.join(fmts)})" for n, fmts in sorted(takes.items()))
            raise InputError(f"Unknown export option '{name}'.{did_you_mean(name, list(takes))}"
                             f" Options that formats take: {valid or 'none'}")
