"""`bench` and `export` tables at 80, 100 and 120 columns and piped: no line wider than the
console, no number split over two lines, the columns left out named under the table, and a
failure's reason under the table in full, not folded into a narrow column."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from edgepilot.bench import BenchResult
from edgepilot.bench_report import print_table
from edgepilot.export.report import ExportReport, print_reports

WIDTHS = (80, 100, 120)
REASON = ("ai-edge-litert cannot load 'runs/export/stoplight_edgetpu.tflite': Encountered "
          "unresolved custom op: edgetpu-custom-op. See instructions: "
          "https://www.tensorflow.org/lite/guide/ops_custom Node number 0 (edgetpu-custom-op) "
          "failed to prepare.")


def _latency(p50, p90, p99, mean, std):
    return {"min": p50 * 0.9, "p50": p50, "p90": p90, "p99": p99, "mean": mean, "std": std}


def _bench_results() -> list[BenchResult]:
    litert = "ai-edge-litert 1.2.0 (XNNPACK, 1 partition, {} threads)"
    return [
        BenchResult(model="runs/export/stoplight_int8.tflite", format="tflite", threads=1,
                    backend=litert.format(1), size_bytes=240_640, runs=200,
                    latency_ms=_latency(1.465, 1.611, 2.198, 1.494, 0.073), throughput=683.0,
                    cpu_ms=1.512, load_ms=12.3, first_ms=3.21, peak_rss_mb=412.0,
                    memory_mb=8.4, accuracy=0.975, n_data=2000),
        BenchResult(model="runs/export/stoplight_int8.tflite", format="tflite", threads=4,
                    backend=litert.format(4), size_bytes=240_640, runs=200,
                    latency_ms=_latency(0.871, 0.947, 1.336, 0.902, 0.041), throughput=1108.0,
                    cpu_ms=2.877, load_ms=11.9, first_ms=2.95, peak_rss_mb=415.0,
                    memory_mb=0.6, accuracy=0.975, n_data=2000),
        BenchResult(model="runs/export/stoplight.onnx", format="onnx", threads="auto",
                    auto_threads=2, backend="onnxruntime 1.20.1", size_bytes=925_000, runs=200,
                    latency_ms=_latency(0.214, 0.236, 0.321, 0.219, 0.011), throughput=4566.0,
                    cpu_ms=0.402, load_ms=25.6, first_ms=1.07, peak_rss_mb=436.0,
                    memory_mb=12.7, accuracy=0.9805, n_data=2000),
        BenchResult(model="runs/export/stoplight_detector_fp16.tflite", format="tflite",
                    threads=4, backend=litert.format(4), size_bytes=4_200_000, runs=200,
                    latency_ms=_latency(18.756, 20.625, 28.133, 19.125, 0.938), throughput=52.0,
                    cpu_ms=60.211, load_ms=40.2, first_ms=25.53, peak_rss_mb=518.0,
                    memory_mb=30.9, accuracy=0.812, n_data=150, metric="mAP@0.5"),
        BenchResult(model="runs/export/stoplight_edgetpu.tflite", format="tflite", threads=None,
                    error=REASON),
    ]


def _bench_columns(results: list[BenchResult]) -> dict[str, list[str]]:
    """Each column's cells (of the rows that ran), as the table writes them."""
    ok = [r for r in results if not r.error]
    return {
        "format": ["onnx"],
        "threads": ["auto→2"],
        "p50 ms": ["1.465", "0.871", "0.214", "18.756"],
        "p90 ms": ["1.611", "0.947", "0.236", "20.625"],
        "p99 ms": ["2.198", "1.336", "0.321", "28.133"],
        "mean±std": ["1.494±0.073", "0.902±0.041", "0.219±0.011", "19.125±0.938"],
        "CPU ms": ["1.512", "2.877", "0.402", "60.211"],
        "inf/s": ["683", "1108", "4566", "52"],
        "load ms": ["12.3", "11.9", "25.6", "40.2"],
        "first ms": ["3.21", "2.95", "1.07", "25.53"],
        "size": ["235 KiB", "903 KiB", "4102 KiB"],
        "model MB": ["8.4", "0.6", "12.7", "30.9"],
        "RSS MB": ["412", "415", "436", "518"],
        "accuracy": ["97.50% (2000)", "98.05% (2000)", "mAP@0.5 81.20% (150)"],
        "backend": sorted({word for r in ok for word in r.backend.split()}),
    }


