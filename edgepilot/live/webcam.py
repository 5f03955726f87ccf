"""`edgepilot webcam`: the live demo. A capture thread keeps the newest frame and prepares the
model input, an inference thread runs the model on it, and this thread draws the overlay and
sends it to a window, a web page (--serve) or a video file (see edgepilot/live/loop.py).

Stopping: Ctrl-C (SIGINT), SIGTERM (systemd, docker stop) and SIGHUP end the run at the next
frame, finalise the recording and report what was saved; the process then exits 128 + the
signal number (130, 143, 129), as a shell reports a process a signal stopped. A second
signal stops at once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cv2

from edgepilot.errors import EdgepilotError, InputError
from edgepilot.live.camera import FrameGrabber, SourceError, SyntheticSource, open_source
from edgepilot.live.loop import LiveState, parse_roi, run_live

__all__ = ["run_webcam", "Recorder", "RecordingError", "Stopped", "threads_used"]

# Containers a recording can use. Matroska and AVI are readable up to the last frame written
# even when the process is killed (SIGKILL, power loss); MP4 keeps its index at the end, so it
# is playable only once finalised (on a normal end, an error, Ctrl-C, SIGTERM or SIGHUP).
CONTAINERS = {".mp4": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


class RecordingError(EdgepilotError):
    """The video file could not be written (full disk, unwritable folder, failed encoder)."""


class Stopped(KeyboardInterrupt):
    """The run was stopped by a signal, after the recording was finalised and reported."""

    def __init__(self, signum: int, reported: bool = True):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.reported = reported  # whether the CLI need not say "interrupted" again


def threads_used(model, asked: int | str | None) -> str:
    """The model's threads as the start-up line says them: ``1 model thread (auto)``."""
    choice = getattr(model, "thread_choice", None)
    count = choice.threads if choice is not None else asked
    if count in (None, "auto"):
        return "the runtime's default model threads"
    return f"{count} model thread{'s' if count > 1 else ''}" + (" (auto)" if choice else "")


def _frame_size(source) -> tuple[int, int]:
    if isinstance(source, SyntheticSource):
        return source.width, source.height
    return (int(source.capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(source.capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))


def _window(log: Callable[[str], None]):
    """The window (q/Esc quit, space pause, s snapshot: see edgepilot/live/window.py), or None when
    this OpenCV has no windows (the headless build): then the page opens in the browser."""
    from edgepilot.live.window import open_window

    return open_window(log)


def check_record_path(path: str | Path) -> Path:
    """Refuse a recording target that cannot work before any model or camera is opened."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"record= '{path}' is a folder: give a file name, e.g. "
                         f"{target}/out.mp4")
    if target.suffix.lower() not in CONTAINERS:
        raise InputError(f"record= '{path}': use a .mp4 name, or .mkv / .avi, which stay "
                         "playable even if the process is killed")
    folder = target.parent
    if not folder.is_dir():
        raise InputError(f"Folder does not exist for record= '{path}': create it first")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise InputError(f"Cannot write record= '{path}': no write permission")
    return target


class Recorder:
    """A video file that counts what was really written and fails loudly when writing fails.

    `frames` is the number of frames the encoder accepted; `close()` finalises the file and
    checks that it can be read back."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        self.path = check_record_path(path)
        self.frames = 0
        self.closed = False
        # A failed write is reported once, by RecordingError, not by a warning per frame.
        self._log_level = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(
            *CONTAINERS[self.path.suffix.lower()]), fps, size)
        if not self.writer.isOpened():
            self.release()
            raise RecordingError(f"Cannot create the video '{path}': is the disk full or "
                                 "the file locked?")

    def write(self, frame_bgr) -> None:
        # OpenCV >= 5 reports a failed write (full disk, file size limit) as False; older
        # versions return None, and close() finds the loss instead.
        if self.writer.write(frame_bgr) is False:
            raise RecordingError(f"Writing the video '{self.path}' failed after {self.frames} "
                                 "frames: is the disk full?")
        self.frames += 1

    def release(self) -> None:
        """Finalise the file (once)."""
        if not self.closed:
            self.closed = True
            self.writer.release()
            cv2.utils.logging.setLogLevel(self._log_level)

    def close(self) -> None:
        """Finalise the file, then check that it holds what was written."""
        if self.closed:
            return
        self.release()
        if not self.frames:
            return
        from edgepilot.runtime.backend import quiet_native_stderr

        with quiet_native_stderr():  # FFmpeg's own notes on a damaged file; the error says it
            video = cv2.VideoCapture(str(self.path))
            try:
                readable = video.isOpened() and video.read()[0]
                counted = video.get(cv2.CAP_PROP_FRAME_COUNT) if readable else 0
            finally:
                video.release()
        # MP4 states its frame count exactly; other containers estimate it from the duration.
        exact = self.path.suffix.lower() == ".mp4"
        if not readable or (exact and counted < self.frames):
            raise RecordingError(f"The video '{self.path}' is damaged after {self.frames} "
                                 "frames were written: is the disk full?")


