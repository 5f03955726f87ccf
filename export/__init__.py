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
from edgepilot.export.calibration import Calibration, as_inputs, load_calibration
from edgepilot.export.guard import Guard
from edgepilot.export.report import ExportReport, compare, decisions, print_reports
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
    precision: Sequence[str] | str | None = None,
    val_data: tuple[np.ndarray, np.ndarray] | None = None,
    calib: str | Path | np.ndarray | None = None,
    calib_size: int = 300,
    calib_method: str = "minmax",
    max_drop: float | None = 1.0,
    io_dtype: str | None = None,
    quiet: bool = False,
) -> list[ExportReport]:
    """Export `module` to each format and precision, check it against PyTorch and report.

    Args:
        module: the torch.nn.Module (put in eval mode for export).
        sample_input: one input tensor, e.g. ``torch.zeros(1, 3, 64, 64)``.
        formats: format names from `edgepilot.formats.FORMATS`.
        out: output path stem; ``runs/net`` writes ``runs/net.onnx``, ``runs/net_int8.tflite``.
        meta: labels and preprocessing to embed (needed for ``Model.predict``).
        precision: one or more of the formats' precisions (default: fp32).
        val_data: ``(images (N, H, W, 3) uint8 RGB, labels (N,))`` for parity and accuracy
            on real images; without it parity is measured on random inputs.
        calib: int8 calibration images: a folder, an .npy file or an array (default: the
            validation images).
        calib_size: at most this many calibration images.
        calib_method: e.g. ``minmax`` (both formats), ``entropy``/``percentile`` (onnx).
        max_drop: int8 accuracy budget in points; layers are kept in float until the drop is
            within it (needs `val_data`; None turns the guard off).
        io_dtype: boundary type of int8 files: tflite ``int8`` (default) or ``uint8`` (what
            MediaPipe and the mobile task libraries need); onnx QDQ files keep ``float32``.
        quiet: do not print the report table.

    Returns:
        One `ExportReport` per file; each is also saved as ``<file>.json``.

    Example:
        >>> edgepilot.export(net, torch.zeros(1, 3, 64, 64), formats=["onnx", "tflite"],
        ...                  precision=["fp32", "int8"], out="runs/net", meta=meta,
        ...                  val_data=(images, labels))
    """
    torch = require("torch", "export", "Exporting models")
    fmts = [format_by_name(f) for f in ([formats] if isinstance(formats, str) else formats)]
    precisions = [precision] if isinstance(precision, str) else list(precision or ["fp32"])
    for fmt in fmts:  # validate every option before doing any work
        for prec in precisions:
            if prec not in fmt.precisions:
                raise UnsupportedFormatError(
                    f"Precision '{prec}' is not available for {fmt.name}. "
                    f"Valid precisions: {', '.join(fmt.precisions)}"
                )
    if not isinstance(sample_input, torch.Tensor):
        raise EdgepilotError(
            f"sample_input must be a torch.Tensor such as torch.zeros(1, 3, 64, 64), "
            f"got {type(sample_input).__name__}"
        )
    calibration = None
    if "int8" in precisions:
        calibration = _calibration(calib, val_data, meta, calib_size)
    out = Path(out)
    for fmt in FORMATS:  # "runs/net.onnx" and "runs/net" mean the same stem
        if out.name.lower().endswith(fmt.suffix):
            out = out.with_name(out.name[: -len(fmt.suffix)])
    out.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    probe = _Probe(module, sample_input, meta, val_data)

    reports = []
    for fmt in fmts:
        exporter = importlib.import_module(f"edgepilot.export.{fmt.exporter}")
        for prec in precisions:
            name = out.name if prec == "fp32" else f"{out.name}_{prec}"
            path = out.with_name(name + fmt.suffix)
            guard = None
            if prec == "int8" and max_drop is not None and probe.baseline is not None:
                guard = Guard(probe.accuracy, probe.baseline, max_drop)
            started = time.perf_counter()
            # Write beside the target and rename, so a failed export never destroys a good file.
            fd, tmp = tempfile.mkstemp(suffix=fmt.suffix, dir=path.parent, prefix=".partial-")
            os.close(fd)
            try:
                with torch.no_grad():
                    notes = exporter.export(
                        module, sample_input, Path(tmp), meta=meta, precision=prec,
                        calibration=None if calibration is None else calibration.images,
                        method=calib_method, guard=guard, io_dtype=io_dtype)
                os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; exports are ordinary files
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            if calibration is not None and "calibration" in notes:
                notes["calibration"].update(source=calibration.source,
                                            skipped=calibration.skipped)
            seconds = time.perf_counter() - started
            report = probe.check(path, exporter.reference, fmt.name, prec, seconds)
            report.notes = notes
            fp32_bytes = notes.pop("fp32_bytes", None)
            if fp32_bytes:
                report.size_ratio = round(report.size_bytes / fp32_bytes, 4)
            report.save(path.with_name(path.name + ".json"))
            reports.append(report)
    if not quiet:
        print_reports(reports)
    return reports


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


