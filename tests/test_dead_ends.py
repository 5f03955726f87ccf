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


def test_predict_inputs_on_an_image_model_says_it_takes_images():
    done = run("predict", "stoplight", "--inputs", "1,0,0")
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    # 96 x 96 pixels x 3 channels, not 96 x 96
    assert "takes images (96x96 pixels, 3 channel(s): 27,648 values)" in line, line
    assert "9216" not in line and "9,216" not in line


def test_webcam_headless_json_summary_counts_the_frames_asked():
    import json

    done = run("webcam", "--headless", "--frames", "12", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["shown"] == 12 and sum(summary["decisions"].values()) == 12
    assert summary["processed"] >= 1 and summary["source"] == "synthetic"
    assert "processed 12 frames" in done.stderr  # the closing line says the same


def test_bench_says_where_it_wrote_and_which_file_to_pick(tmp_path):
    import json

    csv, out = tmp_path / "b.csv", tmp_path / "b.json"
    done = run("bench", "stoplight", "stoplight-detector", "--runs", "6", "--rounds", "2",
               "--warmup", "1", "--threads", "1", "--csv", csv, "--json-out", out)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stderr and f"wrote {csv} (2 row(s) appended)" in done.stderr
    assert csv.is_file() and json.loads(out.read_text())["results"]
    [verdict] = [line for line in done.stdout.splitlines() if line.startswith("fastest: ")]
    assert verdict.startswith(("fastest: stoplight.onnx, p50 ",
                               "fastest: stoplight_detector.onnx, p50 "))
    assert "x the speed of stoplight" in verdict and "accuracy not measured" in verdict


def test_train_prints_a_summary_or_json(tmp_path):
    import json

    plain = run("train", "neuron", "--out", tmp_path / "a")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip().splitlines()[-1] == f"wrote {tmp_path / 'a' / 'neuron.pt'}"
    assert "decisions_match_rule: True" in plain.stdout
    as_json = run("train", "neuron", "--out", tmp_path / "b", "--json")
    assert json.loads(as_json.stdout)["checkpoint"] == str(tmp_path / "b" / "neuron.pt")


def test_samples_write_what_the_readme_reads_and_never_overwrite(tmp_path):
    from edgepilot.datafolders import labelled_folder, read_boxes_folder
    from edgepilot.draw.stoplight import LABELS

    done = run("samples", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    for name in ("photo.jpg", "other.png", "photo_of_a_7.jpg", "street.jpg"):
        assert (tmp_path / name).stat().st_size > 1000
    files, labels = labelled_folder(tmp_path / "labelled_images")
    assert sorted(set(labels)) == sorted(LABELS) and len(files) == 5 * len(LABELS)
    images, truths = read_boxes_folder(tmp_path / "scenes")
    assert len(images) == 8 and sum(len(t[1]) for t in truths) > 0
    assert (tmp_path / "scenes" / "classes.txt").read_text().split() == ["red", "yellow",
                                                                          "green"]
    # the shipped models read them: the classifier the two lights, the detector the street
    predicted = run("predict", "stoplight", tmp_path / "photo.jpg", tmp_path / "other.png")
    assert [line.split("\t")[1] for line in predicted.stdout.splitlines()] == ["green", "red"]
    # a second run, or one into a folder where the user keeps a photo.jpg, writes nothing
    before = (tmp_path / "photo.jpg").read_bytes()
    again = run("samples", "--out", tmp_path)
    assert again.returncode == 1 and "exists: samples never overwrite" in again.stderr
    assert (tmp_path / "photo.jpg").read_bytes() == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "scenes").symlink_to(tmp_path / "nowhere")  # even a dangling link is theirs
    refused = run("samples", "--out", mine)
    assert refused.returncode == 1 and "scenes' exists" in refused.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["scenes"]


@pytest.mark.parametrize("suffix", [".onnx", "_int8.tflite"])
def test_export_given_an_exported_file_says_it_takes_pytorch_models(tmp_path, suffix):
    pytest.importorskip("torch")
    done = run("export", shipped_model("stoplight-detector", suffix), "--format", "tflite",
               "--trust-pickle", "--out", tmp_path / "x")
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert "is already an exported" in line and "export takes the PyTorch model" in line
    assert "pickle" not in line and not list(tmp_path.iterdir())
