"""ONNX exporter: torch.onnx (dynamo) -> one self-contained, checked .onnx file with metadata;
fp16 by onnxruntime's float16 converter, int8 by onnxruntime's static quantizer (calibrated),
in the most faithful layout, the fastest on this CPU among equals (see `choose_int8_settings`),
guarded by per-tensor SQNR from its QDQ debugger."""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError, UnsupportedFormatError, require
from edgepilot.export.calibration import as_inputs
from edgepilot.export.guard import Guard, LayerError, channel_sqnr, rank_by_sqnr_loss
from edgepilot.export.noise import first_line, quiet_exporters
from edgepilot.export.options import ExportOptions
from edgepilot.meta import META_KEY, ModelMeta

#: The lowest opset we write: 17 brings LayerNormalization; 18 is what torch's exporter targets.
OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"


#: onnxruntime calibration methods by the names users type.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "distribution")


def export(module, sample_input, path: Path, options: ExportOptions) -> dict:
    """Write `module` as ONNX to `path`; returns notes for the report.

    The batch is one unless `dynamic_batch` (then it is dynamic, or one where the model
    specialises it, said in the notes). Weights are stored inside the file (no external data).
    """
    meta, precision, calibration = options.meta, options.precision, options.calibration
    method, guard, io_dtype = options.method, options.guard, options.io_dtype
    dynamic_batch = options.dynamic_batch
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
            raise EdgepilotError("Full int8 needs calibration images: pass calib=PATH or a "
                                 "model whose dataset edgepilot can generate")
        if meta is None:
            raise EdgepilotError("int8 calibration of images needs the model's ModelMeta")
        inputs = as_inputs(calibration, meta)
        notes["calibration"] = {"method": method, "images": len(inputs)}
        notes["int8_settings"] = _to_int8(path, inputs, method, guard)
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


@dataclass(frozen=True)
class Int8Settings:
    """One layout of an int8 ONNX graph. onnxruntime's speed depends on it and on the CPU: x86
    without VNNI runs uint8 activations through its fast u8s8 kernels and int8 QOperator ops
    through slow reference ones; ARM has int8 dot products; per-channel weights cost a little
    requantization and usually keep more accuracy."""

    format: str  # "QDQ" (Quantize/DequantizeLinear pairs) or "QOperator" (QLinearConv ...)
    activations: str  # "int8" or "uint8"; weights are always int8, symmetric
    per_channel: bool

    def options(self, q) -> dict:
        return {"quant_format": getattr(q.QuantFormat, self.format),
                "activation_type": q.QuantType.QInt8 if self.activations == "int8"
                else q.QuantType.QUInt8,
                "weight_type": q.QuantType.QInt8, "per_channel": self.per_channel}

    def __str__(self) -> str:
        weights = "per-channel" if self.per_channel else "per-tensor"
        return f"{self.format}, {self.activations} activations, {weights} int8 weights"


#: Layouts tried, in order of preference where their speeds tie: QDQ first (every execution
#: provider reads it, and the guard's debugger needs it), per-channel weights first.
INT8_SETTINGS = tuple(Int8Settings(f, a, c) for f in ("QDQ", "QOperator")
                      for c in (True, False) for a in ("int8", "uint8"))
DEFAULT_INT8 = INT8_SETTINGS[0]
#: The float model must take at least this long per inference (1 thread) for the search to
#: run: below it the layout saves microseconds, and the search costs a quantization each.
SEARCH_ABOVE_MS = 2.0
#: Layouts within this fraction of the fastest count as fast as it: timings on a shared
#: machine wobble by a few percent, and a wobble must not decide.
SPEED_TIE = 0.05
#: Layouts within this many dB of the most faithful one's SQNR count as accurate as it:
#: accuracy decides first, speed only among these (per-tensor weights can cost 30 points
#: of top-1 agreement on a real network, for a speed-up inside the timing noise).
FIDELITY_TIE_DB = 1.0
#: Calibration inputs each candidate layout is quantized with, and compared on.
SEARCH_CALIB, SEARCH_COMPARE = 32, 64
#: Seconds of interleaved timing for all layouts together.
SPEED_SECONDS = 3.0


