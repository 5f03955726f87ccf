"""TFLite (LiteRT) exporter: litert-torch converts, ai-edge-quantizer quantizes, our writer
embeds the standard TFLite metadata and labels.

Image models get an input of raw RGB pixels, channels last (1, H, W, 3): normalisation and
the NCHW permute live inside the graph (the converter folds the permute away), and the output
is softmax probabilities. So phones and the Edge TPU need no transposes at the boundary, a full
int8 model's input quantization is exact (pixel - 128, scale 1), and mobile task libraries need
nothing but the file: MediaPipe accepts only one mean/std for all channels, (0, 1) here.
"""

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
from edgepilot.export.guard import LayerError, channel_sqnr, rank_by_sqnr_loss
from edgepilot.export.noise import first_line, quiet_exporters
from edgepilot.export.options import ExportOptions
from edgepilot.meta import ModelMeta
from edgepilot.runtime.backend import quiet_native_stderr
from edgepilot.runtime.tflite_metadata import build_metadata, write_metadata

#: Calibration methods: how activation ranges are gathered over the calibration images.
#: "minmax" is the absolute range (as onnxruntime's MinMax); "moving_average" is
#: ai-edge-quantizer's default, which under-reaches on small or skewed calibration sets.
CALIBRATION_METHODS = ("minmax", "moving_average")


def artifact_meta(meta: ModelMeta, single_output: bool = True) -> ModelMeta:
    """The metadata of the .tflite file: raw pixels in, NHWC, and for a classifier's one
    output, probabilities out (the softmax is in the file)."""
    channels = meta.channels
    output = "probs" if single_output and meta.output == "logits" else meta.output
    return meta.replace(layout="NHWC", mean=(0.0,) * channels, std=(1 / 255,) * channels,
                        output=output)


def _pixel_input(meta: ModelMeta | None, sample_input) -> bool:
    """Whether the file takes raw pixels channels-last (image models with metadata)."""
    return meta is not None and meta.layout == "NCHW" and sample_input.dim() == 4


def _file_meta(meta: ModelMeta | None, sample_input, single_output: bool = True
               ) -> ModelMeta | None:
    return artifact_meta(meta, single_output) if _pixel_input(meta, sample_input) else meta


