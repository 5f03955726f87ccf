"""ONNX exporter: torch.onnx (dynamo) -> one self-contained, checked .onnx file with metadata;
fp16 by onnxruntime's float16 converter, int8 by onnxruntime's static QDQ quantizer
(per-channel weights, calibrated), guarded by per-tensor SQNR from its QDQ debugger."""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError, UnsupportedFormatError, require
from edgepilot.export.calibration import as_inputs
from edgepilot.export.guard import Guard, LayerError, channel_sqnr, rank_by_sqnr_loss
from edgepilot.export.noise import first_line, quiet_exporters
from edgepilot.meta import META_KEY, ModelMeta

#: The lowest opset we write: 17 brings LayerNormalization; 18 is what torch's exporter targets.
OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"


#: onnxruntime calibration methods by the names users type.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "distribution")


def export(module, sample_input, path: Path, *, meta: ModelMeta | None, precision: str,
           calibration: np.ndarray | None = None, method: str = "minmax",
           guard: Guard | None = None, io_dtype: str | None = None,
           dynamic_batch: bool = False) -> dict:
    """Write `module` as ONNX to `path`; returns notes for the report.

    The batch is one unless `dynamic_batch` (then it is dynamic, or one where the model
    specialises it, said in the notes). Weights are stored inside the file (no external data).
    """
    if method not in CALIBRATION_METHODS:
        raise UnsupportedFormatError(f"Calibration method '{method}' is not available for "
                                     f"onnx. Valid: {', '.join(CALIBRATION_METHODS)}")
    if io_dtype not in (None, "float32"):
        raise UnsupportedFormatError(f"io_dtype '{io_dtype}' is not available for onnx: its int8 "
                                     "files are QDQ graphs with float32 inputs and outputs. "
                                     "Valid: float32 (or export tflite for int8/uint8 I/O)")
    notes: dict = {}
    notes["batch"] = _export_float(module, sample_input, path, meta, dynamic_batch)
    notes["fp32_bytes"] = path.stat().st_size
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


def _output_names(module, sample_input) -> list[str]:
    from edgepilot.export import flatten_outputs

    with quiet_exporters():
        return flatten_outputs(module(sample_input))[1]


def _export_float(module, sample_input, path: Path, meta: ModelMeta | None,
                  dynamic_batch: bool) -> str:
    """Write the float file; returns what its batch dimension is."""
    torch = require("torch", "export", "Exporting to ONNX")
    onnx = require("onnx", "export", "Exporting to ONNX")
    require("onnxscript", "export", "Exporting to ONNX")
    names = _output_names(module, sample_input)
    scripted = isinstance(module, torch.jit.ScriptModule)
    batch = "1"
    attempts = []  # (dynamo, dynamic batch): torch.export first, TorchScript as the fallback
    if not scripted:
        attempts += [(True, True)] if dynamic_batch else []
        attempts += [(True, False)]
    attempts += [(False, True)] if dynamic_batch else []
    attempts += [(False, False)]
    failures = []
    for dynamo, dynamic in attempts:
        try:
            _torch_onnx_export(torch, module, sample_input, path, names, dynamo, dynamic)
        except Exception as err:  # the exporters raise anything; each attempt is independent
            failures.append((dynamo, first_line(err)))
            continue
        if dynamic:
            batch = "dynamic"
        elif dynamic_batch:
            batch = "1 (the model specialises its batch dimension, so it cannot be dynamic)"
        if not dynamo and not scripted:
            batch += "; written by the TorchScript exporter (torch.export failed: " + \
                next((f for d, f in failures if d), "?") + ")"
        break
    else:
        detail = next((f for d, f in failures if d), failures[-1][1])
        raise EdgepilotError(
            f"torch.onnx could not export {type(module).__name__} to ONNX: {detail}. "
            "Both of torch's exporters failed; check that forward() runs on the sample input "
            "and that torch.export.export(model, (sample,)) works."
        )

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
    return batch


def _torch_onnx_export(torch, module, sample_input, path: Path, names: list[str],
                       dynamo: bool, dynamic: bool) -> None:
    options: dict = {}
    if dynamo:
        if dynamic:
            options["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    elif dynamic:
        options["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}}
    # The exporters log and warn at length about things that do not affect the file.
    with quiet_exporters(), torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(module, (sample_input,), str(path), dynamo=dynamo,
                          opset_version=OPSET, input_names=[INPUT_NAME], output_names=names,
                          external_data=False, **options)
    # Tracing records the one path the sample took: a trace that warns (Python control flow
    # on tensor values) may compute something else for other inputs. No such file.
    traced = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if traced and not isinstance(module, torch.jit.ScriptModule):
        raise EdgepilotError(f"tracing it may be wrong for other inputs: "
                             f"{str(traced[0].message).splitlines()[0]}")
    if dynamic:  # a dynamo export that specialised the batch to 1 says so only in the file
        import onnx

        dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
        if not dim.dim_param:
            raise EdgepilotError("the exported batch dimension is fixed")


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
    outputs = {o.name for o in graph.output}
    scopes = _module_names(graph)
    return [LayerError(e.layer, e.sqnr_db, e.loss_db, scopes.get(e.layer, ""))
            for e in rank_by_sqnr_loss(order, inputs_of, sqnr) if e.layer not in outputs]


def _module_names(graph) -> dict[str, str]:
    """Tensor -> the module that computes it, as the user's model names it
    (``features.3.conv.0 (Conv)``), from the name scopes torch's exporter records."""
    names = {}
    for node in graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        scopes = props.get("pkg.torch.onnx.name_scopes", "")
        found = re.findall(r"'([^']*)'", scopes)  # ['', 'features', 'features.3', 'conv2d']
        module = found[-2] if len(found) >= 2 else ""  # the last one is the traced op
        if not module:
            continue
        for out in node.output:
            names[out] = f"{module} ({node.op_type})"
    return names
