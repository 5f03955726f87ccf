"""Live inference on the newest camera frame: smoothing, the GO/STOP decision, an overlay,
and the timing that shows where a frame's time goes."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from edgepilot.errors import InputError
from edgepilot.runtime.camera import FrameGrabber

__all__ = ["LiveState", "Smoother", "parse_roi", "decide", "annotate", "run_live"]


@dataclass
class LiveState:
    """What the overlay, the web page and the benchmark read after each processed frame."""

    frame_id: int = 0
    label: str = ""
    score: float = 0.0
    decision: str = ""
    fps: float = 0.0
    inference_ms: float = 0.0
    latency_ms: float = 0.0  # capture -> overlay done
    processed: int = 0
    timings: dict = field(default_factory=lambda: {"inference": [], "frame": [], "latency": []})

    def public(self) -> dict:
        return {k: getattr(self, k) for k in ("frame_id", "label", "score", "decision", "fps",
                                             "inference_ms", "latency_ms", "processed")}


class Smoother:
    """Mean of the last `k` score vectors: a flickering label needs k frames to change."""

    def __init__(self, k: int = 1):
        if k < 1:
            raise InputError(f"--smooth takes 1 or more frames, got {k}")
        self.window: deque = deque(maxlen=k)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        self.window.append(scores)
        return np.mean(self.window, axis=0)


def parse_roi(text: str | None, width: int, height: int) -> tuple[int, int, int, int] | None:
    """``x,y,w,h`` in pixels, checked against the frame size."""
    if not text:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--roi takes x,y,w,h in pixels, e.g. 200,40,160,320; got '{text}'") \
            from None
    if w < 2 or h < 2 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise InputError(f"--roi {text} does not fit in the {width}x{height} frame")
    return x, y, w, h


def decide(label: str) -> str:
    """The single neuron's rule: GO only on green."""
    return "GO" if label == "green" else "STOP"


def annotate(frame: np.ndarray, state: LiveState, roi=None) -> np.ndarray:
    """Draw label, score, decision, FPS and latency (and the ROI box) on an RGB frame."""
    out = frame.copy()
    if roi is not None:
        x, y, w, h = roi
        cv2.rectangle(out, (x, y), (x + w, y + h), (255, 255, 0), 2)
    go = state.decision == "GO"
    colour = (40, 200, 60) if go else (220, 40, 40)
    cv2.rectangle(out, (0, 0), (out.shape[1], 64), (0, 0, 0), -1)
    cv2.putText(out, f"{state.decision}  {state.label} {state.score:.2f}", (10, 28),
                cv2.FONT_HERSHEY_SIMPLEX, 0.9, colour, 2, cv2.LINE_AA)
    cv2.putText(out, f"{state.fps:5.1f} FPS  inference {state.inference_ms:.2f} ms  "
                f"latency {state.latency_ms:.1f} ms", (10, 54), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (230, 230, 230), 1, cv2.LINE_AA)
    return out


def run_live(model, grabber: FrameGrabber, *, roi=None, smooth: int = 1,
             frames: int | None = None, on_frame: Callable | None = None,
             stop: Callable[[], bool] = lambda: False) -> LiveState:
    """Process the newest frame until `frames` are done, capture ends or `stop()` is true.

    `on_frame(annotated_rgb, state)` is called after each frame (display, recording, web)."""
    meta = model.meta
    if meta is None or not meta.is_image:
        raise InputError("The live demo needs an image model with edgepilot metadata")
    from edgepilot.runtime.image import preprocess
    from edgepilot.runtime.model import to_prediction

    smoother = Smoother(smooth)
    state = LiveState()
    last_id, started, recent = 0, time.perf_counter(), deque(maxlen=30)
    while (frames is None or state.processed < frames) and not stop():
        got = grabber.latest(after=last_id)
        if got is None:
            break
        last_id, frame, captured_at = got
        t0 = time.perf_counter()
        view = frame if roi is None else frame[roi[1]:roi[1] + roi[3], roi[0]:roi[0] + roi[2]]
        x = preprocess(view, meta)
        t1 = time.perf_counter()
        raw = model(x)
        t2 = time.perf_counter()
        prediction = to_prediction(raw, meta)
        scores = smoother(np.array([prediction.scores[label] for label in meta.labels]))
        best = int(scores.argmax())
        state.frame_id, state.label, state.score = last_id, meta.labels[best], float(scores[best])
        state.decision = decide(state.label)
        state.inference_ms = (t2 - t1) * 1000
        recent.append(t2)
        if len(recent) > 1:
            state.fps = (len(recent) - 1) / (recent[-1] - recent[0])
        annotated = annotate(frame, state, roi)
        done = time.perf_counter()
        state.latency_ms = (done - captured_at) * 1000
        state.processed += 1
        state.timings["inference"].append(t2 - t1)
        state.timings["frame"].append(done - t0)
        state.timings["latency"].append(done - captured_at)
        if on_frame is not None:
            on_frame(annotated, state)
    state.timings["wall"] = time.perf_counter() - started
    return state
