"""Lights drawn on a frame: a box in the colour of each light's state, its label and score.

Shared by `edgepilot predict --out` (detections of one image) and the live overlay (the
lights the tracker follows, the deciding one drawn thicker)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["STATE_COLOURS", "draw_light", "draw_detections"]

#: RGB colour of each stoplight state; other labels are drawn white.
STATE_COLOURS = {"red": (235, 50, 40), "yellow": (245, 200, 40), "green": (60, 220, 90)}


def draw_light(frame: np.ndarray, box, label: str, score: float, *, thick: bool = False,
               top: int = 0) -> None:
    """One box with "label score" above it (never above `top`, e.g. below a banner)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    colour = STATE_COLOURS.get(label, (230, 230, 230))
    cv2.rectangle(frame, (x0, y0), (x1, y1), colour, 3 if thick else 1)
    cv2.putText(frame, f"{label} {score:.2f}", (x0, max(top + 10, y0 - 4)),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)


def draw_detections(frame: np.ndarray, detections) -> np.ndarray:
    """Draw `Detection`s on an RGB frame, in place; returns it."""
    for d in detections:
        draw_light(frame, d.box, d.label, d.score)
    return frame
