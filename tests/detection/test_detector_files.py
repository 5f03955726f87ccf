"""The shipped detector through every path a user takes: export, load, predict, draw, live."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import edgepilot
from edgepilot.assets import shipped_model
from edgepilot.live.camera import FrameGrabber, SyntheticSource
from edgepilot.live.loop import run_live
from edgepilot.runtime.detection_metrics import agreement

torch = pytest.importorskip("torch")

from edgepilot.train.checkpoint import load_checkpoint  # noqa: E402
from edgepilot.train.detector import detect_batch, validation_scenes  # noqa: E402


@pytest.fixture(scope="module")
def detector():
    return load_checkpoint(shipped_model("stoplight-detector", ".pt"))[:2]


@pytest.fixture(scope="module")
def scenes():
    return validation_scenes("val", 40)


@pytest.fixture(scope="module")
def exported(detector, scenes, tmp_path_factory):
    net, meta = detector
    out = tmp_path_factory.mktemp("detector") / "det"
    reports = edgepilot.export(net, torch.zeros(meta.input_shape), formats=["onnx", "tflite"],
                               out=out, meta=meta, data=scenes, quiet=True)
    return {r.format: r for r in reports}


def test_exported_files_find_what_pytorch_finds(detector, scenes, exported):
    """ONNX and TFLite against PyTorch on generated scenes: same lights, same labels, every
    box edge within 2 px, through the runtime's letterboxing and decoding."""
    net, meta = detector
    images, _ = scenes
    threshold = meta.extra["decode"]["score_threshold"]
    reference = detect_batch(net, images, meta, score_threshold=threshold - 0.05)
    assert sum(d.score >= threshold for found in reference for d in found) >= 30
    for fmt, report in exported.items():
        model = edgepilot.load(report.path)
        assert model.meta.task == "detection"
        assert all(d.score >= threshold for d in model.predict(images[0]))
        found = [model.detect(image, score_threshold=threshold - 0.05) for image in images]
        result = agreement(reference, found, threshold=threshold)
        assert result["agree"] >= 0.98 and result["max_box_px"] <= 2.0, (fmt, result)
        # The export report says the same, and carries mAP@0.5 as its accuracy.
        assert report.notes["detections"]["agree"] >= 0.98, fmt
        assert report.notes["metric"] == "mAP@0.5"
        assert abs(report.accuracy_export - report.accuracy_torch) < 0.01, fmt


def test_shipped_int8_file_keeps_the_detectors_map(detector):
    """The int8 TFLite file the live demo runs, against PyTorch, on 300 validation scenes and
    300 of the held-out families.

    An int8 file's drop measured on few scenes is mostly which borderline lights its rounding
    happens to flip: on 150 scenes its spread is about a point, and the shipped file measured
    2.0 points on the first 150 validation scenes and -0.2 on the first 150 held-out ones
    (the file before it: 0.0 and 2.8), against 0.17 on 8,000. On 600 scenes of both kinds the
    spread is about half a point, so 2 points is far beyond it; a broken file loses tens."""
    from edgepilot.runtime.detection_metrics import evaluate

    net, meta = detector
    model = edgepilot.load(shipped_model("stoplight-detector", "_int8.tflite"))
    assert model.inputs[0].dtype == np.int8 or model.inputs[0].quantized
    recorded = json.loads(shipped_model("stoplight-detector", ".metrics.json").read_text())
    torch_found, int8_found, all_truths = [], [], []
    for split in ("val", "holdout"):
        images, truths = validation_scenes(split, 300)
        torch_found += detect_batch(net, images, meta)
        int8_found += [model.detect(image, score_threshold=0.05) for image in images]
        all_truths += truths
        if split == "val":  # against the figure recorded when it was trained
            torch_map = evaluate(torch_found, truths, meta.labels)["map50"]
            assert torch_map > recorded["val"]["map50"] - 0.05, (torch_map, recorded["val"])
    torch_map = evaluate(torch_found, all_truths, meta.labels)["map50"]
    int8_map = evaluate(int8_found, all_truths, meta.labels)["map50"]
    assert torch_map - int8_map <= 0.02, (torch_map, int8_map)


