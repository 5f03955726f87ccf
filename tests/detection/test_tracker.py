"""Following lights across frames: steady states, short gaps bridged, the deciding light."""

from __future__ import annotations

import pytest

from edgepilot.errors import InputError
from edgepilot.live.tracker import Tracker, relevant
from edgepilot.runtime.detection import Detection

LABELS = ("red", "yellow", "green")


def det(label: str, box, score: float = 0.8) -> Detection:
    return Detection(tuple(map(float, box)), label, score, LABELS.index(label))


def test_a_flickering_state_is_voted_steady():
    tracker = Tracker(window=5, min_hits=1)
    states = []
    for label in ["red", "red", "yellow", "red", "red", "yellow", "red"]:
        (track,) = tracker.update([det(label, (100, 40, 120, 100))])
        states.append(track.state)
    assert states == ["red"] * 7
    # A real change wins once most of the window says so.
    for _ in range(3):
        (track,) = tracker.update([det("green", (101, 40, 121, 100), 0.9)])
    assert track.state == "green"


def test_the_vote_is_weighted_by_score():
    # README: a light's state is the score-weighted vote of its last --smooth detections, so
    # two unsure reds lose to one sure green, until the green has left the window.
    tracker = Tracker(window=3, min_hits=1)
    seen = [("red", 0.3), ("red", 0.3), ("green", 0.9), ("red", 0.3), ("red", 0.3), ("red", 0.3)]
    states = []
    for label, score in seen:
        (track,) = tracker.update([det(label, (100, 40, 120, 100), score)])
        states.append(track.state)
    assert states == ["red", "red", "green", "green", "green", "red"]
    assert track.score == pytest.approx(0.3)  # the mean score of the votes for its state


def test_identity_is_kept_across_motion_and_short_gaps():
    tracker = Tracker(max_missed=2, min_hits=1)
    (first,) = tracker.update([det("red", (100, 40, 120, 100))])
    tracker.update([])  # missed for a frame: still followed
    (again,) = tracker.update([det("red", (104, 41, 124, 101))])
    assert again.id == first.id
    for _ in range(3):
        shown = tracker.update([])
    assert shown == []  # gone after max_missed frames without a detection
    (new,) = tracker.update([det("red", (104, 41, 124, 101))])
    assert new.id != first.id


def test_new_lights_wait_for_min_hits():
    tracker = Tracker(min_hits=2)
    assert tracker.update([det("green", (10, 10, 20, 40))]) == []
    assert len(tracker.update([det("green", (10, 10, 20, 40))])) == 1


def test_two_lights_are_two_tracks():
    tracker = Tracker(min_hits=1)
    shown = tracker.update([det("red", (10, 10, 20, 40)), det("green", (200, 10, 230, 90))])
    assert sorted(t.state for t in shown) == ["green", "red"]
    assert shown[0].state == "green"  # largest first


def test_the_deciding_light_is_the_largest_then_the_central_one():
    tracker = Tracker(min_hits=1)
    near = det("green", (280, 40, 310, 120))  # 80 px tall, right side
    far = det("red", (100, 60, 110, 90))
    chosen, why = relevant(tracker.update([near, far]), (240, 640))
    assert chosen.state == "green" and why == "largest light"
    tracker = Tracker(min_hits=1)
    left = det("red", (20, 40, 50, 120))
    centre = det("green", (300, 42, 330, 120))  # within 15% of the tallest, nearer the centre
    chosen, why = relevant(tracker.update([left, centre]), (240, 640))
    assert chosen.state == "green" and "centre" in why
    assert relevant([], (240, 640)) == (None, "no light")


def test_bad_settings_are_one_line_errors():
    with pytest.raises(InputError, match="window"):
        Tracker(window=0)
