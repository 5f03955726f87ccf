"""A real mobile client, MediaPipe Tasks' ImageClassifier, runs our .tflite files from their
metadata alone and agrees with edgepilot. MediaPipe pins its own OpenCV, so it lives in its own
virtualenv (`make mediapipe-env`, which `make test` runs)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")

import edgepilot  # noqa: E402
from edgepilot.assets import shipped_model  # noqa: E402
from edgepilot.train.checkpoint import load_checkpoint  # noqa: E402
from edgepilot.train.datasets import load_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PYTHON = Path(os.environ.get("EDGEPILOT_MEDIAPIPE_PYTHON",
                             ROOT / ".venv-mediapipe" / "bin" / "python"))
pytestmark = pytest.mark.skipif(
    not PYTHON.exists(), reason=f"MediaPipe's virtualenv is missing ({PYTHON}): make mediapipe-env")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    net, meta, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    val = load_dataset("stoplight", "val", 300, meta.input_size)
    out = tmp_path_factory.mktemp("mobile") / "stoplight"
    files = {}
    for report in edgepilot.export(net, torch.zeros(1, 3, 64, 64), formats="tflite",
                                   precision=["fp32", "fp16", "dynamic", "int8"], out=out,
                                   meta=meta, data=val, quiet=True):
        files[report.precision] = report.path
    [uint8] = edgepilot.export(net, torch.zeros(1, 3, 64, 64), formats="tflite",
                               precision="int8", io_dtype="uint8", out=out.with_name("u8"),
                               meta=meta, data=val, quiet=True)
    files["int8-uint8io"] = uint8.path
    images = load_dataset("stoplight", "val", 100, meta.input_size, seed=5)[0]
    np.save(out.with_name("images.npy"), images)
    result = subprocess.run([str(PYTHON), str(Path(__file__).with_name("mediapipe_classify.py")),
                             str(out.with_name("images.npy")), *files.values()],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    client = json.loads(result.stdout)
    return files, images, {name: client[path] for name, path in files.items()}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "dynamic", "int8-uint8io"])
def test_mediapipe_runs_the_file_alone_and_agrees(exported, precision):
    files, images, client = exported
    result = client[precision]
    assert "error" not in result, result.get("error")
    model = edgepilot.load(files[precision])
    ours = [model.predict(img) for img in images]
    agree = np.mean([p.label == label for p, label in zip(ours, result["labels"])])
    assert agree >= 0.99, f"{precision}: MediaPipe agrees on {agree:.1%} of images"
    ours_scores = np.array([[p.scores[label] for label in model.meta.labels] for p in ours])
    assert np.abs(ours_scores - np.array(result["scores"])).max() < 0.02


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8", "int8-uint8io"])
def test_metadata_reads_with_the_official_schema(exported, precision):
    _, _, client = exported
    metadata = client[precision]["metadata"]
    assert metadata["image_properties"] and metadata["color_space_rgb"]
    assert metadata["mean"] == [0.0] and metadata["std"] == [1.0]  # raw pixels in
    assert metadata["labels_file"] == "labels.txt" and metadata["labels_are_axis_labels"]
    assert metadata["labels"] == ["red", "yellow", "green", "none"]


@pytest.mark.slow
def test_mediapipe_refuses_int8_inputs_which_is_why_uint8_io_exists(exported):
    _, _, client = exported
    assert "error" in client["int8"] and "INT8" in client["int8"]["error"].upper()
