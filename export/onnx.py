"""ONNX exporter: torch.onnx (dynamo) -> one self-contained, checked .onnx file with metadata;
fp16 by onnxruntime's float16 converter, int8 by onnxruntime's static QDQ quantizer
(per-channel weights, calibrated), guarded by per-tensor SQNR from its QDQ debugger."""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError, UnsupportedFormatError, require
from edgepilot.export.calibration import as_inputs
from edgepilot.export.guard import Guard, LayerError, channel_sqnr, rank_by_sqnr_loss
from edgepilot.meta import META_KEY, ModelMeta

#: The lowest opset we write: 17 brings LayerNormalization; 18 is what torch's exporter targets.
OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"


#: onnxruntime calibration methods by the names users type.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "distribution")


def reference(outputs: np.ndarray, meta: ModelMeta | None, sample_input) -> np.ndarray:
    """What the .onnx outputs, given the module's outputs: the same (logits)."""
    return outputs


def export(module, sample_input, path: Path, *, meta: ModelMeta | None, precision: str,
           calibration: np.ndarray | None = None, method: str = "minmax",
           guard: Guard | None = None, io_dtype: str | None = None) -> dict:
    """Write `module` as ONNX to `path`; returns notes for the report.

    The batch dimension is dynamic so one file serves single frames and batched evaluation.
    Weights are stored inside the file (no external-data side file).
    """
    if method not in CALIBRATION_METHODS:
        raise UnsupportedFormatError(f"Calibration method '{method}' is not available for "
                                     f"onnx. Valid: {', '.join(CALIBRATION_METHODS)}")
    if io_dtype not in (None, "float32"):
        raise UnsupportedFormatError(f"io_dtype '{io_dtype}' is not available for onnx: its int8 "
                                     "files are QDQ graphs with float32 inputs and outputs. "
                                     "Valid: float32 (or export tflite for int8/uint8 I/O)")
    _export_float(module, sample_input, path, meta)
    notes: dict = {"fp32_bytes": path.stat().st_size}
    if precision == "fp16":
        _to_fp16(path)
    elif precision == "int8":
        if calibration is None or not len(calibration):
            raise EdgepilotError("Full int8 needs calibration images: pass --calib PATH or a "
                                 "model whose dataset edgepilot can generate")
        if meta is None:
            raise EdgepilotError("int8 calibration of images needs the model's ModelMeta")
        inputs = as_inputs(calibration, meta)
        notes["calibration"] = {"method": method, "images": len(inputs)}
        _to_int8(path, inputs, method, guard)
        if guard is not None:
            notes["kept_float"] = guard.kept
            notes["guard_attempts"] = guard.attempts
    return notes


def _export_float(module, sample_input, path: Path, meta: ModelMeta | None) -> None:
    torch = require("torch", "export", "Exporting to ONNX")
    onnx = require("onnx", "export", "Exporting to ONNX")
    require("onnxscript", "export", "Exporting to ONNX")
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


def _to_fp16(path: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    # Inputs and outputs stay float32: callers pass the same arrays to every precision.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(path))


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of (1, ...) arrays."""

    def __init__(self, inputs: list[np.ndarray]):
        self.inputs, self.position = inputs, 0

    def get_next(self):
        if self.position >= len(self.inputs):
            return None
        self.position += 1
        return {INPUT_NAME: self.inputs[self.position - 1]}

    def rewind(self):
        self.position = 0

    def __iter__(self):  # the QDQ debugger iterates instead of calling get_next
        return ({INPUT_NAME: x} for x in self.inputs)


def _to_int8(path: Path, inputs: list[np.ndarray], method: str, guard: Guard | None) -> None:
    import onnx
    from onnxruntime import quantization as q

    float_path = path.with_name(path.name + ".float")
    os.replace(path, float_path)
    metadata = {p.key: p.value for p in onnx.load(str(float_path)).metadata_props}
    calibrate = {m.lower(): m for m in ("MinMax", "Entropy", "Percentile", "Distribution")}
    counter = itertools.count()

    def quantize(keep: list[str]) -> Path:
        trial = path.with_name(f"{path.stem}.try{next(counter)}{path.suffix}")
        exclude = _nodes_touching(float_path, keep)
        root = logging.getLogger()  # the quantizer logs at root level; quiet it meanwhile
        level = root.level
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            root.setLevel(logging.ERROR)
            try:
                q.quantize_static(
                    str(float_path), str(trial), _Reader(inputs), quant_format=q.QuantFormat.QDQ,
                    per_channel=True, activation_type=q.QuantType.QInt8,
                    weight_type=q.QuantType.QInt8, nodes_to_exclude=exclude,
                    calibrate_method=getattr(q.CalibrationMethod, calibrate[method]),
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
            finally:
                root.setLevel(level)
        return trial

    def rank(trial: Path) -> list[LayerError]:
        return _rank_tensors(float_path, trial, inputs[:32])

    try:
        trial = quantize([]) if guard is None else guard.run(quantize, rank, "onnx")
        model = onnx.load(str(trial))
        del model.metadata_props[:]
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(path))
    finally:
        for leftover in [float_path, *path.parent.glob(f"{path.stem}.try*{path.suffix}")]:
            if leftover.exists():
                leftover.unlink()


def _nodes_touching(model_path: Path, tensors: list[str]) -> list[str]:
    """Nodes producing or consuming the tensors: a tensor stays float only if both do."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    wanted = set(tensors)
    return [n.name for n in graph.node if wanted & (set(n.input) | set(n.output))]


def _rank_tensors(float_path: Path, qdq_path: Path, inputs) -> list[LayerError]:
    """Activations ranked by the SQNR their layer loses in the QDQ model (see guard)."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as debug

    with tempfile.TemporaryDirectory() as tmp:
        float_aug, qdq_aug = Path(tmp, "float.onnx"), Path(tmp, "qdq.onnx")
        debug.modify_model_output_intermediate_tensors(str(float_path), str(float_aug))
        debug.modify_model_output_intermediate_tensors(str(qdq_path), str(qdq_aug))
        float_acts = debug.collect_activations(str(float_aug), _Reader(inputs))
        qdq_acts = debug.collect_activations(str(qdq_aug), _Reader(inputs))
    matched = debug.create_activation_matching(qdq_acts, float_acts)
    sqnr = {name: channel_sqnr(np.concatenate(m["float"]), np.concatenate(m["post_qdq"]), 1)
            for name, m in matched.items() if "float" in m and "post_qdq" in m}
    graph = onnx.load(str(float_path)).graph
    constants = {i.name for i in graph.initializer}
    order, inputs_of = [], {}
    for node in graph.node:
        for out in node.output:
            order.append(out)
            inputs_of[out] = [i for i in node.input if i and i not in constants]
    return [e for e in rank_by_sqnr_loss(order, inputs_of, sqnr) if e.layer != OUTPUT_NAME]
