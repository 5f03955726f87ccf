"""Frame sources for live inference: cameras, video files, network streams and a synthetic
street scene, plus a capture thread that keeps only the newest frame.

    source = open_source("synthetic")          # or "0", "clip.mp4", "rtsp://host/stream"
    with FrameGrabber(source) as grabber:
        captured = grabber.latest()    # .frame_id, .frame (RGB), .captured_at, .input
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgepilot.errors import EdgepilotError, InputError
from edgepilot.live.newest import Newest
from edgepilot.runtime.image import IMAGE_SUFFIXES

__all__ = ["open_source", "OpenCVSource", "SyntheticSource", "FrameGrabber", "Captured",
           "SourceError", "FrameTimeout"]

STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class SourceError(EdgepilotError):
    """A camera, file or stream that cannot be opened or stopped delivering frames."""


class FrameTimeout(SourceError):
    """The source delivered no new frame in time."""


class OpenCVSource:
    """A camera index, video file or stream URL read with OpenCV; frames come out RGB."""

    def __init__(self, spec: str | int):
        self.spec = spec
        self.is_file = isinstance(spec, str) and not spec.startswith(STREAM_PREFIXES)
        self.capture = self._open(quiet=True)
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 1 <= fps <= 240 else 30.0

    def _open(self, quiet: bool = False) -> cv2.VideoCapture:
        """`quiet` holds back what OpenCV and FFmpeg print while probing (each backend's
        failure); the error raised here says what matters. Only for the first open: it
        redirects the process's stderr, which a reopen in the capture thread must not do
        while other threads are logging."""
        from edgepilot.runtime.backend import quiet_native_stderr

        with quiet_native_stderr() if quiet else contextlib.nullcontext():
            capture = cv2.VideoCapture(self.spec)
        if not capture.isOpened():
            capture.release()
            if isinstance(self.spec, int):
                raise SourceError(f"No camera at index {self.spec}: is one connected, and "
                                  "free? Try another index, a video file, or source=synthetic")
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

    Frame `i` is a pure function of (seed, i); `truth(i)` is its label. `scene="street"`
    draws a wider street with several lights (for detectors), all in the same state."""

    CYCLE = ("red", "green", "yellow")
    is_file = False

    def __init__(self, *, width: int = 640, height: int = 480, fps: float = 30.0,
                 period: float = 2.0, seed: int = 0, frames: int | None = None,
                 scene: str = "light"):
        from edgepilot.draw import scenes, stoplight  # numpy/OpenCV only

        if scene not in ("light", "street"):
            raise InputError(f"scene must be 'light' or 'street', got {scene!r}")
        self.width, self.height, self.fps, self.period = width, height, fps, period
        self.frames = frames  # None: endless
        self.index = 0
        labels = {name: stoplight.LABELS.index(name) for name in self.CYCLE}
        # One scene, rendered once per light state: the same seed gives the same street.
        if scene == "light":
            self.base = {name: stoplight.render_scene(np.random.default_rng(seed), label,
                                                      width, height, scale=(0.45, 0.75))
                         for name, label in labels.items()}
        else:
            # Drawn backgrounds only: the photographs come from packages a runtime-only
            # install (pip install edgepilot) does not have.
            drawn = tuple(b for b in stoplight.BACKGROUNDS if b not in ("photo", "night"))
            config = scenes.StreetConfig(width, height, lightings=("day",), unlit_fraction=0,
                                         backgrounds=drawn)
            seed = _street_seed(seed, config)
            self.base = {name: scenes.render_street(np.random.default_rng(seed), config,
                                                    state=scenes.STATES.index(name))[0]
                         for name in self.CYCLE}
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


