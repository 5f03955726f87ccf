"""Live inference on the newest camera frame, as a pipeline of three stages on their own
threads, each handing the newest item to the next (nothing queues up, nothing lags):

    capture thread      read a frame, crop the ROI, resize to the model input
    inference thread    run the model, smooth the scores, decide GO/STOP
    caller's thread     draw the overlay, then show / serve / record it

With two or more cores the model runs while the next frame is being prepared and the last
one drawn, so the inference thread spends its time in the model, not around it."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from edgepilot.errors import InputError
from edgepilot.live.camera import FrameGrabber, FrameTimeout
from edgepilot.live.newest import Newest
from edgepilot.live.overlay import draw_light
from edgepilot.live.tracker import Tracker, relevant
from edgepilot.meta import ModelMeta
from edgepilot.runtime.detection import DecodeParams, decode, fit

__all__ = ["LiveState", "Reading", "Smoother", "parse_roi", "decide", "model_input", "annotate",
           "run_live"]

TIMINGS = ("prepare", "inference", "stage", "overlay", "output", "latency")
# Per-frame timings kept: the most recent frames only, so an endless --serve stays flat in
# memory (6 x 1024 floats) while the benchmark still sees every frame of a 300-frame run.
TIMING_WINDOW = 1024


@dataclass(frozen=True)
class Reading:
    """What the inference stage concluded about one frame."""

    frame_id: int
    label: str
    score: float
    decision: str
    inference_ms: float
    fps: float  # frames inferred per second, over the last 30
    captured_at: float
    lights: tuple = ()  # detectors: every light followed now (Track.to_dict())
    reason: str = ""  # detectors: why the light that decides was chosen


@dataclass
class LiveState:
    """What the overlay, the web page and the benchmark read after each frame is drawn."""

    frame_id: int = 0
    label: str = ""
    score: float = 0.0
    decision: str = ""
    fps: float = 0.0
    inference_ms: float = 0.0
    latency_ms: float = 0.0  # capture -> overlay done
    # The process's CPU time over wall time in the last second, every thread counted (capture,
    # model workers, overlay, server): 1.0 is one core kept busy. The energy proxy.
    cores_busy: float = 0.0
    lights: list = field(default_factory=list)  # detectors: the lights followed now
    reason: str = ""  # detectors: which light decides, and why
    processed: int = 0  # frames the model ran on
    shown: int = 0  # frames drawn and handed to the output (the newest wins if it lags)
    decisions: dict = field(default_factory=dict)  # decision -> shown frames, at the end
    # Seconds per frame, for the last TIMING_WINDOW frames: prepare (capture thread),
    # inference (the model call), stage (the inference thread's whole work on a frame),
    # overlay and output (caller's thread), latency (capture -> overlay done); "wall" (the
    # run's seconds) and "cpu" (the process's CPU seconds meanwhile) are added at the end.
    timings: dict = field(default_factory=lambda: {name: deque(maxlen=TIMING_WINDOW)
                                                   for name in TIMINGS})
    _cpu_marks: deque = field(default_factory=lambda: deque(maxlen=4096), repr=False)

    def public(self) -> dict:
        return {k: getattr(self, k) for k in ("frame_id", "label", "score", "decision", "fps",
                                             "inference_ms", "latency_ms", "processed",
                                             "cores_busy", "lights", "reason")}

    def measure_cpu(self, window: float = 1.0, now: tuple[float, float] | None = None) -> None:
        """Update `cores_busy` from the process's CPU time over the last `window` seconds.
        `now`: (wall, CPU) seconds, by default the clocks' readings."""
        marks = self._cpu_marks
        now = now or (time.perf_counter(), time.process_time())
        marks.append(now)
        while len(marks) > 2 and now[0] - marks[1][0] >= window:
            marks.popleft()
        if now[0] > marks[0][0]:
            self.cores_busy = (now[1] - marks[0][1]) / (now[0] - marks[0][0])

    def show(self, reading: Reading) -> None:
        for name in ("frame_id", "label", "score", "decision", "fps", "inference_ms",
                     "reason"):
            setattr(self, name, getattr(reading, name))
        self.lights = list(reading.lights)


class Smoother:
    """Mean of the last `k` score vectors: a flickering label needs k frames to change."""

    def __init__(self, k: int = 1):
        if k < 1:
            raise InputError(f"smooth= takes 1 or more frames, got {k}")
        self.window: deque = deque(maxlen=k)

    def __call__(self, scores: list[float]) -> list[float]:
        self.window.append(scores)
        n = len(self.window)
        return [sum(column) / n for column in zip(*self.window)]


