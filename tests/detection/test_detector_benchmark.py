"""benchmarks/detector.py's arguments: what it refuses and what it needs for the live figures.

The figures themselves are speed and are never asserted on; only that the script runs on
the files it was given, and refuses in one line what it cannot do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgepilot.assets import shipped_model

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "detector.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=600, env=ENV)


def test_live_figures_alone_need_only_the_int8_tflite_file(tmp_path: Path):
    shutil.copy(shipped_model("stoplight-detector", "_int8.tflite"), tmp_path)
    done = _run("--files", str(tmp_path), "--splits", "--precisions", "int8", "--frames", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "camera pace" in done.stdout and "flat out" in done.stdout
    # measuring scenes needs every file of the precision: the missing ones are named
    scenes = _run("--files", str(tmp_path), "--splits", "val", "--precisions", "int8",
                  "--scenes", "2", "--frames", "0")
    assert scenes.returncode != 0 and "stoplight_detector_int8.onnx" in scenes.stderr
    assert "Traceback" not in scenes.stderr


def test_out_and_files_together_are_refused(tmp_path: Path):
    done = _run("--files", str(tmp_path), "--out", str(tmp_path / "new"), "--splits")
    assert done.returncode != 0 and "give one" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "new").exists()
