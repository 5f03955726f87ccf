"""ONNX backend: onnxruntime, with the execution provider that really ran reported."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgepilot.errors import ModelFileError, require
from edgepilot.meta import META_KEY
from edgepilot.runtime.backend import Backend, TensorInfo

# onnxruntime type strings -> numpy dtypes, for the types an exported vision model uses.
_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _info(arg) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorInfo(arg.name, shape, np.dtype(_DTYPES.get(arg.type, np.float32)))


class OnnxBackend(Backend):
    """Runs an .onnx file with onnxruntime.

    Args:
        path: the .onnx file.
        threads: intra-op threads (None: onnxruntime's default, one per core).
        providers: execution providers to try in order; the CPU provider is always last.
    """

    def __init__(
        self, path: Path, *, threads: int | None = None, providers: list[str] | None = None
    ) -> None:
        ort = require("onnxruntime", "", "Running .onnx models")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # keep onnxruntime's own warnings off the user's terminal
        wanted = list(providers or []) + ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        usable = [p for p in dict.fromkeys(wanted) if p in available]
        try:
            self.session = ort.InferenceSession(os.fspath(path), options, providers=usable)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelFileError(f"onnxruntime cannot load '{path}': {first}") from err
        ran = self.session.get_providers()
        skipped = [p for p in wanted if p not in ran]
        # Always say what really runs: a silent fallback to CPU is the classic benchmark lie.
        self.description = f"onnxruntime {ort.__version__} ({', '.join(ran)})"
        if skipped and providers:
            self.description += f"; not available: {', '.join(skipped)}"
        self.providers = ran
        self.inputs = [_info(a) for a in self.session.get_inputs()]
        self.outputs = [_info(a) for a in self.session.get_outputs()]
        self._input_names = [i.name for i in self.inputs]
        self.meta_json = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self._input_names, inputs)))
