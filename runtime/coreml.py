"""Core ML backend: an .mlpackage (a folder) run by coremltools on macOS, with the compute
units the file was exported for (or those passed to `load`), reported in `model.backend`.

Core ML itself exists only on Apple's OSes: elsewhere `load` fails in one line that says so
and names the formats that run here.
"""

from __future__ import annotations

import platform
import warnings
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError, InputError, require
from edgepilot.runtime.backend import Backend, TensorInfo, file_errors, meta_entry
from edgepilot.runtime.mlpackage import check_package

__all__ = ["CoreMLBackend", "COMPUTE_UNITS", "COMPUTE_UNITS_KEY", "META_KEY", "INPUT_NAME"]

#: coremltools' ComputeUnit names users pass (--compute-units).
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_ONLY", "CPU_AND_GPU")
#: user_defined_metadata keys edgepilot writes.
META_KEY = "edgepilot"
COMPUTE_UNITS_KEY = "edgepilot.compute_units"
INPUT_NAME = "image"


class CoreMLBackend(Backend):
    """Runs an .mlpackage with Core ML (macOS only).

    The file takes an RGB image and returns class probabilities; `run` takes the normalised
    NCHW float array edgepilot's `Model` prepares and turns it back into the image Core ML
    wants, so every format is called alike.

    Args:
        path: the .mlpackage folder.
        threads: ignored (Core ML schedules its own work).
        compute_units: ALL, CPU_AND_NE, CPU_ONLY or CPU_AND_GPU (default: as exported).
    """

    def __init__(self, path: Path, *, threads: int | None = None,
                 compute_units: str | None = None) -> None:
        if platform.system() != "Darwin":
            raise EdgepilotError(
                f"Core ML prediction needs macOS; '{Path(path).name}' cannot run on "
                f"{platform.system()}. Here, export to formats=onnx or executorch and run that "
                "('edgepilot info' still reads the .mlpackage)")
        if compute_units is not None and compute_units.upper() not in COMPUTE_UNITS:
            raise InputError(f"Compute units '{compute_units}' are not valid. Valid: "
                             f"{', '.join(COMPUTE_UNITS)}")
        ct = require("coremltools", "coreml", "Running Core ML models")
        from PIL import Image

        check_package(Path(path))  # no links out, no FIFOs, a Manifest inside the package
        self._image = Image
        with file_errors("coremltools", path), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec_model = ct.models.MLModel(str(path), skip_model_load=True)
            metadata = dict(spec_model.user_defined_metadata)
            units = (compute_units or metadata.get(COMPUTE_UNITS_KEY) or "ALL").upper()
            self.model = ct.models.MLModel(str(path),
                                           compute_units=getattr(ct.ComputeUnit, units))
            spec = self.model.get_spec()
        image = spec.description.input[0]
        self._labels_out = spec.description.predictedProbabilitiesName
        height, width = image.type.imageType.height, image.type.imageType.width
        self.inputs = [TensorInfo(image.name, (1, 3, height, width), np.dtype(np.float32))]
        self.meta_json = meta_entry(metadata.get(META_KEY))
        self._norm = None
        if self.meta_json:
            from edgepilot.meta import ModelMeta

            meta = ModelMeta.from_json(self.meta_json)
            self._norm = (np.array(meta.mean, np.float32), np.array(meta.std, np.float32))
            self._order = list(meta.labels)
            self.outputs = [TensorInfo("probs", (1, len(meta.labels)), np.dtype(np.float32))]
        else:
            self._order = None
            self.outputs = [TensorInfo(self._labels_out, (1, None), np.dtype(np.float32))]
        self.description = f"coremltools {ct.__version__} (Core ML, compute units {units})"

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        x = inputs[0][0]  # (3, H, W) normalised
        if self._norm is not None:
            mean, std = self._norm
            x = (x * std[:, None, None] + mean[:, None, None]) * 255
        pixels = np.clip(np.round(x.transpose(1, 2, 0)), 0, 255).astype(np.uint8)
        result = self.model.predict({self.inputs[0].name: self._image.fromarray(pixels)})
        probs = result[self._labels_out]
        order = self._order or list(probs)
        return [np.array([[probs[label] for label in order]], np.float32)]
