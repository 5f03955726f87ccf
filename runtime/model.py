"""`load(path)` -> `Model`: one wrapper over every backend.

The wrapper owns what all formats share: input checks, preprocessing from the metadata,
(de)quantization at the boundary, labels and softmax. Backends only run tensors.
"""

from __future__ import annotations

import importlib
import math
import os
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepilot.errors import InputError, ModelFileError
from edgepilot.formats import Format, format_for_path
from edgepilot.meta import ModelMeta
from edgepilot.runtime.backend import Backend, TensorInfo, describe, file_errors
from edgepilot.runtime.detection import DecodeParams, Detection, decode, letterbox
from edgepilot.runtime.image import check_image, preprocess, read_image

__all__ = ["load", "Model", "Prediction", "Prepared", "to_prediction", "output_scores",
           "meta_mismatch"]


@dataclass(frozen=True)
class Prediction:
    """The result of `Model.predict`: the top label, its score and every class's score."""

    label: str
    score: float
    index: int
    scores: dict[str, float]

    def to_dict(self) -> dict:
        return {"label": self.label, "score": self.score, "index": self.index,
                "scores": self.scores}


@dataclass(frozen=True)
class Prepared:
    """An image made into a model's input (`Model.prepare`): the input array, the image's
    (height, width), and for a detector where the image lies in the input (the letterbox's
    scale and padding), so that boxes map back to the image's pixels."""

    input: np.ndarray | None
    image_size: tuple[int, int]
    scale: float = 1.0
    pad: tuple[float, float] = (0.0, 0.0)


def not_a_model(path: Path, folder: bool = False) -> str:
    """Why `path` cannot be a model: missing, or the wrong kind of thing (never opened)."""
    if not path.exists():
        return f"Model file not found: '{path}'"
    if folder:
        return f"'{path}' is not a folder: a {path.suffix} model is a folder of files"
    if path.is_dir():
        return f"'{path}' is a folder, not a model file: give the model file inside it"
    return f"'{path}' is not a regular file (a FIFO, socket or device): give a model file"