def _wrap(module, meta: ModelMeta | None, sample_input, single_output: bool = True):
    """The module as the .tflite will compute it, and its sample input (batch one)."""
    import torch

    from edgepilot.export import flatten_outputs

    def as_tuple(result):
        return result if isinstance(result, torch.Tensor) else tuple(flatten_outputs(result)[0])

    class PixelInput(torch.nn.Module):
        """(N, H, W, C) float pixels 0..255 -> normalise -> NCHW -> module -> softmax."""

        def __init__(self, inner, meta):
            super().__init__()
            self.inner = inner
            scale = 255 * torch.tensor(meta.std, dtype=torch.float32)
            self.register_buffer("mean", 255 * torch.tensor(meta.mean).view(1, 1, 1, -1))
            self.register_buffer("scale", scale.view(1, 1, 1, -1))
            self.softmax = single_output and meta.output == "logits"

        def forward(self, x):
            y = as_tuple(self.inner(((x - self.mean) / self.scale).permute(0, 3, 1, 2)))
            return torch.softmax(y, dim=-1) if self.softmax else y

    class ChannelsLast(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return as_tuple(self.inner(x.permute(0, 3, 1, 2)))

    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return as_tuple(self.inner(x))

    if _pixel_input(meta, sample_input):
        height, width = meta.input_size
        return _frozen(PixelInput(module, meta)), torch.zeros(1, height, width, meta.channels)
    if sample_input.dim() == 4:  # an image model without metadata: still channels last
        return _frozen(ChannelsLast(module)), sample_input.permute(0, 2, 3, 1).contiguous()
    return _frozen(Plain(module)), sample_input


def _frozen(wrapper):
    """A wrapper in eval mode without touching the wrapped module, whose mode export() set
    (a torch.export program's module refuses `.eval()`)."""
    wrapper.training = False
    return wrapper


def _convert(module, sample) -> bytes:
    # The converter's C++ logging (absl, oneDNN notices) goes straight to stderr.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GLOG_minloglevel", "3")
    with quiet_native_stderr():
        litert_torch = require("litert_torch", "export", "Exporting to TFLite")
    litert_torch.config.show_progress = False
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        with quiet_native_stderr(), quiet_exporters():
            return bytes(litert_torch.convert(module, (sample,)).model_content())
    except Exception as err:
        raise EdgepilotError(_conversion_failure(err, module)) from err


def _conversion_failure(err: Exception, module) -> str:
    text = str(err)
    match = re.search(r"(aten\.[\w.]+|'[\w.]+' op|[\w.]+\.default)", text)
    op = f" at operator {match.group(1)}" if match else ""
    inner = getattr(module, "inner", module)
    return (f"litert-torch could not convert {type(inner).__name__} to TFLite{op}: "
            f"{first_line(err)}. Try ONNX (--format onnx), replace that operator with a standard "
            "one, or check the model exports with torch.export.export().")


#: Tensor types a full-int8 file can expose at its boundary. int8 is the TFLite default;
#: uint8 is what Android/iOS task libraries and MediaPipe require of quantized image models.
IO_DTYPES = ("int8", "uint8")


def export(module, sample_input, path: Path, options: ExportOptions) -> dict:
    """Write `module` as a .tflite at `precision`; returns notes for the report.

    TFLite files have a batch of one (`dynamic_batch` is noted, not applied): mobile and edge
    interpreters run one frame at a time, and edgepilot's runtime runs a batch row by row.
    """
    meta, precision, calibration = options.meta, options.precision, options.calibration
    method, guard, io_dtype = options.method, options.guard, options.io_dtype
    dynamic_batch = options.dynamic_batch
    if method not in CALIBRATION_METHODS:
        raise UnsupportedFormatError(f"Calibration method '{method}' is not available for "
                                     f"tflite. Valid: {', '.join(CALIBRATION_METHODS)}")
    io_dtype = io_dtype or "int8"
    if io_dtype not in IO_DTYPES:
        raise UnsupportedFormatError(f"io_dtype '{io_dtype}' is not available for tflite "
                                     f"int8. Valid: {', '.join(IO_DTYPES)}")
    from edgepilot.export import flatten_outputs

    with quiet_exporters():
        single = len(flatten_outputs(module(sample_input))[0]) == 1
    wrapped, sample = _wrap(module, meta, sample_input, single)
    float_model = _convert(wrapped, sample)
    notes: dict = {"batch": "1" + (" (TFLite files have a fixed batch)" if dynamic_batch
                                   else "")}
    file_meta = _file_meta(meta, sample_input, single)
    if precision == "fp32":
        model = float_model
    else:
        quantizer = require("ai_edge_quantizer", "export", "Quantizing TFLite models")
        recipes = _recipes(quantizer.recipe, precision)
        if precision == "int8":
            if calibration is None or not len(calibration):
                raise EdgepilotError("Full int8 needs calibration images: pass calib=PATH or "
                                     "a model whose dataset edgepilot can generate")
            inputs = _calibration_inputs(calibration, meta, sample)
            notes["calibration"] = {"method": method, "images": len(calibration)}
            notes["io_dtype"] = io_dtype
            softmax = _final_softmax(float_model)
            if softmax:
                # The classifier's softmax stays float and so does its output: int8
                # probabilities step by 1/256, so every class under 0.4% would read 0 and
                # the ranking below the top few would be lost (top-5 of 1000 classes).
                recipes = recipes + [
                    dict(regex=softmax, operation="*", algorithm_key="no_quantize"),
                    dict(regex=".*", operation="OUTPUT", algorithm_key="no_quantize")]
                notes["output"] = "float32 probabilities (softmax in float after int8 logits)"
            elif meta is not None and meta.is_detector and not options.full_integer:
                head = _float_head(float_model)
                if head:
                    recipes = recipes + [
                        dict(regex=pattern, operation="*", algorithm_key="no_quantize")
                        for pattern in head] + [
                        dict(regex=".*", operation="OUTPUT", algorithm_key="no_quantize")]
                    notes["output"] = (f"float32 (the last {len(head)} ops, from the last "
                                       "layer to the outputs, run in float)")
            if io_dtype == "uint8":  # quantize with float I/O, then swap the interface type
                recipes = recipes + [dict(regex=".*", operation=op, algorithm_key="no_quantize")
                                     for op in ("INPUT", "OUTPUT")]

            def stamp(quantized: bytes) -> bytes:
                if io_dtype == "uint8":
                    quantized = _uint8_interface(quantized)
                if meta is None:
                    return quantized
                return _with_metadata(quantized, file_meta, precision)

            speed: dict = {}
            model = _int8(quantizer, float_model, recipes, inputs, path, guard, stamp,
                          pixels=_pixel_input(meta, sample_input), method=method,
                          module=wrapped, speed=speed)
            if speed:
                notes["speed"] = speed["kinds"]
            if guard is not None:
                notes["kept_float"] = guard.kept
                notes["guard_attempts"] = guard.attempts
        else:
            model = _quantize(quantizer, float_model, recipes, None)
    notes["fp32_bytes"] = len(float_model)
    if meta is not None:
        if precision != "int8":  # int8 files were stamped while the guard tried them
            model = _with_metadata(model, file_meta, precision)
        notes["fp32_bytes"] = len(_with_metadata(float_model, file_meta, "fp32"))
    path.write_bytes(model)
    return notes


def _recipes(recipe, precision: str) -> list[dict]:
    if precision == "fp16":
        return [dict(regex=".*", operation="*", algorithm_key="float_casting",
                     op_config=dict(weight_tensor_config=dict(num_bits=16, dtype="FLOAT"),
                                    compute_precision="FLOAT", explicit_dequantize=True))]
    if precision == "dynamic":
        return recipe.dynamic_wi8_afp32()
    return recipe.static_wi8_ai8()


def _quantize(quantizer, model: bytes, recipes: list[dict], calibration) -> bytes:
    with quiet_native_stderr(), warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        q = quantizer.Quantizer(model, recipes)
        if calibration is not None:
            calibration = calibration(q)
        return bytes(q.quantize(calibration, enable_progress_report=False).quantized_model)


def _calibration_inputs(images: np.ndarray, meta: ModelMeta | None, sample) -> list[dict]:
    """Signature inputs exactly as the runtime will feed the .tflite."""
    if meta is None:
        raise EdgepilotError("int8 calibration of images needs the model's ModelMeta (meta=)")
    return [{"args_0": x} for x in as_inputs(images, _file_meta(meta, sample))]


def _final_softmax(model: bytes) -> str | None:
    """The quantizer's scope regex of a SOFTMAX that produces the graph's only output."""
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    graph = tree.subgraphs[0]
    if len(graph.outputs) != 1:
        return None
    for op in graph.operators:
        if list(op.outputs) == [graph.outputs[0]]:
            code = tree.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            if builtin == schema.BuiltinOperator.SOFTMAX:
                name = graph.tensors[graph.outputs[0]].name.decode()
                return "^" + re.escape(name) + ";$"
    return None


#: Ops that may lie between a network's last layer and its outputs: layout changes and the
#: element-wise function a head ends with (a detector's sigmoid scores).
TRAILING_OPS = ("LOGISTIC", "SOFTMAX", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS")
#: Ops with weights that can end a network's head.
HEAD_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
#: The largest share of the model's MACs a head may have to run in float.
FLOAT_HEAD_SHARE = 0.1


def _float_head(model: bytes) -> list[str]:
    """Scope regexes of the ops from each output back to the last layer that makes it (through
    `TRAILING_OPS`), that layer included: a detector's head convolutions and its sigmoid.

    Quantized, they round what the decoder ranks and measures: the scores come out of an int8
    sigmoid in steps of 1/256 (tied scores reorder detections for mAP), the box offsets and log
    sizes in 256 levels. In float they cost little (the stoplight detector's two 1x1 head
    convolutions are 1.9% of its MACs); the layers before them stay int8. A head heavier than
    `FLOAT_HEAD_SHARE` of the MACs stays int8 (empty list)."""
    from edgepilot.runtime.litert_info import op_macs, op_name, op_names

    tree = _tree(model)
    graph = tree.subgraphs[0]
    names = op_names()
    producer = {out: op for op in graph.operators for out in op.outputs}

    def kind_of(op) -> str:
        return op_name(tree, op, names)

    total = sum(op_macs(graph, op, kind_of(op)) for op in graph.operators)
    patterns: list[str] = []
    head_macs = 0
    for output in graph.outputs:
        chain, op = [], producer.get(output)
        while op is not None:
            kind = kind_of(op)
            chain.append(op)
            if kind in HEAD_OPS:
                break
            op = producer.get(op.inputs[0]) if kind in TRAILING_OPS else None
        if op is None:  # this output does not come from a layer: left as it is
            continue
        head_macs += op_macs(graph, op, kind)
        for op in chain:
            patterns += ["^" + re.escape(graph.tensors[o].name.decode()) + ";$"
                         for o in op.outputs]
    if not total or head_macs > FLOAT_HEAD_SHARE * total:
        return []
    return list(dict.fromkeys(patterns))


def _calibrate(q, float_model: bytes, inputs: list[dict], method: str) -> dict:
    """Activation ranges over the calibration inputs, by `method`."""
    if method == "moving_average":
        return q.calibrate({"serving_default": inputs})
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    # Quantizer.calibrate() offers only the moving average; the Calibrator it wraps takes
    # the update rule, so build it the same way with the absolute min/max rule.
    calib = calibrator.Calibrator(float_model, num_threads=2,
                                  qsv_update_func=qsv_utils.min_max_update)
    calib.calibrate({"serving_default": inputs}, q._recipe_manager)
    return calib.get_model_qsvs()


def _int8(quantizer, float_model: bytes, recipes, inputs, path: Path, guard, stamp,
          pixels: bool, method: str, module=None, speed: dict | None = None) -> bytes:
    """The int8 model (bytes): the guard's choice, then kinds of layers int8 makes slower on
    this CPU kept in float (`export.speed`; what was tried goes into `speed`)."""
    speed = {} if speed is None else speed
    # Calibrated ranges can clip the input (a moving average does). Pin the input to its true
    # range: 0..255 for pixels (exact: scale 1, zero point -128), else the data's range.
    values = np.concatenate([x["args_0"].ravel() for x in inputs])
    low, high = (0.0, 255.0) if pixels else (min(0.0, float(values.min())), float(values.max()))

    ranges: dict = {}

    def calibrate(q):
        # The ranges come from the float model alone: measure them once for every trial.
        if "qsv" not in ranges:
            ranges["qsv"] = _calibrate(q, float_model, inputs, method)
        result = dict(ranges["qsv"])
        for name, entry in result.items():
            if name.startswith("serving_default_args_0"):
                shape = np.shape(entry["min"])
                result[name] = {"min": np.full(shape, low, np.float32),
                                "max": np.full(shape, high, np.float32)}
        return result

    counter = itertools.count()

    def quantize(keep: list[str], float_ops: tuple[str, ...] = ()) -> Path:
        patterns = _float_patterns(float_model, keep) + list(float_ops)
        rules = recipes + [dict(regex=pattern, operation="*", algorithm_key="no_quantize")
                           for pattern in patterns]
        trial = path.with_name(f"{path.stem}.try{next(counter)}{path.suffix}")
        trial.write_bytes(stamp(_quantize(quantizer, float_model, rules, calibrate)))
        return trial

    def rank(trial: Path) -> list[LayerError]:
        return _rank_layers(float_model, trial, inputs[:32], module)

    try:
        trial = quantize([]) if guard is None else guard.run(quantize, rank, "tflite")
        keep = [] if guard is None else [k["tensor"] for k in guard.kept]
        trial, speed_notes = _keep_slow_kinds_float(float_model, trial, inputs[0]["args_0"],
                                                    lambda ops: quantize(keep, tuple(ops)),
                                                    guard, path)
        if speed_notes:
            speed["kinds"] = speed_notes
        return trial.read_bytes()
    finally:  # also when a trial fails: no half-made files left beside the user's
        for leftover in path.parent.glob(f"{path.stem}.try*{path.suffix}"):
            leftover.unlink()


def _keep_slow_kinds_float(float_model: bytes, trial: Path, x: np.ndarray, quantize,
                           guard, path: Path) -> tuple[Path, list[dict]]:
    """`export.speed` on this file, when the float model is slow enough for it to matter."""
    from edgepilot.export.speed import SLOW_ENOUGH_MS, keep_slow_kinds_float

    float_path = path.with_name(f"{path.stem}.try-float{path.suffix}")
    float_path.write_bytes(float_model)
    if _time_ms({"fp32": float_path}, x, 0.2)["fp32"] < SLOW_ENOUGH_MS:
        return trial, []

    def confirm(ops: list[str]) -> Path | None:
        candidate = quantize(ops)
        return candidate if guard is None or guard.holds(candidate) else None

    trial, _, notes = keep_slow_kinds_float(
        layer_kinds(float_model), trial, quantize,
        lambda files: _time_ms({"fp32": float_path, **files}, x, SPEED_SECONDS), confirm)
    return trial, notes


#: Seconds the files of one round of the speed choice are timed for.
SPEED_SECONDS = 3.0


def _time_ms(paths: dict, x: np.ndarray, seconds: float) -> dict:
    """Per .tflite file, ms per inference at 1 thread, timed in alternation."""
    from edgepilot.export.speed import interleaved_ms
    from edgepilot.runtime.litert import LiteRTBackend

    calls = {}
    for key, file in paths.items():
        backend = LiteRTBackend(file, threads=1)
        info = backend.inputs[0]
        feed = [info.quantize(x) if info.quantized else x.astype(info.dtype)]
        calls[key] = lambda b=backend, f=feed: b.run(f)
    return interleaved_ms(calls, seconds)


def layer_kinds(model: bytes) -> dict[str, list[str]]:
    """The float model's weighted ops by kind, as ai-edge-quantizer patterns over their
    outputs: the stem (the first convolution), depthwise, pointwise (1x1) and other
    convolutions, and fully connected layers."""
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    graph = tree.subgraphs[0]
    ops = schema.BuiltinOperator
    kinds: dict[str, list[str]] = {"stem convolution": [], "depthwise convolutions": [],
                                   "pointwise convolutions": [], "other convolutions": [],
                                   "fully connected": []}
    for op in graph.operators:
        code = tree.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        pattern = "^" + re.escape(graph.tensors[op.outputs[0]].name.decode()) + ";$"
        if builtin == ops.FULLY_CONNECTED:
            kinds["fully connected"].append(pattern)
        elif builtin == ops.DEPTHWISE_CONV_2D:
            kinds["depthwise convolutions"].append(pattern)
        elif builtin == ops.CONV_2D:
            shape = list(graph.tensors[op.inputs[1]].shape)
            if not any(kinds[k] for k in ("stem convolution", "depthwise convolutions",
                                          "pointwise convolutions", "other convolutions")):
                kinds["stem convolution"].append(pattern)
            elif shape[1:3] == [1, 1]:
                kinds["pointwise convolutions"].append(pattern)
            else:
                kinds["other convolutions"].append(pattern)
    return {kind: patterns for kind, patterns in kinds.items() if patterns}


def _uint8_interface(model: bytes) -> bytes:
    """Replace the float input (and its QUANTIZE) by a uint8 tensor; the output too, unless
    it is meant to stay float (a classifier's float softmax)."""
    interface = require("ai_edge_litert._pywrap_modify_model_interface", "tflite",
                        "Giving int8 TFLite models a uint8 interface")
    from ai_edge_litert import schema_py_generated as schema

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp, "in.tflite"), Path(tmp, "out.tflite")
        source.write_bytes(model)
        # A float output (the classifier's float softmax) is left as it is; the library says
        # so on stderr ("a model without quant/dequant"), which is expected here.
        with quiet_native_stderr():
            status = interface.modify_model_interface(
                str(source), str(target), schema.TensorType.UINT8, schema.TensorType.UINT8)
        if status != 0:
            raise EdgepilotError("Could not give the int8 TFLite model a uint8 interface "
                                 f"(modify_model_interface returned {status})")
        return target.read_bytes()


def _tree(model: bytes):
    from ai_edge_litert import schema_py_generated as schema

    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))


