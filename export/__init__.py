"""edgepilot.export: write a torch.nn.Module as deployable files, each with a parity report.

The package itself is callable, so ``edgepilot.export(module, sample, ...)`` works even though
``edgepilot.export`` is also this subpackage. torch and onnx are imported only while exporting.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import re
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError, UnsupportedFormatError, require
from edgepilot.export.calibration import Calibration, as_inputs, load_calibration
from edgepilot.export.guard import Guard
from edgepilot.export.noise import first_line, plain, quiet_exporters
from edgepilot.export.report import ExportReport, compare, decisions, print_reports
from edgepilot.formats import FORMATS, format_by_name
from edgepilot.meta import ModelMeta

__all__ = ["export", "ExportReport", "print_reports", "flatten_outputs"]


def export(
    module,
    sample_input,
    *,
    formats: Sequence[str] | str = ("onnx",),
    out: str | Path = "model",
    meta: ModelMeta | None = None,
    precision: Sequence[str] | str | None = None,
    val_data: tuple[np.ndarray, np.ndarray] | None = None,
    calib: str | Path | np.ndarray | None = None,
    calib_size: int = 300,
    calib_method: str = "minmax",
    max_drop: float | None = 1.0,
    io_dtype: str | None = None,
    dynamic_batch: bool = False,
    guard_budget: float | None = 900.0,
    quiet: bool = False,
    **format_options,
) -> list[ExportReport]:
    """Export `module` to each format and precision, check it against PyTorch and report.

    Args:
        module: the torch.nn.Module (put in eval mode for export). Its forward() takes one
            tensor and returns a tensor, or a tuple, list or dict of tensors (multi-output
            models, e.g. detectors; every output is checked).
        sample_input: one input tensor, e.g. ``torch.zeros(1, 3, 64, 64)``; only its first
            row is used (files have a batch of one unless `dynamic_batch`).
        formats: format names from `edgepilot.formats.FORMATS`.
        out: output path stem; ``runs/net`` writes ``runs/net.onnx``, ``runs/net_int8.tflite``.
        meta: labels and preprocessing to embed (needed for ``Model.predict``).
        precision: one or more of the formats' precisions (default: each format's first:
            fp32, or int8 for edgetpu).
        val_data: ``(images (N, H, W, 3) uint8 RGB, labels (N,))`` for parity and accuracy
            on real images; without it parity is measured on random images (or random
            inputs, for models without image metadata).
        calib: int8 calibration images: a folder, an .npy file or an array (default: the
            validation images).
        calib_size: at most this many calibration images.
        calib_method: e.g. ``minmax`` (both formats), ``entropy``/``percentile`` (onnx).
        max_drop: int8 accuracy budget in points; layers are kept in float until the drop is
            within it (needs `val_data`; None turns the guard off).
        io_dtype: boundary type of int8 files: tflite ``int8`` (default) or ``uint8`` (what
            MediaPipe and the mobile task libraries need); onnx QDQ files keep ``float32``.
        dynamic_batch: ask for a dynamic batch dimension (formats that support one); a model
            that specialises its batch falls back to a batch of one, said in the report.
        guard_budget: seconds the accuracy guard may spend per file before it gives up
            (None: no limit).
        quiet: print neither progress nor the report table.
        **format_options: options of one format's exporter (e.g. ``compute_units`` for Core
            ML); formats that do not take an option ignore it.

    Returns:
        One `ExportReport` per file; each is also saved as ``<file>.json``. A file that fails
        its own check (it does not load or run, or its outputs do not match the module's
        structure) is not written, and the export raises.

    Example:
        >>> edgepilot.export(net, torch.zeros(1, 3, 64, 64), formats=["onnx", "tflite"],
        ...                  precision=["fp32", "int8"], out="runs/net", meta=meta,
        ...                  val_data=(images, labels))
    """
    torch = require("torch", "export", "Exporting models")
    fmts = [format_by_name(f) for f in ([formats] if isinstance(formats, str) else formats)]
    if precision is None:  # each format's default (fp32, or int8 where that is all it has)
        combos = [(fmt, fmt.precisions[0]) for fmt in fmts]
    else:
        wanted = [precision] if isinstance(precision, str) else list(precision)
        combos = [(fmt, prec) for fmt in fmts for prec in wanted]
    for fmt, prec in combos:  # validate every option before doing any work
        if prec not in fmt.precisions:
            raise UnsupportedFormatError(
                f"Precision '{prec}' is not available for {fmt.name}. "
                f"Valid precisions: {', '.join(fmt.precisions)}"
            )
    if not isinstance(sample_input, torch.Tensor) or sample_input.dim() < 1 or \
            not len(sample_input):
        raise EdgepilotError(
            "sample_input must be a torch.Tensor with a batch dimension, such as "
            f"torch.zeros(1, 3, 64, 64), got {_describe_sample(sample_input)}"
        )
    sample_input = sample_input[:1]  # a file's batch is one (or dynamic), never the sample's
    log = (lambda message: None) if quiet else _log
    try:
        module = module.eval()
    except NotImplementedError:  # torch.export's program.module(): its mode is already fixed
        pass
    probe = _Probe(module, sample_input, meta, val_data)
    calibration = None
    if any(prec == "int8" for _, prec in combos):
        calibration = _calibration(calib, val_data, meta, calib_size)
    out = Path(out)
    for fmt in FORMATS:  # "runs/net.onnx" and "runs/net" mean the same stem
        if out.name.lower().endswith(fmt.suffix):
            out = out.with_name(out.name[: -len(fmt.suffix)])
    out.parent.mkdir(parents=True, exist_ok=True)

    reports = []
    for fmt, prec in combos:
        exporter = importlib.import_module(f"edgepilot.export.{fmt.exporter}")
        name = out.name if prec == "fp32" else f"{out.name}_{prec}"
        path = out.with_name(name + fmt.suffix)
        guard = None
        if prec == "int8" and max_drop is not None and probe.baseline is not None:
            guard = Guard(probe.accuracy, probe.baseline, max_drop, budget_s=guard_budget,
                          progress=log)
        log(f"exporting {fmt.name} {prec} -> {path}")
        options = dict(meta=meta, precision=prec, method=calib_method, guard=guard,
                       calibration=None if calibration is None else calibration.images,
                       io_dtype=io_dtype, dynamic_batch=dynamic_batch, **format_options)
        started = time.perf_counter()
        # Written in a scratch folder beside the target and checked there; only a file that
        # passed its own check replaces the target, so a failure never leaves a wrong file
        # behind nor destroys a good one.
        scratch = Path(tempfile.mkdtemp(prefix=".partial-", dir=path.parent))
        try:
            draft = scratch / path.name
            with torch.no_grad():
                notes = exporter.export(module, sample_input, draft,
                                        **_accepted(exporter.export, options))
            seconds = time.perf_counter() - started
            report = probe.check(draft, fmt.name, prec, seconds, notes)
            report.path = str(path)
            _install(draft, path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if calibration is not None and "calibration" in notes:
            notes["calibration"].update(source=calibration.source,
                                        skipped=calibration.skipped)
        report.notes = notes
        fp32_bytes = notes.pop("fp32_bytes", None)
        if fp32_bytes:
            report.size_ratio = round(report.size_bytes / fp32_bytes, 4)
        report.save(path.with_name(path.name + ".json"))
        reports.append(report)
    _speed_warnings(reports)
    if not quiet:
        print_reports(reports)
    return reports


def _speed_warnings(reports: list[ExportReport]) -> None:
    """Warn where a quantized file is slower than the float file of the same format from the
    same call (timed here, one thread each, interleaved): a quantized model can be slower
    when its kernels are not the fast ones on this CPU or its graph fragments."""
    from edgepilot.runtime import load

    floats = {r.format: r for r in reports if r.precision == "fp32" and r.n_inputs}
    for report in reports:
        base = floats.get(report.format)
        if base is None or report is base or not report.n_inputs:
            continue
        try:
            fast, slow = _median_ms([load(base.path, threads=1), load(report.path, threads=1)])
        except EdgepilotError:
            continue
        report.notes["latency_ms_1_thread"] = {"fp32": round(fast, 4),
                                               report.precision: round(slow, 4)}
        if slow > 1.1 * fast:
            report.notes.setdefault("warnings", []).append(
                f"{slow / fast:.2f}x slower than the fp32 file on this CPU ({slow:.3f} ms vs "
                f"{fast:.3f} ms, 1 thread): quantization does not pay here")
        report.save(Path(report.path).with_name(Path(report.path).name + ".json"))


def _median_ms(models, seconds: float = 0.4) -> list[float]:
    """Median latency of each model, timed in alternation for about `seconds` in all."""
    inputs = [np.zeros([d or 1 for d in m.inputs[0].shape], m.inputs[0].dtype)
              for m in models]
    times: list[list[float]] = [[] for _ in models]
    for model, x in zip(models, inputs):
        model(x)  # warm-up
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times[0]) < 5:
        for model, x, record in zip(models, inputs, times):
            started = time.perf_counter()
            model(x)
            record.append(time.perf_counter() - started)
    return [1000 * float(np.median(t)) for t in times]


def _log(message: str) -> None:
    print(f"edgepilot: {message}", file=sys.stderr, flush=True)


def _describe_sample(sample) -> str:
    shape = getattr(sample, "shape", None)
    return f"{type(sample).__name__} of shape {tuple(shape)}" if shape is not None else \
        type(sample).__name__


def _accepted(function, options: dict) -> dict:
    """The options `function` takes: exporters declare what they support."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return options
    return {k: v for k, v in options.items() if k in parameters}


