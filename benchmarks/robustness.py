"""Robustness report of the stoplight classifier: accuracy per scene factor, PyTorch and int8.

Usage: python benchmarks/robustness.py [CHECKPOINT] [--val-size 4000] [--holdout-size 2000]
           [--files a_int8.onnx b_int8.tflite | --out DIR] [--json out.json]

Without --files, the checkpoint (default: the shipped model) is exported to int8 ONNX, TFLite
and ExecuTorch (calibrated on validation images, as `edgepilot export` does) into a temporary
folder.
The files run through edgepilot's own runtime, one image at a time, exactly as users run them.
Factors held out of training entirely are marked `held out` (target >= 95%, others >= 97%).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="stoplight .pt (default: the shipped one)")
    parser.add_argument("--val-size", type=int, default=4000)
    parser.add_argument("--holdout-size", type=int, default=2000)
    parser.add_argument("--files", nargs="*", help="exported files to score instead of exporting")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--out", help="folder for the exported int8 files (default: temporary)")
    args = parser.parse_args()

    import torch

    import edgepilot
    from edgepilot.assets import shipped_model
    from edgepilot.train.checkpoint import load_checkpoint
    from edgepilot.train.datasets import load_dataset
    from edgepilot.train.robustness import format_report, robustness_report
    from edgepilot.train.trainer import predict_logits

    started = time.perf_counter()
    net, meta, _ = load_checkpoint(args.checkpoint or shipped_model("stoplight", ".pt"))
    size = tuple(meta.input_size)
    files = args.files
    if files is None:
        out = Path(args.out or tempfile.mkdtemp(prefix="robustness-")) / "stoplight"
        val = load_dataset("stoplight", "val", 1000, size)
        reports = edgepilot.export(net, torch.zeros(1, 3, *size),
                                   formats=["onnx", "tflite", "executorch"], precision="int8",
                                   out=out, meta=meta, data=val, quiet=True)
        files = [r.path for r in reports]

    predictors = {"pytorch": lambda images: predict_logits(net, images, meta).argmax(1)}
    for path in files:
        model = edgepilot.load(path, threads=1)
        predictors[Path(path).name] = (
            lambda images, model=model: np.array([model.predict(im).index for im in images]))
    report = robustness_report(predictors, n_val=args.val_size, n_holdout=args.holdout_size,
                               size=size)
    print(format_report(report))
    base = report["overall"]["val"]["pytorch"]
    for name in report["models"][1:]:
        drop = 100 * (base - report["overall"]["val"][name])
        print(f"{name}: loses {drop:.2f} points against PyTorch overall (target <= 0.5)")
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
