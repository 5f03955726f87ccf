"""The parity probe: what the exported file is measured against. It runs the module once on
the validation images (or random inputs) and checks every exported draft the same way, so the
report's agreement and accuracy are measured, never assumed. `report.py` formats what it finds.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError
from edgepilot.export.calibration import as_inputs
from edgepilot.export.noise import first_line, plain, quiet_exporters
from edgepilot.export.report import ExportReport, compare, decisions
from edgepilot.meta import ModelMeta


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


class Probe:
    """The PyTorch side of every comparison, computed once per export call: the module's
    outputs on the validation images (or random images/inputs), its accuracy, and each file
    format's view of the same images (preprocessed as the runtime will for that file)."""

    #: Random images checked when no validation data is given.
    RANDOM_IMAGES = 16

    def __init__(self, module, sample_input, meta, val_data, unlabelled=None):
        """`unlabelled`: real samples without labels (the calibration images), compared on
        when there is no `val_data`."""
        import torch

        self.meta, self.sample_input = meta, sample_input
        self.labels = None
        self.images = None
        #: What parity is measured on, said in every report: agreement on random inputs
        #: says little about real images (every int8 file agrees there).
        self.measured_on = "random inputs"
        self._views: dict[str, np.ndarray] = {}
        self._scored: dict[str, list[np.ndarray]] = {}  # path -> its outputs, once scored
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
                raise EdgepilotError("data= needs meta= (labels and preprocessing) to turn "
                                     "its images into model inputs")
            check = _check_detection_data if self.detector else _check_val_data
            self.images, self.labels = check(val_data, meta, len(first))
            self.measured_on = "validation images"
        elif unlabelled is not None and meta is not None:
            self.images, self.measured_on = unlabelled, "calibration images"
        elif meta is not None and meta.is_image:
            # Random images, preprocessed for each file as its runtime will: the module and
            # every file see the same pixels, whatever their layout and normalisation.
            generator = np.random.default_rng(0)
            height, width = meta.input_size
            self.images = generator.integers(0, 256, (self.RANDOM_IMAGES, height, width, 3),
                                             dtype=np.uint8)
            self.measured_on = "random images"
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
        #: What the guard measures: accuracy on labelled images; without labels, on the
        #: user's own images, the top-1 accuracy expected when PyTorch's class probabilities
        #: stand for the labels (`_soft_labels`).
        self.measure = "accuracy"
        self._soft = None
        if self.labels is None and self.measured_on == "calibration images" and \
                self.detector is None and len(self.outputs) == 1:
            self._soft = _soft_labels(self.outputs[0], meta)
            if self._soft is not None:
                self.measure = "expected top-1 (PyTorch's probabilities as labels)"
        self.baseline = None if self.labels is None and self._soft is None else \
            self._score(self.outputs)

    def _score(self, outputs: list[np.ndarray], pick: np.ndarray | None = None) -> float:
        """The guard's measure of a set of outputs: top-1 accuracy, a detector's mAP@0.5, or
        without labels the expected top-1 accuracy under PyTorch's own probabilities; `pick`
        scores those rows only (repeats allowed)."""
        if pick is not None:
            outputs = [o[pick] for o in outputs]
        if self._soft is not None:
            chosen = decisions(outputs[0])
            soft = self._soft if pick is None else self._soft[pick]
            return float(soft[np.arange(len(chosen)), chosen].mean())
        labels = self.labels if pick is None else [self.labels[i] for i in pick]
        if self.detector is None:
            return float((decisions(outputs[0]) == np.asarray(labels)).mean())
        from edgepilot.runtime.detection_metrics import evaluate

        return evaluate(self._detections(outputs), labels, self.meta.labels)["map50"]

    def forget(self, path: Path) -> None:
        """Drop the outputs `accuracy` kept for `path`."""
        self._scored.pop(str(path), None)

    def difference_spread(self, first: Path, second: Path, draws: int = 50,
                          seed: int = 0) -> float | None:
        """How far apart two scored files can measure by the choice of images alone: the
        standard deviation of score(second) - score(first) over the guard's images drawn again
        with replacement, both files on each draw. None unless both were scored
        (`accuracy`)."""
        a, b = self._scored.get(str(first)), self._scored.get(str(second))
        if a is None or b is None:
            return None
        rng = np.random.default_rng(seed)
        differences = []
        for _ in range(draws):
            pick = rng.integers(0, len(a[0]), len(a[0]))
            differences.append(self._score(b, pick) - self._score(a, pick))
        return float(np.std(differences))

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

    def accuracy(self, path: Path, keep: bool = False) -> float:
        """Accuracy of a model file through the runtime (the guard's measure); `keep` holds
        on to its outputs for `difference_spread` until `forget`."""
        from edgepilot.runtime import load

        model = load(path)
        outputs = self._run_file(model, path)
        if keep:
            self._scored[str(path)] = outputs
        return self._score(outputs)

    def check(self, path: Path, fmt: str, precision: str, seconds: float,
              notes: dict) -> ExportReport:
        """Load the exported file with edgepilot's runtime and compare it with PyTorch.

        Raises when the file does not load, does not run, or does not give the module's
        outputs; an exporter that cannot run its file here says why in
        ``notes["unchecked"]`` (e.g. Core ML off macOS) and the report says so."""
        from edgepilot.runtime import load

        common = dict(format=fmt, precision=precision, path=str(path),
                      size_bytes=_size(path), seconds=round(seconds, 3),
                      measured_on=self.measured_on)
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
        split = model.split_delegate() if model.fallback_ops else None
        if split:
            notes.setdefault("warnings", []).append(split)
        if self.detector is not None:
            return ExportReport(**common, backend=model.backend,
                                **self._detector_check(expected, exported, notes))
        result = compare(expected[0], exported[0], self.labels)
        result["max_abs_diff"] = max(o["max_abs_diff"] for o in per_output)
        if len(per_output) > 1:
            result["top1_agreement"] = None  # a detector's first output is not a class
            result.pop("accuracy_torch", None)
            result.pop("accuracy_export", None)
        else:
            result.update(_in_probabilities(expected[0], exported[0], model.meta or self.meta))
        return ExportReport(**common, backend=model.backend, **result)


    def _detector_check(self, expected, exported, notes: dict) -> dict:
        """A detector file against the module: the same lights (label, box within 2 px) at
        the runtime's score threshold, and mAP@0.5 of both when scenes are given."""
        from edgepilot.runtime.detection_metrics import agreement

        threshold = self.detector.score_threshold
        low = max(0.0, threshold - 0.05)  # scores near the threshold may fall either side
        notes["detections"] = agreement(self._detections(expected, low),
                                        self._detections(exported, low), threshold=threshold)
        result = {"n_inputs": len(exported[0]), "top1_agreement": None, "outputs_are": "outputs",
                  "max_abs_diff": max(o["max_abs_diff"] for o in notes["outputs"])}
        if self.labels is not None:
            notes["metric"] = "mAP@0.5"
            result["accuracy_torch"] = self.baseline
            result["accuracy_export"] = self._score(exported)
        return result