def parse_roi(text: str | None, width: int, height: int) -> tuple[int, int, int, int] | None:
    """``x,y,w,h`` in pixels, checked against the frame size."""
    if not text:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"roi= takes x,y,w,h in pixels, e.g. 200,40,160,320; got '{text}'") \
            from None
    if w < 2 or h < 2 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise InputError(f"roi={text} does not fit in the {width}x{height} frame")
    return x, y, w, h


def decide(label: str) -> str:
    """The single neuron's rule: GO only on green."""
    return "GO" if label == "green" else "STOP"


def model_input(model, roi=None) -> Callable[[np.ndarray], np.ndarray]:
    """The capture thread's `prepare` hook: RGB frame -> model input: the ROI crop, then the
    model's own first stage (`Model.prepare`: resize or letterbox, normalisation)."""
    meta = model.meta
    if meta is None or not meta.is_image:
        raise InputError("The live demo needs an image model with edgepilot metadata")

    def prepare(frame: np.ndarray) -> np.ndarray:
        if roi is not None:
            x, y, w, h = roi
            frame = frame[y:y + h, x:x + w]
        return model.prepare(frame).input

    return prepare


def annotate(frame: np.ndarray, state: LiveState, roi=None) -> np.ndarray:
    """Draw label, score, decision, FPS and latency (and the ROI box) onto an RGB frame, in
    place: the pipeline hands each frame to the overlay once, so no copy is needed."""
    if roi is not None:
        x, y, w, h = roi
        cv2.rectangle(frame, (x, y), (x + w, y + h), (255, 255, 0), 2)
    for light in state.lights:  # detectors: each light in its state's colour
        draw_light(frame, light["box"], light["state"], light["score"],
                   thick=light.get("decides", False), top=64)
    go = state.decision == "GO"
    colour = (40, 200, 60) if go else (220, 40, 40)
    cv2.rectangle(frame, (0, 0), (frame.shape[1], 64), (0, 0, 0), -1)
    why = f"  ({state.reason})" if state.reason else ""
    cv2.putText(frame, f"{state.decision}  {state.label} {state.score:.2f}{why}", (10, 28),
                cv2.FONT_HERSHEY_SIMPLEX, 0.9 if not why else 0.7, colour, 2, cv2.LINE_AA)
    cv2.putText(frame, f"{state.fps:5.1f} FPS  inference {state.inference_ms:.2f} ms  "
                f"latency {state.latency_ms:.1f} ms  CPU {state.cores_busy:.2f} cores", (10, 54),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (230, 230, 230), 1, cv2.LINE_AA)
    return frame


class _Lights:
    """A detector's outputs -> the lights followed across frames and the one that decides.

    `--smooth k` is the tracker's vote window: a light's state is what most of its last k
    detections said."""

    def __init__(self, meta: ModelMeta, smoother: Smoother, roi=None):
        self.meta, self.params = meta, DecodeParams.from_meta(meta)
        self.tracker = Tracker(window=smoother.window.maxlen or 1)
        self.offset = (roi[0], roi[1]) if roi is not None else (0, 0)
        self.size = (roi[3], roi[2]) if roi is not None else None
        self._geometry: dict = {}

    def __call__(self, outputs, frame_shape: tuple[int, int]):
        shape = self.size or frame_shape
        if shape not in self._geometry:
            self._geometry[shape] = fit(shape, self.meta.input_size)[:2]
        scale, pad = self._geometry[shape]
        found = decode(outputs[self.params.heatmap], outputs[self.params.box], self.params,
                       self.meta.labels, scale=scale, pad=pad, image_size=shape)
        dx, dy = self.offset
        if dx or dy:
            found = [replace(d, box=(d.box[0] + dx, d.box[1] + dy, d.box[2] + dx,
                                     d.box[3] + dy)) for d in found]
        tracks = self.tracker.update(found)
        chosen, reason = relevant(tracks, frame_shape)
        lights = tuple({**t.to_dict(), "decides": t is chosen} for t in tracks)
        if chosen is None:
            return "none", 0.0, {"lights": lights, "reason": reason}
        return chosen.state, chosen.score, {"lights": lights, "reason": reason}


