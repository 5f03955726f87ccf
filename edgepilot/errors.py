"""The errors edgepilot raises. Each message says what failed, what is valid, and what to run.

Every error derives from `EdgepilotError`, so a caller (or the CLI) can catch one type and
show one line. Causes from the underlying library are chained with ``raise ... from err``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "EdgepilotError",
    "UnsupportedFormatError",
    "MissingDependencyError",
    "ModelFileError",
    "InputError",
    "UnknownArchitectureError",
    "did_you_mean",
]


class EdgepilotError(Exception):
    """Base class of every error edgepilot raises on purpose."""


class UnsupportedFormatError(EdgepilotError):
    """A file suffix, format name or precision that edgepilot does not know."""


class MissingDependencyError(EdgepilotError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str, purpose: str, *, install: str = ""):
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed. "
            f"Install it with: {install or f'pip install {chr(39)}edgepilot[{extra}]{chr(39)}'}"
        )
        self.module = module
        self.extra = extra


class ModelFileError(EdgepilotError):
    """A model or checkpoint file that is missing, unreadable or malformed."""


class InputError(EdgepilotError, ValueError):
    """An input array or image of the wrong shape, dtype or content."""


class UnknownArchitectureError(EdgepilotError, KeyError):
    """An architecture name that is not in the model registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' Did you mean X?' suffix for an error message, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def require(module: str, extra: str, purpose: str, *, install: str = ""):
    """Import an optional dependency or raise `MissingDependencyError` naming its extra (or
    `install`, the command to run where no extra fits)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(module, extra, purpose, install=install) from err
