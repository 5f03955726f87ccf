"""Third-party exporters talk a lot: torch.export logs guard failures as `E1127 ...
torch/_guards.py` lines, the ONNX exporter prints progress, converters warn. Hold all of it
back while exporting, and turn what they raise into one plain line."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings

__all__ = ["quiet_exporters", "plain", "first_line"]

#: Loggers of torch's tracing and exporting machinery, and of the converters.
_LOGGERS = ("torch", "torch._dynamo", "torch._guards", "torch.export", "torch.fx",
            "torch._export", "torch.onnx", "onnxscript", "absl", "litert_torch")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


@contextlib.contextmanager
def quiet_exporters():
    """Silence Python-side logs, warnings and stdout of the exporters for the block."""
    saved = {name: logging.getLogger(name).level for name in _LOGGERS}
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def plain(text: str) -> str:
    """`text` without terminal colour codes."""
    return _ANSI.sub("", text)


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, plain, at most `limit` chars."""
    lines = [ln.strip() for ln in plain(str(err)).splitlines() if ln.strip()]
    line = lines[0] if lines else type(err).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"
