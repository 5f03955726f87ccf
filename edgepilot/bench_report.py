"""Benchmark output: a rich table, JSON, one CSV row per result, and a plot."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from edgepilot.bench import BenchResult, machine_info, slower_quantized
from edgepilot.errors import EdgepilotError, MissingDependencyError

__all__ = ["print_table", "to_json", "dump_json", "append_csv", "plot", "Column", "fit_table"]

SCHEMA_VERSION = 1
CSV_FIELDS = ("model", "format", "threads", "backend", "size_bytes", "runs", "min_ms", "p50_ms",
              "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput", "load_ms", "first_ms",
              "peak_rss_mb", "memory_mb", "accuracy", "error", "cores", "cpu", "cpu_ms",
              "auto_threads", "metric")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


class Column(NamedTuple):
    """A column of a table that `fit_table` fits to the console's width.

    `rank`: 0 is essential (shown even when a name column must fold to make room), then the
    lower the sooner a column is shown. `kind`: "number" never wraps (a number is never split
    over two lines); "name" (a file or model name) folds only when the essential columns need
    the room; "text" (a backend) wraps between words.
    """

    header: str
    rank: int = 0
    kind: str = "number"
    justify: str = "right"


_NAME_FLOOR = 14  # cells a name column may fold down to for the essential columns
_UNLIMITED = 10_000  # a pipe's width: measured, never reached


def _text(value):
    from rich.text import Text

    return value if isinstance(value, Text) else Text(str(value))


def _build(columns: Sequence[Column], rows: Sequence[Sequence], widths: dict[int, int],
           headers: Sequence[str], **table_options):
    """A rich Table of the columns in `widths` (index: largest content width, in cells)."""
    from rich.table import Table

    table = Table(**table_options)
    shown = sorted(widths)
    for i in shown:
        column = columns[i]
        table.add_column(_text(headers[i]), justify=column.justify, overflow="fold",
                         no_wrap=column.kind == "number",
                         max_width=None if column.kind == "number" else widths[i])
    for row in rows:
        table.add_row(*(_text(row[i]) for i in shown))
    return table


def _measure(console, renderable) -> int:
    """Cells `renderable` takes with no width limit (a table: every column at its widest)."""
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(_UNLIMITED), renderable).maximum


def _measuring_console():
    from rich.console import Console

    return Console(file=io.StringIO(), width=_UNLIMITED, markup=False, emoji=False,
                   highlight=False)


def _compact_headers(columns: Sequence[Column], rows: Sequence[Sequence]) -> list[str]:
    """Headers for a narrow console: a header wider than its column's cells takes a line per
    word ("top-1" over "agree")."""
    from rich.cells import cell_len

    return ["\n".join(column.header.split())
            if cell_len(column.header) > max((cell_len(str(row[i])) for row in rows), default=0)
            else column.header for i, column in enumerate(columns)]


def _content_widths(console, columns, rows, headers) -> tuple[list[int], list[int], list[int]]:
    """Per column: its widest cell; the narrowest it may be with names whole; the narrowest
    it may be for the essential columns (names folded down to `_NAME_FLOOR`)."""
    from rich.measure import Measurement

    options = console.options.update_width(_UNLIMITED)
    widest, whole, squeezed = [], [], []
    for i, column in enumerate(columns):
        sizes = [Measurement.get(console, options, _text(cell))
                 for cell in [headers[i], *(row[i] for row in rows)]]
        most = max(size.maximum for size in sizes)
        least = {"number": most, "name": most,
                 "text": min(most, max(size.minimum for size in sizes))}[column.kind]
        widest.append(most)
        whole.append(least)
        squeezed.append(min(most, _NAME_FLOOR) if column.kind == "name" else least)
    return widest, whole, squeezed


def natural_width(columns: Sequence[Column], rows: Sequence[Sequence], lines: Sequence = (),
                  **table_options) -> int:
    """The width of the table with every column, nothing folded or wrapped, or of the widest
    of `lines` (printed under it) if wider: a pipe's width, so that nothing is cut or split."""
    console = _measuring_console()
    headers = [column.header for column in columns]
    widest = _content_widths(console, columns, rows, headers)[0]
    table = _build(columns, rows, dict(enumerate(widest)), headers, **table_options)
    return max(_measure(console, item) for item in [table, *lines])