def _size(path: Path) -> int:
    if path.is_dir():  # folder formats (.mlpackage)
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _install(draft: Path, path: Path) -> None:
    """Move a checked file or folder to its place, replacing what was there."""
    if draft.is_dir():
        old = None
        if path.exists() or path.is_symlink():
            old = path.with_name(f".old-{path.name}-{os.getpid()}")
            os.replace(path, old)
        os.replace(draft, path)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        return
    if path.is_dir() and not path.is_symlink():
        raise EdgepilotError(f"Cannot write '{path}': a folder of that name is in the way")
    os.replace(draft, path)


def _calibration(calib, val_data, meta, calib_size) -> Calibration:
    if meta is None:
        raise EdgepilotError("int8 export needs meta= (the input size and normalisation) to "
                             "preprocess calibration images")
    if calib is None:
        if val_data is None:
            raise EdgepilotError("int8 export needs calibration images: pass calib= (a folder, "
                                 ".npy file or array) or val_data=")
        calibration = load_calibration(val_data[0], meta.input_size, calib_size, meta)
        calibration.source = "validation images"
        return calibration
    return load_calibration(calib, meta.input_size, calib_size, meta)


def flatten_outputs(result) -> tuple[list, list[str]]:
    """A module's result as a list of tensors and their names: a tensor is ``output``;
    a tuple or list gives ``output_0``, ``output_1`` ...; a dict gives its keys."""
    import torch

    if isinstance(result, torch.Tensor):
        return [result], ["output"]
    if isinstance(result, dict) and result and \
            all(isinstance(v, torch.Tensor) for v in result.values()):
        return list(result.values()), [str(k) for k in result]
    if isinstance(result, (tuple, list)) and result and \
            all(isinstance(v, torch.Tensor) for v in result):
        return list(result), [f"output_{i}" for i in range(len(result))]
    raise EdgepilotError(
        f"The model's forward() returned {type(result).__name__}; edgepilot exports models "
        "that return a tensor, or a tuple, list or dict of tensors")


