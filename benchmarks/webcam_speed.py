"""The live demo on the synthetic 640x480 source, for the shipped model as fp32 ONNX, int8
ONNX and int8 TFLite: FPS, the share of the inference thread's time spent outside the model,
capture-to-overlay latency, and what every other stage costs per frame.

Each model runs in two pipelines, interleaved in one run so they share the machine's state:

    pipeline    edgepilot's live loop: capture+prepare | inference | overlay+output threads
    one-thread  the same steps in one loop (newest frame -> prepare -> model -> overlay)

and two paces: `camera` delivers 30 frames/s as a webcam does (what a user sees); `flat-out`
delivers as fast as the scene renders (the ceiling). The output is the --serve web page with
one viewer connected, as on a headless Raspberry Pi; JPEG encoding happens in the viewer's
thread and is not counted in any column.

Every row reports the process's CPU use (CPU seconds / wall seconds, all threads: 1.0 is one
core kept busy), the energy proxy on a phone or a Pi.

Then the defaults, headless at camera pace as `edgepilot webcam --headless --frames N` runs:
the old ones (cores - 1 model threads, onnxruntime's workers spinning) against the new ones
(threads="auto", no spinning), on the cores this machine has and on as many as `--cores`
makes the code believe it has (16 by default: the sweep and the old default see 16 cores;
the OS still runs them on the real ones).

A last figure: with a display that takes 50 ms a frame and a 100 frames/s source, how many
frames the model still ran on and how many the display got (the tests check that a slow
display does not hold up inference, by events; how much gets through is a speed figure).

    python benchmarks/webcam_speed.py [--frames 300] [--threads auto] [--cores 16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

import edgepilot
from edgepilot.assets import shipped_model
from edgepilot.live.camera import FrameGrabber, SyntheticSource
from edgepilot.live.loop import LiveState, annotate, decide, model_input, run_live
from edgepilot.live.web import LiveServer
from edgepilot.runtime import threads as auto
from edgepilot.runtime.model import output_scores
from edgepilot.train.checkpoint import load_checkpoint
from edgepilot.train.datasets import load_dataset


def models(folder: Path) -> dict[str, str]:
    net, meta, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    val = load_dataset("stoplight", "val", 300, meta.input_size)
    files = {"onnx fp32 (shipped)": str(shipped_model())}
    for report in edgepilot.export(net, torch.zeros(meta.input_shape), formats=["onnx", "tflite"],
                                   precision="int8", out=folder / "stoplight", meta=meta,
                                   data=val, quiet=True):
        files[f"{report.format} int8"] = report.path
    return files


class Viewer:
    """A browser stand-in: reads the MJPEG stream so the server encodes every frame."""

    def __init__(self, url: str):
        self.stopped = False
        self.thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self.thread.start()

    def _read(self, url: str) -> None:
        with urllib.request.urlopen(url + "stream.mjpg", timeout=10) as stream:
            while not self.stopped:
                stream.read(65536)


def one_thread(model, grabber: FrameGrabber, frames: int, on_frame) -> LiveState:
    """The baseline: every step in one loop, as the live demo did before it was pipelined."""
    prepare, state = model_input(model), LiveState()
    timings, last, started = state.timings, 0, time.perf_counter()
    cpu_started = time.process_time()
    while state.processed < frames:
        got = grabber.latest(after=last)
        if got is None:
            break
        last = got.frame_id
        t0 = time.perf_counter()
        x = prepare(got.frame)
        t1 = time.perf_counter()
        raw = model(x)
        t2 = time.perf_counter()
        scores = output_scores(raw, model.meta)
        state.label = model.meta.labels[scores.index(max(scores))]
        state.decision = decide(state.label)
        annotate(got.frame, state)
        t3 = time.perf_counter()
        on_frame(got.frame, state)
        state.processed += 1
        timings["prepare"].append(t1 - t0)
        timings["inference"].append(t2 - t1)
        timings["stage"].append(t3 - t0)  # the one thread's whole work on the frame
        timings["latency"].append(t3 - got.captured_at)
    timings["wall"] = time.perf_counter() - started
    timings["cpu"] = time.process_time() - cpu_started
    return state


def per_frame(timings, name: str) -> float:
    """Mean seconds per frame of one timing (over the last TIMING_WINDOW frames)."""
    values = timings[name]
    return float(np.mean(values)) if len(values) else 0.0


def measure(path: str, design: str, paced: bool, frames: int, threads) -> dict:
    model = edgepilot.load(path, threads=threads, spin=False)
    server = LiveServer("127.0.0.1", 0).start()
    viewer = Viewer(server.url)

    def publish(frame, state):
        server.publish(frame, state.public())

    try:
        with FrameGrabber(SyntheticSource(fps=30.0), pace=paced) as grabber:
            if design == "pipeline":
                state = run_live(model, grabber, smooth=5, frames=frames, on_frame=publish)
            else:
                state = one_thread(model, grabber, frames, publish)
    finally:
        viewer.stopped = True
        server.close()
    # Totals from per-frame means times frame counts: the timings keep a bounded window.
    t = {k: np.asarray(v) for k, v in state.timings.items() if k not in ("wall", "cpu")}
    mean = {k: per_frame(state.timings, k) for k in t}
    shown = state.shown if design == "pipeline" else state.processed
    work = state.processed * mean["stage"] + shown * (mean["overlay"] + mean["output"])
    if design == "pipeline":
        work += state.processed * mean["prepare"]  # in the capture thread, not in "stage"
    p50 = {k: float(np.median(v) * 1000) if v.size else 0.0 for k, v in t.items()}
    return {"fps": state.processed / state.timings["wall"],
            "cores": state.timings["cpu"] / state.timings["wall"],
            "outside": 1 - mean["inference"] / mean["stage"],
            "share_all": state.processed * mean["inference"] / work, **p50,
            "lat50": float(np.percentile(t["latency"], 50) * 1000),
            "lat90": float(np.percentile(t["latency"], 90) * 1000)}


def with_cores(cores: int | None):
    """Make the code see `cores` cores (the sweep, and the old cores - 1 default)."""
    real = auto.available_cores
    auto.available_cores = (lambda: cores) if cores else real
    return real


def defaults(path: str, frames: int, cores: int | None) -> list[tuple[str, dict]]:
    """Headless at camera pace: the old defaults against the new, with `cores` seen."""
    real = with_cores(cores)
    try:
        seen = auto.available_cores()
        rows = []
        for name, threads, spin in ((f"old: {max(1, seen - 1)} thr, spinning",
                                     max(1, seen - 1), None),
                                    ("new: auto, no spinning", "auto", False)):
            with tempfile.TemporaryDirectory() as cache:  # auto measures afresh
                os.environ["XDG_CACHE_HOME"] = cache
                model = edgepilot.load(path, threads=threads, spin=spin)
                choice = model.thread_choice
                if choice:
                    name += f" -> {choice.threads}"
                with FrameGrabber(SyntheticSource(fps=30.0), pace=True) as grabber:
                    state = run_live(model, grabber, smooth=5, frames=frames)
            lat = np.asarray(state.timings["latency"]) * 1000
            rows.append((name, {"fps": state.processed / state.timings["wall"],
                                "cores": state.timings["cpu"] / state.timings["wall"],
                                "inf": float(np.median(state.timings["inference"]) * 1000),
                                "lat50": float(np.percentile(lat, 50)),
                                "lat90": float(np.percentile(lat, 90))}))
        return rows
    finally:
        auto.available_cores = real
        os.environ.pop("XDG_CACHE_HOME", None)


def slow_display(path: str, threads) -> tuple[int, int]:
    """(frames the model ran on, frames shown) of 100 at 100 frames/s, 50 ms per display."""
    model = edgepilot.load(path, threads=threads)
    with FrameGrabber(SyntheticSource(frames=100), pace=True, rate=100) as grabber:
        state = run_live(model, grabber, on_frame=lambda f, s: time.sleep(0.05))
    return state.processed, state.shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--threads", default="auto",
                        help="model threads for the design rows (a number or auto)")
    parser.add_argument("--cores", type=int, default=16,
                        help="cores the code is made to see for the defaults rows")
    args = parser.parse_args()
    if args.threads != "auto":
        args.threads = int(args.threads)
    print(__doc__.split("\n\n")[0].replace("\n", " "))
    print(f"\n{args.frames} frames per row, model threads {args.threads}, smooth 5. Columns: "
          "FPS; outside = inference thread's time outside the model call; inf/stage/prep/"
          "overlay = p50 ms per frame; inf/all = model time / all pipeline work (camera "
          "rendering and JPEG encoding excluded); latency capture->overlay p50/p90 ms; "
          "CPU = the process's CPU time / wall time, in cores (rendering, JPEG included).\n")
    with tempfile.TemporaryDirectory() as tmp:
        files = models(Path(tmp))
        header = (f"{'model':<20}{'design':<12}{'pace':<10}{'FPS':>7}{'outside':>9}{'inf':>7}"
                  f"{'stage':>7}{'prep':>7}{'overlay':>8}{'inf/all':>8}{'lat p50':>8}"
                  f"{'p90':>7}{'CPU':>7}")
        print(header)
        print("-" * len(header))
        for name, path in files.items():
            for paced in (True, False):
                for design in ("pipeline", "one-thread"):
                    r = measure(path, design, paced, args.frames, args.threads)
                    print(f"{name:<20}{design:<12}{'camera' if paced else 'flat-out':<10}"
                          f"{r['fps']:>7.1f}{100 * r['outside']:>8.1f}%{r['inference']:>7.3f}"
                          f"{r['stage']:>7.3f}{r['prepare']:>7.3f}{r['overlay']:>8.3f}"
                          f"{100 * r['share_all']:>7.1f}%{r['lat50']:>8.2f}{r['lat90']:>7.2f}"
                          f"{r['cores']:>7.2f}")
        shipped = files["onnx fp32 (shipped)"]
        print(f"\ndefaults, headless, camera pace, {args.frames} frames (shipped model)")
        print(f"{'cores seen':<12}{'defaults':<34}{'FPS':>7}{'CPU':>7}{'inf':>7}"
              f"{'lat p50':>9}{'p90':>7}")
        for cores in dict.fromkeys((auto.available_cores(), args.cores)):
            for name, r in defaults(shipped, args.frames, cores):
                print(f"{cores:<12}{name:<34}{r['fps']:>7.1f}{r['cores']:>7.2f}"
                      f"{r['inf']:>7.3f}{r['lat50']:>9.2f}{r['lat90']:>7.2f}")
        processed, shown = slow_display(shipped, args.threads)
        print(f"\nslow display (50 ms a frame), 100 frames at 100/s: the model ran on "
              f"{processed}, the display showed {shown} (the newest each time)")


if __name__ == "__main__":
    main()