def _session(path: Path, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _time_ms(paths: dict, x: np.ndarray, seconds: float) -> dict:
    """Per file, ms per inference at 1 thread, timed in alternation (`interleaved_ms`)."""
    from edgepilot.export.speed import interleaved_ms

    sessions = {key: _session(path) for key, path in paths.items()}
    return interleaved_ms({key: (lambda s=session: s.run(None, {INPUT_NAME: x}))
                           for key, session in sessions.items()}, seconds)


def _fidelity(paths: dict, inputs: list[np.ndarray]) -> dict:
    """Per int8 file, its outputs' SQNR (dB) against the float file's ("fp32" in `paths`) on
    `inputs`, all outputs together; higher is closer. Needs no labels."""
    runs = {key: _session(path) for key, path in paths.items()}
    outputs = {key: np.concatenate([np.concatenate([o.ravel() for o in session.run(
        None, {INPUT_NAME: x})]) for x in inputs]).astype(np.float64)
        for key, session in runs.items()}
    reference = outputs.pop("fp32")
    power = float(np.sum(reference ** 2)) or 1.0
    return {key: 10 * np.log10(power / max(float(np.sum((got - reference) ** 2)), 1e-30))
            for key, got in outputs.items()}


def rank_layouts(ms: dict, sqnr: dict) -> list:
    """Layouts ranked accuracy first: those within FIDELITY_TIE_DB of the best SQNR, fastest
    first (within SPEED_TIE a tie, broken by INT8_SETTINGS' order of preference); then the
    rest, most faithful first."""
    best = max(sqnr.values())
    accurate = [k for k in INT8_SETTINGS if sqnr[k] >= best - FIDELITY_TIE_DB]
    fastest = min(ms[k] for k in accurate)
    ties = [k for k in accurate if ms[k] <= fastest * (1 + SPEED_TIE)]
    ranked = ties + sorted((k for k in accurate if k not in ties), key=ms.__getitem__)
    return ranked + sorted((k for k in INT8_SETTINGS if k not in accurate),
                           key=lambda k: -sqnr[k])


def choose_int8_settings(float_path: Path, inputs: list[np.ndarray], quantize) -> dict:
    """Quantize every layout in INT8_SETTINGS, measure how faithful each is to the float
    model (SQNR on the calibration inputs) and how fast (1 thread, this CPU), and rank them
    with `rank_layouts`: accuracy first, then speed. `quantize(settings, inputs, out)`
    writes one.

    Returns the report's `int8_settings` note, with "ranked": the settings in that order.
    """
    float_ms = _time_ms({"fp32": float_path}, inputs[0], 0.2)["fp32"]
    if float_ms < SEARCH_ABOVE_MS:
        return {"ranked": [DEFAULT_INT8], "chosen_by":
                f"default: the float model runs in {float_ms:.2f} ms, too fast for the layout "
                "to matter", "fp32_ms": round(float_ms, 4)}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"fp32": float_path}
        for number, settings in enumerate(INT8_SETTINGS):
            paths[settings] = Path(tmp, f"layout{number}.onnx")
            quantize(settings, inputs[:SEARCH_CALIB], paths[settings])
        ms = _time_ms(paths, inputs[0], SPEED_SECONDS)
        sqnr = _fidelity(paths, inputs[:SEARCH_COMPARE])
    fp32_ms = ms.pop("fp32")
    return {"ranked": rank_layouts(ms, sqnr),
            "chosen_by": f"most faithful to the float model (SQNR within {FIDELITY_TIE_DB:g} dB "
                         f"of the best, on {len(inputs[:SEARCH_COMPARE])} calibration inputs), "
                         f"then fastest on this CPU, 1 thread (within {SPEED_TIE:.0%} a tie)",
            "fp32_ms": round(fp32_ms, 4),
            "ms_1_thread": {str(k): round(v, 4) for k, v in ms.items()},
            "sqnr_db": {str(k): round(v, 2) for k, v in sqnr.items()}}


def _quantize(float_path: Path, out: Path, inputs: list[np.ndarray], settings: Int8Settings,
              method: str, exclude: list[str]) -> Path:
    """onnxruntime's static quantizer, quietly: it logs and prints at length."""
    from onnxruntime import quantization as q

    calibrate = {m.lower(): m for m in ("MinMax", "Entropy", "Percentile", "Distribution")}
    root = logging.getLogger()  # the quantizer logs at root level; quiet it meanwhile
    level = root.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        try:
            q.quantize_static(
                str(float_path), str(out), _Reader(inputs), nodes_to_exclude=exclude,
                calibrate_method=getattr(q.CalibrationMethod, calibrate[method]),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                **settings.options(q))
        finally:
            root.setLevel(level)
    if settings.format == "QDQ":
        _unrounded_outputs(out)
    return out