def _export_reports() -> list[ExportReport]:
    def report(name, fmt, precision, size, ratio, dp, agree, acc, seconds, kept=0, raw=None):
        return ExportReport(format=fmt, precision=precision, path=f"runs/export/{name}",
                            size_bytes=size, seconds=seconds, backend="", n_inputs=2000,
                            max_abs_diff=raw if raw is not None else dp * 3,
                            top1_agreement=agree, accuracy_torch=0.9755, accuracy_export=acc,
                            size_ratio=ratio, max_prob_diff=None if raw is not None else dp,
                            notes={"kept_float": ["conv"] * kept})

    return [
        report("stoplight.onnx", "onnx", "fp32", 947_610, None, 3.1e-7, 1.0, 0.9755, 1.3),
        report("stoplight_int8.onnx", "onnx", "int8", 244_531, 0.258, 4.21e-3, 0.9985,
               0.9745, 6.8, kept=2),
        report("stoplight.tflite", "tflite", "fp32", 951_020, None, 5.2e-7, 1.0, 0.9755, 14.2),
        report("stoplight_int8.tflite", "tflite", "int8", 240_640, 0.253, 6.37e-3, 0.9935,
               0.9730, 22.7),
        report("stoplight_fp16.tflite", "tflite", "fp16", 478_208, 0.503, 2.2e-4, 0.9995,
               0.9750, 15.9),
        report("stoplight_fp16.mlpackage", "coreml", "fp16", 489_472, None, 0.0, 0.9990,
               0.9735, 31.4, raw=1.83e-2),
        report("stoplight_int8.pte", "executorch", "int8", 262_144, None, 7.93e-3, 0.9925,
               0.9720, 48.6),
    ]


def _export_columns(reports: list[ExportReport]) -> dict[str, list[str]]:
    return {
        "format": ["executorch", "coreml"],
        "precision": ["fp32", "int8", "fp16"],
        "size": ["925.4 KiB", "238.8 KiB", "928.7 KiB", "235.0 KiB", "467.0 KiB",
                 "478.0 KiB", "256.0 KiB"],
        "vs fp32": ["26%", "25%", "50%"],
        "max |Δp|": ["3.10e-07", "4.21e-03", "5.20e-07", "6.37e-03", "2.20e-04", "1.83e-02 raw",
                     "7.93e-03"],
        "top-1 agree": ["100.00%", "99.85%", "99.35%", "99.95%", "99.90%", "99.25%"],
        "acc torch": ["97.55%"],
        "acc export": ["97.45%", "97.30%", "97.50%", "97.35%", "97.20%"],
        "kept float": ["2"],
        "time": ["1.3 s", "6.8 s", "14.2 s", "22.7 s", "15.9 s", "31.4 s", "48.6 s"],
    }


def _render(function, items, width: int) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False, markup=False, emoji=False,
                      highlight=False, color_system=None)
    function(items, console=console)
    return out.getvalue()


def _whole(value: str, lines: list[str]) -> bool:
    """`value` on one line, not as part of a longer number."""
    pattern = re.compile(r"(?<![\w.])" + re.escape(value) + r"(?![\w.])")
    return any(pattern.search(line) for line in lines)


def _left_out(text: str, width: int) -> list[str]:
    flat = " ".join(text.split())
    match = re.search(rf"columns left out at {width} columns: (.*?); ", flat)
    return [] if match is None else match.group(1).split(", ")


