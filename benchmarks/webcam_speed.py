"""The live loop on the synthetic 640x480 source: FPS, share of loop time outside inference,
and capture-to-overlay latency, for the shipped model as fp32 ONNX, int8 ONNX and int8 TFLite.

Two modes per model: `camera` paces the source at 30 frames/s as a webcam does (latency is
what a user sees); `flat-out` reads as fast as the source renders (the loop's ceiling).

    python benchmarks/webcam_speed.py [--frames 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import edgepilot
from edgepilot.assets import shipped_model
from edgepilot.runtime.camera import FrameGrabber, SyntheticSource
from edgepilot.runtime.live import run_live
from edgepilot.train.checkpoint import load_checkpoint
from edgepilot.train.datasets import load_dataset


def models(folder: Path) -> dict[str, str]:
    net, meta, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    val = load_dataset("stoplight", "val", 300, meta.input_size)
    files = {"onnx fp32 (shipped)": str(shipped_model())}
    for report in edgepilot.export(net, torch.zeros(meta.input_shape), formats=["onnx", "tflite"],
                                   precision="int8", out=folder / "stoplight", meta=meta,
                                   val_data=val, quiet=True):
        files[f"{report.format} int8"] = report.path
    return files


def measure(path: str, frames: int, threads: int, paced: bool) -> dict:
    model = edgepilot.load(path, threads=threads)
    source = SyntheticSource(fps=30.0)
    with FrameGrabber(source, pace=paced) as grabber:
        state = run_live(model, grabber, smooth=5, frames=frames)
    inference = np.asarray(state.timings["inference"])
    loop = np.asarray(state.timings["frame"])
    latency = np.asarray(state.timings["latency"]) * 1000
    return {"fps": state.processed / state.timings["wall"],
            "outside": 1 - inference.sum() / loop.sum(),
            "inference_ms": float(np.median(inference) * 1000),
            "loop_ms": float(np.median(loop) * 1000),
            "p50": float(np.percentile(latency, 50)), "p90": float(np.percentile(latency, 90))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = models(Path(tmp))
        print(f"synthetic 640x480, {args.frames} frames, smooth 5, threads {args.threads}")
        print(f"{'model':<22}{'mode':<10}{'FPS':>7}{'outside inf.':>14}{'inf ms':>8}"
              f"{'loop ms':>9}{'lat p50':>9}{'lat p90':>9}")
        for name, path in files.items():
            for paced in (True, False):
                r = measure(path, args.frames, args.threads, paced)
                mode = "camera" if paced else "flat-out"
                print(f"{name:<22}{mode:<10}{r['fps']:>7.1f}{100 * r['outside']:>13.1f}%"
                      f"{r['inference_ms']:>8.3f}{r['loop_ms']:>9.3f}{r['p50']:>9.2f}"
                      f"{r['p90']:>9.2f}")


if __name__ == "__main__":
    main()
