"""LiteRT (TFLite) backend: ai-edge-litert, or tflite-runtime where only that is installed
(many Raspberry Pi images). Reports the interpreter and the delegate partitions that ran."""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path

import numpy as np

from edgepilot.errors import MissingDependencyError
from edgepilot.runtime.backend import (
    Backend,
    TensorInfo,
    file_errors,
    meta_entry,
    quiet_native_stderr,
)
from edgepilot.runtime.tflite_metadata import read_metadata

# (module holding Interpreter, distribution name) in order of preference.
_INTERPRETERS = (("ai_edge_litert.interpreter", "ai-edge-litert"),
                 ("tflite_runtime.interpreter", "tflite-runtime"))


def interpreter_module():
    """The first importable interpreter module and its distribution name."""
    for module, dist in _INTERPRETERS:
        try:
            return importlib.import_module(module), dist
        except ImportError:
            continue
    raise MissingDependencyError("ai-edge-litert", "tflite", "Running .tflite models")


def tensor_info(detail: dict) -> TensorInfo:
    """A TensorInfo from an interpreter's tensor details."""
    signature = detail.get("shape_signature", detail["shape"])
    shape = tuple(None if d < 0 else int(d) for d in signature)
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorInfo(detail["name"], shape, np.dtype(detail["dtype"]), float(scale),
                      int(zero_point))


class InterpreterBackend(Backend):
    """What every TFLite interpreter backend shares once `self.interpreter` is allocated:
    its tensors, and running them."""

    def _bind(self) -> None:
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        self.inputs = [tensor_info(d) for d in inputs]
        self.outputs = [tensor_info(d) for d in outputs]
        self._in = [d["index"] for d in inputs]
        self._out = [d["index"] for d in outputs]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        for index, x in zip(self._in, inputs):
            self.interpreter.set_tensor(index, x)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(index).copy() for index in self._out]


class LiteRTBackend(InterpreterBackend):
    """Runs a .tflite file with the LiteRT interpreter (XNNPACK by default on CPU).

    Args:
        path: the .tflite file.
        threads: interpreter threads (None: the interpreter's default).
        spin: accepted for symmetry with onnxruntime, which has nothing to set here: XNNPACK's
            thread pool waits only briefly for work before its workers sleep.
        preserve_all_tensors: keep every intermediate tensor readable after a run (what
            `edgepilot diff` reads; slower, and no delegate takes the graph).
    """

    def __init__(self, path: Path, *, threads: int | None = None,
                 spin: bool | None = None, preserve_all_tensors: bool = False) -> None:
        module, dist = interpreter_module()
        data = Path(path).read_bytes()
        # Everything that reads the file, the interpreter and the metadata parser alike: a
        # corrupt flatbuffer fails with any exception type, tensor names that are not UTF-8
        # fail as they cross into Python (get_input_details).
        with file_errors(dist, path):
            # The metadata first: its reader also refuses what would crash the interpreter
            # (names that are not UTF-8, scales XNNPACK aborts on, shapes of gigabytes).
            self.metadata = read_metadata(data, path)
            with quiet_native_stderr():  # "Created TensorFlow Lite XNNPACK delegate" notices
                options = {"experimental_preserve_all_tensors": True} if preserve_all_tensors \
                    else {}
                with warnings.catch_warnings():  # preserving tensors is "experimental"
                    warnings.simplefilter("ignore")
                    self.interpreter = module.Interpreter(model_content=data,
                                                          num_threads=threads, **options)
                self.interpreter.allocate_tensors()
            self._bind()
            ops = self._delegates()
            # An empty edgepilot entry ("{}", files from other tools) falls back to the
            # standard metadata that mobile clients read.
            self.meta_json = meta_entry(self.metadata.edgepilot_json) or (
                _meta_from_standard(self.metadata, self.inputs[0]) if self.inputs else None)
        version = getattr(importlib.import_module(dist.replace("-", "_")), "__version__", "")
        self.description = f"{dist} {version} ({ops}, {threads or 'default'} threads)"

    @staticmethod
    def runtime(**_) -> str:
        """What `threads="auto"` keys its cache on: the interpreter and its version."""
        module, dist = interpreter_module()
        version = getattr(importlib.import_module(dist.replace("-", "_")), "__version__", "")
        return f"{dist} {version}"

    def _delegates(self) -> str:
        """What the interpreter delegated: XNNPACK partitions (more than one means ops in
        between fell back to builtin kernels), or builtin kernels only."""
        try:
            details = self.interpreter._get_ops_details()
        except AttributeError:  # older interpreters do not expose their nodes
            return "delegates unknown"
        ops = [op["op_name"] for op in details]
        partitions = ops.count("DELEGATE")
        #: Ops the delegate did not take (they run on builtin kernels), by name.
        self.fallback_ops = _undelegated(details, set(self._out)) if partitions else []
        if not partitions:
            return f"builtin kernels, {len(ops)} ops"
        return f"XNNPACK, {partitions} partition{'s' if partitions > 1 else ''}"



def _undelegated(details: list[dict], graph_outputs: set[int]) -> list[str]:
    """Names of the original ops that still run on builtin kernels after delegation.

    The interpreter lists the original ops and then one DELEGATE node per partition. An op
    runs outside the delegate if one of its outputs leaves the graph or feeds a partition or
    an op that runs outside; walking the ops backwards decides consumers before producers.
    """
    delegates = [op for op in details if op["op_name"] == "DELEGATE"]
    produced_by_delegate = {t for op in delegates for t in op["outputs"]}
    feeds_delegate = {t for op in delegates for t in op["inputs"]}
    outside_inputs: set[int] = set()
    names = []
    for op in reversed([op for op in details if op["op_name"] != "DELEGATE"]):
        outputs = set(op["outputs"])
        if outputs & produced_by_delegate:
            continue  # computed inside a partition
        if outputs & (feeds_delegate | graph_outputs | outside_inputs):
            names.append(op["op_name"])
            outside_inputs.update(op["inputs"])
    return names[::-1]


def _meta_from_standard(metadata, image: TensorInfo) -> str | None:
    """A ModelMeta JSON from the standard TFLite metadata alone (files from other tools), or
    None when it does not describe an image classifier edgepilot can feed."""
    if not metadata.labels or len(image.shape) != 4 or image.shape[3] not in (1, 3):
        return None
    height, width = image.shape[1], image.shape[2]
    if (height is None or width is None) and metadata.image_size:
        width, height = metadata.image_size  # a dynamic input: the size the metadata names
    # Standard normalisation is in pixel units: input = (pixel - mean) / std. One value
    # stands for every channel; ModelMeta checks the counts and ranges.
    mean = [m / 255 for m in metadata.mean] or [0.0]
    std = [s / 255 for s in metadata.std] or [1 / 255]
    return json.dumps({"name": metadata.name or "model", "labels": metadata.labels,
                       "input_size": [height, width], "layout": "NHWC",
                       "color": "GRAY" if image.shape[3] == 1 else "RGB",
                       "mean": mean, "std": std, "output": "probs"})
