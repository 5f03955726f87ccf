"""`edgepilot demo` (what `make demo` runs) with the shipped checkpoint: the files and summary
it writes, with its accuracy figures checked against the runtime on images of our own."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgepilot

ROOT = Path(__file__).resolve().parents[1]


def test_make_demo_runs_the_cli_demo():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "edgepilot demo" in recipe


@pytest.mark.slow
def test_demo_summary_and_held_out_accuracy(tmp_path, torch_top1):
    from edgepilot.draw import stoplight
    from edgepilot.train.checkpoint import load_checkpoint
    from edgepilot.train.datasets import HOLDOUT, scene_config

    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "edgepilot.cli", "demo", "--out", out,
                             "--images", "3"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert Path(summary["model"]) == out / "stoplight.onnx"
    assert summary["checkpoint"].endswith("stoplight.pt")  # the shipped one: no --train
    assert summary["onnx_top1_agreement"] == 1.0 and summary["onnx_max_abs_diff"] < 1e-4
    samples = sorted((out / "samples").glob("*.png"))
    assert len(samples) == 3 and all(p.stem.split("_", 1)[1] in stoplight.LABELS
                                     for p in samples)
    held_out = summary["accuracy_held_out_families"]
    assert held_out["families"] == json.loads(json.dumps(HOLDOUT)) and held_out["n"] == 1000
    assert summary["accuracy_validation"]["n"] == 1000

    # Our own check of the file it wrote, on images the demo never drew (other seeds), at the
    # generator's full size as the demo feeds them: the runtime, and PyTorch as the oracle.
    model = edgepilot.load(out / "stoplight.onnx")
    net, meta, _ = load_checkpoint(summary["checkpoint"])
    for split, reported in (("val", summary["accuracy_validation"]), ("holdout", held_out)):
        images, labels = stoplight.generate(300, seed=424_242, config=scene_config(split))
        ours = np.array([model.predict(img).index for img in images])
        accuracy = float(np.mean(ours == labels))
        # Issue #13's bars: 97% on training's families, 95% on families never trained on.
        assert accuracy >= (0.95 if split == "holdout" else 0.97), f"{split}: {accuracy:.3f}"
        assert abs(reported["accuracy"] - accuracy) <= 0.03, (split, reported, accuracy)
        # The runtime resizes as the training pipeline does: scenes rendered larger than the
        # model's input (so predict really resizes them), through the runtime, give PyTorch's
        # answers on the same scenes resized by the runtime's own function, as training does.
        from edgepilot.runtime.image import resize

        config = dataclasses.replace(scene_config(split), size=160)
        large, _ = stoplight.generate(150, seed=424_242, config=config)
        assert large.shape[1:3] != meta.input_size  # (150, 160, 160, 3) for a 96x96 model
        small = np.stack([resize(img, meta.input_size) for img in large])
        predicted = np.array([model.predict(img).index for img in large])
        assert np.mean(predicted == torch_top1(net, small, meta)) >= 0.99