#: Operations between a network's last layer and its outputs that cost nothing in float: layout
#: changes and the element-wise function a head ends with (a detector's sigmoid scores).
TRAILING_OPS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                          "Identity", "Sigmoid", "Softmax", "LogSoftmax"})


def _unrounded_outputs(path: Path) -> int:
    """Drop the QuantizeLinear -> DequantizeLinear pairs the quantizer puts between the last
    layer and each graph output: the file returns float32 anyway, and rounding the last layer's
    result to 256 levels first only loses precision. A classifier's logits are where it shows:
    on EfficientNet-Lite0, 14 of 300 photo crops have their top two logits within one int8
    step, so the rounding alone changes the top-1 of some. A detector's head ends in a sigmoid
    and transposes (`TRAILING_OPS`); rounded before and after the sigmoid, its scores came in
    steps of 1/255 and its box offsets in 256 levels. The last layer keeps its int8 weights and
    int8 input; only its output, and what follows it, stays float. Returns how many pairs were
    dropped."""
    import onnx

    if path.stat().st_size > 1 << 30:  # external data: leave such files as written
        return 0
    model = onnx.load(str(path))
    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    freed = 0
    for output in graph.output:
        name = output.name
        while (node := producer.get(name)) is not None:
            if node.op_type in TRAILING_OPS and readers.get(node.input[0], 0) == 1:
                name = node.input[0]
                continue
            if node.op_type != "DequantizeLinear":
                break
            q = producer.get(node.input[0])
            if q is None or q.op_type != "QuantizeLinear" or readers.get(node.input[0], 0) != 1:
                break
            source = producer.get(q.input[0])
            if source is None or readers.get(q.input[0], 0) != 1 or q.input[0] in outputs:
                break  # a graph input, or a tensor read elsewhere: leave the pair
            if name in outputs:  # the pair gave the output: the source now gives it
                source.output[list(source.output).index(q.input[0])] = name
                producer[name] = source
            else:
                for reader in graph.node:
                    for index, tensor in enumerate(reader.input):
                        if tensor == name:
                            reader.input[index] = q.input[0]
                name = q.input[0]
            graph.node.remove(q)
            graph.node.remove(node)
            freed += 1
    if freed:
        onnx.save(model, str(path))
    return freed


def _float_outputs(graph) -> list[str]:
    """The outputs no int8 rounding reaches after the last layer (`_unrounded_outputs`)."""
    producer = {name: node for node in graph.node for name in node.output}
    unrounded = []
    for output in graph.output:
        node = producer.get(output.name)
        while node is not None and node.op_type in TRAILING_OPS:
            node = producer.get(node.input[0])
        if node is not None and node.op_type not in ("DequantizeLinear", "QuantizeLinear"):
            unrounded.append(output.name)
    return unrounded


