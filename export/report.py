"""The report written after every export: size, parity with PyTorch, accuracy, time."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ExportReport", "compare", "decisions", "print_reports"]


@dataclass
class ExportReport:
    """What one export produced and how close it is to the PyTorch module.

    `max_abs_diff` compares the file's outputs with the module's on the same preprocessed
    inputs, in the file's own terms (`outputs_are`: logits, probabilities, or the raw maps of
    a detector); `max_prob_diff` compares class probabilities for every classifier, whatever
    its file outputs, so files of different formats can be compared with each other.
    `top1_agreement` is the share of inputs where both pick the same class; `kl_divergence`
    (nats, mean) and `top5_overlap` (classifiers of more than 5 classes) compare the class
    distributions without labels. `measured_on` says what all of these were measured on:
    "validation images", "calibration images" (real, unlabelled), or "random images" /
    "random inputs", where agreement says little about real images.
    """

    format: str
    precision: str
    path: str
    size_bytes: int
    seconds: float
    backend: str
    n_inputs: int
    max_abs_diff: float | None  # None: the file cannot run here (see notes["unchecked"])
    top1_agreement: float | None  # None also for multi-output models (notes["outputs"])
    accuracy_torch: float | None = None
    accuracy_export: float | None = None
    size_ratio: float | None = None  # to the fp32 file of the same format, when exported too
    outputs_are: str = ""  # what max_abs_diff compares: logits, probabilities or outputs
    max_prob_diff: float | None = None  # classifiers: largest class-probability difference
    kl_divergence: float | None = None  # classifiers: KL(PyTorch || file), mean, nats
    top5_overlap: float | None = None  # classifiers of > 5 classes: shared top-5 share
    measured_on: str = ""  # validation images, calibration images, random images or inputs
    notes: dict = field(default_factory=dict)  # calibration, layers kept in float, ...

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def decisions(outputs: np.ndarray) -> np.ndarray:
    """Class indices of (N, classes) outputs; a single column is a sigmoid probability of
    the second class (the stoplight neuron's P(go)), decided at 0.5."""
    outputs = outputs.reshape(len(outputs), -1)
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > 0.5).astype(np.int64)
    return outputs.argmax(1)


def compare(reference: np.ndarray, exported: np.ndarray, labels: np.ndarray | None) -> dict:
    """Parity of two (N, classes) outputs, and accuracy of each when labels are known."""
    reference = reference.reshape(len(reference), -1).astype(np.float64)
    exported = exported.reshape(len(exported), -1).astype(np.float64)
    ref_top, exp_top = decisions(reference), decisions(exported)
    result = {
        "n_inputs": int(len(reference)),
        "max_abs_diff": float(np.abs(reference - exported).max()),
        "top1_agreement": float((ref_top == exp_top).mean()),
    }
    if labels is not None:
        result["accuracy_torch"] = float((ref_top == labels).mean())
        result["accuracy_export"] = float((exp_top == labels).mean())
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _difference(r: ExportReport) -> str:
    """The table's parity cell: the class-probability difference of a classifier (comparable
    across formats whether a file outputs logits or probabilities), else the raw outputs'
    difference, marked so."""
    if r.max_prob_diff is not None:
        return f"{r.max_prob_diff:.2e}"
    return "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e} raw"


def _on_random(r: ExportReport) -> bool:
    return r.measured_on.startswith("random") and bool(r.n_inputs)


