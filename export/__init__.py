"""edgepilot.export: write a torch.nn.Module as deployable files, each with a parity report.

The package itself is callable, so ``edgepilot.export(module, sample, ...)`` works even though
``edgepilot.export`` is also this subpackage. torch and onnx are imported only while exporting.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError, UnsupportedFormatError, require
from edgepilot.export.report import ExportReport, compare, print_reports
from edgepilot.formats import FORMATS, format_by_name
from edgepilot.meta import ModelMeta

__all__ = ["export", "ExportReport", "print_reports"]


def export(
    module,
    sample_input,
    *,
    formats: Sequence[str] | str = ("onnx",),
    out: str | Path = "model",
    meta: ModelMeta | None = None,
    precision: str | None = None,
    val_data: tuple[np.ndarray, np.ndarray] | None = None,
    quiet: bool = False,
) -> list[ExportReport]:
    """Export `module` to each format, check it against PyTorch and report.

    Args:
        module: the torch.nn.Module (put in eval mode for export).
        sample_input: one input tensor, e.g. ``torch.zeros(1, 3, 64, 64)``.
        formats: format names from `edgepilot.formats.FORMATS`.
        out: output path stem; ``runs/stoplight`` writes ``runs/stoplight.onnx``.
        meta: labels and preprocessing to embed (needed for ``Model.predict``).
        precision: one of the format's precisions (default: its first, fp32).
        val_data: ``(images (N, H, W, 3) uint8 RGB, labels (N,))`` for parity and accuracy
            on real images; without it parity is measured on random inputs.
        quiet: do not print the report table.

    Returns:
        One `ExportReport` per format; each is also saved as ``<file>.json``.

    Example:
        >>> reports = edgepilot.export(net, torch.zeros(1, 3, 64, 64), out="runs/net", meta=meta)
    """
    torch = require("torch", "export", "Exporting models")
    fmts = [format_by_name(f) for f in ([formats] if isinstance(formats, str) else formats)]
    for fmt in fmts:  # validate every option before doing any work
        if precision is not None and precision not in fmt.precisions:
            raise UnsupportedFormatError(
                f"Precision '{precision}' is not available for {fmt.name}. "
                f"Valid precisions: {', '.join(fmt.precisions)}"
            )
    if not isinstance(sample_input, torch.Tensor):
        raise EdgepilotError(
            f"sample_input must be a torch.Tensor such as torch.zeros(1, 3, 64, 64), "
            f"got {type(sample_input).__name__}"
        )
    out = Path(out)
    for fmt in FORMATS:  # "runs/net.onnx" and "runs/net" mean the same stem
        if out.name.lower().endswith(fmt.suffix):
            out = out.with_name(out.name[: -len(fmt.suffix)])
    out.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()

    reports = []
    for fmt in fmts:
        prec = precision or fmt.precisions[0]
        path = out.with_name(out.name + fmt.suffix)
        exporter = importlib.import_module(f"edgepilot.export.{fmt.exporter}")
        started = time.perf_counter()
        # Write beside the target and rename, so a failed export never destroys a good file.
        fd, tmp = tempfile.mkstemp(suffix=fmt.suffix, dir=path.parent, prefix=".partial-")
        os.close(fd)
        try:
            exporter.export(module, sample_input, Path(tmp), meta=meta, precision=prec)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        seconds = time.perf_counter() - started
        report = _check(module, sample_input, path, fmt.name, prec, meta, val_data, seconds)
        report.save(path.with_name(path.name + ".json"))
        reports.append(report)
    if not quiet:
        print_reports(reports)
    return reports


def _check(module, sample_input, path, fmt, precision, meta, val_data, seconds) -> ExportReport:
    """Load the exported file with edgepilot's runtime and compare it with PyTorch."""
    import torch

    from edgepilot.runtime import load, preprocess

    model = load(path)
    labels = None
    if val_data is not None and meta is not None:
        images, labels = val_data
        # Each artifact is fed exactly what the runtime would feed it at inference.
        ours = np.concatenate([preprocess(img, model.meta or meta) for img in images])
        theirs = np.concatenate([preprocess(img, meta) for img in images])
        labels = np.asarray(labels)
    else:
        generator = np.random.default_rng(0)
        shape = (16, *sample_input.shape[1:])
        theirs = np.concatenate([sample_input.numpy(), generator.normal(size=shape)])
        ours = theirs = theirs.astype(np.float32)
    with torch.no_grad():
        reference = np.concatenate(
            [module(torch.from_numpy(b)).numpy() for b in np.array_split(theirs, max(1, len(theirs) // 256))]
        )
    exported = np.concatenate(
        [np.asarray(model(b)) for b in np.array_split(ours, max(1, len(ours) // 256))]
    )
    return ExportReport(
        format=fmt, precision=precision, path=str(path), size_bytes=path.stat().st_size,
        seconds=round(seconds, 3), backend=model.backend, **compare(reference, exported, labels),
    )


class _CallableModule(types.ModuleType):
    """Lets ``edgepilot.export(...)`` call `export` although the name is also this package."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