def _detector(meta: ModelMeta | None, shapes: list[tuple]):
    """The decode parameters of a detector (metadata task: detection), checked against the
    module's outputs; None for any other model."""
    from edgepilot.runtime.detection import DecodeParams

    if meta is None or not meta.is_detector:
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
        raise EdgepilotError("data= of a detector must be a pair (images, targets)")
    images, targets = np.asarray(val_data[0]), list(val_data[1])
    if not len(images) or len(images) != len(targets):
        raise EdgepilotError(f"data= has {len(images)} image(s) and {len(targets)} "
                             "target(s); give one (boxes, labels) pair per image")
    checked = []
    for boxes, labels in targets:
        boxes, labels = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels)
        if len(boxes) != len(labels) or (len(labels) and (
                labels.dtype.kind not in "iu" or labels.min() < 0 or
                labels.max() >= len(meta.labels))):
            raise EdgepilotError("data= targets must be (boxes (n, 4), labels (n,)) with "
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
            "per output: labels= (a file, one label per line) or meta=ModelMeta(labels=[...])")


def _check_val_data(val_data, meta: ModelMeta, n_outputs: int):
    if not isinstance(val_data, (tuple, list)) or len(val_data) != 2:
        raise EdgepilotError("data= must be a pair (images, labels)")
    images, labels = val_data
    images, labels = np.asarray(images), np.asarray(labels)
    if not len(images) or len(images) != len(labels):
        raise EdgepilotError(f"data= has {len(images)} image(s) and {len(labels)} label(s); "
                             "give one label per image")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise EdgepilotError(f"data= labels must be class indices (N,) of integers, got "
                             f"shape {labels.shape} {labels.dtype}")
    if n_outputs == 1 and (labels.min() < 0 or labels.max() >= len(meta.labels)):
        raise EdgepilotError(
            f"data= labels range {labels.min()}..{labels.max()}, but meta has "
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


def _size(path: Path) -> int:
    if path.is_dir():  # folder formats (.mlpackage)
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _in_probabilities(expected: np.ndarray, exported: np.ndarray, meta: ModelMeta | None) -> dict:
    """What a classifier's `max_abs_diff` compares, and its class-probability difference:
    logits are softmaxed on both sides first, so an ONNX file (logits) and a TFLite file
    (probabilities) of the same model are reported on one scale."""
    if meta is None or meta.output not in ("logits", "probs", "sigmoid"):
        return {"outputs_are": "outputs"}
    want = expected.reshape(len(expected), -1).astype(np.float64)
    got = exported.reshape(len(exported), -1).astype(np.float64)
    top5 = _top_overlap(want, got, 5) if want.shape[1] > 5 else None
    if meta.output == "logits":
        want, got = _softmax(want), _softmax(got)
    if want.shape[1] == 1:  # a sigmoid: P(second class); the first is its complement
        want, got = np.hstack([1 - want, want]), np.hstack([1 - got, got])
    return {"outputs_are": "logits" if meta.output == "logits" else "probabilities",
            "max_prob_diff": float(np.abs(want - got).max()),
            "kl_divergence": _kl(want, got), "top5_overlap": top5}


def _soft_labels(outputs: np.ndarray, meta: ModelMeta | None) -> np.ndarray | None:
    """PyTorch's class probabilities, (N, classes), as labels for a guard without any.

    If the true class of an image were drawn from the float model's own probabilities, a
    file choosing class k is right with probability p_k: the mean of p over the file's choices
    is its expected top-1 accuracy, and the float model's own is the mean of max p. Where the
    float model hesitates (0.27 against 0.25), a file that picks the runner-up loses 0.02 of an
    image, not a whole one; where it is sure, a flip costs nearly all of it. None where the
    outputs are not class scores."""
    if meta is None or meta.output not in ("logits", "probs", "sigmoid"):
        return None
    scores = outputs.reshape(len(outputs), -1).astype(np.float64)
    if meta.output == "logits":
        if scores.shape[1] < 2:
            return None
        return _softmax(scores)
    if scores.shape[1] == 1:  # a sigmoid: P(second class)
        return np.hstack([1 - scores, scores])
    return scores


def _kl(want: np.ndarray, got: np.ndarray) -> float:
    """Mean KL divergence (nats) of the file's class probabilities from PyTorch's: how far the
    whole distribution moved, which a top-1 agreement of 100% can hide."""
    tiny = 1e-12
    want, got = np.clip(want, tiny, 1.0), np.clip(got, tiny, 1.0)
    want, got = want / want.sum(1, keepdims=True), got / got.sum(1, keepdims=True)
    return float(max(0.0, (want * np.log(want / got)).sum(1).mean()))


def _top_overlap(want: np.ndarray, got: np.ndarray, k: int) -> float:
    """Mean share of PyTorch's top-k classes that are also in the file's top-k."""
    top_want = np.argsort(-want, axis=1, kind="stable")[:, :k]
    top_got = np.argsort(-got, axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_want, top_got)]))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
