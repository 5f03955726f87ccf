"""Dead ends a newcomer met (issue 35): each now ends in a clear one-line error or a right
answer. (bench's exit status and a closed pipe: tests/test_cli.py.)"""

import subprocess
import sys

import pytest

from edgepilot.assets import shipped_model


def run(*args):
    return subprocess.run([sys.executable, "-m", "edgepilot.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_info_reads_the_shipped_detector_checkpoint():
    pytest.importorskip("torch")
    done = run("info", shipped_model("stoplight-detector", ".pt"), "--json")
    assert done.returncode == 0, done.stderr
    import json

    info = json.loads(done.stdout)
    assert [o["name"] for o in info["outputs"]] == ["heatmap", "box"]
    assert info["parameters"] > 10_000


def test_deploy_refuses_a_file_that_is_not_a_model(tmp_path):
    fake = tmp_path / "fake.tflite"
    fake.write_text("not a model\n")
    done = run("deploy", fake, "--device", "rpi5", "--out", tmp_path / "bundle")
    assert done.returncode == 1 and "Not bundled" in done.stderr and "TFL3" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bundle").exists()


def test_webcam_given_an_image_says_it_is_an_image(tmp_path):
    import cv2
    import numpy as np

    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.zeros((32, 32, 3), np.uint8))
    done = run("webcam", "--source", photo, "--headless", "--frames", 3)
    assert done.returncode == 1 and "is an image, not a video" in done.stderr
    assert "processed 0 frames" not in done.stderr + done.stdout


def test_a_folder_given_as_a_model_says_it_is_a_folder(tmp_path):
    done = run("predict", tmp_path / "x.onnx", shipped_model("stoplight"))  # missing: not found
    assert done.returncode == 1 and "not found" in done.stderr
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    done = run("predict", folder, shipped_model("stoplight"))
    assert done.returncode == 1 and "is a folder, not a model file" in done.stderr


def test_version_and_debug_anywhere():
    import edgepilot

    done = run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"edgepilot {edgepilot.__version__}"
    after = run("info", "/nonexistent/model.onnx", "--debug")  # after the command too
    assert after.returncode == 1 and "Traceback" in after.stderr
    plain = run("info", "/nonexistent/model.onnx")
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