class _Probe:
    """The PyTorch side of every comparison, computed once per export call: the module's
    outputs on the validation inputs (or random inputs), its accuracy, and each file format's
    view of the same images (preprocessed as the runtime will for that file)."""

    def __init__(self, module, sample_input, meta, val_data):
        import torch

        self.meta, self.sample_input = meta, sample_input
        self.labels = None
        self._views: dict[str, np.ndarray] = {}
        if val_data is not None and meta is not None:
            self.images, labels = val_data
            self.labels = np.asarray(labels)
            x = self.inputs_for(meta)
        else:
            generator = np.random.default_rng(0)
            shape = (16, *sample_input.shape[1:])
            x = np.concatenate([sample_input.numpy(), generator.normal(size=shape)])
            x = x.astype(np.float32)
        self.inputs = x
        with torch.no_grad():
            self.outputs = np.concatenate([module(torch.from_numpy(b)).numpy()
                                           for b in np.array_split(x, max(1, len(x) // 256))])
        self.baseline = None if self.labels is None else \
            float((decisions(self.outputs) == self.labels).mean())

    def inputs_for(self, meta) -> np.ndarray:
        """The validation images as the runtime feeds a file with this metadata."""
        key = meta.to_json()
        if key not in self._views:
            self._views[key] = np.concatenate(as_inputs(self.images, meta))
        return self._views[key]

    def _file_inputs(self, model) -> np.ndarray:
        if self.labels is not None:
            return self.inputs_for(model.meta or self.meta)
        x, shape = self.inputs, model.inputs[0].shape
        if x.ndim == 4 and len(shape) == 4 and shape[1:] != x.shape[1:] and \
                shape[-1] == x.shape[1]:
            return x.transpose(0, 2, 3, 1).copy()  # a channels-last file, same values
        return x

    def accuracy(self, path: Path) -> float:
        """Accuracy of a model file through the runtime (the guard's measure)."""
        from edgepilot.runtime import load

        model = load(path)
        return float((decisions(_run(model, self._file_inputs(model))) == self.labels).mean())

    def check(self, path: Path, reference, fmt: str, precision: str,
              seconds: float) -> ExportReport:
        """Load the exported file with edgepilot's runtime and compare it with PyTorch."""
        from edgepilot.runtime import load

        model = load(path)
        expected = reference(self.outputs, self.meta, self.sample_input)
        exported = _run(model, self._file_inputs(model))
        return ExportReport(
            format=fmt, precision=precision, path=str(path), size_bytes=path.stat().st_size,
            seconds=round(seconds, 3), backend=model.backend,
            **compare(expected, exported, self.labels),
        )


def _run(model, x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(model(b)) for b in np.array_split(x, max(1, len(x) // 256))])


class _CallableModule(types.ModuleType):
    """Lets ``edgepilot.export(...)`` call `export` although the name is also this package."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
