"""edgepilot.export: write a torch.nn.Module as deployable files, each with a parity report.

The package itself is callable, so ``edgepilot.export(module, sample, ...)`` works even though
``edgepilot.export`` is also this subpackage. torch and onnx are imported only while exporting.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError, InputError, UnsupportedFormatError, require
from edgepilot.export.calibration import Calibration, load_calibration
from edgepilot.export.guard import Guard
from edgepilot.export.noise import first_line
from edgepilot.export.options import ExportOptions, check_format_options
from edgepilot.export.probe import Probe, flatten_outputs
from edgepilot.export.report import ExportReport, print_reports
from edgepilot.formats import FORMATS, format_by_name
from edgepilot.meta import CHANNEL_SCALES, ModelMeta

__all__ = ["export", "ExportReport", "print_reports", "flatten_outputs"]

#: Each quantizer's own rounding replaces the bias-corrected file only when it measures better
#: by more than this many standard deviations of the two files' difference on resampled images.
NOISE_SDS = 2.0


def export(
    module,
    sample_input,
    *,
    formats: Sequence[str] | str = ("onnx",),
    out: str | Path = "model",
    meta: ModelMeta | None = None,
    precision: Sequence[str] | str | None = None,
    data: tuple[np.ndarray, np.ndarray] | None = None,
    calib: str | Path | np.ndarray | None = None,
    calib_size: int = 300,
    calib_method: str = "minmax",
    max_drop: float | None = 1.0,
    io_dtype: str | None = None,
    dynamic_batch: bool = False,
    guard_budget: float | None = 900.0,
    bias_correction: bool = True,
    qat: bool = False,
    qat_budget: float | None = 600.0,
    quiet: bool = False,
    val_data: tuple[np.ndarray, np.ndarray] | None = None,
    **format_options,
) -> list[ExportReport]:
    """Export `module` to each format and precision, check it against PyTorch and report.

    Args:
        module: the torch.nn.Module (put in eval mode for export). Its forward() takes one
            tensor and returns a tensor, or a tuple, list or dict of tensors (multi-output
            models, e.g. detectors; every output is checked).
        sample_input: one input tensor, e.g. ``torch.zeros(1, 3, 64, 64)``; only its first
            row is used (files have a batch of one unless `dynamic_batch`).
        formats: format names from `edgepilot.formats.FORMATS`.
        out: output path stem; ``runs/net`` writes ``runs/net.onnx``, ``runs/net_int8.tflite``.
        meta: labels and preprocessing to embed (needed for ``Model.predict``).
        precision: one or more of the formats' precisions (default: each format's first:
            fp32, or int8 for edgetpu).
        data: ``(images (N, H, W, 3) uint8 RGB, labels (N,))`` for parity and accuracy
            on real images; without it parity is measured on random images (or random
            inputs, for models without image metadata). (``val_data=`` is its old name,
            accepted with a DeprecationWarning.)
        calib: int8 calibration images: a folder, an .npy file or an array (default: the
            validation images).
        calib_size: at most this many calibration images.
        calib_method: e.g. ``minmax`` (both formats), ``entropy``/``percentile`` (onnx).
        max_drop: int8 accuracy budget in points; layers are kept in float until the drop is
            within it (None turns the guard off). Without labelled `data`, a classifier's
            budget is measured on the calibration images as the drop of the top-1 accuracy
            expected under PyTorch's own class probabilities (no labels needed).
        io_dtype: boundary type of int8 files: tflite ``int8`` (default) or ``uint8`` (what
            MediaPipe and the mobile task libraries need); onnx QDQ files keep ``float32``.
        dynamic_batch: ask for a dynamic batch dimension (formats that support one); a model
            that specialises its batch falls back to a batch of one, said in the report.
        bias_correction: int8 weights are rounded once on the PyTorch module (batch norms
            folded, per-channel int8 grid) and each layer's bias corrected for the mean shift
            the rounding causes, measured on the calibration images; every format's int8 file
            then has the same weights (`export.rounding`). False: each quantizer rounds.
        qat: then fine-tune that int8 model without labels (`export.qat`): simulated int8
            weights and activations, distilling from the module's own outputs on the
            calibration images; every int8 file gets the fine-tuned weights. Minutes on a
            CPU for a 224x224 network; worth it where the guard would keep layers in float.
        qat_budget: seconds the fine-tuning may spend (None: no limit).
        guard_budget: seconds the accuracy guard may spend per file before it gives up
            (None: no limit).
        quiet: print neither progress nor the report table.
        **format_options: options only some formats take (`Format.options`, e.g.
            ``compute_units`` for Core ML); formats that do not take one ignore it, and a
            name no format takes is an `InputError` naming the valid ones.

    Returns:
        One `ExportReport` per file; each is also saved as ``<file>.json``. A file that fails
        its own check (it does not load or run, or its outputs do not match the module's
        structure) is not written, and the export raises.

    Example:
        >>> edgepilot.export(net, torch.zeros(1, 3, 64, 64), formats=["onnx", "tflite"],
        ...                  precision=["fp32", "int8"], out="runs/net", meta=meta,
        ...                  data=(images, labels))
    """
    if val_data is not None:
        import warnings

        warnings.warn("export(val_data=...) is now data=...; val_data= will be removed in the "
                      "next release", DeprecationWarning, stacklevel=2)
        data = val_data if data is None else data
    check_format_options(format_options)  # a typo is an error, not an option ignored
    torch = require("torch", "export", "Exporting models")
    fmts = [format_by_name(f) for f in ([formats] if isinstance(formats, str) else formats)]
    if precision is None:  # each format's default (fp32, or int8 where that is all it has)
        combos = [(fmt, fmt.precisions[0]) for fmt in fmts]
    else:
        wanted = [precision] if isinstance(precision, str) else list(precision)
        combos = [(fmt, prec) for fmt in fmts for prec in wanted]
    for fmt, prec in combos:  # validate every option before doing any work
        if prec not in fmt.precisions:
            raise UnsupportedFormatError(
                f"Precision '{prec}' is not available for {fmt.name}. "
                f"Valid precisions: {', '.join(fmt.precisions)}"
            )
    if not isinstance(sample_input, torch.Tensor) or sample_input.dim() < 1 or \
            not len(sample_input):
        raise EdgepilotError(
            "sample_input must be a torch.Tensor with a batch dimension, such as "
            f"torch.zeros(1, 3, 64, 64), got {_describe_sample(sample_input)}"
        )
    if qat and not bias_correction:
        raise InputError("qat=True fine-tunes the bias-corrected int8 weights: leave "
                         "bias_correction on")
    if qat and not any(prec == "int8" for _, prec in combos):
        raise InputError("qat=True fine-tunes the int8 files: ask for precision int8 too")
    sample_input = sample_input[:1]  # a file's batch is one (or dynamic), never the sample's
    log = (lambda message: None) if quiet else _log
    try:
        module = module.eval()
    except NotImplementedError:  # torch.export's program.module(): its mode is already fixed
        pass
    if data is not None:  # a detector's reference on 2,000 scenes takes a while: say so
        log(f"running PyTorch on the {len(data[0]):,} validation images (the reference)")
    calibration = None
    if any(prec == "int8" for _, prec in combos) or \
            (calib is not None and data is None and meta is not None):  # real images to compare on
        calibration = _calibration(calib, data, meta, calib_size)
    # Without validation data every file is compared on the calibration images: real images
    # the user gave, where random inputs would make every int8 file look perfect.
    probe = Probe(module, sample_input, meta, data,
                  unlabelled=None if calibration is None else calibration.images)
    out = Path(out)
    for fmt in FORMATS:  # "runs/net.onnx" and "runs/net" mean the same stem
        if out.name.lower().endswith(fmt.suffix):
            out = out.with_name(out.name[: -len(fmt.suffix)])
    out.parent.mkdir(parents=True, exist_ok=True)

    rounded = None  # the module with int8-grid weights and corrected biases, made once
    reports = []
    for fmt, prec in combos:
        exporter = importlib.import_module(f"edgepilot.export.{fmt.exporter}")
        source, rounding = module, None
        if prec == "int8" and bias_correction and calibration is not None and \
                meta is not None and fmt.name != "coreml":
            if rounded is None:
                from edgepilot.export.calibration import as_inputs
                from edgepilot.export.rounding import round_weights

                inputs = as_inputs(calibration.images, meta)
                with torch.no_grad():
                    rounded = round_weights(module, inputs)
                log(f"int8 weights: {_rounding_line(rounded[1])}")
                if qat:
                    rounded = _finetuned(module, rounded, inputs, meta, qat_budget, log)
            source, rounding = rounded
        name = out.name if prec == "fp32" else f"{out.name}_{prec}"
        path = out.with_name(name + fmt.suffix)
        guarded = prec == "int8" and max_drop is not None and probe.baseline is not None
        candidates = [(source, rounding)]
        if guarded and rounding is not None and rounding["applied"] and "qat" not in rounding:
            # Bias correction lowers the weights' error on average, yet a file's accuracy is
            # what counts: where the guard can measure it, each quantizer's own rounding is
            # written too and the better file kept (on the guard's 200 scenes the stoplight
            # detector's int8 TFLite scored 1.0 mAP point less with the correction, its ONNX
            # file 0.3 more).
            candidates.append((module, None))
        log(f"exporting {fmt.name} {prec} -> {path}")
        # Written in a scratch folder beside the target and checked there; only a file that
        # passed its own check replaces the target, so a failure never leaves a wrong file
        # behind nor destroys a good one.
        scratch = Path(tempfile.mkdtemp(prefix=".partial-", dir=path.parent))
        try:
            written, refusals = [], []
            for number, (source, rounding) in enumerate(candidates):
                guard = None
                if guarded:
                    guard = Guard(probe.accuracy, probe.baseline, max_drop,
                                  budget_s=guard_budget, progress=log, measure=probe.measure,
                                  offer_qat=not qat)
                options = ExportOptions(
                    meta=_recording_scales(meta, rounding), precision=prec,
                    method=calib_method, guard=guard,
                    calibration=None if calibration is None else calibration.images,
                    io_dtype=io_dtype, dynamic_batch=dynamic_batch, **format_options)
                if number:
                    log(f"exporting {fmt.name} {prec} again, each quantizer rounding its own "
                        "weights, to measure the bias correction")
                started = time.perf_counter()
                draft = scratch / str(number) / path.name
                draft.parent.mkdir()
                try:
                    with torch.no_grad():
                        notes = exporter.export(source, sample_input, draft, options)
                except EdgepilotError as err:
                    if len(candidates) == 1:
                        raise
                    refusals.append(err)
                    continue
                if rounding is not None:
                    notes["bias_correction"] = {k: v for k, v in rounding.items()
                                                if k not in ("qat", CHANNEL_SCALES)}
                    if "qat" in rounding:
                        notes["qat"] = rounding["qat"]
                seconds = time.perf_counter() - started
                log(f"{path.name}: written in {seconds:.1f} s; checking it against PyTorch on "
                    f"{len(probe.inputs):,} {probe.measured_on}")
                report = probe.check(draft, fmt.name, prec, seconds, notes)
                log(f"{path.name}: checked in {time.perf_counter() - started - seconds:.1f} s")
                score, unmeasured = None, None
                if len(candidates) > 1:
                    try:
                        score = probe.accuracy(draft, keep=True)
                    except EdgepilotError as err:  # e.g. an Edge TPU file, off the TPU
                        unmeasured = first_line(err)
                written.append((score, -number, report, notes, guard, draft))
                if unmeasured is not None:
                    if rounding is not None:
                        notes["bias_correction"]["measured"] = f"not compared: {unmeasured}"
                    break
            if not written:
                raise refusals[0]
            score, number, report, notes, guard, draft = max(
                written, key=lambda w: (-1.0 if w[0] is None else w[0], w[1]))
            if len(written) > 1:
                corrected, own = written[0][0], written[1][0]
                # The correction lowers the error on average; the other file replaces it only
                # when it measures better by more than the choice of images alone moves two
                # files apart (on 200 detector scenes 1 mAP point is inside that).
                spread = probe.difference_spread(written[0][5], written[1][5]) or 0.0
                if own - corrected <= NOISE_SDS * spread:
                    score, number, report, notes, guard, draft = written[0]
                measured = {"measure": guard.measure, "with_correction": round(corrected, 6),
                            "each_quantizer_rounding": round(own, 6),
                            "difference_sd": round(spread, 6)}
                if number:  # the second candidate: each quantizer's own rounding
                    notes["bias_correction"] = {
                        "applied": False, "measured": measured,
                        "why": f"the file without it measured better ({guard.measure} "
                               f"{100 * own:.2f}% against {100 * corrected:.2f}%, more than "
                               f"{NOISE_SDS:g} standard deviations of their difference, "
                               f"{100 * spread:.2f} points, on resampled images)"}
                else:
                    notes["bias_correction"]["measured"] = measured
                log(f"{path.name}: bias correction "
                    f"{'kept' if not number else 'dropped'}: {guard.measure} "
                    f"{100 * corrected:.2f}% with it, {100 * own:.2f}% without (difference sd "
                    f"{100 * spread:.2f} points on resampled images)")
            elif refusals and number:  # with the correction the guard refused the file
                notes["bias_correction"] = {
                    "applied": False, "why": f"with it: {first_line(refusals[0])}"}
            elif refusals:
                notes["bias_correction"]["measured"] = {
                    "each_quantizer_rounding": f"refused: {first_line(refusals[0])}"}
            for candidate in written:
                probe.forget(candidate[5])
            report.seconds = round(sum(w[2].seconds for w in written), 3)
            report.path = str(path)
            _install(draft, path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if calibration is not None and "calibration" in notes:
            notes["calibration"].update(source=calibration.source,
                                        skipped=calibration.skipped)
        if guard is not None:  # what the budget was measured in, beside what it kept
            notes["guard"] = {"measure": guard.measure, "max_drop": max_drop,
                              "baseline": round(guard.baseline, 6),
                              "measured_on": probe.measured_on}
        report.notes = notes
        fp32_bytes = notes.pop("fp32_bytes", None)
        if fp32_bytes:
            report.size_ratio = round(report.size_bytes / fp32_bytes, 4)
        report.save(path.with_name(path.name + ".json"))
        reports.append(report)
    _speed_warnings(reports)
    if not quiet:
        print_reports(reports)
    return reports


def _finetuned(module, rounded, inputs, meta, budget_s, log) -> tuple[object, dict]:
    """The rounded module fine-tuned with simulated int8 (`export.qat`), its note under
    ``"qat"`` in the rounding note."""
    from edgepilot.export.qat import finetune

    model, note = rounded
    if not note["applied"]:
        return model, {**note, "qat": {"applied": False, "why": note["why"]}}
    log(f"int8 fine-tuning without labels on {len(inputs)} calibration images (budget "
        f"{'none' if budget_s is None else f'{budget_s:.0f} s'})")
    tuned, qat_note = finetune(module, model, inputs, budget_s=budget_s, progress=log,
                               classifier=meta.output == "logits" and not meta.is_detector)
    if qat_note["applied"]:
        loss = qat_note["held_out_loss"]
        log(f"int8 fine-tuning: kept epoch {qat_note['kept_epoch']} of {qat_note['epochs']}, "
            f"held-out loss {loss['start']:.5f} -> {loss['kept']:.5f} "
            f"({qat_note['seconds']:.0f} s)")
    return tuned, {**note, "qat": qat_note}


def _recording_scales(meta: ModelMeta | None, rounding: dict | None) -> ModelMeta | None:
    """`meta` with the channel scales the equalization applied (`export.equalization`), which
    the file then records for `edgepilot diff`."""
    scales = (rounding or {}).get(CHANNEL_SCALES)
    if meta is None or not scales:
        return meta
    return dataclasses.replace(meta, extra={**meta.extra, CHANNEL_SCALES: scales})


def _rounding_line(note: dict) -> str:
    if not note["applied"]:
        return f"rounded by each exporter ({note['why']})"
    chosen = note.get("rounding", {})
    how = ""
    if chosen.get("layers"):
        error = chosen["output_error_vs_nearest"]["median"]
        how = (f", {chosen['layers']} of them each weight down or up by output error (median "
               f"{error:.2f} of nearest rounding's)")
    if note.get("equalization", {}).get("pairs"):
        how += f", {note['equalization']['pairs']} layer pairs' activation ranges equalized"
    return (f"{note['layers']} layers rounded once for every format{how}, biases corrected on "
            f"{note['images']} calibration images ({note['batch_norms_folded']} batch norms "
            f"folded, {note['seconds']:.1f} s)")


def _speed_warnings(reports: list[ExportReport]) -> None:
    """Warn where a quantized file is slower than the float file of the same format from the
    same call (timed here, one thread each, interleaved): a quantized model can be slower
    when its kernels are not the fast ones on this CPU or its graph fragments."""
    from edgepilot.runtime import load

    floats = {r.format: r for r in reports if r.precision == "fp32" and r.n_inputs}
    for report in reports:
        base = floats.get(report.format)
        if base is None or report is base or not report.n_inputs:
            continue
        try:
            fast, slow = _median_ms([load(base.path, threads=1), load(report.path, threads=1)])
        except EdgepilotError:
            continue
        report.notes["latency_ms_1_thread"] = {"fp32": round(fast, 4),
                                               report.precision: round(slow, 4)}
        if slow > 1.1 * fast:
            report.notes.setdefault("warnings", []).append(
                f"{slow / fast:.2f}x slower than the fp32 file on this CPU ({slow:.3f} ms vs "
                f"{fast:.3f} ms, 1 thread): quantization does not pay here")
        report.save(Path(report.path).with_name(Path(report.path).name + ".json"))


def _median_ms(models, seconds: float = 0.4) -> list[float]:
    """Median latency of each model, timed in alternation for about `seconds` in all."""
    inputs = [np.zeros([d or 1 for d in m.inputs[0].shape], m.inputs[0].dtype)
              for m in models]
    times: list[list[float]] = [[] for _ in models]
    for model, x in zip(models, inputs):
        model(x)  # warm-up
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times[0]) < 5:
        for model, x, record in zip(models, inputs, times):
            started = time.perf_counter()
            model(x)
            record.append(time.perf_counter() - started)
    return [1000 * float(np.median(t)) for t in times]


def _log(message: str) -> None:
    print(f"edgepilot: {message}", file=sys.stderr, flush=True)


def _describe_sample(sample) -> str:
    shape = getattr(sample, "shape", None)
    return f"{type(sample).__name__} of shape {tuple(shape)}" if shape is not None else \
        type(sample).__name__


def _install(draft: Path, path: Path) -> None:
    """Move a checked file or folder to its place, replacing what was there."""
    if draft.is_dir():
        old = None
        if path.exists() or path.is_symlink():
            old = path.with_name(f".old-{path.name}-{os.getpid()}")
            os.replace(path, old)
        os.replace(draft, path)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        return
    if path.is_dir() and not path.is_symlink():
        raise EdgepilotError(f"Cannot write '{path}': a folder of that name is in the way")
    os.replace(draft, path)


def _calibration(calib, val_data, meta, calib_size) -> Calibration:
    if meta is None:
        raise EdgepilotError("int8 export needs meta= (the input size and normalisation) to "
                             "preprocess calibration images")
    if calib is None:
        if val_data is None:
            raise EdgepilotError("int8 export needs calibration images: pass calib= (a folder, "
                                 ".npy file or array) or data=")
        calibration = load_calibration(val_data[0], meta.input_size, calib_size, meta)
        calibration.source = "validation images"
        return calibration
    return load_calibration(calib, meta.input_size, calib_size, meta)


class _CallableModule(types.ModuleType):
    """Lets ``edgepilot.export(...)`` call `export` although the name is also this package."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
