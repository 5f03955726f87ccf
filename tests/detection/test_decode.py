"""Decoding, suppression and mAP on hand-made maps whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepilot.errors import InputError, ModelFileError
from edgepilot.meta import ModelMeta
from edgepilot.runtime.detection import (
    DecodeParams,
    Detection,
    decode,
    iou_matrix,
    letterbox,
    nms,
)
from edgepilot.runtime.detection_metrics import agreement, evaluate

LABELS = ("red", "yellow", "green")
PARAMS = DecodeParams(stride=4, score_threshold=0.3, iou_threshold=0.5, max_detections=50)


def maps(lights, shape=(60, 80)):
    """Heatmap and box map with a peak per light (label, x0, y0, x1, y1, score) in pixels,
    encoded as the detector is trained to: centre cell, offset in the cell, log size."""
    heat = np.zeros((*shape, len(LABELS)), np.float32)
    box = np.zeros((*shape, 4), np.float32)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    for label, x0, y0, x1, y1, score in lights:
        cx, cy = (x0 + x1) / 2 / 4, (y0 + y1) / 2 / 4
        j, i = min(int(cx), shape[1] - 1), min(int(cy), shape[0] - 1)
        blob = score * np.exp(-((xs - j) ** 2 + (ys - i) ** 2) / 2.0)
        heat[..., label] = np.maximum(heat[..., label], blob)
        box[i, j] = (cx - j, cy - i, math.log((x1 - x0) / 4), math.log((y1 - y0) / 4))
    return heat, box


def test_no_lights_no_detections():
    heat, box = maps([])
    assert decode(heat, box, PARAMS, LABELS) == []
    # Noise below the threshold is not a light either.
    noise = np.random.default_rng(0).uniform(0, 0.29, heat.shape).astype(np.float32)
    assert decode(noise, box, PARAMS, LABELS) == []


def test_one_light_exact_box():
    heat, box = maps([(2, 100, 40, 120, 100, 0.9)])
    (found,) = decode(heat, box, PARAMS, LABELS)
    assert found.label == "green" and found.index == 2
    assert found.score == pytest.approx(0.9)
    np.testing.assert_allclose(found.box, (100, 40, 120, 100), atol=1e-3)


def test_touching_lights_are_both_found():
    # Two lights side by side, edges touching: two peaks two cells apart.
    lights = [(0, 100, 40, 116, 88, 0.8), (2, 116, 40, 132, 88, 0.7)]
    found = decode(*maps(lights), PARAMS, LABELS)
    assert sorted((d.label, tuple(round(v) for v in d.box)) for d in found) == [
        ("green", (116, 40, 132, 88)), ("red", (100, 40, 116, 88))]


def test_overlapping_boxes_keep_the_best_of_any_label():
    # The same light seen as red (0.9) and yellow (0.5) one cell apart: one light, one state.
    heat, box = maps([(0, 100, 40, 120, 100, 0.9), (1, 103, 42, 123, 102, 0.5)])
    found = decode(heat, box, PARAMS, LABELS)
    assert [(d.label, round(d.score, 2)) for d in found] == [("red", 0.9)]
    # Lights that overlap less than the IoU threshold both stay.
    heat, box = maps([(0, 100, 40, 120, 100, 0.9), (1, 112, 40, 132, 100, 0.6)])
    assert len(decode(heat, box, PARAMS, LABELS)) == 2


def test_light_at_the_border():
    # Centre in the last cell column and row; the box reaches past the frame and is clipped.
    heat, box = maps([(1, 306, 200, 322, 242, 0.8)])
    (found,) = decode(heat, box, PARAMS, LABELS, image_size=(240, 320))
    assert found.label == "yellow"
    np.testing.assert_allclose(found.box, (306, 200, 320, 240), atol=1e-3)
    # A light in the first cell.
    heat, box = maps([(0, 0, 0, 6, 14, 0.6)])
    (found,) = decode(heat, box, PARAMS, LABELS)
    np.testing.assert_allclose(found.box, (0, 0, 6, 14), atol=1e-3)


def test_letterbox_maps_boxes_back_to_the_image():
    image = np.zeros((480, 960, 3), np.uint8)  # 2:1 into 4:3: bars above and below
    canvas, scale, pad = letterbox(image, (240, 320))
    assert canvas.shape == (240, 320, 3) and scale == pytest.approx(1 / 3)
    assert pad == (0.0, 40.0)
    heat, box = maps([(0, 40, 60, 60, 120, 0.9)])  # in the canvas' pixels
    (found,) = decode(heat, box, PARAMS, LABELS, scale=scale, pad=pad, image_size=(480, 960))
    np.testing.assert_allclose(found.box, (120, 60, 180, 240), atol=1e-2)


def test_threshold_and_max_detections():
    lights = [(0, 8 + 24 * k, 20, 20 + 24 * k, 50, 0.31 + 0.05 * k) for k in range(10)]
    heat, box = maps(lights)
    assert len(decode(heat, box, PARAMS, LABELS)) == 10
    assert len(decode(heat, box, PARAMS, LABELS, score_threshold=0.6)) == 4
    few = DecodeParams(stride=4, score_threshold=0.3, iou_threshold=0.5, max_detections=3)
    scores = [d.score for d in decode(heat, box, few, LABELS)]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert scores[0] == pytest.approx(0.76)


def test_wild_box_values_stay_finite():
    heat, box = maps([(0, 100, 40, 120, 100, 0.9)])
    box[..., 2:] = 1e6  # a corrupt size must not overflow to inf
    (found,) = decode(heat, box, PARAMS, LABELS)
    assert all(math.isfinite(v) for v in found.box)


def test_wrong_shapes_are_one_line_errors():
    heat, box = maps([])
    with pytest.raises(InputError, match="heatmap"):
        decode(heat[..., :2], box, PARAMS, LABELS)


def test_nms_and_iou():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], float)
    assert iou_matrix(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(81 / 119)
    assert list(nms(boxes, np.array([0.5, 0.9, 0.4]), 0.5)) == [1, 2]
    assert list(nms(boxes, np.array([0.5, 0.9, 0.4]), 0.7)) == [1, 0, 2]


def test_decode_params_from_metadata():
    meta = ModelMeta(name="d", labels=LABELS, input_size=(240, 320), task="detection",
                     extra={"decode": PARAMS.to_dict()})
    assert DecodeParams.from_meta(meta) == PARAMS
    for bad in ({}, {"type": "anchors"}, {**PARAMS.to_dict(), "stride": 0},
                {**PARAMS.to_dict(), "max_detections": 10**9},
                {**PARAMS.to_dict(), "heatmap": 1}):
        with pytest.raises(ModelFileError):
            DecodeParams.from_meta(meta.replace(extra={"decode": bad}))


def det(label, box, score):
    return Detection(tuple(map(float, box)), LABELS[label], score, label)


def test_map_known_answers():
    truth = [(np.array([[0, 0, 10, 20], [50, 50, 60, 70]]), np.array([0, 2]))]
    perfect = [[det(0, (0, 0, 10, 20), 0.9), det(2, (50, 50, 60, 70), 0.8)]]
    result = evaluate(perfect, truth, LABELS)
    assert result["map50"] == 1.0 and result["map50_95"] == 1.0
    assert math.isnan(result["ap50"]["yellow"])  # no yellow light: left out of the mean
    # A wrong label is a miss and a false positive.
    assert evaluate([[det(1, (0, 0, 10, 20), 0.9)]], truth, LABELS)["map50"] == 0.0
    # A false positive ranked above the right red detection: precision 1/2 at full recall.
    ranked = [[det(0, (100, 100, 110, 120), 0.95), det(0, (0, 0, 10, 20), 0.9),
               det(2, (50, 50, 60, 70), 0.8)]]
    assert evaluate(ranked, truth, LABELS)["ap50"]["red"] == pytest.approx(0.5)
    # A box shifted by a quarter of its width: IoU 0.6, a hit at 0.5, a miss at 0.65 and above.
    shifted = [[det(0, (2.5, 0, 12.5, 20), 0.9), det(2, (50, 50, 60, 70), 0.8)]]
    result = evaluate(shifted, truth, LABELS)
    assert result["ap50"]["red"] == 1.0
    assert result["map50_95"] == pytest.approx((1.0 + 0.3) / 2)


def test_small_lights_are_scored_apart():
    truth = [(np.array([[0, 0, 8, 20], [50, 0, 80, 90]]), np.array([0, 0]))]
    only_big = [[det(0, (50, 0, 80, 90), 0.9)]]
    # Recall reaches 1/2 at precision 1: 51 of the 101 recall points.
    assert evaluate(only_big, truth, LABELS)["ap50"]["red"] == pytest.approx(51 / 101)
    # Under 24 px the big light is ignored: the small one is simply missed.
    assert evaluate(only_big, truth, LABELS, height_range=(0, 24))["map50"] == 0.0
    both = [[det(0, (50, 0, 80, 90), 0.9), det(0, (0, 0, 8, 20), 0.8)]]
    assert evaluate(both, truth, LABELS, height_range=(0, 24))["map50"] == 1.0


def test_agreement_counts_boxes_within_two_pixels():
    ref = [[det(0, (0, 0, 10, 20), 0.9), det(2, (50, 50, 60, 70), 0.8)]]
    near = [[det(0, (1, 0, 11, 21), 0.88), det(2, (50, 53, 60, 70), 0.8)]]
    result = agreement(ref, near)
    assert result["agree"] == 0.5 and result["max_box_px"] == 1.0
    assert result["unmatched"] == 2  # one missing, one extra
    assert agreement(ref, ref)["agree"] == 1.0
    # Near the threshold: 0.31 in one run, 0.28 in the other is the same light.
    edge = [[det(0, (0, 0, 10, 20), 0.31)]]
    below = [[det(0, (0, 0, 10, 20), 0.28)]]
    assert agreement(edge, below, threshold=0.3)["agree"] == 1.0
    assert agreement(edge, below, threshold=0.3, margin=0.0)["agree"] == 0.0


def test_yolo_folder_round_trip(tmp_path):
    from edgepilot.datafolders import read_boxes_folder, write_boxes_folder
    from edgepilot.errors import EdgepilotError

    images = np.zeros((2, 240, 320, 3), np.uint8)
    truths = [(np.array([[10, 20, 30, 80], [100, 0, 140, 120]], float), np.array([0, 2])),
              (np.zeros((0, 4)), np.zeros(0, np.int64))]
    write_boxes_folder(tmp_path, images, truths)
    files, read = read_boxes_folder(tmp_path, LABELS)
    assert [f.name for f in files] == ["00000.png", "00001.png"]
    np.testing.assert_allclose(read[0][0], truths[0][0], atol=1e-3)
    assert read[0][1].tolist() == [0, 2] and len(read[1][0]) == 0
    (tmp_path / "00001.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(EdgepilotError, match=r"00001.txt:1: expected 'class cx cy w h'"):
        read_boxes_folder(tmp_path, LABELS)