def _graph(model: bytes):
    return _tree(model).subgraphs[0]


def _float_patterns(model: bytes, keep: list[str]) -> list[str]:
    """Regexes (over op output names) for the ops producing and consuming each kept tensor:
    a tensor stays float only if both sides of it run in float."""
    graph = _graph(model)
    names = [t.name.decode() for t in graph.tensors]
    patterns = []
    for tensor in keep:
        index = names.index(tensor)
        for op in graph.operators:
            if index in list(op.outputs) or index in list(op.inputs):
                # ai-edge-quantizer matches an op's scope: its output names, each + ";".
                patterns += ["^" + re.escape(names[o]) + ";$" for o in op.outputs]
    return patterns


def _rank_layers(float_model: bytes, trial: Path, inputs, module=None) -> list[LayerError]:
    """Activations ranked by the SQNR their op loses in the int8 model (see guard)."""
    float_acts = _activations(float_model, inputs)
    quant_acts = _activations(trial.read_bytes(), inputs)
    sqnr = {name: channel_sqnr(ref, quant_acts[name], -1) for name, ref in float_acts.items()
            if name in quant_acts and quant_acts[name].shape == ref.shape}
    graph = _graph(float_model)
    names = [t.name.decode() for t in graph.tensors]
    produced = {o for op in graph.operators for o in op.outputs}
    activations = produced | set(graph.inputs)
    order, inputs_of = [], {}
    for op in graph.operators:
        for out in op.outputs:
            order.append(names[out])
            inputs_of[names[out]] = [names[i] for i in op.inputs if i in activations]
    outputs = {names[i] for i in graph.outputs}
    return [LayerError(e.layer, e.sqnr_db, e.loss_db, module_name(e.layer, module))
            for e in rank_by_sqnr_loss(order, inputs_of, sqnr) if e.layer not in outputs]


