"""Wide street scenes (what the first detector never saw) and the detector's robustness report."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgepilot.draw.scenes import HOLDOUT, MIN_HEIGHT, STATES, StreetConfig, render_street
from edgepilot.errors import InputError
from edgepilot.runtime.detection import Detection
from edgepilot.train.detector_robustness import (
    detector_report,
    format_detector_report,
    light_recall,
    street_split,
)


def _scenes(n: int, config: StreetConfig, seed: int = 7):
    out = []
    for i in range(n):
        info: dict = {}
        image, boxes, labels = render_street(np.random.default_rng((seed, i)), config, info=info)
        out.append((image, boxes, labels, info))
    return out


def test_classic_scenes_draw_none_of_the_wide_looks():
    """The shipped detector's lineage renders classic scenes: nothing wide may leak into them."""
    scenes = _scenes(80, StreetConfig())
    lights = [light for *_, info in scenes for light in info["lights"]]
    assert len(lights) > 80
    assert {light["lamp"] for light in lights} <= {"disc", "led"}
    assert not any(light["truncated"] for light in lights)
    assert not any(info["scene"]["lowres"] for *_, info in scenes)
    heights = np.concatenate([b[:, 3] - b[:, 1] for _, b, _, _ in scenes])
    assert heights.min() >= 0.75 * MIN_HEIGHT


def test_wide_scenes_draw_small_cut_and_arrow_lights_inside_the_frame():
    scenes = _scenes(160, StreetConfig(wide=True))
    lights = [light for *_, info in scenes for light in info["lights"]]
    for _, boxes, labels, info in scenes:
        assert len(info["lights"]) == len(boxes) == len(labels)
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 320).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 240).all()
        assert ((boxes[:, 2] - boxes[:, 0]) > 2).all() and ((boxes[:, 3] - boxes[:, 1]) > 2).all()
    heights = np.concatenate([b[:, 3] - b[:, 1] for _, b, _, _ in scenes])
    assert (heights < MIN_HEIGHT * 0.9).sum() >= 5  # lights the classic scenes never draw
    assert sum(light["lamp"] == "arrow" for light in lights) >= 5
    assert sum(info["scene"]["lowres"] for *_, info in scenes) >= 10
    cut = [(b, light) for _, boxes, _, info in scenes
           for b, light in zip(boxes, info["lights"]) if light["truncated"]]
    assert len(cut) >= 5
    for x0, y0, x1, y1 in (box for box, _ in cut):  # a cut light's box ends at the frame's edge
        assert min(x0, y0) == 0 or x1 == 320 or y1 == 240
    assert {light["orientation"] for light in lights} == {"vertical", "horizontal", "tilted"}


def test_the_scenes_a_detector_trains_on_are_checked():
    pytest.importorskip("torch")
    from edgepilot.train.detector import SCENES, DetectorConfig, _Scenes

    assert SCENES["wide"][0].wide and not SCENES["classic"][0].wide
    # a mix takes turns, scene by scene: classic, wide, classic, ... under the same seeds
    streams = {kind: iter(_Scenes(SCENES[kind], seed=0, rank=0))
               for kind in ("mix", "classic", "wide")}
    first = [{kind: next(stream)[0] for kind, stream in streams.items()} for _ in range(6)]
    for k, scene in enumerate(first):
        assert np.array_equal(scene["mix"], scene["classic" if k % 2 == 0 else "wide"])
        assert not np.array_equal(scene["classic"], scene["wide"])
    assert DetectorConfig().scenes == "wide"
    with pytest.raises(InputError, match="scenes must be one of"):
        DetectorConfig(scenes="wild")