class _Probe:
    """The PyTorch side of every comparison, computed once per export call: the module's
    outputs on the validation images (or random images/inputs), its accuracy, and each file
    format's view of the same images (preprocessed as the runtime will for that file)."""

    #: Random images checked when no validation data is given.
    RANDOM_IMAGES = 16

    def __init__(self, module, sample_input, meta, val_data):
        import torch

        self.meta, self.sample_input = meta, sample_input
        self.labels = None
        self.images = None
        self._views: dict[str, np.ndarray] = {}
        with torch.no_grad(), quiet_exporters():
            try:
                first, self.names = flatten_outputs(module(sample_input))
            except EdgepilotError:
                raise
            except Exception as err:
                raise EdgepilotError(
                    f"The model does not run on the sample input of shape "
                    f"{tuple(sample_input.shape)}: {first_line(err)}") from err
        self.shapes = [tuple(t.shape[1:]) for t in first]
        self.detector = _detector(meta, self.shapes)
        if meta is not None and len(first) == 1:
            _check_labels(meta, self.shapes[0])
        if val_data is not None:
            if meta is None:
                raise EdgepilotError("val_data needs meta= (labels and preprocessing) to turn "
                                     "its images into model inputs")
            check = _check_detection_data if self.detector else _check_val_data
            self.images, self.labels = check(val_data, meta, len(first))
        elif meta is not None and meta.is_image:
            # Random images, preprocessed for each file as its runtime will: the module and
            # every file see the same pixels, whatever their layout and normalisation.
            generator = np.random.default_rng(0)
            height, width = meta.input_size
            self.images = generator.integers(0, 256, (self.RANDOM_IMAGES, height, width, 3),
                                             dtype=np.uint8)
        if self.images is not None:
            x = self.inputs_for(meta)
        else:
            generator = np.random.default_rng(0)
            shape = (self.RANDOM_IMAGES, *sample_input.shape[1:])
            x = np.concatenate([sample_input.numpy(), generator.normal(size=shape)])
            x = x.astype(np.float32)
        self.inputs = x
        with torch.no_grad(), quiet_exporters():
            try:
                self.outputs = _in_batches(lambda b: module(torch.from_numpy(b)), x)
            except Exception:  # a model that only takes a batch of one runs row by row
                self.outputs = _in_batches(lambda b: module(torch.from_numpy(b)), x, rows=1)
        self.baseline = None if self.labels is None else self._score(self.outputs)

    def _score(self, outputs: list[np.ndarray]) -> float:
        """The guard's measure of a set of outputs: top-1 accuracy, or a detector's mAP@0.5."""
        if self.detector is None:
            return float((decisions(outputs[0]) == self.labels).mean())
        from edgepilot.runtime.detection import evaluate

        return evaluate(self._detections(outputs), self.labels, self.meta.labels)["map50"]

    def _detections(self, outputs: list[np.ndarray], score_threshold: float = 0.05):
        from edgepilot.runtime.detection import decode

        heat, box = outputs[self.detector.heatmap], outputs[self.detector.box]
        return [decode(h, b, self.detector, self.meta.labels, score_threshold=score_threshold)
                for h, b in zip(heat, box)]

    def inputs_for(self, meta) -> np.ndarray:
        """The images as the runtime feeds a file with this metadata."""
        key = meta.to_json()
        if key not in self._views:
            self._views[key] = np.concatenate(as_inputs(self.images, meta))
        return self._views[key]

    def _file_inputs(self, model) -> np.ndarray:
        if self.images is not None and (model.meta or self.meta) is not None:
            return self.inputs_for(model.meta or self.meta)
        x, shape = self.inputs, model.inputs[0].shape
        if x.ndim == 4 and len(shape) == 4 and shape[1:] != x.shape[1:] and \
                shape[-1] == x.shape[1]:
            return x.transpose(0, 2, 3, 1).copy()  # a channels-last file, same values
        return x

    def _expected(self, model) -> list[np.ndarray]:
        """The module's outputs as the file should give them: a file that adds the softmax
        (TFLite classifiers output probabilities) is compared with softmaxed logits."""
        outputs = list(self.outputs)
        file_meta = model.meta
        if len(outputs) == 1 and self.meta is not None and file_meta is not None and \
                self.meta.output == "logits" and file_meta.output == "probs":
            logits = outputs[0].reshape(len(outputs[0]), -1)
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            outputs[0] = shifted / shifted.sum(axis=1, keepdims=True)
        return outputs

    def _run_file(self, model, path: Path) -> list[np.ndarray]:
        try:
            return _in_batches(model, self._file_inputs(model))
        except EdgepilotError as err:
            raise EdgepilotError(_run_failure(err, path)) from err

    def accuracy(self, path: Path) -> float:
        """Accuracy of a model file through the runtime (the guard's measure)."""
        from edgepilot.runtime import load

        model = load(path)
        return self._score(self._run_file(model, path))

    def check(self, path: Path, fmt: str, precision: str, seconds: float,
              notes: dict) -> ExportReport:
        """Load the exported file with edgepilot's runtime and compare it with PyTorch.

        Raises when the file does not load, does not run, or does not give the module's
        outputs; an exporter that cannot run its file here says why in
        ``notes["unchecked"]`` (e.g. Core ML off macOS) and the report says so."""
        from edgepilot.runtime import load

        common = dict(format=fmt, precision=precision, path=str(path),
                      size_bytes=_size(path), seconds=round(seconds, 3))
        if notes.get("unchecked"):
            return ExportReport(**common, backend="-", n_inputs=0, max_abs_diff=None,
                                top1_agreement=None)
        try:
            model = load(path)
        except EdgepilotError as err:
            raise EdgepilotError(f"The {fmt} {precision} file failed its own check, so it was "
                                 f"not written: it does not load: {err}") from err
        exported = self._run_file(model, path)
        expected = self._expected(model)
        if len(exported) != len(expected):
            raise EdgepilotError(
                f"The {fmt} {precision} file failed its own check, so it was not written: it "
                f"has {len(exported)} output(s), the module {len(expected)}")
        per_output = []
        for name, want, got in zip(self.names, expected, exported):
            if want.size != got.size:
                raise EdgepilotError(
                    f"The {fmt} {precision} file failed its own check, so it was not written: "
                    f"output '{name}' holds {got.shape[1:]} values per input, the module's "
                    f"{want.shape[1:]}")
            diff = np.abs(want.reshape(len(want), -1).astype(np.float64) -
                          got.reshape(len(got), -1).astype(np.float64))
            per_output.append({"name": name, "shape": list(want.shape[1:]),
                               "max_abs_diff": float(diff.max())})
        if len(per_output) > 1:
            notes["outputs"] = per_output
        fallback = getattr(model._backend, "fallback_ops", None)
        if fallback and "partitions" in model.backend:
            counts = {op: fallback.count(op) for op in dict.fromkeys(fallback)}
            named = ", ".join(f"{op} x{n}" for op, n in counts.items())
            notes.setdefault("warnings", []).append(
                f"the delegate is split ({model.backend}): {named} fall back to builtin CPU "
                "kernels between its partitions")
        if self.detector is not None:
            return ExportReport(**common, backend=model.backend,
                                **self._detector_check(expected, exported, notes))
        result = compare(expected[0], exported[0], self.labels)
        result["max_abs_diff"] = max(o["max_abs_diff"] for o in per_output)
        if len(per_output) > 1:
            result["top1_agreement"] = None  # a detector's first output is not a class
            result.pop("accuracy_torch", None)
            result.pop("accuracy_export", None)
        return ExportReport(**common, backend=model.backend, **result)


    def _detector_check(self, expected, exported, notes: dict) -> dict:
        """A detector file against the module: the same lights (label, box within 2 px) at
        the runtime's score threshold, and mAP@0.5 of both when scenes are given."""
        from edgepilot.runtime.detection import agreement

        threshold = self.detector.score_threshold
        low = max(0.0, threshold - 0.05)  # scores near the threshold may fall either side
        notes["detections"] = agreement(self._detections(expected, low),
                                        self._detections(exported, low), threshold=threshold)
        result = {"n_inputs": len(exported[0]), "top1_agreement": None,
                  "max_abs_diff": max(o["max_abs_diff"] for o in notes["outputs"])}
        if self.labels is not None:
            notes["metric"] = "mAP@0.5"
            result["accuracy_torch"] = self.baseline
            result["accuracy_export"] = self._score(exported)
        return result


