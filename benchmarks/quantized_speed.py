"""fp32 vs int8 latency, side by side, on both backends (onnxruntime and LiteRT).

Models: the shipped stoplight classifier (64x64) and the MobileNet-style network (width 1.0)
at 224x224. Each file is loaded once; rounds are interleaved (every model runs once per round,
in a rotated order) so drift in machine load hits all alike; inputs are prepared outside the
timed region. Prints p50 per file and the fp32/int8 speed-up per backend, the int8 ONNX
layout the exporter chose by timing every one on this CPU (QDQ or QOperator, int8 or uint8
activations, per-channel or per-tensor weights), and the accuracy guard's verdict (default
budget, 1 point, on 200 validation images; the MobileNet is untrained, so its accuracy is
chance and what matters is that int8 keeps it).

    python benchmarks/quantized_speed.py [--rounds 30] [--runs 20] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import edgepilot
from edgepilot.assets import shipped_model
from edgepilot.meta import ModelMeta
from edgepilot.train.checkpoint import load_checkpoint
from edgepilot.train.datasets import load_dataset
from edgepilot.train.models import create_model


def export_all(out: Path) -> dict[str, dict[tuple[str, str], str]]:
    net, meta, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    mobilenet = create_model("mobilenet", width=1.0, num_classes=4).eval()
    mobile_meta = ModelMeta(name="mobilenet", labels=meta.labels, input_size=(224, 224),
                            mean=meta.mean, std=meta.std)
    files = {}
    for name, model, model_meta in (("stoplight", net, meta),
                                    ("mobilenet_224", mobilenet, mobile_meta)):
        calib = load_dataset("stoplight", "val", 200, model_meta.input_size)
        reports = edgepilot.export(model, torch.zeros(1, 3, *model_meta.input_size),
                                   formats=["onnx", "tflite"], precision=["fp32", "int8"],
                                   out=out / name, meta=model_meta, calib=calib[0],
                                   data=calib, quiet=True)
        files[name] = {(r.format, r.precision): r.path for r in reports}
        for r in reports:
            if r.precision == "int8":
                settings = r.notes.get("int8_settings", {})
                print(f"{name} {r.format} int8: accuracy {100 * r.accuracy_torch:.1f}% -> "
                      f"{100 * r.accuracy_export:.1f}%, top-1 agreement "
                      f"{100 * r.top1_agreement:.1f}%, {len(r.notes.get('kept_float', []))} "
                      f"layer(s) kept float" + (f"; layout {settings['chosen']} "
                                                f"({settings['chosen_by']})"
                                                if "chosen" in settings else ""))
                for layout, ms in settings.get("ms_1_thread", {}).items():
                    print(f"    {layout:<58}{ms:8.3f} ms (fp32 {settings['fp32_ms']:.3f})")
    return files


def measure(files: dict, rounds: int, runs: int, threads: int) -> dict:
    models = {(name, fmt, prec): edgepilot.load(path, threads=threads)
              for name, paths in files.items() for (fmt, prec), path in paths.items()}
    inputs = {}
    for key, model in models.items():
        image = np.random.default_rng(0).integers(0, 256, (*model.meta.input_size, 3), np.uint8)
        inputs[key] = edgepilot.runtime.preprocess(image, model.meta)
        for _ in range(5):  # warm-up, not timed
            model(inputs[key])
    times: dict = {key: [] for key in models}
    keys = list(models)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            model, x = models[key], inputs[key]
            started = time.perf_counter()
            for _ in range(runs):
                model(x)
            times[key].append((time.perf_counter() - started) / runs)
    return {key: statistics.median(t) * 1000 for key, t in times.items()}, models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = export_all(Path(tmp))
        for threads in args.threads:
            p50, models = measure(files, args.rounds, args.runs, threads)
            print(f"\nthreads={threads}, {args.rounds} interleaved rounds x {args.runs} runs, "
                  "p50 ms per inference")
            print(f"{'model':<15}{'backend':<8}{'fp32 ms':>10}{'int8 ms':>10}{'fp32/int8':>11}")
            for name in files:
                for fmt in ("onnx", "tflite"):
                    fp32, int8 = p50[name, fmt, "fp32"], p50[name, fmt, "int8"]
                    print(f"{name:<15}{fmt:<8}{fp32:>10.3f}{int8:>10.3f}{fp32 / int8:>10.2f}x")
    for key, model in models.items():
        print(f"  {'/'.join(key)}: {model.backend}")


if __name__ == "__main__":
    main()