def test_scenes_flag_is_for_the_detector_only(tmp_path):
    result = subprocess.run([sys.executable, "-I", "-m", "edgepilot.cli", "train", "neuron",
                             "--scenes", "wide", "--out", str(tmp_path / "n")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.endswith("--scenes applies to 'train stoplight-detector', not 'neuron': "
                         "leave it out")
    assert not (tmp_path / "n").exists()


def _det(box, index, score=0.9):
    return Detection(tuple(float(v) for v in box), STATES[index], score, index)


def test_light_recall_needs_the_state_the_overlap_and_the_score():
    boxes = np.array([[10, 10, 20, 40], [100, 50, 110, 80]], np.float32)
    labels = np.array([0, 2])
    found, false = light_recall([_det((11, 11, 20, 40), 0)], boxes, labels, 0.3)
    assert found.tolist() == [True, False] and false == 0
    found, false = light_recall([_det((11, 11, 20, 40), 1)], boxes, labels, 0.3)
    assert found.tolist() == [False, False] and false == 0  # the wrong state: not a hit
    found, _ = light_recall([_det((11, 11, 20, 40), 0, score=0.2)], boxes, labels, 0.3)
    assert not found.any()  # below the threshold the runtime shows nothing
    found, false = light_recall([_det((200, 200, 210, 230), 2)], boxes, labels, 0.3)
    assert not found.any() and false == 1
    twice = [_det((11, 11, 20, 40), 0), _det((10, 10, 20, 41), 0, score=0.8)]
    found, false = light_recall(twice, boxes[:1], labels[:1], 0.3)
    assert found.tolist() == [True] and false == 0  # a duplicate overlaps: not a false one


def _oracle(split, n, config, drop=lambda box: False):
    """A detector that sees the truth (by image) and leaves out the lights `drop` picks."""
    images, truths, _ = street_split(split, n, config)
    table = {img.tobytes(): [_det(b, int(c)) for b, c in zip(boxes, labels) if not drop(b)]
             for img, (boxes, labels) in zip(images, truths)}
    return lambda batch: [table[img.tobytes()] for img in batch]


def test_report_finds_what_a_detector_misses_by_factor():
    config = StreetConfig(wide=True)
    n_val, n_holdout = 60, 30
    perfect = {split: _oracle(split, n, config) for split, n in (("val", n_val),
                                                                    ("holdout", n_holdout))}
    small = 16.0
    blind = {split: _oracle(split, n, config, drop=lambda b: b[3] - b[1] < small)
             for split, n in (("val", n_val), ("holdout", n_holdout))}

    def detector(oracles):
        def run(images):
            for oracle in oracles.values():
                try:
                    return oracle(images)
                except KeyError:
                    continue
            raise AssertionError("images from no split")
        return run

    report = detector_report({"perfect": detector(perfect), "blind": detector(blind)},
                             val_size=n_val, holdout_size=n_holdout, config=config)
    rows = report["rows"]
    assert {r["split"] for r in rows} == {"val", "holdout"}
    assert all(r["held_out"] for r in rows if r["split"] == "holdout")
    assert not any(r["held_out"] for r in rows if r["split"] == "val")
    for r in rows:
        assert r["perfect"]["recall"] == 1.0 and r["perfect"]["map50"] == pytest.approx(1.0)
    sizes = {(r["split"], r["value"]): r for r in rows if r["factor"] == "size"}
    assert sizes[("val", "<16 px")]["lights"] > 0
    assert sizes[("val", "<16 px")]["blind"]["recall"] == 0.0
    assert sizes[("val", ">=96 px")]["blind"]["recall"] == 1.0
    assert sizes[("val", ">=96 px")]["blind"]["map50"] == pytest.approx(1.0)
    overall = report["overall"]["val"]
    assert overall["perfect"]["false_per_100_scenes"] == 0
    assert 0 < overall["blind"]["recall"] < 1
    lighting = {r["value"] for r in rows if r["factor"] == "lighting" and r["split"] == "holdout"}
    assert lighting == set(HOLDOUT["lightings"])
    text = format_detector_report(report)
    assert "held out" in text and "<16 px" in text and "false detections" in text