def print_reports(reports: list[ExportReport], console=None) -> None:
    """Print the reports as one table, fitted to the terminal (the columns left out are
    named under it); piped, every column at full width."""
    from rich.text import Text

    from edgepilot.bench_report import Column, fit_table, left_out_line, natural_width
    from edgepilot.terminal import console as terminal_console
    from edgepilot.terminal import printable

    columns = [
        Column("file", 0, "name", "left"), Column("format", 0), Column("precision", 0),
        Column("size", 0), Column("vs fp32", 1), Column("max |Δp|", 0),
        Column("top-1 agree", 0), Column("top-5", 2), Column("KL", 2),
        Column("acc torch", 0), Column("acc export", 0),
        Column("kept float", 3), Column("time", 2),
    ]
    rows = [[printable(Path(r.path).name), printable(r.format), printable(r.precision),
             f"{r.size_bytes / 1024:.1f} KiB",
             "-" if r.size_ratio is None else f"{100 * r.size_ratio:.0f}%",
             _difference(r),
             _pct(r.top1_agreement) + ("*" if _on_random(r) and r.top1_agreement is not None
                                       else ""),
             _pct(r.top5_overlap),
             "-" if r.kl_divergence is None else f"{r.kl_divergence:.1e}",
             _pct(r.accuracy_torch), _pct(r.accuracy_export),
             str(len(r.notes.get("kept_float", [])) or "-"),
             f"{r.seconds:.1f} s"] for r in reports]
    title = "edgepilot export"
    notes = []
    random = [r for r in reports if _on_random(r)]
    if random:
        notes.append(Text(
            f"* measured on {random[0].n_inputs} {random[0].measured_on}, not real ones: "
            "files agree there even when they disagree on real images; pass data (labelled) "
            "or calibration images to measure on them", style="yellow"))
    if any(r.kl_divergence is not None for r in reports):
        notes.append(Text("top-5: share of PyTorch's top-5 classes in the file's top-5; KL: "
                          "mean KL divergence from PyTorch's class probabilities (nats)"))
    metrics = {printable(r.notes["metric"]) for r in reports if r.notes.get("metric")}
    if metrics:  # detectors: the accuracy columns hold mAP, and agreement is per light
        notes.append(Text(f"acc columns: {', '.join(sorted(metrics))} (detector)"))
    for r in reports:
        agree = r.notes.get("detections")
        if agree:
            notes.append(Text(printable(
                f"{Path(r.path).name}: {100 * agree['agree']:.1f}% of PyTorch's "
                f"{agree['detections']} detections found with the same label, box edges "
                f"within {agree['tolerance_px']:g} px (largest gap {agree['max_box_px']:g} px)")))
    for r in reports:
        name = Path(r.path).name
        guard = r.notes.get("guard") or {}
        if guard.get("measure", "accuracy") != "accuracy":
            notes.append(Text(printable(f"{name}: the int8 guard had no labels: it measured "
                                        f"{guard['measure']} on {guard['measured_on']}")))
        speed = r.notes.get("speed") or r.notes.get("int8_settings", {}).get("speed") or []
        faster = [s for s in speed if s.get("chosen") == "float"]
        if faster:
            notes.append(Text(printable(f"{name}: kept in float because int8 was slower on "
                                        "this CPU: " + ", ".join(
                                            f"{s['kind']} ({s['with_float_ms']:.2f} ms against "
                                            f"{s['int8_ms']:.2f} ms all int8)"
                                            for s in faster))))
    for r in reports:
        for warning in r.notes.get("warnings", []):
            notes.append(Text("warning ", style="yellow") +
                         Text(printable(f"{Path(r.path).name}: {warning}")))
        if r.notes.get("unchecked"):
            notes.append(Text(printable(f"{Path(r.path).name}: not checked here: "
                                        f"{r.notes['unchecked']}")))
    raw_note = None
    if any(r.max_prob_diff is None and r.max_abs_diff is not None for r in reports):
        raw_note = Text("max |Δp|: largest class-probability difference from PyTorch; 'raw': "
                        "largest difference of the raw outputs (not class scores)")
    if console is None:  # piped: the table and every line under it at full width, nothing cut
        lines = [*notes, *([raw_note] if raw_note else [])]
        console = terminal_console(stderr=True, piped_width=max(
            80, natural_width(columns, rows, lines, title=title)))
    table, left_out = fit_table(columns, rows, console, title=title)
    console.print(table)
    if left_out:
        console.print(left_out_line(left_out, console.width, "widen the terminal, or use "
                                    "--json"))
    if raw_note and "max |Δp|" not in left_out:
        console.print(raw_note)
    for line in notes:
        console.print(line)
