"""The contract every runtime backend fulfils: tensors described, numpy in, numpy out.

A backend module (`runtime/onnx.py`, ...) is the lazy-import boundary for its library: nothing
imports onnxruntime or an interpreter until a file of that format is loaded.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError, ModelFileError

__all__ = ["Backend", "TensorInfo", "quiet_native_stderr", "file_errors", "describe",
           "meta_entry"]


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor. `shape` holds None for dynamic dimensions.

    `scale` and `zero_point` are set for quantized tensors: real = scale * (q - zero_point).
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale > 0 and np.issubdtype(self.dtype, np.integer)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Real values -> this tensor's integers, rounded and clipped to its dtype's range."""
        limits = np.iinfo(self.dtype)
        q = np.round(x / self.scale + self.zero_point)
        return np.clip(q, limits.min, limits.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """This tensor's integers -> real values (float32)."""
        # int64 first: int8/uint8 minus zero point would overflow in the tensor's own type.
        return (q.astype(np.int64) - self.zero_point).astype(np.float32) * np.float32(self.scale)


class Backend:
    """Base class of runtime backends. Subclasses set the attributes and implement `run`."""

    #: What really runs the model, e.g. "onnxruntime 1.20 (CPUExecutionProvider)".
    description: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    #: The edgepilot metadata JSON embedded in the file, or None.
    meta_json: str | None

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement __init__")

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run one inference; arrays already have the dtype and shape of `inputs`."""
        raise NotImplementedError(f"{type(self).__name__} must implement run()")


@contextlib.contextmanager
def quiet_native_stderr():
    """Hold back what native code writes to stderr (absl, oneDNN and XNNPACK notices);
    replay it if the block fails, since then it may explain why."""
    sys.stderr.flush()
    saved = os.dup(2)
    python_side = io.StringIO()  # progress bars written through sys.stderr
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            with contextlib.redirect_stderr(python_side):
                yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace") + python_side.getvalue())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def describe(err: BaseException, limit: int = 200) -> str:
    """One short line about an exception: its first line of text, or its type's name.
    Native messages can hold the hostile file's own bytes, so the line is clipped."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    if isinstance(err, (UnicodeDecodeError, RecursionError, TypeError, IndexError,
                        AttributeError, KeyError)) or type(err).__module__ == "struct":
        # Parser failures whose text alone ("list index out of range") says nothing useful.
        line = f"{type(err).__name__}: {line}"
    return line if len(line) <= limit else line[:limit - 1] + "…"


@contextlib.contextmanager
def file_errors(reader: str, path: Path, *, failed: str | None = None):
    """The one place where library and parser exceptions about a model file become
    ModelFileError: at load in each backend (and `info`), and at run time in `Model`.

    A hostile or corrupt file can fail anywhere inside a native library or a flatbuffer or
    protobuf reader, with any exception type (RuntimeError, TypeError, struct.error,
    UnicodeDecodeError, RecursionError, MemoryError...). edgepilot's own errors and a broken
    install (ImportError) pass through unchanged. `failed` replaces the message's opening
    ("<reader> cannot load '<path>'").
    """
    opening = failed or f"{reader} cannot load '{path}'"
    try:
        yield
    except (EdgepilotError, ImportError):
        raise
    except MemoryError as err:
        raise ModelFileError(f"{opening}: it needs more memory than this process may use "
                             "(a corrupt or hostile file?)") from err
    except Exception as err:  # noqa: BLE001 - see the docstring
        raise ModelFileError(f"{opening}: {describe(err)}") from err


def meta_entry(text: str | bytes | None) -> str | bytes | None:
    """The edgepilot metadata entry of a file, or None when it is absent or empty ("" or
    "{}"): an empty entry is no metadata, so the loader falls back to what else the file
    carries. Anything else, even malformed, is returned for `ModelMeta.from_json` to judge."""
    if text is None:
        return None
    squeezed = type(text)().join(text.split())  # without whitespace, str or bytes alike
    return None if squeezed in ("", b"", "{}", b"{}") else text
