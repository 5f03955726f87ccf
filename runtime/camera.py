"""Frame sources for live inference: cameras, video files, network streams and a synthetic
street scene, plus a capture thread that keeps only the newest frame.

    source = open_source("synthetic")          # or "0", "clip.mp4", "rtsp://host/stream"
    with FrameGrabber(source) as grabber:
        frame_id, frame, captured_at = grabber.latest()
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edgepilot.errors import EdgepilotError, InputError

__all__ = ["open_source", "OpenCVSource", "SyntheticSource", "FrameGrabber", "SourceError"]

STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class SourceError(EdgepilotError):
    """A camera, file or stream that cannot be opened or stopped delivering frames."""


class OpenCVSource:
    """A camera index, video file or stream URL read with OpenCV; frames come out RGB."""

    def __init__(self, spec: str | int):
        self.spec = spec
        self.is_file = isinstance(spec, str) and not spec.startswith(STREAM_PREFIXES)
        self.capture = self._open()
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 1 <= fps <= 240 else 30.0

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(self.spec)
        if not capture.isOpened():
            capture.release()
            if isinstance(self.spec, int):
                raise SourceError(f"No camera at index {self.spec}: is one connected, and "
                                  "free? Try another index, a video file, or --source synthetic")
            kind = "a video OpenCV can read" if self.is_file else "a reachable stream"
            raise SourceError(f"Cannot open '{self.spec}' as {kind}")
        return capture

    def read(self) -> np.ndarray | None:
        ok, frame = self.capture.read()
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if ok else None

    def reopen(self) -> None:
        self.capture.release()
        self.capture = self._open()

    def close(self) -> None:
        self.capture.release()


class SyntheticSource:
    """A generated 640x480 street scene whose light cycles red -> green -> yellow -> red,
    `period` seconds per state, with moving clutter, so demos and tests need no camera.

    Frame `i` is a pure function of (seed, i); `truth(i)` is its label."""

    CYCLE = ("red", "green", "yellow")
    is_file = False

    def __init__(self, *, width: int = 640, height: int = 480, fps: float = 30.0,
                 period: float = 2.0, seed: int = 0, frames: int | None = None):
        from edgepilot.train import stoplight  # numpy/OpenCV only

        self.width, self.height, self.fps, self.period = width, height, fps, period
        self.frames = frames  # None: endless
        self.index = 0
        labels = {name: stoplight.LABELS.index(name) for name in self.CYCLE}
        # One scene, rendered once per light state: the same seed gives the same street.
        self.base = {name: stoplight.render_scene(np.random.default_rng(seed), label, width,
                                                  height, scale=(0.45, 0.75))
                     for name, label in labels.items()}
        self.rng = np.random.default_rng(seed + 1)

    def truth(self, index: int) -> str:
        return self.CYCLE[int(index / self.fps // self.period) % len(self.CYCLE)]

    def read(self) -> np.ndarray | None:
        if self.frames is not None and self.index >= self.frames:
            return None
        frame = self.base[self.truth(self.index)].copy()
        t = self.index / self.fps
        # Moving clutter: a car crossing low in the frame and a red ball bouncing on the right.
        x = int((t * 180) % (self.width + 200)) - 100
        cv2.rectangle(frame, (x, self.height - 90), (x + 120, self.height - 40), (40, 70, 160), -1)
        cv2.circle(frame, (x + 25, self.height - 35), 14, (20, 20, 20), -1)
        cv2.circle(frame, (x + 95, self.height - 35), 14, (20, 20, 20), -1)
        y = int(self.height * (0.3 + 0.25 * abs(np.sin(t * 2.1))))
        cv2.circle(frame, (self.width - 70, y), 22, (200, 30, 30), -1, cv2.LINE_AA)
        noise = self.rng.integers(-6, 7, size=(self.height // 4, self.width // 4, 1))
        noise = cv2.resize(noise.astype(np.float32), (self.width, self.height))[:, :, None]
        frame = np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        self.index += 1
        return frame

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


def open_source(spec: str, **synthetic_options):
    """A frame source from what users type: ``synthetic``, a camera index, a file, a URL."""
    if spec == "synthetic":
        return SyntheticSource(**synthetic_options)
    if spec.isdigit():
        return OpenCVSource(int(spec))
    if spec.startswith(STREAM_PREFIXES):
        return OpenCVSource(spec)
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"Video source '{spec}' is not a file, a camera index, a stream URL "
                         "(rtsp://, http://) or 'synthetic'")
    source = OpenCVSource(str(path))
    if source.capture.get(cv2.CAP_PROP_FRAME_COUNT) <= 0 and source.read() is None:
        source.close()
        raise SourceError(f"'{spec}' has no video frames OpenCV can decode")
    return source


class FrameGrabber:
    """Reads a source in its own thread and keeps only the newest frame, so a slow consumer
    never builds up lag. Streams and cameras that stop are retried before giving up."""

    def __init__(self, source, *, pace: bool = True, rate: float | None = None,
                 retries: int = 3, retry_delay: float = 0.5):
        """`pace`: deliver at `rate` frames/s (default: the source's fps), as a camera does;
        without it, read as fast as the source allows."""
        self.source, self.pace = source, pace
        self.rate = rate or getattr(source, "fps", 30.0)
        self.retries, self.retry_delay = retries, retry_delay
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._frame_id = 0
        self._captured_at = 0.0
        self._stop = threading.Event()
        self.ended: str | None = None  # why capture ended, once it has
        self.finished_normally = False
        self._thread = threading.Thread(target=self._run, name="edgepilot-capture",
                                        daemon=True)

    def __enter__(self) -> FrameGrabber:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.source.close()

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_due = time.perf_counter()
        failures = 0
        while not self._stop.is_set():
            frame = self.source.read()
            if frame is None:
                if self.source.is_file or isinstance(self.source, SyntheticSource):
                    self.finished_normally = True
                    self._finish("end of video")
                    return
                failures += 1
                if failures > self.retries:
                    self._finish(f"the stream stopped delivering frames ({self.retries} "
                                 "retries failed)")
                    return
                time.sleep(self.retry_delay)
                try:
                    self.source.reopen()
                except EdgepilotError:
                    pass
                continue
            failures = 0
            with self._cond:
                self._frame, self._captured_at = frame, time.perf_counter()
                self._frame_id += 1
                self._cond.notify_all()
            if self.pace:
                next_due += interval
                time.sleep(max(0.0, next_due - time.perf_counter()))

    def _finish(self, reason: str) -> None:
        with self._cond:
            self.ended = reason
            self._cond.notify_all()

    def latest(self, after: int = 0, timeout: float = 5.0):
        """The newest frame newer than `after`: (frame_id, frame, captured_at), or None when
        capture has ended and no newer frame will come."""
        deadline = time.perf_counter() + timeout
        with self._cond:
            while self._frame_id <= after and self.ended is None:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise SourceError(f"No frame from the source in {timeout:.0f} s")
                self._cond.wait(remaining)
            if self._frame_id <= after:
                return None
            return self._frame_id, self._frame, self._captured_at
