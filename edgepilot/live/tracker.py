"""Lights followed across frames, so that each one's state is steady, and the one that matters.

A detector sees each frame alone: a light's score dips for a frame, its state flickers
between red and yellow as the lamp blooms, it vanishes behind a passing truck. `Tracker`
matches each frame's detections to the lights it follows (by box overlap), keeps a light
for a few frames after it was last seen, and gives each light the state most of its recent
detections had (weighted by score). `relevant` picks the light a driver would act on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edgepilot.errors import InputError
from edgepilot.runtime.detection import Detection, iou_matrix

__all__ = ["Track", "Tracker", "relevant"]


@dataclass
class Track:
    """One light followed over frames."""

    id: int
    box: tuple[float, float, float, float]
    votes: deque = field(default_factory=deque)  # (label, score) of recent detections
    hits: int = 1
    missed: int = 0  # frames since it was last detected

    @property
    def state(self) -> str:
        weight: dict[str, float] = {}
        for label, score in self.votes:
            weight[label] = weight.get(label, 0.0) + score
        return max(weight, key=weight.__getitem__)

    @property
    def score(self) -> float:
        state = self.state
        scores = [s for label, s in self.votes if label == state]
        return sum(scores) / len(scores)

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def to_dict(self) -> dict:
        return {"id": self.id, "box": [round(v, 1) for v in self.box], "state": self.state,
                "score": round(self.score, 3)}


class Tracker:
    """Follows detections across frames.

    Args:
        window: detections a light's state is voted over (1: the last one decides).
        max_missed: frames a light is kept after it was last detected.
        min_hits: detections before a new light is shown (1 shows it at once).
        iou: least overlap between a light's box and a detection to be the same light.
    """

    def __init__(self, window: int = 5, max_missed: int = 3, min_hits: int = 2,
                 iou: float = 0.3):
        if window < 1 or max_missed < 0 or min_hits < 1 or not 0 < iou <= 1:
            raise InputError(f"Tracker needs window >= 1, max_missed >= 0, min_hits >= 1 and "
                             f"0 < iou <= 1; got {window}, {max_missed}, {min_hits}, {iou}")
        self.window, self.max_missed, self.min_hits, self.iou = window, max_missed, min_hits, iou
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, detections: list[Detection]) -> list[Track]:
        """Take one frame's detections; return the lights shown now (seen `min_hits` times,
        missing for at most `max_missed` frames), largest first."""
        boxes = np.array([d.box for d in detections], np.float64).reshape(-1, 4)
        known = np.array([t.box for t in self.tracks], np.float64).reshape(-1, 4)
        overlap = iou_matrix(known, boxes)
        matched_tracks, matched_dets = set(), set()
        # Greedy on overlap, best pairs first: a light keeps the detection most like it.
        for flat in np.argsort(-overlap, axis=None, kind="stable"):
            t, d = divmod(int(flat), len(detections))
            if overlap[t, d] < self.iou:
                break
            if t in matched_tracks or d in matched_dets:
                continue
            matched_tracks.add(t)
            matched_dets.add(d)
            track, det = self.tracks[t], detections[d]
            # The box follows the detection closely but not jumpily.
            track.box = tuple(0.5 * a + 0.5 * b for a, b in zip(track.box, det.box))
            track.votes.append((det.label, det.score))
            track.hits += 1
            track.missed = 0
        for t, track in enumerate(self.tracks):
            if t not in matched_tracks:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for d, det in enumerate(detections):
            if d not in matched_dets:
                track = Track(self._next_id, det.box, deque(maxlen=self.window))
                track.votes.append((det.label, det.score))
                self.tracks.append(track)
                self._next_id += 1
        shown = [t for t in self.tracks if t.hits >= self.min_hits]
        return sorted(shown, key=lambda t: -t.height)


def relevant(tracks: list[Track], frame_size: tuple[int, int]) -> tuple[Track | None, str]:
    """The light to act on and why: the largest (the nearest light is the largest), and
    among lights within 15% of its height, the one nearest the frame's vertical centre line
    (the one facing the camera's lane)."""
    if not tracks:
        return None, "no light"
    tallest = max(t.height for t in tracks)
    close = [t for t in tracks if t.height >= 0.85 * tallest]
    if len(close) == 1:
        return close[0], "largest light"
    centre = frame_size[1] / 2
    best = min(close, key=lambda t: abs((t.box[0] + t.box[2]) / 2 - centre))
    return best, "largest lights: nearest the centre"
