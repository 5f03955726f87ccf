"""`edgepilot webcam`: the live demo. A capture thread keeps the newest frame and prepares the
model input, an inference thread runs the model on it, and this thread draws the overlay and
sends it to a window, a web page (--serve) or a video file (see runtime/live.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2

from edgepilot.errors import EdgepilotError, InputError
from edgepilot.runtime.camera import FrameGrabber, SourceError, SyntheticSource, open_source
from edgepilot.runtime.live import LiveState, parse_roi, run_live

__all__ = ["run_webcam"]


def _frame_size(source) -> tuple[int, int]:
    if isinstance(source, SyntheticSource):
        return source.width, source.height
    return (int(source.capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(source.capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))


def _window() -> Callable:
    if not os.environ.get("DISPLAY") and os.name != "nt":
        raise EdgepilotError("No display here: use --serve HOST:PORT for a web page, or "
                             "--headless --frames N --save out.mp4")
    try:
        cv2.namedWindow("edgepilot", cv2.WINDOW_NORMAL)
    except cv2.error as err:
        raise EdgepilotError("This OpenCV build has no windows (opencv-python-headless): use "
                             "--serve, or pip install opencv-python") from err

    def show(frame_rgb, state) -> bool:
        cv2.imshow("edgepilot", cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
        return (cv2.waitKey(1) & 0xFF) in (ord("q"), 27)  # q or Esc quits

    return show


def _recorder(path: str, fps: float, size: tuple[int, int]):
    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"Folder does not exist for --save '{path}'")
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise EdgepilotError(f"Cannot write video '{path}': use an .mp4 or .avi name")
    return writer


def run_webcam(model_spec: str = "stoplight", *, source: str = "synthetic",
               roi: str | None = None, smooth: int = 5, serve: str | None = None,
               headless: bool = False, frames: int | None = None, save: str | None = None,
               threads: int | None = None, log: Callable[[str], None] = print) -> LiveState:
    """Run the live demo; returns the final state (with timings) when it ends.

    `threads` (model threads) defaults to one fewer than the cores: the capture thread
    prepares the next frame while the model runs, and a model thread pool that spins on every
    core would take its core away."""
    import edgepilot
    from edgepilot.assets import resolve_model
    from edgepilot.runtime.web import LiveServer, parse_address

    if headless and frames is None and save is None:
        raise InputError("--headless needs --frames N or --save FILE (or both)")
    if threads is None:  # the capture and overlay threads need a core too
        threads = max(1, (os.cpu_count() or 2) - 1)
    model = edgepilot.load(resolve_model(model_spec), threads=threads)
    address = parse_address(serve) if serve else None
    src = open_source(source)
    size = _frame_size(src)
    region = parse_roi(roi, *size)
    server = writer = show = None
    try:
        writer = _recorder(save, src.fps, size) if save else None
        if address:
            server = LiveServer(*address).start()
            log(f"serving the live page on {server.url}  (Ctrl-C to stop)")
        if not headless and not address:
            show = _window()
        quit_requested = []

        def on_frame(frame, state: LiveState) -> None:
            if writer is not None:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            if server is not None:
                server.publish(frame, state.public())
            if show is not None and show(frame, state):
                quit_requested.append(True)

        log(f"{model.path.name} on {source} ({size[0]}x{size[1]}), {model.backend}, "
            f"{threads} model thread{'s' if threads > 1 else ''}")
        with FrameGrabber(src) as grabber:
            try:
                state = run_live(model, grabber, roi=region, smooth=smooth, frames=frames,
                                 on_frame=on_frame, stop=lambda: bool(quit_requested))
            except KeyboardInterrupt:
                log("stopped (Ctrl-C)")
                return LiveState()
            if grabber.ended and not grabber.finished_normally:
                saved = f"; the {state.shown} frames recorded are saved in {save}" \
                    if save else ""
                raise SourceError(f"{source}: {grabber.ended}{saved}")
        log(f"processed {state.processed} frames, {state.fps:.1f} FPS")
        return state
    finally:
        src.close()  # the grabber closes it too; this covers failures before it started
        if writer is not None:
            writer.release()  # finalises the file whatever happened
        if server is not None:
            server.close()
        if show is not None:
            cv2.destroyAllWindows()
