"""Core ML exporter: coremltools converts the traced module to an ML Program (.mlpackage) that
Xcode, the Vision framework and `predict` treat as an image classifier.

* Input: an RGB image. The model's normalisation is folded into the input's scale and bias
  (Core ML's ImageType: ``x = scale * pixel + bias[c]``); a per-channel std beyond one scale is
  multiplied in as the graph's first op.
* Output: class labels and their probabilities (ClassifierConfig).
* Precisions: fp32, fp16 (compute precision) and int8 (weights, per-channel symmetric, through
  coremltools' optimize API). Activations stay float: calibrating them needs Core ML to run
  the model, which only macOS can do.
* Compute units (ALL, CPU_AND_NE, CPU_ONLY, CPU_AND_GPU) are a load-time choice in Core ML;
  the chosen one is stored in the model's metadata and used by edgepilot's runtime.

Conversion runs on any OS; prediction needs macOS, so off macOS the report says the file was
not run (``notes["unchecked"]``).
"""

from __future__ import annotations

import contextlib
import logging
import platform
from pathlib import Path

from edgepilot.errors import EdgepilotError, UnsupportedFormatError, require
from edgepilot.export.noise import first_line, quiet_exporters
from edgepilot.export.options import ExportOptions
from edgepilot.meta import ModelMeta
from edgepilot.runtime.backend import quiet_native_stderr
from edgepilot.runtime.coreml import COMPUTE_UNITS, COMPUTE_UNITS_KEY, INPUT_NAME, META_KEY

#: The oldest OS the files target: ML Programs with fp16/int8 weights need iOS 16 / macOS 13.
DEPLOYMENT_TARGET = "iOS16"


def export(module, sample_input, path: Path, options: ExportOptions) -> dict:
    """Write `module` as a Core ML .mlpackage folder at `path`; returns notes for the report."""
    meta, precision, io_dtype = options.meta, options.precision, options.io_dtype
    compute_units = options.compute_units
    units = (compute_units or "ALL").upper()
    if units not in COMPUTE_UNITS:
        raise UnsupportedFormatError(f"Compute units '{compute_units}' are not available for "
                                     f"coreml. Valid: {', '.join(COMPUTE_UNITS)}")
    if meta is None or not meta.is_image or meta.layout != "NCHW" or meta.channels != 3:
        raise EdgepilotError("Core ML export writes RGB image classifiers: it needs meta= with "
                             "labels and an NCHW 3-channel image input")
    if io_dtype not in (None, "float32"):
        raise UnsupportedFormatError(f"io_dtype '{io_dtype}' is not available for coreml: its "
                                     "input is an image and its output class probabilities")
    ct = require("coremltools", "coreml", "Exporting to Core ML")
    import torch

    wrapped, scale, bias = _fold_normalisation(module, meta)
    notes: dict = {"compute_units": units, "deployment_target": DEPLOYMENT_TARGET,
                   "input": {"scale": scale, "bias": bias, "color": "RGB"}}
    with _quiet():
        try:
            traced = torch.jit.trace(wrapped, torch.zeros(meta.input_shape))
            model = ct.convert(
                traced, convert_to="mlprogram",
                inputs=[ct.ImageType(name=INPUT_NAME, shape=meta.input_shape, scale=scale,
                                     bias=bias, color_layout=ct.colorlayout.RGB)],
                classifier_config=ct.ClassifierConfig(list(meta.labels)),
                compute_precision=ct.precision.FLOAT16 if precision == "fp16"
                else ct.precision.FLOAT32,
                compute_units=getattr(ct.ComputeUnit, units),
                minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET))
            if precision == "int8":
                opt = ct.optimize.coreml
                config = opt.OptimizationConfig(global_config=opt.OpLinearQuantizerConfig(
                    mode="linear_symmetric", dtype="int8", granularity="per_channel"))
                model = opt.linear_quantize_weights(model, config)
                notes["int8"] = ("weights int8 (per-channel symmetric); activations float: "
                                 "calibrating them needs Core ML itself, i.e. macOS")
        except Exception as err:
            raise EdgepilotError(f"coremltools could not convert {type(module).__name__}: "
                                 f"{first_line(err)}. Try formats=onnx or executorch.") from err
    model.short_description = f"{meta.name} image classifier ({precision}), edgepilot"
    # The classifier outputs probabilities (Core ML adds the softmax).
    model.user_defined_metadata[META_KEY] = meta.replace(output="probs").to_json()
    model.user_defined_metadata[COMPUTE_UNITS_KEY] = units
    with _quiet():
        model.save(str(path))
    if platform.system() != "Darwin":
        notes["unchecked"] = ("Core ML runs models only on macOS: the file was converted and "
                              "its spec checked here, not run (run 'edgepilot export' on a Mac "
                              "for parity, or use onnx/executorch here)")
    return notes


def _fold_normalisation(module, meta: ModelMeta):
    """(module to convert, ImageType scale, bias): pixel * scale + bias[c] equals
    (pixel / 255 - mean[c]) / std[0]; the rest of a per-channel std is a multiply in front."""
    import torch

    s0 = float(meta.std[0])
    scale = 1 / (255 * s0)
    bias = [-float(m) / s0 for m in meta.mean]
    ratios = [s0 / float(s) for s in meta.std]
    if all(abs(r - 1) < 1e-12 for r in ratios):
        return module.eval(), scale, bias

    class PerChannelStd(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.register_buffer("ratio", torch.tensor(ratios).view(1, -1, 1, 1))

        def forward(self, x):
            return self.inner(x * self.ratio)

    return PerChannelStd(module).eval(), scale, bias


@contextlib.contextmanager
def _quiet():
    """coremltools prints progress bars and version warnings; torch.jit.trace warns."""
    level = logging.getLogger("coremltools").level
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    try:
        with quiet_native_stderr(), quiet_exporters():
            yield
    finally:
        logging.getLogger("coremltools").setLevel(level)
