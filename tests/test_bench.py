"""edgepilot bench: statistics on a fake backend with known latencies, the JSON schema,
failures reported in their row, and bad input."""

import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepilot.bench import BenchResult, benchmark, latency_stats
from edgepilot.bench_report import append_csv, plot, print_table, to_json
from edgepilot.errors import InputError
from edgepilot.formats import FORMATS, format_for_path
from edgepilot.meta import ModelMeta
from edgepilot.runtime.backend import Backend, TensorInfo
from edgepilot.runtime.model import Model


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class SleepyBackend(Backend):
    """Each run 'takes' the next latency from a list, on the fake clock."""

    meta_json = None

    def __init__(self, clock, latencies):
        self.clock, self.latencies, self.calls = clock, list(latencies), 0
        self.description = "fake backend"
        self.inputs = [TensorInfo("x", (1, 4), np.dtype(np.float32))]
        self.outputs = [TensorInfo("y", (1, 2), np.dtype(np.float32))]

    def run(self, inputs):
        self.clock.now += self.latencies[self.calls % len(self.latencies)]
        self.calls += 1
        return [np.array([[0.0, 1.0]], np.float32)]


def fake_model(clock, latencies, name="fake.onnx"):
    meta = ModelMeta(name="fake", labels=("a", "b"), input_size=(1, 4), layout="NC",
                     color="GRAY", mean=(0.0,), std=(1.0,), preprocess="none")
    return Model(SleepyBackend(clock, latencies), meta=meta, path=Path(name), format=FORMATS[0])


def test_statistics_of_known_latencies():
    clock = FakeClock()
    # 1 ms warm-up and first run (excluded), then 1..100 ms: known percentiles.
    latencies = [0.5, 0.5, 0.5] + [i / 1000 for i in range(1, 101)]
    model = fake_model(clock, latencies)
    [result] = benchmark([model], runs=100, warmup=2, rounds=4, clock=clock)
    assert result.runs == 100 and result.first_ms == 500.0
    lat = result.latency_ms
    assert lat["min"] == pytest.approx(1.0) and lat["p50"] == pytest.approx(50.5)
    assert lat["p90"] == pytest.approx(90.1) and lat["p99"] == pytest.approx(99.01)
    assert lat["mean"] == pytest.approx(50.5) and lat["std"] == pytest.approx(28.866, rel=1e-4)
    assert result.throughput == pytest.approx(1000 / 50.5)
    assert result.backend == "fake backend"


def test_rounds_are_interleaved_between_models():
    clock = FakeClock()
    order = []
    a, b = fake_model(clock, [0.001], "a.onnx"), fake_model(clock, [0.002], "b.onnx")
    for model, tag in ((a, "a"), (b, "b")):
        run = model._backend.run
        model._backend.run = lambda inputs, run=run, tag=tag: (order.append(tag), run(inputs))[1]
    results = benchmark([a, b], runs=4, warmup=0, rounds=4, clock=clock)
    timed = "".join(order[2:])  # after the two first-inference runs
    assert timed == "abbaabba"  # every round runs both, in a rotated order
    assert [r.latency_ms["p50"] for r in results] == pytest.approx([1.0, 2.0])


def test_duration_mode_runs_until_the_time_is_spent():
    clock = FakeClock()
    [result] = benchmark([fake_model(clock, [0.01])], duration=0.5, warmup=0, rounds=5,
                         clock=clock)
    assert result.runs == 50


def test_latency_stats_rejects_nothing():
    with pytest.raises(ValueError):
        latency_stats([])


def test_json_schema(tmp_path):
    clock = FakeClock()
    results = benchmark([fake_model(clock, [0.002]), tmp_path / "missing.onnx"], runs=10,
                        warmup=0, rounds=2, clock=clock)
    data = json.loads(json.dumps(to_json(results)))
    assert data["schema_version"] == 1
    # The machine as the standard library sees it, independently of bench's own probe.
    machine = data["machine"]
    assert machine["cores"] == os.cpu_count()
    assert machine["python"] == platform.python_version()
    assert platform.system() in machine["platform"] and machine["cpu"]
    good, bad = data["results"]
    assert good["model"] == "fake.onnx" and good["runs"] == 10 and good["error"] is None
    # Every run took 2 ms on the fake clock: each statistic says so.
    assert good["latency_ms"] == pytest.approx({"min": 2.0, "p50": 2.0, "p90": 2.0,
                                                "p99": 2.0, "mean": 2.0, "std": 0.0})
    assert good["throughput"] == pytest.approx(500.0) and good["backend"] == "fake backend"
    assert "samples_ms" not in good
    assert bad["error"].startswith("Model file not found") and bad["latency_ms"] == {}
    assert str(tmp_path / "missing.onnx") in bad["error"]