def _to_int8(path: Path, inputs: list[np.ndarray], method: str, guard: Guard | None) -> dict:
    """Quantize the float file at `path` in place; returns the `int8_settings` report note.

    The layouts are tried fastest first; the first whose accuracy the guard accepts is kept
    (a layout that loses too much falls back to the next), so speed never costs the budget.
    """
    import onnx

    float_path = path.with_name(path.name + ".float")
    os.replace(path, float_path)
    metadata = {p.key: p.value for p in onnx.load(str(float_path)).metadata_props}
    counter = itertools.count()
    try:
        note = choose_int8_settings(
            float_path, inputs, lambda k, xs, out: _quantize(float_path, out, xs, k, "minmax",
                                                            []))
        failures = []
        for settings in note["ranked"][:3]:
            twins: dict[Path, Path] = {}  # a QOperator trial -> its QDQ twin, for ranking

            def quantize(keep: list[str], settings=settings, twins=twins) -> Path:
                trial = path.with_name(f"{path.stem}.try{next(counter)}{path.suffix}")
                exclude = _nodes_touching(float_path, keep)
                _quantize(float_path, trial, inputs, settings, method, exclude)
                if settings.format != "QDQ":  # the debugger matches QDQ graphs only
                    twin = trial.with_name(trial.stem + ".qdq" + trial.suffix)
                    qdq = Int8Settings("QDQ", settings.activations, settings.per_channel)
                    twins[trial] = _quantize(float_path, twin, inputs, qdq, method, exclude)
                return trial

            def rank(trial: Path, twins=twins) -> list[LayerError]:
                return _rank_tensors(float_path, twins.get(trial, trial), inputs[:32])

            try:
                trial = quantize([]) if guard is None else guard.run(quantize, rank, "onnx")
            except EdgepilotError as err:  # over the accuracy budget in this layout
                failures.append(f"{settings}: {first_line(err)}")
                if guard is not None:
                    guard.kept.clear()
                continue
            note.update(chosen=str(settings), format=settings.format,
                        activations=settings.activations, per_channel=settings.per_channel)
            if "ms_1_thread" in note:  # the float model is slow enough for speed to matter
                keep = [] if guard is None else [k["tensor"] for k in guard.kept]

                def trial_file(exclude, xs, settings=settings) -> Path:
                    out = path.with_name(f"{path.stem}.try{next(counter)}{path.suffix}")
                    return _quantize(float_path, out, xs, settings, method, exclude)

                trial, note["speed"] = _keep_slow_kinds_float(float_path, trial, inputs, keep,
                                                              trial_file, guard)
            if failures:
                note["rejected"] = failures
            break
        else:
            raise EdgepilotError(failures[0].split(": ", 1)[1])
        note["ranked"] = [str(k) for k in note["ranked"]]
        model = onnx.load(str(trial))
        unrounded = _float_outputs(model.graph)
        if unrounded:
            note["float_outputs"] = {"outputs": unrounded, "why": "the last layer's result "
                                     "is returned in float, not rounded to int8 first"}
        del model.metadata_props[:]
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(path))
    finally:
        for leftover in [float_path, *path.parent.glob(f"{path.stem}.try*{path.suffix}")]:
            if leftover.exists():
                leftover.unlink()
    return note


def _keep_slow_kinds_float(float_path: Path, trial: Path, inputs, keep: list[str], quantize,
                           guard: Guard | None) -> tuple[Path, list[dict]]:
    """`export.speed` on this file: kinds of layers in float where int8 is slower here.
    Files only timed are calibrated on SEARCH_CALIB inputs (speed does not depend on the
    ranges); the file kept is calibrated on all of them and checked against the budget."""
    from edgepilot.export.speed import keep_slow_kinds_float

    kept_nodes = _nodes_touching(float_path, keep)

    def confirm(nodes: list[str]) -> Path | None:
        candidate = quantize(kept_nodes + nodes, inputs)
        return candidate if guard is None or guard.holds(candidate) else None

    trial, _, notes = keep_slow_kinds_float(
        layer_kinds(float_path), trial,
        lambda nodes: quantize(kept_nodes + nodes, inputs[:SEARCH_CALIB]),
        lambda files: _time_ms(files, inputs[0], SPEED_SECONDS), confirm)
    return trial, notes


def layer_kinds(model_path: Path) -> dict[str, list[str]]:
    """The float graph's weighted nodes by kind, as int8 kernels differ in speed: the stem
    (a convolution of the graph's input), depthwise, pointwise (1x1) and other convolutions,
    and fully connected layers."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    inputs = {i.name for i in graph.input}
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    kinds: dict[str, list[str]] = {"stem convolution": [], "depthwise convolutions": [],
                                   "pointwise convolutions": [], "other convolutions": [],
                                   "fully connected": []}
    for node in graph.node:
        if node.op_type in ("Gemm", "MatMul"):
            kinds["fully connected"].append(node.name)
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        weight = shapes.get(node.input[1], [])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.input[0] in inputs:
            kinds["stem convolution"].append(node.name)
        elif group > 1 and len(weight) > 1 and weight[1] == 1:
            kinds["depthwise convolutions"].append(node.name)
        elif weight[2:] and all(d == 1 for d in weight[2:]):
            kinds["pointwise convolutions"].append(node.name)
        else:
            kinds["other convolutions"].append(node.name)
    return {kind: nodes for kind, nodes in kinds.items() if nodes}


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
    from edgepilot.runtime.onnx_info import module_path

    return {out: f"{module} ({node.op_type})" for node in graph.node
            if (module := module_path(node)) for out in node.output}
