"""The stoplight detector's figures: mAP per format and precision, agreement with PyTorch, and
the live demo's speed with the int8 file on 320x240 frames.

    python benchmarks/detector.py [--checkpoint runs/stoplight_detector/stoplight_detector.pt]
                                  [--scenes 2000] [--resamples 50] [--frames 300]
                                  [--splits val holdout] [--precisions fp32 int8]
                                  [--out DIR | --files DIR]

1. Exports the checkpoint (the shipped one by default) to ONNX and TFLite, fp32 and int8 (the
   accuracy guard measures mAP@0.5 on validation scenes), or, with `--files DIR`, takes the
   four files `edgepilot export CKPT --format onnx tflite --precision fp32 int8` wrote there.
2. On `--scenes` held-out scenes of training's families ("val") and as many made only of the
   families training never saw ("holdout"): mAP@0.5 per state and mean, mAP@0.5:0.95, and
   mAP@0.5 of small lights (< 24 px tall), for PyTorch and each file through edgepilot's
   runtime (`Model.detect`, letterboxing and decoding included).
3. Each file's mAP@0.5 drop against PyTorch, with its spread: the scenes are resampled
   with replacement (`--resamples` times, PyTorch and the file on the same draw) and the
   standard deviation and 5-95% range of the drop printed beside it. Half a mAP point is one
   or two lights in 500 scenes: on 500 scenes the drop's spread is about as large as the
   budget it is held to, hence 2,000 scenes by default.
4. Agreement of each file with PyTorch at the runtime's score threshold: the share of
   PyTorch's detections the file also makes with the same label and every box edge within
   2 px.
5. The live loop (`edgepilot webcam`'s pipeline, headless) on the synthetic street at
   320x240, int8 TFLite: at camera pace (30 frames/s) and flat out; FPS, inference time and
   the process's CPU use.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import edgepilot
from edgepilot.assets import shipped_model
from edgepilot.live.camera import FrameGrabber, SyntheticSource
from edgepilot.live.loop import run_live
from edgepilot.runtime.detection_metrics import agreement
from edgepilot.train.checkpoint import load_checkpoint
from edgepilot.train.detector import SMALL, detect_batch, summarise, validation_scenes


def export_files(net, meta, folder: Path, precisions=("fp32", "int8")) -> dict[str, str]:
    val = validation_scenes("val", 200)
    files = {}
    for precision in precisions:
        for report in edgepilot.export(net, torch.zeros(meta.input_shape),
                                       formats=["onnx", "tflite"], precision=precision,
                                       out=folder / "stoplight_detector", meta=meta,
                                       data=val, quiet=True):
            files[f"{report.format} {precision}"] = report.path
            print(f"  {Path(report.path).name}: {report.size_bytes / 1024:.1f} KiB, "
                  f"guard mAP@0.5 torch {report.accuracy_torch:.4f} -> "
                  f"{report.accuracy_export:.4f}, kept float: "
                  f"{len(report.notes.get('kept_float', []))}")
    return files


def file_detections(path: str, images: np.ndarray, threshold: float | None = None):
    model = edgepilot.load(path, threads=2)
    return [model.detect(image, score_threshold=threshold) for image in images]


def drop_spread(reference, found, truths, labels, resamples: int, seed: int = 0) -> dict:
    """mAP@0.5 points lost against `reference` on resampled scenes (paired: both on each draw):
    standard deviation and 5-95% range."""
    rng = np.random.default_rng(seed)
    drops = []
    for _ in range(resamples):
        pick = rng.integers(0, len(truths), len(truths))
        chosen = [truths[i] for i in pick]
        drops.append(100 * (summarise([reference[i] for i in pick], chosen, labels)["map50"]
                            - summarise([found[i] for i in pick], chosen, labels)["map50"]))
    low, high = np.percentile(drops, [5, 95])
    return {"sd": round(float(np.std(drops)), 3), "p5": round(float(low), 3),
            "p95": round(float(high), 3), "resamples": resamples}


def live(path: str, frames: int, pace: float | None) -> dict:
    model = edgepilot.load(path)
    source = SyntheticSource(width=320, height=240, fps=pace or 30.0, scene="street")
    with FrameGrabber(source, pace=pace is not None) as grabber:
        started, cpu = time.perf_counter(), time.process_time()
        state = run_live(model, grabber, frames=frames, smooth=5)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    inference = np.array(state.timings["inference"]) * 1000
    return {"fps": round(state.processed / wall, 1), "shown": state.shown,
            "inference_ms_p50": round(float(np.median(inference)), 2),
            "cores_busy": round(cpu / wall, 2), "decision": state.decision,
            "reason": state.reason, "backend": model.backend}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--resamples", type=int, default=50,
                        help="bootstrap draws for the spread of each file's drop (0: none)")
    parser.add_argument("--frames", type=int, default=300,
                        help="frames per live run (0: no live figures)")
    parser.add_argument("--out", default=None, help="keep the exported files here")
    parser.add_argument("--files", default=None,
                        help="folder with stoplight_detector{,_int8}.{onnx,tflite} already "
                             "exported from the checkpoint: measure those, export nothing")
    parser.add_argument("--splits", nargs="*", choices=("val", "holdout"),
                        default=["val", "holdout"],
                        help="which scenes to measure on (none: only the live figures)")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "int8"),
                        default=["fp32", "int8"], help="which files to measure (the live "
                        "figures need int8)")
    args = parser.parse_args()
    if args.frames < 0:
        parser.error(f"--frames must be 0 (no live figures) or more, got {args.frames}")
    if args.files and args.out:
        parser.error("--out keeps the files this run exports, --files measures files already "
                     "exported: give one")
    checkpoint = args.checkpoint or shipped_model("stoplight-detector", ".pt")
    net, meta, _ = load_checkpoint(checkpoint)
    if args.files:
        folder = Path(args.files)
        files = {f"{fmt} {precision}": str(folder / f"stoplight_detector{suffix}.{fmt}")
                 for fmt in ("onnx", "tflite")
                 for precision, suffix in (("fp32", ""), ("int8", "_int8"))
                 if precision in args.precisions}
        if not args.splits:  # the live figures alone run the int8 TFLite file only
            files = {name: path for name, path in files.items() if name == "tflite int8"}
        missing = [path for path in files.values() if not Path(path).is_file()]
        if missing:
            raise SystemExit(f"--files {folder}: missing {', '.join(missing)}; export the "
                             f"checkpoint there first")
        print(f"measuring the files in {folder} against {checkpoint}")
    else:
        folder = Path(args.out or tempfile.mkdtemp(prefix="detector-bench-"))
        folder.mkdir(parents=True, exist_ok=True)
        print(f"exporting {checkpoint} -> {folder}")
        files = export_files(net, meta, folder, args.precisions)
    results = {}
    for split in args.splits:
        images, truths = validation_scenes(split, args.scenes)
        n_small = sum(int(((b[:, 3] - b[:, 1]) < SMALL).sum()) for b, _ in truths)
        print(f"\n{split}: {len(images)} scenes, {sum(len(c) for _, c in truths)} lights "
              f"({n_small} under {SMALL:.0f} px)")
        torch_found = detect_batch(net, images, meta)
        rows = {"pytorch": summarise(torch_found, truths, meta.labels)}
        strict = meta.extra["decode"]["score_threshold"]
        torch_strict = [[d for d in found if d.score >= strict] for found in torch_found]
        for name, path in files.items():
            found = file_detections(path, images, threshold=0.05)
            rows[name] = summarise(found, truths, meta.labels)
            shown = [[d for d in f if d.score >= strict] for f in found]
            rows[name]["agreement"] = agreement(torch_strict, shown)
            rows[name]["drop_points"] = round(
                100 * (rows["pytorch"]["map50"] - rows[name]["map50"]), 3)
            if args.resamples and "int8" in name:
                rows[name]["drop_spread"] = drop_spread(torch_found, found, truths, meta.labels,
                                                        args.resamples)
        for name, row in rows.items():
            ap = " ".join(f"{k} {v:.3f}" for k, v in row["ap50"].items())
            extra = ""
            if "agreement" in row:
                a = row["agreement"]
                extra = f"  agree {100 * a['agree']:.1f}% (max {a['max_box_px']} px)"
                extra += f"  drop {row['drop_points']:.2f}"
                if "drop_spread" in row:
                    spread = row["drop_spread"]
                    extra += (f" (sd {spread['sd']:.2f}, 5-95% {spread['p5']:.2f}.."
                              f"{spread['p95']:.2f})")
            print(f"  {name:12s} mAP@0.5 {row['map50']:.4f} ({ap})  mAP@0.5:0.95 "
                  f"{row['map50_95']:.4f}  small {row['small_map50']:.4f}{extra}")
        results[split] = rows
    live_runs = "tflite int8" in files and args.frames > 0
    print("\nlive, int8 TFLite, synthetic street 320x240:" if live_runs else "")
    for pace in (30.0, None) if live_runs else ():
        row = live(files["tflite int8"], args.frames, pace)
        results[f"live {'camera' if pace else 'flat-out'}"] = row
        print(f"  {'camera pace' if pace else 'flat out':11s} {row['fps']:6.1f} FPS  "
              f"inference p50 {row['inference_ms_p50']} ms  CPU {row['cores_busy']} cores  "
              f"({row['decision']}: {row['reason']}; {row['backend']})")
    (folder / "detector_bench.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"\nfigures in {folder / 'detector_bench.json'}")


if __name__ == "__main__":
    main()
