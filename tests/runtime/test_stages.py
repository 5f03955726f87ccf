"""The image path in three public stages (issue 34): `Model.prepare` -> `run` -> `interpret`
is what `predict` does, and what bench times and the live demo prepares with."""

import numpy as np
import pytest

import edgepilot
from edgepilot.assets import shipped_model
from edgepilot.draw import scenes, stoplight


@pytest.fixture(scope="module")
def classifier():
    return edgepilot.load(shipped_model("stoplight"))


@pytest.fixture(scope="module")
def detector():
    return edgepilot.load(shipped_model("stoplight-detector"))


def test_the_stages_are_predict(classifier):
    image = stoplight.render_scene(np.random.default_rng(5), stoplight.LABELS.index("green"),
                                   200, 150)
    prepared = classifier.prepare(image)
    assert prepared.input.shape == tuple(classifier.inputs[0].shape)
    assert prepared.image_size == (150, 200)
    staged = classifier.interpret(classifier.run(prepared.input), prepared)
    assert staged == classifier.predict(image) and staged.label == "green"


def test_a_detectors_stages_map_boxes_back_to_the_image(detector):
    image, boxes, _ = scenes.render_street(np.random.default_rng(11))
    prepared = detector.prepare(image)
    assert prepared.image_size == image.shape[:2] and prepared.scale > 0
    found = detector.interpret(detector.run(prepared.input), prepared)
    assert found == detector.predict(image) == detector.detect(image)
    height, width = image.shape[:2]
    assert all(0 <= d.box[0] <= d.box[2] <= width and 0 <= d.box[1] <= d.box[3] <= height
               for d in found)
    # Without `prepared`, boxes are in the model input's pixels.
    raw = detector.interpret(detector.run(prepared.input))
    assert [d.label for d in raw] == [d.label for d in found]


def test_bench_and_the_live_demo_go_through_the_stages(classifier, monkeypatch):
    from edgepilot.bench import _pipeline
    from edgepilot.live.loop import model_input

    calls = []
    for stage in ("prepare", "run", "interpret"):
        method = getattr(type(classifier), stage)
        monkeypatch.setattr(type(classifier), stage,
                            lambda self, *a, _m=method, _s=stage, **k: (calls.append(_s),
                                                                        _m(self, *a, **k))[1])
    stages = _pipeline(classifier, None, clock=__import__("time").perf_counter, repeats=2)
    assert set(stages) == {"decode", "preprocess", "inference", "postprocess"}
    assert calls.count("prepare") == calls.count("run") == calls.count("interpret") == 2
    frame = np.zeros((480, 640, 3), np.uint8)
    x = model_input(classifier, roi=(10, 10, 100, 200))(frame)
    assert calls.count("prepare") == 3
    assert x.shape == tuple(classifier.inputs[0].shape)