def module_name(tensor: str, module) -> str:
    """The user's name of the module that computed a tensor (``features.3.conv.0``).

    litert-torch names tensors by their module scope, ``Class_attribute`` per level joined
    by ``/`` (``...Sequential_features/...Conv2d_0;...``); the attributes are walked down the
    module tree, so dotted class names and underscores in attribute names do not confuse it.
    """
    if module is None:
        return ""
    scope = tensor.split(";", 1)[0].split("/")
    path, current = [], module
    for segment in scope[1:]:  # the first level is the wrapped module itself
        child = next((name for name, _ in current.named_children()
                      if segment.endswith("_" + name)), None)
        if child is None:
            break
        path.append(child)
        current = getattr(current, child)
    if path and path[0] == "inner":  # edgepilot's pixel/layout wrapper
        path = path[1:]
    return ".".join(path) + f" ({type(current).__name__})" if path else ""


def _activations(model: bytes, inputs) -> dict[str, np.ndarray]:
    """Every float or dequantized tensor of `model`, stacked over the inputs."""
    from ai_edge_litert.interpreter import Interpreter

    from edgepilot.runtime.litert import tensor_info

    with warnings.catch_warnings():  # "experimental_preserve_all_tensors" is what we want
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_content=model, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    image = tensor_info(detail)
    collected: dict[str, list[np.ndarray]] = {}
    for sample in inputs:
        x = sample["args_0"]
        interpreter.set_tensor(detail["index"], image.quantize(x) if image.quantized else x)
        interpreter.invoke()
        for t in interpreter.get_tensor_details():
            try:
                value = interpreter.get_tensor(t["index"])
            except ValueError:  # tensors without data (e.g. optional inputs)
                continue
            info = tensor_info(t)
            if info.quantized:
                value = info.dequantize(value)
            collected.setdefault(t["name"], []).append(np.asarray(value, np.float64))
    return {name: np.concatenate(v) if v[0].ndim else np.stack(v)
            for name, v in collected.items()}


def _with_metadata(model: bytes, meta: ModelMeta, precision: str) -> bytes:
    labels = ("\n".join(meta.labels) + "\n").encode()
    if not meta.is_image or meta.layout != "NHWC":
        # The standard metadata describes images; other inputs carry edgepilot's own only.
        return write_metadata(model, standard=None, edgepilot_json=meta.to_json(),
                              files={"labels.txt": labels})
    height, width = meta.input_size
    # Pixel units, as the standard says: input = (pixel - mean) / std.
    mean = [255 * m for m in meta.mean[:1]]
    std = [255 * s for s in meta.std[:1]]
    standard = build_metadata(
        name=meta.name, description=f"{meta.name} image classifier ({precision}), edgepilot",
        version="1", width=width, height=height, mean=mean, std=std,
        num_classes=len(meta.labels), output_is_probability=meta.output == "probs")
    return write_metadata(model, standard=standard, edgepilot_json=meta.to_json(),
                          files={"labels.txt": labels})