def fit_table(columns: Sequence[Column], rows: Sequence[Sequence], console,
              **table_options) -> tuple:
    """`rows` as a rich Table no wider than `console`, and the headers of the columns left out.

    Every column when they all fit. Else wide headers take a line per word, and columns are
    taken in rank order while the table, measured by rich, still fits: essential ones (rank
    0) with name columns folded down to `_NAME_FLOOR` cells, the others only with names
    whole. Numbers never wrap, so no number is split; the space left goes to the names, then
    to text columns, up to their widest cell.
    """
    width = console.width
    headers = [column.header for column in columns]
    widest = _content_widths(console, columns, rows, headers)[0]
    table = _build(columns, rows, dict(enumerate(widest)), headers, **table_options)
    if _measure(console, table) <= width:
        return table, []
    headers = _compact_headers(columns, rows)
    widest, whole, squeezed = _content_widths(console, columns, rows, headers)
    order = sorted(range(len(columns)), key=lambda i: (columns[i].rank, i))
    chosen: list[int] = []
    for i in order:
        least = squeezed if columns[i].rank == 0 else whole
        trial = {j: least[j] for j in (*chosen, i)}
        if not chosen or _measure(console, _build(columns, rows, trial, headers)) <= width:
            chosen.append(i)
    widths = {j: squeezed[j] for j in chosen}
    spare = width - _measure(console, _build(columns, rows, widths, headers))
    for kind in ("name", "text"):  # a cell more of content is a cell more of table
        for j in chosen:
            if columns[j].kind == kind and spare > 0:
                grow = min(spare, widest[j] - widths[j])
                widths[j] += grow
                spare -= grow
    left_out = [column.header for i, column in enumerate(columns) if i not in widths]
    return _build(columns, rows, widths, headers, **table_options), left_out


def left_out_line(left_out: Sequence[str], width: int, how: str):
    """The line under a table that names the columns it left out, and how to see them."""
    from rich.text import Text

    return Text(f"columns left out at {width} columns: {', '.join(left_out)}; {how}",
                style="dim")


def print_table(results: Sequence[BenchResult], console=None) -> None:
    """The results as one table, fitted to the terminal (see `fit_table`); piped, every column
    at full width. A failed row says `failed`; why is printed under the table."""
    from rich.text import Text

    from edgepilot.terminal import console as terminal_console
    from edgepilot.terminal import printable

    info = machine_info()
    title = printable(f"edgepilot bench — {info['cores']} cores, {info['cpu']}")
    measured = any(r.accuracy is not None for r in results)
    columns = [
        Column("model", 0, "name", "left"), Column("format", 0), Column("threads", 0),
        Column("p50 ms", 0), Column("p90 ms", 2), Column("p99 ms", 5), Column("mean±std", 6),
        Column("CPU ms", 8), Column("inf/s", 4), Column("load ms", 10),
        Column("first ms", 11), Column("size", 7), Column("model MB", 9),
        Column("RSS MB", 3), Column("accuracy", 0 if measured else 12),
        Column("backend", 1, "text", "left"),
    ]
    rows = []
    for r in results:
        names = [printable(r.model), printable(r.format), printable(r.threads_shown)]
        if r.error:
            rows.append([*names, Text("failed", style="red"), *[""] * 12])
            continue
        lat = r.latency_ms
        accuracy = "-" if r.accuracy is None else f"{100 * r.accuracy:.2f}% ({r.n_data})"
        if r.accuracy is not None and r.metric != "top-1":
            accuracy = f"{printable(r.metric)} {accuracy}"
        rows.append([*names, _ms(lat["p50"]), _ms(lat["p90"]), _ms(lat["p99"]),
                     f"{lat['mean']:.3f}±{lat['std']:.3f}", _ms(r.cpu_ms),
                     f"{r.throughput:.0f}", f"{r.load_ms:.1f}", f"{r.first_ms:.2f}",
                     f"{r.size_bytes / 1024:.0f} KiB",
                     "-" if r.memory_mb is None else f"{r.memory_mb:.1f}",
                     f"{r.peak_rss_mb:.0f}", accuracy, printable(r.backend)])

    failures = [Text.assemble(f"{printable(r.model)}: ", ("failed", "red"),
                              f": {printable(r.error)}") for r in results if r.error]
    warnings = [Text("warning ", style="yellow") + Text(printable(warning))
                for warning in slower_quantized(results)]
    cpu_note = Text("CPU ms: the process's CPU time per inference, all threads (CPU ms / mean "
                    "ms = cores kept busy)")
    if all(r.cpu_ms is None for r in results):
        cpu_note = None
    notes = []
    for r in results:
        if r.thread_sweep_ms:
            sweep = ", ".join(f"{n}: {ms:.3f}" for n, ms in sorted(r.thread_sweep_ms.items()))
            notes.append(Text(printable(
                f"auto threads {r.model}: {r.auto_threads} (ms per inference by threads "
                f"{sweep}; the fewest within 10% of the fastest)")))
    for r in results:
        if r.pipeline_ms:
            stages = ", ".join(f"{k} {v:.3f} ms" for k, v in r.pipeline_ms.items())
            notes.append(Text(printable(
                f"pipeline {r.model} (threads {r.threads_shown}): {stages}")))
        if r.skipped_data:
            notes.append(Text(printable(f"{r.model}: skipped {r.skipped_data} file(s) in "
                                        "--data that are not images")))
    if console is None:  # piped: as wide as the table and every line under it, nothing cut
        lines = [*failures, *warnings, *([cpu_note] if cpu_note else []), *notes]
        console = terminal_console(piped_width=max(80, natural_width(columns, rows, lines,
                                                                     title=title)))
    table, left_out = fit_table(columns, rows, console, title=title)
    console.print(table)
    if left_out:
        console.print(left_out_line(left_out, console.width,
                                    "widen the terminal or use --json"))
    for line in [*failures, *warnings]:
        console.print(line)
    if cpu_note and "CPU ms" not in left_out:
        console.print(cpu_note)
    for line in notes:
        console.print(line)


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
