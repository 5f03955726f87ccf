"""ONNX backend: onnxruntime, with the execution provider that really ran reported.

Before onnxruntime sees a file, edgepilot checks where its tensors' external data would be
read from (`external_data_locations`): only files inside the model's folder, so a downloaded
model cannot make the runtime read /etc/passwd or ~/.ssh into its weights. onnxruntime 1.24+
checks this too; older ones (the newest for Python 3.10 is 1.23) do not.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from edgepilot.errors import ModelFileError, require
from edgepilot.meta import META_KEY
from edgepilot.runtime.backend import Backend, TensorInfo, file_errors, meta_entry

__all__ = ["OnnxBackend", "external_data_locations", "check_external_data"]

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
        spin: whether idle intra-op workers spin waiting for work (None: onnxruntime's
            default, which spins). Spinning shaves latency off back-to-back calls; in a loop
            paced by a camera it keeps every worker's core busy between frames for nothing.
    """

    def __init__(
        self, path: Path, *, threads: int | None = None, providers: list[str] | None = None,
        spin: bool | None = None,
    ) -> None:
        ort = require("onnxruntime", "", "Running .onnx models")
        unreadable = check_external_data(Path(path))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if spin is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spin)))
            options.add_session_config_entry("session.inter_op.allow_spinning", str(int(spin)))
        options.log_severity_level = 3  # keep onnxruntime's own warnings off the user's terminal
        wanted = list(providers or []) + ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        usable = [p for p in dict.fromkeys(wanted) if p in available]
        # Everything that reads the file: onnxruntime raises its own Fail/InvalidGraph types,
        # and names or metadata that are not UTF-8 fail as they cross into Python.
        with file_errors("onnxruntime", path):
            self.session = ort.InferenceSession(os.fspath(path), options, providers=usable)
            if unreadable:  # onnxruntime parsed what edgepilot could not vet: refuse it
                raise ModelFileError(f"'{path}' is not a valid ONNX protobuf: {unreadable}")
            ran = self.session.get_providers()
            self.inputs = [_info(a) for a in self.session.get_inputs()]
            self.outputs = [_info(a) for a in self.session.get_outputs()]
            self.meta_json = meta_entry(
                self.session.get_modelmeta().custom_metadata_map.get(META_KEY))
        skipped = [p for p in wanted if p not in ran]
        # Always say what really runs: a silent fallback to CPU is the classic benchmark lie.
        self.description = f"onnxruntime {ort.__version__} ({', '.join(ran)})"
        if threads:
            self.description += f", {threads} thread{'s' if threads > 1 else ''}"
        if spin is False:
            self.description += ", no spinning"
        if skipped and providers:
            self.description += f"; not available: {', '.join(skipped)}"
        self.providers = ran
        self._input_names = [i.name for i in self.inputs]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self._input_names, inputs)))

    @staticmethod
    def runtime(providers: list[str] | None = None, **_) -> str | None:
        """What `threads="auto"` sweeps and keys its cache on: onnxruntime's version, or None
        where another provider than the CPU's is asked for (a GPU's speed does not depend on
        CPU threads, and TensorRT would rebuild its engine for every count tried)."""
        if any(p != "CPUExecutionProvider" for p in providers or []):
            return None
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"


# --------------------------------------------------------------------------- external data
# A minimal protobuf reader: just enough of onnx.proto to reach every TensorProto, without the
# `onnx` package (which the runtime install does not have). Message -> {field: child message}.
_CHILDREN = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse",
                  23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},  # TensorProto.external_data: key/value string pairs
}
_MAX_DEPTH = 100  # protobuf's own default recursion limit


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, wire type, value or (start, end) of a length-delimited field)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + length), pos + length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("a field runs past the end of its message")
        yield number, wire, value


def external_data_locations(buf) -> list[str]:
    """Every `location` a TensorProto's external_data names, in a serialized ModelProto.

    Raises:
        ValueError: the bytes are not a well-formed protobuf, or nest too deeply.
    """
    locations = []
    stack = [("model", 0, len(buf), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise ValueError(f"messages nested more than {_MAX_DEPTH} deep")
        if kind == "entry":
            pair = {n: bytes(buf[v[0]:v[1]]) for n, w, v in _fields(buf, start, end) if w == 2}
            if pair.get(1) == b"location":
                locations.append(pair.get(2, b"").decode("utf-8", "replace"))
            continue
        children = _CHILDREN.get(kind, {})
        for number, wire, value in _fields(buf, start, end):
            child = children.get(number)
            if child and wire == 2:
                stack.append((child, value[0], value[1], depth + 1))
    return locations


def _unsafe(location: str, path: Path) -> str | None:
    """Why reading `location` (relative to the model's folder) is refused, or None."""
    if not location or "\0" in location:
        return "an empty or invalid path"
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        return "an absolute path"
    if ".." in posix.parts or ".." in windows.parts:
        return "a path with '..'"
    target = (path.parent / location).resolve()  # where a symlink on the way really leads
    # The model's folder as given, or the folder of the file it links to (a download cache
    # that links both the model and its data into a store of blobs).
    roots = (path.parent.resolve(), path.resolve().parent)
    if not any(target.is_relative_to(root) for root in roots):
        return f"a link that leads outside the model's folder (to '{target}')"
    return None


def check_external_data(path: Path) -> str | None:
    """Refuse a model whose external data would be read from outside its folder: absolute
    paths, '..', or symlinks that resolve elsewhere.

    Returns:
        None, or why the file is not a well-formed protobuf: then onnxruntime is left to say
        what is wrong with it (it fails on such files before reading any external data),
        and the caller refuses the file should onnxruntime accept it.

    Raises:
        ModelFileError: naming the file, the location and why it is refused.
    """
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return "the file is empty"
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                locations = external_data_locations(buf)
            except (ValueError, IndexError) as err:
                return str(err)
    for location in dict.fromkeys(locations):
        reason = _unsafe(location, path)
        if reason:
            raise ModelFileError(
                f"'{path}' asks to read tensor data from '{location[:200]}', {reason}. "
                "External data must be files inside the model's folder; refusing to load it.")
    return None