def open_model_file(path: Path):
    """`path` opened for reading as the regular file it is (a link to one is followed), or a
    ModelFileError saying what it is instead. A FIFO is opened without blocking, so that it
    is turned away rather than waited on. Returns the open binary file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise ModelFileError(not_a_model(Path(path)) if isinstance(
            err, (FileNotFoundError, IsADirectoryError)) else
            f"Cannot read '{path}': {err.strerror}") from err
    file = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        file.close()
        raise ModelFileError(not_a_model(Path(path)))
    return file


def load(path: str | Path, *, meta: ModelMeta | None = None, threads: int | str | None = "auto",
         spin: bool | None = None, accelerator: str | None = None,
         **backend_options) -> Model:
    """Load a model file with the backend its suffix calls for.

    Args:
        path: a model file (see `edgepilot.formats.FORMATS` for the suffixes).
        meta: labels and preprocessing, for files that carry no edgepilot metadata.
        threads: inference threads; ``"auto"`` (the default) times the model briefly at 1, 2,
            4 ... threads and keeps the smallest count within 10% of the fastest, cached per
            file and host (`edgepilot.runtime.threads`); None: the backend's own default.
            Backends without a thread setting (Core ML, Edge TPU, ExecuTorch) treat ``"auto"``
            as None.
        spin: whether idle worker threads spin waiting for work (onnxruntime; None: the
            backend's default). Pass False for a loop paced by a camera.
        accelerator: the accelerator that runs the model, for formats that pick one: a Coral
            Edge TPU as ``usb``, ``usb:N``, ``pci:N`` or ``:N`` (None: the first one found).
            (``device=`` is its old name, accepted with a DeprecationWarning: ``device`` means
            a device profile everywhere else.)
        **backend_options: passed to the backend, e.g. ``providers=[...]`` for ONNX.

    Example:
        >>> model = edgepilot.load("stoplight.onnx")
        >>> model.predict("photo.jpg").label
        'green'
    """
    path = Path(path)
    fmt = format_for_path(path)  # fails on an unknown suffix before touching the file
    if "device" in backend_options:
        warnings.warn("edgepilot.load(device=...) is now accelerator=...; device= will be "
                      "removed in the next release", DeprecationWarning, stacklevel=2)
        accelerator = backend_options.pop("device")
    if accelerator is not None and "accelerator" not in fmt.load_options:
        raise InputError(f"accelerator={accelerator!r} picks a Coral Edge TPU for an "
                         f"_edgetpu.tflite file; '{path.name}' ({fmt.name}) runs on the CPU here: "
                         "leave accelerator out")
    if accelerator is not None:
        backend_options["accelerator"] = accelerator
    if not (path.is_dir() if fmt.folder else path.is_file()):  # .mlpackage: a folder
        raise ModelFileError(not_a_model(path, fmt.folder))
    if threads != "auto" and threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be 1 or more, 'auto' or None, got {threads!r}")
    # The backend module is imported only now that a file needs it. Backends turn whatever
    # their library or parser raises on a bad file into ModelFileError.
    module = importlib.import_module(f"edgepilot.runtime.{fmt.backend}")
    cls = getattr(module, fmt.backend_class)
    if spin is not None and hasattr(cls, "runtime"):  # the backends with thread options
        backend_options["spin"] = spin
    runtime = cls.runtime(**backend_options) if hasattr(cls, "runtime") else None
    if threads == "auto" and runtime:
        from edgepilot.runtime.threads import auto_threads

        with file_errors("", path, failed=f"Timing '{path}' to choose its threads failed"):
            choice, backend = auto_threads(
                path, lambda n: cls(path, threads=n, **backend_options), runtime=runtime)
        backend.thread_choice = choice
    else:
        backend = cls(path, threads=None if threads == "auto" else threads, **backend_options)
    given = meta is not None
    if not given and backend.meta_json:
        try:
            meta = ModelMeta.from_json(backend.meta_json)
        except (ValueError, TypeError) as err:
            raise ModelFileError(f"'{path}' carries malformed edgepilot metadata: "
                                 f"{describe(err)}") from err
    if meta is not None:
        problem = meta_mismatch(meta, backend.inputs, backend.outputs)
        if problem:
            if given:
                raise InputError(f"The meta passed for '{path}' does not fit the model: "
                                 f"{problem}")
            raise ModelFileError(f"'{path}' carries metadata that does not fit its own "
                                 f"model: {problem}. The file is corrupt or was edited; pass "
                                 "the right one with edgepilot.load(path, meta=ModelMeta(...))")
    return Model(backend, meta=meta, path=path, format=fmt)


def meta_mismatch(meta: ModelMeta, inputs: list[TensorInfo],
                  outputs: list[TensorInfo]) -> str | None:
    """What `meta` claims that the model's tensors contradict, or None when they agree.

    Checked once, at load, before anything is allocated from the metadata (predict resizes
    every image to meta.input_size): the input tensor's static dims must equal the shape the
    metadata implies (its dynamic dims are bounded by ModelMeta's own limits), and a static
    output must hold one value per label.
    """
    if not inputs:
        return "the model has no input tensor"
    first = inputs[0]
    want = meta.input_shape  # (1, C, H, W), (1, H, W, C) or (1, features)
    got = "x".join("?" if d is None else str(d) for d in first.shape)
    claim = (f"input_size {meta.input_size[0]}x{meta.input_size[1]}, {meta.channels} "
             f"channel(s), layout {meta.layout}, that is {'x'.join(map(str, want))}")
    if len(first.shape) != len(want):
        return f"its metadata claims {claim}, but input '{first.name}' is {got}"
    # The batch dim is not the metadata's business: predict feeds one image.
    if any(d is not None and d != w for d, w in zip(first.shape[1:], want[1:])):
        return f"its metadata claims {claim}, but input '{first.name}' is {got}"
    if meta.is_detector:
        return _detector_mismatch(meta, outputs)
    # One value per label per image: the dims after the batch, when all of them are static.
    per_image = outputs[0].shape[1:] if len(outputs) == 1 and len(outputs[0].shape) > 1 else ()
    if per_image and all(d is not None for d in per_image):
        values = math.prod(per_image)
        labels = len(meta.labels)
        if values != labels and not (meta.output == "sigmoid" and values == 1 and labels == 2):
            return (f"output '{outputs[0].name}' holds {values} values but the metadata has "
                    f"{labels} labels")
    return None


def _detector_mismatch(meta: ModelMeta, outputs: list[TensorInfo]) -> str | None:
    try:
        params = DecodeParams.from_meta(meta)
    except ModelFileError as err:
        return str(err)
    if len(outputs) != 2:
        return f"a detector has a heatmap and a box output, this file has {len(outputs)}"
    for index, channels in ((params.heatmap, len(meta.labels)), (params.box, 4)):
        shape = outputs[index].shape
        if len(shape) != 4 or shape[-1] not in (None, channels):
            return (f"output '{outputs[index].name}' is {shape}, but a detector's must be "
                    f"(1, h, w, {channels})")
    return None


class Model:
    """A loaded model: call it on arrays, or `predict` on images.

    Attributes:
        meta: labels and preprocessing (None for a file without metadata).
        backend: what really runs the model, e.g. ``"onnxruntime 1.20 (CPUExecutionProvider)"``.
        inputs, outputs: the file's tensors (`TensorInfo`).
    """

    def __init__(self, backend: Backend, *, meta: ModelMeta | None, path: Path, format: Format):
        self._backend = backend
        self.meta = meta
        self.path = path
        self.format = format
        self.inputs: list[TensorInfo] = backend.inputs
        self.outputs: list[TensorInfo] = backend.outputs
        # Interpreters are not re-entrant; one lock makes a Model safe to share across threads.
        self._lock = threading.Lock()
        self._run_failed = f"Running '{path}' failed"  # built once, off the hot path
        self._decode = None  # a detector's DecodeParams, read from meta on first use
        # What every call checks and converts against, worked out once: on a small model
        # the wrapper's per-call Python is most of its overhead over the raw session.
        self._feeds = [_Feed(info) for info in self.inputs]
        self._dequantize = [info.dequantize if info.quantized else None for info in self.outputs]
        first = self.inputs[0].shape if self.inputs else ()
        # The rank of a first input with a fixed batch of one (TFLite), else None.
        self._batch_of_one = len(first) if first and first[0] == 1 else None

    @property
    def backend(self) -> str:
        return self._backend.description

    @property
    def thread_choice(self):
        """How ``threads="auto"`` chose this model's threads (`ThreadChoice`), or None."""
        return getattr(self._backend, "thread_choice", None)

    @property
    def fallback_ops(self) -> list[str]:
        """Ops a delegate left to the CPU's builtin kernels (TFLite), in graph order."""
        return list(getattr(self._backend, "fallback_ops", None) or [])

    def split_delegate(self) -> str | None:
        """One line when the delegate is split into partitions with ops between them on the
        CPU (export's report and bench both say it), else None."""
        return split_delegate(self.backend, self.fallback_ops)

    def __repr__(self) -> str:
        name = self.meta.name if self.meta else self.path.name
        return f"Model({name!r}, format={self.format.name}, backend={self.backend!r})"

    def __call__(self, *arrays: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run raw input arrays (float or the file's dtype); return float outputs.

        One array per model input. Quantized outputs are dequantized.
        """
        feeds = self._feeds
        if len(arrays) != len(feeds):
            raise InputError(
                f"{self.path.name} takes {len(self.inputs)} input(s) "
                f"({', '.join(i.name for i in self.inputs)}), got {len(arrays)}"
            )
        try:
            arrays = [np.asarray(a) for a in arrays]
        except (ValueError, TypeError) as err:  # ragged nested lists, objects without a shape
            raise InputError(f"Inputs to {self.path.name} must be numeric arrays: "
                             f"{describe(err)}") from err
        rank = self._batch_of_one
        if rank is not None and arrays[0].ndim == rank and len(arrays[0]) > 1:
            # The file has a fixed batch of one (TFLite): run a batch row by row.
            rows = [self(*(a[i:i + 1] for a in arrays)) for i in range(len(arrays[0]))]
            if isinstance(rows[0], tuple):
                return tuple(np.concatenate(parts) for parts in zip(*rows))
            return np.concatenate(rows)
        fed = [feed(a) for feed, a in zip(feeds, arrays)]
        with self._lock:
            try:
                raw = self._backend.run(fed)
            except Exception:
                # file_errors makes it a ModelFileError (or lets edgepilot's own errors
                # through). Entered only on a failure: a with block costs ~1 us a call.
                with file_errors("", self.path, failed=self._run_failed):
                    raise
        outputs = [y if dequantize is None else dequantize(y)
                   for y, dequantize in zip(raw, self._dequantize)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    # The image path in three stages, each public so that bench (which times them) and the
    # live demo (which prepares on the capture thread) go the same way as predict:
    # prepare (image -> input) -> run (input -> outputs) -> interpret (outputs -> result).

    def prepare(self, image: np.ndarray | str | Path) -> Prepared:
        """Stage 1: an image (an (H, W, 3) uint8 RGB array of any size, or an image file) as
        this model's input, resized and normalised as its metadata says. A detector's image
        is letterboxed (aspect ratio kept), and `Prepared` keeps where it went."""
        meta = self._require_meta()
        if isinstance(image, (str, Path)):
            image = read_image(image)
        if not meta.is_detector:
            return Prepared(preprocess(image, meta), image.shape[:2])
        image = check_image(image)
        canvas, scale, pad = letterbox(image, meta.input_size)
        return Prepared(preprocess(canvas, meta), image.shape[:2], scale, pad)

    def run(self, *arrays: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """Stage 2: the model on prepared input arrays (the same as calling the model)."""
        return self(*arrays)

    def interpret(self, outputs, prepared: Prepared | None = None, *,
                  score_threshold: float | None = None) -> Prediction | list[Detection]:
        """Stage 3: outputs as a result: a `Prediction` of a classifier, or a detector's
        `Detection` list, boxes in the pixels of the image `prepared` came from (of the
        model's input when None). `score_threshold` overrides a detector's own."""
        meta = self._require_meta()
        if not meta.is_detector:
            return to_prediction(outputs, meta)
        if self._decode is None:
            self._decode = DecodeParams.from_meta(meta)
        params = self._decode
        where = prepared or Prepared(None, tuple(meta.input_size))
        return decode(outputs[params.heatmap], outputs[params.box], params, meta.labels,
                      scale=where.scale, pad=where.pad, image_size=where.image_size,
                      score_threshold=score_threshold)

    def predict(self, image: np.ndarray | str | Path) -> Prediction | list[Detection]:
        """Classify one image: an (H, W, 3) uint8 RGB array of any size, or an image file.

        A detector (metadata ``task: detection``) returns what it finds instead: a list of
        `Detection` (box in the image's pixels, label, score), best first; see `detect`."""
        prepared = self.prepare(image)
        return self.interpret(self.run(prepared.input), prepared)

    def detect(self, image: np.ndarray | str | Path, *,
               score_threshold: float | None = None) -> list[Detection]:
        """The objects a detector finds in one image, best first, boxes in the image's pixels.

        The image is letterboxed into the model's input (aspect ratio kept); decoding and
        suppression follow the file's metadata, `score_threshold` overrides its threshold."""
        meta = self._require_meta()
        if not meta.is_detector:
            raise InputError(f"{self.path.name} is a classifier (task: {meta.task}): use "
                             "predict(image)")
        prepared = self.prepare(image)
        return self.interpret(self.run(prepared.input), prepared,
                              score_threshold=score_threshold)

    def predict_inputs(self, values) -> Prediction:
        """Classify one raw feature vector (models with ``preprocess="none"``, such as the
        stoplight neuron's green, yellow, red)."""
        meta = self._require_meta()
        x = np.asarray(values, dtype=np.float32).reshape(1, -1)
        expected = math.prod(meta.input_shape[1:])
        if meta.is_image:  # its input is pixels, preprocessed from an image
            height, width = meta.input_size
            raise InputError(f"{self.path.name} takes images ({height}x{width} pixels, "
                             f"{meta.channels} channel(s): {expected:,} values), not a feature "
                             "vector: give images instead")
        if x.shape[1] != expected:
            raise InputError(f"{self.path.name} takes {expected:,} input values, got "
                             f"{x.shape[1]:,}")
        if not np.isfinite(x).all():
            raise InputError("Input values must be finite numbers")
        return to_prediction(self(x), meta)

    def _require_meta(self) -> ModelMeta:
        if self.meta is None:
            raise InputError(
                f"{self.path.name} carries no edgepilot metadata (labels, input size, "
                "normalisation), so predict() cannot preprocess images. Pass it: "
                "edgepilot.load(path, meta=ModelMeta(...)), or call the model on arrays."
            )
        return self.meta


def split_delegate(backend: str, fallback_ops: list[str]) -> str | None:
    """The warning for a delegate split into partitions (`backend` says "partitions"), naming
    the ops that run between them; None when it is not split."""
    if "partitions" not in backend:
        return None
    ops = ", ".join(f"{op} x{fallback_ops.count(op)}" for op in dict.fromkeys(fallback_ops))
    return (f"the delegate is split ({backend}): {ops or 'some ops'} run on the CPU's builtin "
            "kernels between its partitions")


def to_prediction(output, meta: ModelMeta) -> Prediction:
    """A `Prediction` from a model's raw output for one input, as `meta` describes it."""
    scores = output_scores(output, meta)
    best = max(range(len(scores)), key=scores.__getitem__)
    return Prediction(
        label=meta.labels[best],
        score=scores[best],
        index=best,
        scores=dict(zip(meta.labels, scores)),
    )


def output_scores(output, meta: ModelMeta) -> list[float]:
    """One probability per label, in `meta.labels` order, from a raw output for one input.

    Plain floats on purpose: a classifier's output is a handful of numbers, and per-call
    numpy overhead would cost more than the arithmetic (5x more in the live loop, where the
    core idles between camera frames and every call runs cold)."""
    scores = np.asarray(output, np.float64).ravel().tolist()
    if not all(math.isfinite(s) for s in scores):
        # Inputs are checked finite, so NaN or inf comes from the file's weights.
        raise ModelFileError(f"Model '{meta.name}' produced non-finite outputs (NaN or inf) "
                             "on a finite input: its weights are corrupt or overflow")
    if meta.output == "sigmoid" and len(scores) == 1 and len(meta.labels) == 2:
        scores = [1 - scores[0], scores[0]]  # P(second label) -> both labels
    if len(scores) != len(meta.labels):
        raise ModelFileError(
            f"Model '{meta.name}' outputs {len(scores)} values but its metadata has "
            f"{len(meta.labels)} labels"
        )
    if meta.output == "logits":
        top = max(scores)
        scores = [math.exp(s - top) for s in scores]
        total = sum(scores)
        scores = [s / total for s in scores]
    return scores


class _Feed:
    """Checks a user array against one input tensor and converts it to the tensor's dtype.

    Never a silent wrong value: non-numbers, NaN/inf and values the tensor's dtype cannot
    hold are errors; an array of another dtype than a quantized tensor's holds real values
    and is quantized (uint8 pixels into an int8 model: 200 -> 200 / scale + zero point, not
    a cast that wraps to -56).

    Every check runs on every call. What they compare against is built once, at load, and
    an array of the right shape and the file's dtype (what `preprocess` makes) takes the
    shortest path: one tuple comparison, the dtype's kind, NaN/inf.
    """

    __slots__ = ("info", "shape", "dtype")

    def __init__(self, info: TensorInfo) -> None:
        self.info = info
        self.dtype = info.dtype
        # Equal to an array's shape only when every dim is static and matches; a dynamic
        # (None) dim never is, and takes the dim-by-dim check.
        self.shape = tuple(info.shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.shape != self.shape:
            self._check_shape(x)
        kind = x.dtype.kind
        if kind not in "biuf":  # strings, bytes, objects, complex
            raise InputError(f"Input '{self.info.name}' expects real numbers, got dtype "
                             f"{x.dtype}")
        if kind == "f" and not np.isfinite(x).all():
            raise InputError(f"Input '{self.info.name}' holds NaN or infinite values; pass "
                             "finite numbers")
        if x.dtype == self.dtype:
            return x  # the file's own dtype: raw values (already quantized, if it is)
        return self._convert(x)

    def _check_shape(self, x: np.ndarray) -> None:
        fixed = self.shape
        if x.ndim != len(fixed) or any(d is not None and d != s for d, s in zip(fixed, x.shape)):
            want = "x".join("?" if d is None else str(d) for d in fixed)
            raise InputError(f"Input '{self.info.name}' expects shape {want}, got "
                             f"{'x'.join(map(str, x.shape))}")

    def _convert(self, x: np.ndarray) -> np.ndarray:
        """An array of another dtype than the tensor's (already checked finite)."""
        info = self.info
        if info.quantized:
            return info.quantize(x)  # at the boundary: real values in
        if info.dtype.kind in "iu":
            limits = np.iinfo(info.dtype)
            if x.size and (x.min() < limits.min or x.max() > limits.max):
                raise InputError(f"Input '{info.name}' is {info.dtype}, which holds "
                                 f"{limits.min}..{limits.max}; got values {x.min()}..{x.max()}")
            if x.dtype.kind == "f" and (x != np.round(x)).any():
                raise InputError(f"Input '{info.name}' is {info.dtype}: pass whole numbers")
        converted = x.astype(info.dtype)
        if info.dtype.kind == "f" and not np.isfinite(converted).all():
            raise InputError(f"Input '{info.name}' has values too large for {info.dtype}")
        return converted