def _detector(meta: ModelMeta | None, shapes: list[tuple]):
    """The decode parameters of a detector (metadata task: detection), checked against the
    module's outputs; None for any other model."""
    from edgepilot.runtime.detection import DETECTION_TASK, DecodeParams

    if meta is None or meta.task != DETECTION_TASK:
        return None
    try:
        params = DecodeParams.from_meta(meta)
    except EdgepilotError as err:
        raise EdgepilotError(f"meta says task: detection, but {err}") from err
    want = {params.heatmap: len(meta.labels), params.box: 4}
    if len(shapes) != 2 or any(len(shapes[i]) != 3 or shapes[i][-1] != n
                               for i, n in want.items()):
        raise EdgepilotError(
            f"A detector must output a heatmap (N, h, w, {len(meta.labels)}) and a box map "
            f"(N, h, w, 4), channels last; this module outputs "
            f"{', '.join(str(s) for s in shapes)} per input")
    return params


def _check_detection_data(val_data, meta: ModelMeta, n_outputs: int):
    """val_data of a detector: images (N, H, W, 3) and, per image, (boxes (n, 4), labels)."""
    if not isinstance(val_data, (tuple, list)) or len(val_data) != 2:
        raise EdgepilotError("val_data of a detector must be a pair (images, targets)")
    images, targets = np.asarray(val_data[0]), list(val_data[1])
    if not len(images) or len(images) != len(targets):
        raise EdgepilotError(f"val_data has {len(images)} image(s) and {len(targets)} "
                             "target(s); give one (boxes, labels) pair per image")
    checked = []
    for boxes, labels in targets:
        boxes, labels = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels)
        if len(boxes) != len(labels) or (len(labels) and (
                labels.dtype.kind not in "iu" or labels.min() < 0 or
                labels.max() >= len(meta.labels))):
            raise EdgepilotError("val_data targets must be (boxes (n, 4), labels (n,)) with "
                                 f"label indices 0..{len(meta.labels) - 1}")
        checked.append((boxes, labels.astype(np.int64)))
    return images, checked