def _check(text: str, width: int | None, columns: dict[str, list[str]],
           must_show: list[str]) -> list[str]:
    """Lines fit; each column is either shown with every number whole, or named as left out.
    Returns the columns left out."""
    lines = text.splitlines()
    if width is not None:
        too_wide = [line for line in lines if cell_len(line) > width]
        assert not too_wide, f"lines wider than {width}:\n" + "\n".join(too_wide)
    left_out = _left_out(text, width) if width is not None else []
    assert not set(left_out) & set(must_show), left_out
    for header, values in columns.items():
        if header in left_out:
            continue
        split = [v for v in values if not _whole(v, lines)]
        assert not split, f"{header}: {split} not whole on one line (and the column is not " \
                          f"named as left out) at width {width}:\n{text}"
    return left_out


def _first_column(text: str) -> str:
    """The table's first column, its folded lines put back together."""
    return "".join(line.split("│")[1].strip() for line in text.splitlines()
                   if line.count("│") > 2)


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line[:1] in "┃│┡┏└"]


@pytest.mark.parametrize("width", WIDTHS)
def test_bench_table_fits_the_width_and_keeps_numbers_whole(width):
    results = _bench_results()
    text = _render(print_table, results, width)
    left_out = _check(text, width, _bench_columns(results),
                      must_show=["format", "threads", "p50 ms", "accuracy"])
    for r in results:  # file names are text: they may fold, but never lose a character
        assert r.model in _first_column(text)
    if width >= 120:
        assert "backend" not in left_out
    # A failure says `failed` in its row and why under the table, whole.
    failed = " ".join(text.split())
    assert f"runs/export/stoplight_edgetpu.tflite: failed: {' '.join(REASON.split())}" in failed
    assert not any("Encountered" in line or "custom-op" in line for line in _table_lines(text))
    assert any("failed" in line for line in _table_lines(text))


def test_bench_table_names_what_it_left_out_at_80_columns():
    text = _render(print_table, _bench_results(), 80)
    left_out = _left_out(text, 80)
    assert left_out and "widen the terminal or use --json" in " ".join(text.split())


@pytest.mark.parametrize("width", WIDTHS)
def test_export_table_fits_the_width_and_keeps_numbers_whole(width):
    reports = _export_reports()
    text = _render(print_reports, reports, width)
    left_out = _check(text, width, _export_columns(reports),
                      must_show=["format", "precision", "size", "max |Δp|", "top-1 agree"])
    if width >= 100:
        assert not {"acc torch", "acc export"} & set(left_out)
    for r in reports:  # names may fold, but never lose a character
        assert Path(r.path).name in _first_column(text)


def test_wide_consoles_show_every_column():
    bench = _render(print_table, _bench_results(), 400)
    assert "left out" not in bench
    _check(bench, 400, _bench_columns(_bench_results()), must_show=list(_bench_columns([])))
    export = _render(print_reports, _export_reports(), 300)
    assert "left out" not in export
    _check(export, 300, _export_columns([]), must_show=list(_export_columns([])))


def _piped(monkeypatch):
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


def _check_piped(text: str, columns: dict[str, list[str]], headers: list[str]):
    lines = text.splitlines()
    assert "left out" not in text
    header_lines = [line for line in lines if line.startswith("┃")]
    for header in headers:  # every column, its header on one line
        assert any(header in line for line in header_lines), header
    _check(text, None, columns, must_show=list(columns))
    for line in _table_lines(text):  # nothing cropped: each row ends in the table's border
        assert line.rstrip()[-1] in "┃│┩┓┘", line


def test_bench_piped_shows_every_column_and_the_reason_on_one_line(capsys, monkeypatch):
    _piped(monkeypatch)
    results = _bench_results()
    print_table(results)
    text = capsys.readouterr().out
    _check_piped(text, _bench_columns(results), ["model", *_bench_columns(results)])
    assert any(f"runs/export/stoplight_edgetpu.tflite: failed: {REASON}" in line
               for line in text.splitlines())
    assert not any("Encountered" in line for line in _table_lines(text))
    for r in results:
        assert any(r.model in line for line in _table_lines(text))


def test_export_piped_shows_every_column(capsys, monkeypatch):
    _piped(monkeypatch)
    reports = _export_reports()
    print_reports(reports)
    text = capsys.readouterr().err
    _check_piped(text, _export_columns(reports), ["file", *_export_columns(reports)])
    for r in reports:
        assert any(Path(r.path).name in line for line in _table_lines(text))
