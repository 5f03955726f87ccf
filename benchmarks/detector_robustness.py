"""Robustness report of the stoplight detector: recall and mAP@0.5 per scene factor.

Usage: python benchmarks/detector_robustness.py [CHECKPOINT] [--val-size 1000]
           [--holdout-size 500] [--files FILE...] [--classic] [--json out.json]

Scores the checkpoint (default: the shipped detector) in PyTorch, and each exported file given
with --files through edgepilot's runtime (one frame at a time, letterboxing and decoding
included, as users run them), on wide street scenes (`StreetConfig(wide=True)`: lights down to
9 px, cut by the frame's edge, sectioned housings, arrow lamps, low-resolution cameras) of
seeds no training run uses. Factors: light size, orientation, housing, lamp look, frame edge
(per light), lighting, background, blur, JPEG, resolution (per scene). The "holdout" split is
made only of the families training never sees (`buildings` backgrounds, dusk) and is marked
`held out`. --classic scores the scenes the first four training runs drew instead.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="detector .pt (default: the shipped one)")
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--holdout-size", type=int, default=500)
    parser.add_argument("--files", nargs="*", default=[], help="exported files to score too")
    parser.add_argument("--classic", action="store_true",
                        help="the classic scenes instead of the wide ones")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()

    import edgepilot
    from edgepilot.assets import shipped_model
    from edgepilot.draw.scenes import StreetConfig
    from edgepilot.train.checkpoint import load_checkpoint
    from edgepilot.train.detector import detect_batch
    from edgepilot.train.detector_robustness import detector_report, format_detector_report

    started = time.perf_counter()
    checkpoint = args.checkpoint or shipped_model("stoplight-detector", ".pt")
    net, meta, _ = load_checkpoint(checkpoint)
    detectors = {"pytorch": lambda images: detect_batch(net, images, meta)}
    for path in args.files:
        model = edgepilot.load(path)
        detectors[Path(path).name] = (
            lambda images, model=model: [model.detect(i, score_threshold=0.05) for i in images])
    threshold = meta.extra["decode"]["score_threshold"]
    report = detector_report(detectors, threshold=threshold, val_size=args.val_size,
                             holdout_size=args.holdout_size,
                             config=StreetConfig(wide=not args.classic))
    kind = "classic" if args.classic else "wide"
    print(f"{checkpoint}: {kind} scenes, a light is found by a detection of its state at "
          f"score >= {threshold} with IoU >= 0.5")
    print(format_detector_report(report))
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        report["checkpoint"] = str(checkpoint)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