def test_a_file_that_cannot_load_is_reported_in_its_row(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    clock = FakeClock()
    good, bad = benchmark([fake_model(clock, [0.001]), tmp_path / "junk.onnx"], runs=4,
                          warmup=0, rounds=2, clock=clock)
    assert good.error is None and good.runs == 4
    assert "onnxruntime cannot load" in bad.error


def test_the_table_shows_an_error_with_brackets_as_written():
    from rich.console import Console

    row = BenchResult(model="m.pt", format="pytorch", threads=None,
                      error="Install it with: pip install 'edgepilot[export]'")
    console = Console(record=True, width=300)
    print_table([row], console=console)
    assert "pip install 'edgepilot[export]'" in console.export_text()


def test_threads_must_be_positive():
    with pytest.raises(InputError, match="threads must be 1 or more"):
        benchmark(["x.onnx"], threads=[0])
    with pytest.raises(InputError, match="'auto' or None, got 'all'"):
        benchmark(["x.onnx"], threads=["all"])


def test_cpu_time_per_inference_counts_the_timed_runs_only():
    clock, cpu = FakeClock(), FakeClock()  # wall time; the process's CPU time
    model = fake_model(clock, [0.004])
    run, calls = model._backend.run, []

    def busy(inputs):
        before = clock.now
        out = run(inputs)
        # The first run and the 3 warm-ups keep 8 cores busy, the timed runs 2.5: only the
        # timed runs may count.
        cpu.now += (8.0 if len(calls) < 4 else 2.5) * (clock.now - before)
        calls.append(1)
        return out

    model._backend.run = busy
    [result] = benchmark([model], runs=10, warmup=3, rounds=2, clock=clock, cpu_clock=cpu)
    # 10 timed runs of 4 ms with 2.5 cores busy: 10 ms of CPU per inference.
    assert result.cpu_ms == pytest.approx(10.0) and result.cores_busy == pytest.approx(2.5)
    assert to_json([result])["results"][0]["cpu_ms"] == pytest.approx(10.0)


def test_the_table_shows_cpu_time_and_what_auto_chose():
    from rich.console import Console

    row = BenchResult(model="m.onnx", format="onnx", threads="auto", runs=5, cpu_ms=0.75,
                      latency_ms={"min": 0.5, "p50": 0.5, "p90": 0.5, "p99": 0.5, "mean": 0.5,
                                  "std": 0.0}, throughput=2000.0, auto_threads=2,
                      thread_sweep_ms={1: 0.9, 2: 0.5, 4: 0.52})
    console = Console(record=True, width=300)
    print_table([row], console=console)
    text = console.export_text()
    assert "auto→2" in text and "0.750" in text and "CPU ms" in text
    assert "auto threads m.onnx: 2 (ms per inference by threads 1: 0.900, 2: 0.500, " \
           "4: 0.520" in text


def test_auto_threads_are_recorded_for_a_real_file(tmp_path, monkeypatch):
    from edgepilot.assets import shipped_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    [row] = benchmark([shipped_model()], runs=5, warmup=1, rounds=1)
    assert row.threads == "auto" and row.auto_threads >= 1 and row.error is None
    assert row.auto_threads in row.thread_sweep_ms and row.cpu_ms > 0
    assert f"{row.auto_threads} thread" in row.backend


def test_csv_rows_are_appended_with_one_header(tmp_path):
    clock = FakeClock()
    results = benchmark([fake_model(clock, [0.001])], runs=4, warmup=0, rounds=1, clock=clock)
    path = tmp_path / "results.csv"
    append_csv(results, path)
    append_csv(results, path)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 2 and rows[0]["p50_ms"] == "1.0" and rows[0]["cores"]


def test_plot_is_a_png(tmp_path):
    clock = FakeClock()
    results = benchmark([fake_model(clock, [0.001, 0.003]), fake_model(clock, [0.002], "b")],
                        runs=20, warmup=0, rounds=2, clock=clock)
    path = plot(results, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(Exception, match="does not exist"):
        plot(results, tmp_path / "no" / "such" / "bench.png")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edgepilot.cli", "bench", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_cli_bad_input(tmp_path):
    result = run_cli("stoplight", "--threads", "0")
    assert result.returncode == 1 and "must be 1 or more" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("stoplight", "--plot", tmp_path / "missing" / "p.png")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: Folder does not exist")


@pytest.mark.slow
def test_cli_end_to_end_with_data_pipeline_and_outputs(tmp_path):
    import cv2

    from edgepilot.draw import stoplight

    images, labels = stoplight.generate(12, seed=3)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "data" / stoplight.LABELS[label]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (tmp_path / "data" / "red" / "notes.txt").write_text("not an image")
    result = run_cli("stoplight", "--runs", "20", "--threads", "1", "2", "--data",
                     tmp_path / "data", "--pipeline", "--json", "--csv", tmp_path / "r.csv",
                     "--plot", tmp_path / "p.png")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [r["threads"] for r in data["results"]] == [1, 2]
    first = data["results"][0]
    assert first["accuracy"] == 1.0 and first["n_data"] == 12 and first["skipped_data"] == 1
    assert set(first["pipeline_ms"]) == {"decode", "preprocess", "inference", "postprocess"}
    assert "CPUExecutionProvider" in first["backend"] and first["peak_rss_mb"] > 10
    assert (tmp_path / "p.png").stat().st_size > 10_000
    assert len(list(csv.DictReader((tmp_path / "r.csv").open()))) == 2


def test_cli_json_out_saves_what_it_prints(tmp_path):
    result = run_cli("stoplight", "--runs", "5", "--warmup", "1", "--rounds", "1", "--json",
                     "--json-out", tmp_path / "bench.json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert json.loads((tmp_path / "bench.json").read_text()) == printed
    [row] = printed["results"]
    assert row["runs"] == 5 and row["error"] is None and row["model"].endswith("stoplight.onnx")


#: Formats whose runtime this machine may lack, and what their row then says.
NOT_HERE = {"coreml": "macOS", "edgetpu": "libedgetpu"}


@pytest.mark.slow
def test_cli_export_matrix_with_baseline_and_failing_rows(tmp_path, trained_tiny, tiny_meta):
    """`bench --export`: every format and precision of the table, the eager PyTorch baseline,
    and rows that say why an export failed. The checkpoint names no dataset, so int8 has no
    calibration images and must fail in its row while the other precisions run."""
    from edgepilot.train.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "tiny.pt", trained_tiny[0], arch="stoplight_cnn",
                                 config={"num_classes": 4, "width": 8}, meta=tiny_meta)
    result = run_cli("--export", checkpoint, "--out", tmp_path / "files", "--runs", "5",
                     "--warmup", "1", "--rounds", "1", "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["model"]: row for row in json.loads(result.stdout)["results"]}
    expected = {"tiny.pt"} | {
        "tiny" + ("" if p == "fp32" else f"_{p}") + f.suffix for f in FORMATS
        for p in f.precisions}
    assert {Path(name).name for name in rows} == expected
    by_name = {Path(name).name: row for name, row in rows.items()}
    baseline = by_name.pop("tiny.pt")
    assert baseline["format"] == "pytorch" and baseline["error"] is None
    assert baseline["runs"] == 5 and baseline["latency_ms"]["p50"] > 0
    for name, row in by_name.items():
        if "_int8" in name:
            assert row["error"].startswith("export failed") and "calibration" in row["error"]
            assert row["latency_ms"] == {} and not (tmp_path / "files" / name).exists()
        elif row["error"] is not None:
            # Exported, but its runtime is not on this machine: the row says which and why.
            fmt = format_for_path(name).name
            assert fmt in NOT_HERE and NOT_HERE[fmt] in row["error"], (name, row["error"])
            assert (tmp_path / "files" / name).exists()
        else:
            assert row["runs"] == 5 and (tmp_path / "files" / name).is_file()
            backend = {"onnx": "onnxruntime", "tflite": "ai-edge-litert",
                       "executorch": "executorch"}[format_for_path(name).name]
            assert row["backend"].startswith(backend), (name, row["backend"])
