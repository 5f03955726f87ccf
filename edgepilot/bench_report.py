"""Benchmark output: a rich table, JSON, one CSV row per result, and a plot."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from edgepilot.bench import BenchResult, machine_info, slower_quantized
from edgepilot.errors import EdgepilotError, MissingDependencyError

__all__ = ["print_table", "to_json", "dump_json", "append_csv", "plot"]

SCHEMA_VERSION = 1
CSV_FIELDS = ("model", "format", "threads", "backend", "size_bytes", "runs", "min_ms", "p50_ms",
              "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput", "load_ms", "first_ms",
              "peak_rss_mb", "memory_mb", "accuracy", "error", "cores", "cpu", "cpu_ms",
              "auto_threads", "metric")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_table(results: Sequence[BenchResult], console=None) -> None:
    from rich.table import Table
    from rich.text import Text

    from edgepilot.terminal import console as terminal_console
    from edgepilot.terminal import printable

    info = machine_info()
    table = Table(title=f"edgepilot bench — {info['cores']} cores, {info['cpu']}")
    for column in ("model", "format", "threads", "p50 ms", "p90 ms", "p99 ms", "mean±std",
                   "CPU ms", "inf/s", "load ms", "first ms", "size", "model MB", "RSS MB",
                   "accuracy", "backend"):
        table.add_column(column, justify="left" if column in ("model", "backend") else "right",
                         overflow="fold",  # file names stay whole; the backend folds first
                         min_width=min(48, max((len(r.model) for r in results), default=5))
                         if column == "model" else None)
    for r in results:
        if r.error:
            table.add_row(r.model, r.format, r.threads_shown,
                          Text(f"failed: {printable(r.error)}", style="red"), *[""] * 12)
            continue
        lat = r.latency_ms
        accuracy = "-" if r.accuracy is None else f"{100 * r.accuracy:.2f}% ({r.n_data})"
        if r.accuracy is not None and r.metric != "top-1":
            accuracy = f"{r.metric} {accuracy}"
        table.add_row(r.model, r.format, r.threads_shown, _ms(lat["p50"]),
                      _ms(lat["p90"]), _ms(lat["p99"]), f"{lat['mean']:.3f}±{lat['std']:.3f}",
                      _ms(r.cpu_ms), f"{r.throughput:.0f}", f"{r.load_ms:.1f}", f"{r.first_ms:.2f}",
                      f"{r.size_bytes / 1024:.0f} KiB",
                      "-" if r.memory_mb is None else f"{r.memory_mb:.1f}",
                      f"{r.peak_rss_mb:.0f}", accuracy,
                      r.backend)
    console = console or terminal_console(piped_width=200)
    console.print(table)
    for warning in slower_quantized(results):
        console.print(Text("warning ", style="yellow") + Text(printable(warning)))
    if any(r.cpu_ms is not None for r in results):
        console.print("CPU ms: the process's CPU time per inference, all threads (CPU ms / mean "
                      "ms = cores kept busy)")
    for r in results:
        if r.thread_sweep_ms:
            sweep = ", ".join(f"{n}: {ms:.3f}" for n, ms in sorted(r.thread_sweep_ms.items()))
            console.print(f"auto threads {r.model}: {r.auto_threads} (ms per inference by "
                          f"threads {sweep}; the fewest within 10% of the fastest)")
    for r in results:
        if r.pipeline_ms:
            stages = ", ".join(f"{k} {v:.3f} ms" for k, v in r.pipeline_ms.items())
            console.print(f"pipeline {r.model} (threads {r.threads_shown}): {stages}")
        if r.skipped_data:
            console.print(f"{r.model}: skipped {r.skipped_data} file(s) in --data that are "
                          "not images")


def to_json(results: Sequence[BenchResult]) -> dict:
    return {"schema_version": SCHEMA_VERSION, "machine": machine_info(),
            "results": [r.to_dict() for r in results]}


def append_csv(results: Sequence[BenchResult], path: str | Path) -> Path:
    """Append one row per result (writing the header when the file is new)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise EdgepilotError(f"Folder for the results file does not exist: '{path.parent}'")
    info = machine_info()
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        for r in results:
            lat = {f"{k}_ms": round(v, 4) for k, v in r.latency_ms.items()}
            writer.writerow({"model": r.model, "format": r.format, "threads": r.threads,
                             "backend": r.backend, "size_bytes": r.size_bytes, "runs": r.runs,
                             **lat, "throughput": round(r.throughput, 1),
                             "load_ms": round(r.load_ms, 2), "first_ms": round(r.first_ms, 3),
                             "peak_rss_mb": r.peak_rss_mb, "memory_mb": r.memory_mb,
                             "accuracy": r.accuracy, "metric": r.metric,
                             "error": r.error, "cores": info["cores"], "cpu": info["cpu"],
                             "cpu_ms": None if r.cpu_ms is None else round(r.cpu_ms, 4),
                             "auto_threads": r.auto_threads})
    return path


def plot(results: Sequence[BenchResult], path: str | Path) -> Path:
    """Latency distribution per model (left) and p50 bars with p90 whiskers (right)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise EdgepilotError(f"Folder for the plot does not exist: '{path.parent}'")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise MissingDependencyError("matplotlib", "plot", "Plotting benchmarks") from err
    ok = [r for r in results if not r.error]
    if not ok:
        raise EdgepilotError("Nothing to plot: every model failed")
    labels = [f"{r.model}  ({r.threads_shown} thr)" for r in ok]
    rows = list(range(len(ok)))
    fig, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(13, 0.32 * len(ok) + 2.0),
                                      gridspec_kw={"width_ratios": [3, 2]})
    if all(r.samples_ms for r in ok):
        left.boxplot([r.samples_ms for r in ok], positions=rows, orientation="horizontal",
                     whis=(1, 99), showfliers=False, widths=0.6)
        left.set_xlabel("latency per inference, ms (box p25-p75, whiskers p1-p99)")
        left.set_title("latency distribution")
    left.set_xscale("log")
    left.set_yticks(rows, labels, fontsize=8)
    left.set_ylim(len(ok) - 0.5, -0.5)  # first result on top
    left.grid(axis="x", which="both", alpha=0.3)
    p50 = [r.latency_ms["p50"] for r in ok]
    p90 = [r.latency_ms["p90"] for r in ok]
    palette = {"onnx": "#4C72B0", "tflite": "#DD8452", "pytorch": "#55A868"}
    right.barh(rows, p50, xerr=[[0] * len(ok), [b - a for a, b in zip(p50, p90)]],
               color=[palette.get(r.format, "#8172B2") for r in ok], capsize=3, height=0.7)
    right.set_xscale("log")  # sub-millisecond and 20 ms models in one chart
    for row, (value, whisker) in enumerate(zip(p50, p90)):
        right.text(whisker * 1.05, row, f"{value:.3f}", va="center", fontsize=7)
    right.set_xlim(min(p50) * 0.5, max(p90) * 4)
    right.set_xlabel("p50 ms, whisker to p90 (log)")
    right.set_title("median latency")
    right.grid(axis="x", which="both", alpha=0.3)
    from matplotlib.patches import Patch

    shown = dict.fromkeys(r.format for r in ok)
    right.legend(handles=[Patch(color=palette.get(f, "#8172B2"), label=f) for f in shown],
                 fontsize=8, loc="lower right")
    info = machine_info()
    fig.suptitle(f"edgepilot bench on {info['cores']} cores, {info['cpu']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dump_json(results: Sequence[BenchResult], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(to_json(results), indent=2) + "\n")
    return path