class _InferenceStage(threading.Thread):
    """Runs the model on the newest captured frame and posts a Reading per frame."""

    def __init__(self, model, grabber: FrameGrabber, prepare, smoother: Smoother,
                 state: LiveState, timeout: float = 5.0, roi=None):
        super().__init__(name="edgepilot-inference", daemon=True)
        self.model, self.grabber, self.prepare, self.smoother = model, grabber, prepare, smoother
        self.state, self.timeout = state, timeout
        meta = model.meta
        self.lights = _Lights(meta, smoother, roi) if meta.is_detector else None
        self.results = Newest()  # (Reading, frame) for the caller's thread
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as err:  # re-raised in the caller's thread
            self.error = err
        finally:
            self.results.close("inference ended")

    def _next(self, after: int):
        """The newest captured frame; waits in short slices so stop() is seen promptly."""
        silent_since = time.perf_counter()
        while not self._halt.is_set():
            try:
                return self.grabber.latest(after=after, timeout=0.1)
            except FrameTimeout:
                if time.perf_counter() - silent_since > self.timeout:
                    raise FrameTimeout(f"No frame from the source in {self.timeout:g} s") \
                        from None
        return None

    def _loop(self) -> None:
        from edgepilot.runtime.model import output_scores

        model, meta, state, timings = self.model, self.model.meta, self.state, self.state.timings
        last_id, recent = 0, deque(maxlen=30)
        while True:
            got = self._next(last_id)
            if got is None:
                return
            last_id = got.frame_id
            t0 = time.perf_counter()
            x = got.input if got.input is not None else self.prepare(got.frame)
            t1 = time.perf_counter()
            raw = model(x)
            t2 = time.perf_counter()
            recent.append(t2)
            fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
            if self.lights is not None:
                label, score, extra = self.lights(raw, got.frame.shape[:2])
            else:
                scores = self.smoother(output_scores(raw, meta))
                best = max(range(len(scores)), key=scores.__getitem__)
                label, score, extra = meta.labels[best], scores[best], {}
            self.results.put((Reading(got.frame_id, label, score, decide(label),
                                      (t2 - t1) * 1000, fps, got.captured_at, **extra),
                              got.frame))
            state.processed += 1
            timings["prepare"].append(got.prepare_s if got.input is not None else t1 - t0)
            timings["inference"].append(t2 - t1)
            timings["stage"].append(time.perf_counter() - t0)


def run_live(model, grabber: FrameGrabber, *, roi=None, smooth: int = 1,
             frames: int | None = None, on_frame: Callable | None = None,
             stop: Callable[[], bool] = lambda: False) -> LiveState:
    """Infer on the newest frame until `frames` were handed to `on_frame`, capture ends or
    `stop()` is true.

    The grabber's capture thread is given the `prepare` hook (ROI + preprocessing); the model
    runs on a thread of its own; overlay and `on_frame(annotated_rgb, state)` (display,
    recording, web) run here, on the caller's thread, which a window needs. `frames` counts
    what the output got (a recording of `frames=N` holds N frames), not what the model ran
    on: the model may get to a few more while the output is busy. `stop()` is polled at
    least every 0.1 s. Errors from any stage are raised here; Ctrl-C stops the other threads
    before it propagates."""
    prepare = model_input(model, roi)
    smoother = Smoother(smooth)
    grabber.prepare = prepare
    state = LiveState()
    stage = _InferenceStage(model, grabber, prepare, smoother, state, roi=roi)
    started, cpu_started = time.perf_counter(), time.process_time()
    state.measure_cpu()
    stage.start()
    last, timings = 0, state.timings
    try:
        while not stop() and (frames is None or state.shown < frames):
            try:
                got = stage.results.get(after=last, timeout=0.1)
            except TimeoutError:
                continue
            if got is None:
                break
            last, (reading, frame) = got
            t0 = time.perf_counter()
            state.show(reading)
            annotated = annotate(frame, state, roi)
            t1 = time.perf_counter()
            state.latency_ms = (t1 - reading.captured_at) * 1000
            if on_frame is not None:
                on_frame(annotated, state)
            state.shown += 1
            timings["overlay"].append(t1 - t0)
            timings["output"].append(time.perf_counter() - t1)
            timings["latency"].append(t1 - reading.captured_at)
            state.measure_cpu()
    finally:
        stage.stop()
        stage.join(timeout=10)
    if stage.error is not None:
        raise stage.error
    timings["wall"] = time.perf_counter() - started
    timings["cpu"] = time.process_time() - cpu_started  # the process's CPU seconds, all threads
    return state