def _street_seed(seed: int, config) -> int:
    """The first seed from `seed` whose street has two or more lights (a demo of a detector
    should show it choosing between lights)."""
    from edgepilot.draw import scenes

    for candidate in range(seed, seed + 50):
        rng = np.random.default_rng(candidate)
        if len(scenes.render_street(rng, config)[2]) >= 2:
            return candidate
    return seed


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
    if path.suffix.lower() in IMAGE_SUFFIXES:  # OpenCV opens it as a video of no frames
        raise InputError(f"'{spec}' is an image, not a video: the live demo takes a camera, a "
                         "video file or a stream; classify an image with predict")
    source = OpenCVSource(str(path))
    if source.capture.get(cv2.CAP_PROP_FRAME_COUNT) <= 0 and source.read() is None:
        source.close()
        raise SourceError(f"'{spec}' has no video frames OpenCV can decode")
    return source


@dataclass(frozen=True)
class Captured:
    """One frame as the capture thread delivers it."""

    frame_id: int
    frame: np.ndarray  # (H, W, 3) uint8 RGB; belongs to the consumer (drawing on it is fine)
    captured_at: float  # time.perf_counter() when the source returned it
    input: np.ndarray | None = None  # the model input, if a `prepare` hook made it
    prepare_s: float = 0.0  # what making `input` cost, in the capture thread


class FrameGrabber:
    """Reads a source in its own thread and keeps only the newest frame, so a slow consumer
    never builds up lag. Streams and cameras that stop are retried before giving up.

    `prepare(frame) -> input`, if set, runs in the capture thread too: the consumer gets the
    model input ready-made, as a camera's low-resolution stream gives it on a Raspberry Pi,
    and the second core does the resizing while the first runs the model."""

    def __init__(self, source, *, pace: bool = True, rate: float | None = None,
                 retries: int = 3, retry_delay: float = 0.5,
                 prepare: Callable[[np.ndarray], np.ndarray] | None = None):
        """`pace`: deliver at `rate` frames/s (default: the source's fps), as a camera does;
        without it, read as fast as the source allows."""
        self.source, self.pace, self.prepare = source, pace, prepare
        self.rate = rate or getattr(source, "fps", 30.0)
        self.retries, self.retry_delay = retries, retry_delay
        self._box = Newest()
        self._stop = threading.Event()
        self.error: BaseException | None = None  # what `prepare` raised, if it did
        self.finished_normally = False
        self._thread = threading.Thread(target=self._run, name="edgepilot-capture",
                                        daemon=True)

    @property
    def ended(self) -> str | None:
        """Why capture ended, once it has."""
        return self._box.closed

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

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for capture to end (end of video, stream lost, a failed `prepare`, stop());
        True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_due = time.perf_counter()
        failures = frame_id = 0
        while not self._stop.is_set():
            frame = self.source.read()
            if frame is None:
                if self.source.is_file or isinstance(self.source, SyntheticSource):
                    self.finished_normally = True
                    self._box.close("end of video")
                    return
                failures += 1
                if failures > self.retries:
                    self._box.close(f"the stream stopped delivering frames ({self.retries} "
                                    "retries failed)")
                    return
                time.sleep(self.retry_delay)
                try:
                    self.source.reopen()
                except EdgepilotError:
                    pass
                continue
            failures = 0
            captured_at = time.perf_counter()
            prepare, model_input = self.prepare, None
            if prepare is not None:
                try:
                    model_input = prepare(frame)
                except Exception as err:  # handed to the consumer, which raises it
                    self.error = err
                    self._box.close(f"preparing a frame failed: {err}")
                    return
            frame_id += 1
            self._box.put(Captured(frame_id, frame, captured_at, model_input,
                                   time.perf_counter() - captured_at))
            if self.pace:
                next_due += interval
                time.sleep(max(0.0, next_due - time.perf_counter()))

    def latest(self, after: int = 0, timeout: float = 5.0) -> Captured | None:
        """The newest frame newer than `after`, or None when capture has ended and no newer
        frame will come. Raises what `prepare` raised, and FrameTimeout if the source is
        silent for `timeout` s."""
        try:
            got = self._box.get(after, timeout)
        except TimeoutError:
            raise FrameTimeout(f"No frame from the source in {timeout:g} s") from None
        if got is None and self.error is not None:
            raise self.error
        return None if got is None else got[1]