def _check_labels(meta: ModelMeta, shape: tuple) -> None:
    """One label per output value (a single sigmoid value stands for two labels)."""
    if not shape or not all(isinstance(d, int) for d in shape):
        return
    values, labels = math.prod(shape), len(meta.labels)
    if values != labels and not (meta.output == "sigmoid" and values == 1 and labels == 2):
        raise EdgepilotError(
            f"The model outputs {values} value(s) per input but meta has {labels} label(s) "
            f"({', '.join(meta.labels[:5])}{', ...' if labels > 5 else ''}); give one label "
            "per output (ModelMeta(labels=...), or --labels FILE on the command line)")


def _check_val_data(val_data, meta: ModelMeta, n_outputs: int):
    if not isinstance(val_data, (tuple, list)) or len(val_data) != 2:
        raise EdgepilotError("val_data must be a pair (images, labels)")
    images, labels = val_data
    images, labels = np.asarray(images), np.asarray(labels)
    if not len(images) or len(images) != len(labels):
        raise EdgepilotError(f"val_data has {len(images)} image(s) and {len(labels)} label(s); "
                             "give one label per image")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise EdgepilotError(f"val_data labels must be class indices (N,) of integers, got "
                             f"shape {labels.shape} {labels.dtype}")
    if n_outputs == 1 and (labels.min() < 0 or labels.max() >= len(meta.labels)):
        raise EdgepilotError(
            f"val_data labels range {labels.min()}..{labels.max()}, but meta has "
            f"{len(meta.labels)} labels (indices 0..{len(meta.labels) - 1})")
    return images, labels


def _run_failure(err: Exception, path: Path) -> str:
    """A file that loads but fails when run, in one line naming the operator if known."""
    text = plain(str(err)).replace(str(path), path.name)
    op = re.search(r"Node number \d+ \((\w+)\)|\b(\w+)\.cc:\d+", text)
    named = ""
    if op:
        named = f" at operator {(op.group(1) or op.group(2)).upper()}"
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(err).__name__)
    return (f"The exported file failed its own check, so it was not written: it does not run"
            f"{named} ({line[:240]}). Try another precision or format")


def _in_batches(run, x: np.ndarray, rows: int = 256) -> list[np.ndarray]:
    """`run` over `x` in batches of about `rows`, each output concatenated over them."""
    parts = []
    for batch in np.array_split(x, max(1, len(x) // rows)):
        result = run(batch)
        tensors = result if isinstance(result, (tuple, list)) else \
            list(result.values()) if isinstance(result, dict) else [result]
        parts.append([np.asarray(t.detach().numpy() if hasattr(t, "detach") else t)
                      for t in tensors])
    return [np.concatenate(outs) for outs in zip(*parts)]


class _CallableModule(types.ModuleType):
    """Lets ``edgepilot.export(...)`` call `export` although the name is also this package."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
