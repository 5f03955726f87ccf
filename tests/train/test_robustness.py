"""Tests for the stoplight robustness report (edgepilot.train.robustness)."""
from __future__ import annotations

import numpy as np
import pytest

from edgepilot.draw.stoplight import LABELS, NONE
from edgepilot.train import robustness
from edgepilot.train.datasets import HOLDOUT


@pytest.fixture(scope="module")
def report() -> dict:
    """Two stand-in models on a small report: an oracle and one that always answers `none`."""
    answers: dict = {}

    def oracle(images: np.ndarray) -> np.ndarray:  # looks the labels up by image content
        return np.array([answers[im.tobytes()] for im in images])

    def always_none(images: np.ndarray) -> np.ndarray:
        return np.full(len(images), NONE)

    from edgepilot.train import datasets

    for split, n in (("val", 120), ("holdout", 60)):
        images, labels = datasets.stoplight_split(split, n, (64, 64), seed=robustness.REPORT_SEED)
        answers.update({im.tobytes(): int(y) for im, y in zip(images, labels)})
    return robustness.robustness_report({"oracle": oracle, "none": always_none},
                                        n_val=120, n_holdout=60)


def test_every_factor_is_reported_for_both_splits(report: dict) -> None:
    for split in ("val", "holdout"):
        factors = {r["factor"] for r in report["rows"] if r["split"] == split}
        assert factors == {"class", *robustness.FACTORS}, split
    assert sum(r["n"] for r in report["rows"]
               if r["split"] == "val" and r["factor"] == "class") == 120


def test_accuracies_are_computed_per_bucket(report: dict) -> None:
    assert report["overall"]["val"]["oracle"] == 1.0
    assert all(r["oracle"] == 1.0 for r in report["rows"])
    assert report["overall"]["val"]["none"] == pytest.approx(0.25)  # balanced classes
    for r in report["rows"]:
        if r["factor"] == "class":
            assert r["none"] == (1.0 if r["value"] == "none" else 0.0)
        if r["factor"] == "clipped lamp":  # only images with a lit lamp: `none` is never right
            assert r["none"] == 0.0


def test_held_out_rows_are_marked(report: dict) -> None:
    held = set(HOLDOUT["backgrounds"]) | {f"photo:{p}" for p in HOLDOUT["photos"]}
    for r in report["rows"]:
        assert r["held_out"] == (r["split"] == "holdout")
        if r["split"] == "val":  # no held-out family is ever rendered for the seen-family rows
            assert r["value"] not in held | set(HOLDOUT["housings"])
    holdout_backgrounds = {r["value"] for r in report["rows"]
                           if r["split"] == "holdout" and r["factor"] == "background"}
    assert holdout_backgrounds <= held and len(holdout_backgrounds) >= 2


def test_factor_values_buckets() -> None:
    info = {"background": "photo", "photo": "coffee", "night": False, "light": True,
            "size": 0.25, "lamp_style": "led", "housing": "yellow", "clipped": True,
            "orientation": "tilted", "blur": "none", "jpeg": 35, "white_balance": 0.12}
    values = robustness.factor_values(info, LABELS.index("red"))
    assert values == {"class": "red", "clipped lamp": "clipped to white",
                      "light size": "<1/3 frame", "orientation": "tilted",
                      "housing colour": "yellow", "lamp style": "led",
                      "background": "photo:coffee", "night": "day", "blur": "none",
                      "jpeg quality": "q<40", "white balance": "warm (>0.08)"}
    cool = robustness.factor_values({**info, "white_balance": -0.1}, NONE)
    assert cool["white balance"] == "cool (<-0.08)" and "clipped lamp" not in cool
    empty = {**info, "light": False}
    assert set(robustness.factor_values(empty, NONE)) == {
        "class", "background", "night", "blur", "jpeg quality", "white balance"}


def test_format_report_lists_rows_and_marks_held_out(report: dict) -> None:
    text = robustness.format_report(report)
    assert "held out" in text and "clipped to white" in text and "overall" in text
    assert "worst factor" in text
