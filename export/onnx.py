"""ONNX exporter: torch.onnx (dynamo) -> one self-contained, checked .onnx file with metadata."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

from edgepilot.errors import EdgepilotError, require
from edgepilot.meta import META_KEY, ModelMeta

#: The lowest opset we write: 17 brings LayerNormalization; 18 is what torch's exporter targets.
OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def export(module, sample_input, path: Path, *, meta: ModelMeta | None, precision: str) -> Path:
    """Write `module` as ONNX to `path` and return the path.

    The batch dimension is dynamic so one file serves single frames and batched evaluation.
    Weights are stored inside the file (no external-data side file).
    """
    torch = require("torch", "export", "Exporting to ONNX")
    onnx = require("onnx", "export", "Exporting to ONNX")
    require("onnxscript", "export", "Exporting to ONNX")
    if precision != "fp32":
        raise EdgepilotError(f"ONNX precision '{precision}' is not supported yet; use fp32")
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = ({0: batch},)
    module = module.eval()
    # The exporter logs and warns at length about things that do not affect the file.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    noise = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(noise),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (sample_input,),
                str(path),
                dynamo=True,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic,
                external_data=False,
            )
    except Exception as err:
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        detail = lines[0] if lines else type(err).__name__
        raise EdgepilotError(
            f"torch.onnx could not export {type(module).__name__} to ONNX: {detail}. "
            "Check that the model's forward() takes one tensor and uses standard operators."
        ) from err

    model = onnx.load(str(path))
    if meta is not None:
        props = {p.key: p.value for p in model.metadata_props}
        props[META_KEY] = meta.to_json()
        props["labels"] = ",".join(meta.labels)  # readable in Netron and onnx tools
        del model.metadata_props[:]
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
    model.producer_name = "edgepilot"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path