def summary(state: LiveState, decisions: Counter) -> str:
    """The closing line of a run: frames shown (what --frames counts) and how many the model
    ran on, decisions over the shown frames, latencies (p50 of the last frames) and CPU."""
    def p50(name: str) -> str:
        values = sorted(state.timings.get(name, ()))
        return f"{1000 * values[len(values) // 2]:.1f} ms" if values else "-"

    made = ", ".join(f"{decision} {count}" for decision, count in decisions.most_common()
                     if decision != "-")
    return (f"processed {state.shown} frames ({state.processed} run through the model), "
            f"{state.fps:.1f} FPS; inference p50 {p50('inference')}, capture to output p50 "
            f"{p50('latency')}; {state.cores_busy:.1f} cores busy"
            + (f"; decisions: {made}" if made else ""))


@contextlib.contextmanager
def _stop_on_signals():
    """While the live loop runs, SIGINT/SIGTERM/SIGHUP ask it to stop at the next frame (so the
    recording is finalised); a second one stops at once. Yields the list of signals seen."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # handlers can only be set from the main thread
        return

    def on_signal(signum, frame):
        received.append(signum)
        if len(received) > 1:
            raise Stopped(signum, reported=False)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_webcam(model_spec: str = "stoplight", *, source: str = "synthetic",
               roi: str | None = None, smooth: int = 5, serve: str | None = None,
               headless: bool = False, frames: int | None = None, record: str | None = None,
               threads: int | str | None = "auto", token: str | None = None,
               accelerator: str | None = None, log: Callable[[str], None] = print,
               save: str | None = None) -> LiveState:
    """Run the live demo; returns the final state (with timings) when it ends.

    `frames` stops after that many frames reached the output (a recording of N frames holds
    N). `threads` (model threads) is chosen by measurement by default (see `edgepilot.load`),
    and the runtime's idle workers do not spin: frames come at the camera's pace, and workers
    that spin between them keep their cores busy for nothing. A signal (Ctrl-C, SIGTERM)
    finalises the recording and then raises `Stopped`. `token`: the page requires it (see
    `LiveServer`); its address, printed, carries it. `record`: the annotated video file
    (``save=`` is its old name, accepted with a DeprecationWarning). `accelerator`: the Coral
    that runs an _edgetpu.tflite (see `edgepilot.load`). The state returned holds the
    decisions over the shown frames."""
    import edgepilot
    from edgepilot.assets import resolve_model
    from edgepilot.live.web import LiveServer, parse_address

    if save is not None:
        import warnings

        warnings.warn("run_webcam(save=...) is now record=...; save= will be removed in the "
                      "next release", DeprecationWarning, stacklevel=2)
        record = record or save
    if headless and frames is None and record is None:
        raise InputError("headless=True needs frames=N or record=FILE (or both)")
    if record:
        check_record_path(record)  # before loading anything
    address = parse_address(serve) if serve else None
    model = edgepilot.load(resolve_model(model_spec), threads=threads, spin=False,
                           **({"accelerator": accelerator} if accelerator else {}))
    detector = model.meta is not None and model.meta.is_detector
    src = open_source(source, **({"scene": "street"} if detector else {}))
    size = _frame_size(src)
    server = recorder = show = None
    try:
        region = parse_roi(roi, *size)
        with _stop_on_signals() as signals:
            recorder = Recorder(record, src.fps, size) if record else None
            if not headless and not address:
                show = _window(log)
            fallback = not headless and not address and show is None
            if address or fallback:
                server = LiveServer(*(address or ("127.0.0.1", 0)), token=token,
                                    log=log).start()
                if fallback:  # OpenCV without windows: the page, in the user's browser
                    from edgepilot.live.window import open_page

                    open_page(server.page_url, log)
                else:
                    log(f"serving the live page on {server.page_url}  (Ctrl-C to stop)")
            quit_requested = []
            decisions: Counter = Counter()  # shown frames per decision, for the summary

            def on_frame(frame, state: LiveState) -> None:
                decisions[state.decision or "-"] += 1
                if recorder is not None:
                    recorder.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                if server is not None:
                    server.publish(frame, state.public())
                if show is not None and show(frame, state):
                    quit_requested.append(True)

            if record and frames is None and recorder.path.suffix.lower() == ".mp4":
                log("note: an .mp4 is playable once finalised (at the end, Ctrl-C, SIGTERM); "
                    "record to .mkv to keep every frame even if the process is killed")
            log(f"{model.path.name} on {source} ({size[0]}x{size[1]}), {model.backend}, "
                f"{threads_used(model, threads)}"
                + (f", recording to {record}" if record else ""))
            with FrameGrabber(src) as grabber:
                state = run_live(model, grabber, roi=region, smooth=smooth, frames=frames,
                                 on_frame=on_frame,
                                 stop=lambda: bool(quit_requested or signals))
        if recorder is not None:
            recorder.close()
        saved = f"; {recorder.frames} frames recorded in {record}" if recorder else ""
        if signals:
            name = "Ctrl-C" if signals[0] == signal.SIGINT else signal.Signals(signals[0]).name
            log(f"stopped ({name}) after {state.shown} frames{saved}")
            raise Stopped(signals[0])
        if grabber.ended and not grabber.finished_normally:
            raise SourceError(f"{source}: {grabber.ended}{saved}")
        state.decisions = dict(decisions.most_common())
        log(summary(state, decisions) + saved)
        return state
    finally:
        src.close()  # the grabber closes it too; this covers failures before it started
        if recorder is not None:
            recorder.release()  # finalises the file whatever happened
        if server is not None:
            server.close()
        if show is not None:
            show.close()
