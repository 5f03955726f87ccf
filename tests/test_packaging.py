"""`pip install .` builds a real wheel in which the four root folders are edgepilot subpackages."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_maps_the_folders_and_works_outside_the_checkout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path,
                    ROOT], check=True, capture_output=True)
    [wheel] = tmp_path.glob("edgepilot-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("train/models.py", "export/onnx.py", "runtime/model.py",
                   "devices/__init__.py", "assets/stoplight.onnx", "cli.py"):
        assert f"edgepilot/{module}" in names, module
    assert not any(n.startswith(("tests/", "train/", "runtime/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "edgepilot = edgepilot.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    target, wheel], check=True, capture_output=True)
    code = ("import edgepilot, edgepilot.runtime, edgepilot.train.models; "
            "from edgepilot.assets import shipped_model; "
            "print(edgepilot.__file__); print(edgepilot.load(shipped_model()).meta.labels)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path, env={"PYTHONPATH": str(target)}).stdout
    assert out.splitlines()[0].startswith(str(target))
    assert "'red', 'yellow', 'green', 'none'" in out
