#!/usr/bin/env python3
"""Run this bundle's model: classify images, run the live demo, or benchmark it here.

    python run.py photo.jpg [more.jpg ...] [--json]
    python run.py --source synthetic --frames 30 [--json]     # the live loop, no screen
    python run.py --serve 0.0.0.0:8080 [--source 0|video.mp4|rtsp://...|synthetic]
    python run.py --bench [--runs 200] [--threads N] --json
"""
# `edgepilot deploy` copies this module into every bundle as run.py, beside bundle.json and
# the edgepilot/ folder it imports from. It imports edgepilot only inside functions, after
# the bundle's folder is on the import path.

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def threads_arg(text: str):
    return "auto" if text == "auto" else int(text)


def parser_for(bundle: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", help="images to classify")
    parser.add_argument("--model", default=bundle["models"][0], choices=bundle["models"],
                        help="which of the bundle's models (default: %(default)s)")
    parser.add_argument("--threads", type=threads_arg, default=bundle["threads"],
                        help="model threads, or auto: measured here at first load, then "
                             "cached (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--serve", nargs="?", const="127.0.0.1:8080", default=None,
                        metavar="HOST:PORT", help="live demo as a web page (default address "
                        "%(const)s; 0.0.0.0:PORT to reach it from the network)")
    parser.add_argument("--token", default=os.environ.get("EDGEPILOT_TOKEN"),
                        help="with --serve: requests must carry ?token=TEXT (default: "
                             "$EDGEPILOT_TOKEN)")
    parser.add_argument("--source", default=None,
                        help="live demo source: camera index, video file, rtsp:// URL or "
                             "synthetic (default with --serve: camera 0)")
    parser.add_argument("--frames", type=int, default=None,
                        help="stop the live demo after N frames (needed without --serve)")
    parser.add_argument("--bench", action="store_true", help="benchmark every model here")
    parser.add_argument("--runs", type=int, default=200,
                        help="timed runs per model with --bench (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None, here: Path = HERE) -> int:
    bundle = json.loads((here / "bundle.json").read_text())
    parser = parser_for(bundle)
    args = parser.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames takes 1 or more, got {args.frames}")

    from edgepilot.errors import EdgepilotError

    try:
        if args.bench:
            return bench(args, bundle, here)
        if args.serve or args.source is not None:
            return live(args, parser, here)
        if not args.images:
            parser.error("give images to classify, --source (with --frames), --serve or "
                         "--bench")
        return predict(args, bundle, here)
    except EdgepilotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM/SIGHUP ending the demo
        return 128 + int(getattr(err, "signum", 2))


def live(args, parser: argparse.ArgumentParser, here: Path) -> int:
    """The live demo: served as a page, or headless for `--frames` frames."""
    from edgepilot.live.webcam import run_webcam

    if not args.serve and args.frames is None:
        parser.error("--source without --serve runs headless: give --frames N")
    state = run_webcam(str(here / args.model), source=args.source or "0", serve=args.serve,
                       headless=not args.serve, frames=args.frames, threads=args.threads,
                       token=args.token, log=lambda m: print(m, file=sys.stderr, flush=True))
    summary = {"model": args.model, "source": args.source or "0", **state.public()}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['processed']} frames, last: {summary['label'] or '-'} "
              f"{summary['decision'] or ''}".rstrip())
    return 0


def predict(args, bundle: dict, here: Path) -> int:
    import edgepilot

    model = edgepilot.load(here / args.model, threads=args.threads,
                           **({"providers": bundle["providers"]}
                              if bundle["providers"] and args.model.endswith(".onnx") else {}))
    results, failed = [], 0
    for image in args.images:
        try:
            p = model.predict(image)
        except edgepilot.InputError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        if isinstance(p, list):  # a detector: the lights it found, best first
            results.append({"image": image, "detections": [d.to_dict() for d in p]})
            lines = [f"{d.label}\t{d.score:.3f}\t" + ",".join(str(round(v)) for v in d.box)
                     for d in p] or ["nothing found"]
        else:
            results.append({"image": image, **p.to_dict()})
            lines = [f"{p.label}\t{p.score:.3f}"]
        if not args.json:
            print("\n".join(f"{image}\t{line}" for line in lines))
    if args.json:
        print(json.dumps({"model": args.model, "backend": model.backend,
                          "predictions": results}, indent=2))
    return 1 if failed else 0


def bench(args, bundle: dict, here: Path) -> int:
    import edgepilot
    from edgepilot.bench_report import to_json
    from edgepilot.devices import detect_host

    results = edgepilot.benchmark([here / m for m in bundle["models"]], threads=[args.threads],
                                  runs=args.runs)
    report = {**to_json(results), "host": detect_host().to_dict()}
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))  # edgepilot's runtime modules, shipped beside this script
    sys.exit(main())