def test_predict_prints_boxes_and_draws_them(scenes, tmp_path: Path):
    images, truths = scenes
    model = edgepilot.load(shipped_model("stoplight-detector"))
    index = next(i for i, image in enumerate(images) if len(model.predict(image)) >= 2)
    photo = tmp_path / "street.png"
    cv2.imwrite(str(photo), cv2.cvtColor(images[index], cv2.COLOR_RGB2BGR))
    drawn = tmp_path / "out.jpg"
    result = subprocess.run(
        [sys.executable, "-m", "edgepilot.cli", "predict", "stoplight-detector", str(photo),
         "--json", "--out", str(drawn)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)["predictions"]
    found = entry["detections"]
    # What the API finds in the same file, boxes in the file's pixels.
    expected = model.predict(str(photo))
    assert found == [d.to_dict() for d in expected] and len(found) >= 2
    picture = cv2.imread(str(drawn))
    assert picture is not None and picture.shape == images[index].shape
    assert np.abs(picture.astype(int) - images[index][..., ::-1]).mean() > 0.5  # boxes drawn
    # Text output: one line per light, with its box.
    text = subprocess.run([sys.executable, "-m", "edgepilot.cli", "predict",
                           "stoplight-detector", str(photo)], capture_output=True, text=True,
                          timeout=300)
    assert text.returncode == 0 and len(text.stdout.strip().splitlines()) == len(found)


def _iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _average_precision(found, truths, label: int, iou: float) -> float | None:
    """AP of one label, written out plainly from COCO's definition to check the library's
    `evaluate` against: detections best score first, each takes the free truth box of its
    label it overlaps most (IoU >= `iou`) in its image; precision at 101 recall points, each
    the best precision at that recall or beyond. None when the label has no truth box."""
    n_truth = sum(int(np.sum(np.asarray(classes) == label)) for _, classes in truths)
    if n_truth == 0:
        return None
    ranked = sorted(((d.score, i, d.box) for i, dets in enumerate(found) for d in dets
                     if d.index == label), key=lambda c: -c[0])
    taken = [set() for _ in truths]
    hits = []
    for _, i, box in ranked:
        boxes, classes = truths[i]
        free = [(_iou(box, b), t) for t, (b, c) in enumerate(zip(boxes, classes))
                if c == label and t not in taken[i]]
        best = max(free, default=(0.0, None))
        hit = best[1] is not None and best[0] >= iou
        if hit:
            taken[i].add(best[1])
        hits.append(hit)
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / n_truth
    points = [max((p for p, r in zip(precision, recall) if r >= level), default=0.0)
              for level in np.linspace(0, 1, 101)]
    return float(np.mean(points))


def _maps(found, truths, labels) -> tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) over the labels that have truth boxes."""
    per_label = [[_average_precision(found, truths, c, 0.5 + 0.05 * k) for k in range(10)]
                 for c in range(len(labels))]
    present = [aps for aps in per_label if aps[0] is not None]
    return (float(np.mean([aps[0] for aps in present])),
            float(np.mean([np.mean(aps) for aps in present])))


def test_bench_reports_map_for_a_detector(scenes, tmp_path: Path):
    """`bench --data` on a folder of images with YOLO labels: mAP instead of accuracy; the
    same folder given to a classifier is a one-line error in its row."""
    from edgepilot.datafolders import write_boxes_folder

    images, truths = scenes
    write_boxes_folder(tmp_path / "data", images[:20], truths[:20])
    result = subprocess.run(
        [sys.executable, "-m", "edgepilot.cli", "bench", "stoplight-detector", "stoplight",
         "--data", str(tmp_path / "data"), "--json", "--runs", "5", "--threads", "1"],
        capture_output=True, text=True, timeout=600)
    # One row failing (the classifier's) is reported in its row, not as the command's failure.
    assert result.returncode == 0, result.stderr
    rows = {Path(r["model"]).stem: r for r in json.loads(result.stdout)["results"]}
    detector, classifier = rows["stoplight_detector"], rows["stoplight"]
    assert detector["metric"] == "mAP@0.5" and detector["n_data"] == 20
    # The same figures as scoring, by the plain computation above, what the file finds in
    # the scenes (in memory, not read back from the folder) against their true boxes.
    model = edgepilot.load(shipped_model("stoplight-detector"))
    found = [model.detect(image, score_threshold=0.05) for image in images[:20]]
    map50, map50_95 = _maps(found, truths[:20], model.meta.labels)
    assert detector["accuracy"] == pytest.approx(map50, abs=1e-6)
    assert detector["map50_95"] == pytest.approx(map50_95, abs=1e-6)
    assert 0 < detector["map50_95"] < detector["accuracy"]
    assert "YOLO .txt labels to a detector" in classifier["error"]


def test_draw_refuses_classifiers(tmp_path: Path):
    photo = tmp_path / "x.png"
    cv2.imwrite(str(photo), np.zeros((64, 64, 3), np.uint8))
    result = subprocess.run([sys.executable, "-m", "edgepilot.cli", "predict", "stoplight",
                             str(photo), "--out", str(tmp_path / "o.jpg")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--out writes images with their boxes, for detectors" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("state", ["red", "green"])
def test_live_demo_follows_the_lights_and_decides(state):
    """The webcam pipeline with the detector on the synthetic street (all its lights in one
    state): the lights are followed, one decides, and GO/STOP is that light's state."""
    model = edgepilot.load(shipped_model("stoplight-detector", "_int8.tflite"))
    source = SyntheticSource(width=320, height=240, scene="street", period=1000.0)
    source.index = SyntheticSource.CYCLE.index(state) * int(1000.0 * source.fps)
    with FrameGrabber(source, pace=False) as grabber:
        live = run_live(model, grabber, frames=12, smooth=5)
    assert live.lights, "no light followed"
    (deciding,) = [light for light in live.lights if light["decides"]]
    assert live.label == deciding["state"]
    assert live.score == pytest.approx(deciding["score"], abs=1e-3)
    assert live.decision == ("GO" if live.label == "green" else "STOP")
    assert live.reason.startswith("largest")
    tallest = max(light["box"][3] - light["box"][1] for light in live.lights)
    assert deciding["box"][3] - deciding["box"][1] >= 0.85 * tallest
