"""The end-to-end stoplight demo: checkpoint -> ONNX export with a parity report -> the
torch-free runtime predicting on freshly generated images, including scene families the
model never saw in training."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

__all__ = ["run_demo"]


def run_demo(out: Path, *, train: bool = False, n_images: int = 8, n_eval: int = 1000,
             log: Callable[[str], None] = print) -> dict:
    """Run the demo into `out` and return its summary (also saved as ``summary.json``)."""
    import edgepilot
    from edgepilot.assets import shipped_model
    from edgepilot.draw import stoplight
    from edgepilot.errors import require
    from edgepilot.train.checkpoint import load_checkpoint
    from edgepilot.train.datasets import HOLDOUT, RENDER_SIZE, scene_config
    from edgepilot.train.recipes import train_stoplight

    torch = require("torch", "export", "The end-to-end demo")

    out.mkdir(parents=True, exist_ok=True)
    if train:
        log("1/3 training the stoplight classifier")
        # the shipped model's first stage: the default recipe, one more 3x3 block at 1/16
        checkpoint = Path(train_stoplight(out, deepen=1, log=log)["checkpoint"])
    else:
        checkpoint = shipped_model("stoplight", ".pt")
        log(f"1/3 reusing the shipped checkpoint {checkpoint.name} (--train to train anew)")
    net, meta, payload = load_checkpoint(checkpoint)

    log("2/3 exporting to ONNX and checking it against PyTorch on 2,000 validation images")
    from edgepilot.train.datasets import load_dataset

    val = load_dataset("stoplight", "val", 2000, meta.input_size)
    sample = torch.zeros(meta.input_shape)
    [report] = edgepilot.export(net, sample, formats="onnx", out=out / "stoplight", meta=meta,
                                data=val)

    log("3/3 predicting with the runtime on new images at the generator's full size")
    model = edgepilot.load(report.path)
    results = {}
    for split in ("val", "holdout"):
        # Fresh seeds (not the export's validation set), full-size images: the runtime resizes.
        config = scene_config(split)
        images, labels = stoplight.generate(n_eval, seed=7_000_000 + len(split), config=config)
        started = time.perf_counter()
        predicted = [model.predict(img).index for img in images]
        per_image = (time.perf_counter() - started) / len(images)
        results[split] = {"accuracy": float(np.mean(np.asarray(predicted) == labels)),
                          "n": n_eval, "ms_per_image": round(per_image * 1000, 3)}
        if split == "val":
            samples = out / "samples"
            samples.mkdir(exist_ok=True)
            for i in range(n_images):
                path = samples / f"{i:02d}_{meta.labels[labels[i]]}.png"
                cv2.imwrite(str(path), cv2.cvtColor(images[i], cv2.COLOR_RGB2BGR))
                p = model.predict(path)
                log(f"   {path.name:<16} -> {p.label:<6} {p.score:.3f}")

    summary = {
        "checkpoint": str(checkpoint),
        "model": report.path,
        "backend": model.backend,
        "size_kib": round(report.size_bytes / 1024, 1),
        "onnx_max_abs_diff": report.max_abs_diff,
        "onnx_top1_agreement": report.top1_agreement,
        "accuracy_validation": results["val"],
        "accuracy_held_out_families": {**results["holdout"], "families": HOLDOUT},
        "render_size": RENDER_SIZE,
        "training_metrics": payload.get("metrics", {}),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"\nstoplight demo: {report.path} ({summary['size_kib']} KiB, {model.backend})")
    log(f"  ONNX vs PyTorch: max |diff| {report.max_abs_diff:.2e}, "
        f"top-1 agreement {100 * report.top1_agreement:.2f}%")
    for split, name in (("val", "validation scenes"), ("holdout", "held-out scene families")):
        r = results[split]
        log(f"  accuracy on {r['n']} {name}: {100 * r['accuracy']:.2f}% "
            f"({r['ms_per_image']} ms/image incl. resize)")
    log(f"  summary: {out / 'summary.json'}")
    return summary
