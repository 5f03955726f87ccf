"""The detector's data, targets and training: scenes, encoding, and torchrun (two ranks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepilot.assets import shipped_model
from edgepilot.draw.scenes import (
    HOLDOUT,
    STATES,
    StreetConfig,
    generate_streets,
    holdout_config,
    render_street,
    train_config,
)
from edgepilot.errors import InputError
from edgepilot.meta import ModelMeta
from edgepilot.runtime.detection import DecodeParams, decode

torch = pytest.importorskip("torch")


def test_scenes_are_deterministic_and_boxed():
    images, targets = generate_streets(40, seed=3)
    again, targets_again = generate_streets(10, seed=3)
    assert np.array_equal(images[:10], again)  # a prefix of a larger set is the smaller set
    for (b1, l1), (b2, l2) in zip(targets, targets_again):
        assert np.array_equal(b1, b2) and np.array_equal(l1, l2)
    assert images.shape == (40, 240, 320, 3) and images.dtype == np.uint8
    counts = [len(labels) for _, labels in targets]
    assert max(counts) <= 4 and min(counts) == 0 and sum(counts) > 40
    boxes = np.concatenate([b for b, _ in targets])
    labels = np.concatenate([lab for _, lab in targets])
    assert set(labels.tolist()) == {0, 1, 2}
    heights = boxes[:, 3] - boxes[:, 1]
    # 12-150 px tall upright; a light rolled on a leaning mast has a taller box.
    assert heights.min() >= 10 and np.mean((heights >= 10) & (heights <= 151)) > 0.9
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 320).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 240).all()


def test_each_box_holds_a_lit_lamp_of_its_state():
    """The boxes are where the lights are: a red box holds more strongly red pixels than
    green ones, a green box the other way round (lamps may clip to white in the centre: the
    colour is in the rim and the glow)."""
    images, targets = generate_streets(60, seed=11, config=StreetConfig(jpeg_fraction=0.0))
    hits = total = 0
    for image, (boxes, labels) in zip(images, targets):
        for (x0, y0, x1, y1), label in zip(boxes.astype(int), labels):
            if label == 1 or y1 - y0 < 30:  # yellow is red + green; small ones are blurry
                continue
            p = image[y0:y1, x0:x1].reshape(-1, 3).astype(int)
            red = np.sum(p[:, 0] - np.maximum(p[:, 1], p[:, 2]) > 50)
            green = np.sum(p[:, 1] - p[:, 0] > 50)
            total += 1
            hits += (red > green) if label == 0 else (green > red)
    assert total > 10 and hits / total > 0.9


def test_state_forcing_keeps_the_scene():
    config = StreetConfig(unlit_fraction=0.0)
    red = render_street(np.random.default_rng(5), config, state=0)
    green = render_street(np.random.default_rng(5), config, state=2)
    assert np.array_equal(red[1], green[1])  # same lights, same places
    assert set(red[2].tolist()) <= {0} and set(green[2].tolist()) <= {2}


def test_holdout_families_never_reach_training():
    held = holdout_config()
    trained = train_config()
    assert held.backgrounds == HOLDOUT["backgrounds"] and held.lightings == HOLDOUT["lightings"]
    assert not set(trained.backgrounds) & set(HOLDOUT["backgrounds"])
    assert not set(trained.lightings) & set(HOLDOUT["lightings"])
    with pytest.raises(ValueError, match="lightings"):
        StreetConfig(lightings=("noon",))


def test_targets_decode_back_to_the_boxes():
    """Training's encoding and the runtime's decoding are inverse: the targets of a scene,
    read as a model's output, give its boxes back."""
    from edgepilot.train.detector import STRIDE, encode_targets

    image, boxes, labels = render_street(np.random.default_rng(2))
    while len(labels) < 2:  # a scene with a few lights
        image, boxes, labels = render_street(np.random.default_rng(len(labels) + 100))
    heat, reg, mask = encode_targets(boxes, labels, (60, 80))
    assert heat.max() == 1.0 and int(mask.sum()) == len(labels)
    params = DecodeParams(stride=STRIDE, score_threshold=0.99, iou_threshold=0.9)
    found = decode(heat.transpose(1, 2, 0), reg.transpose(1, 2, 0), params, STATES)
    got = sorted((d.index, *d.box) for d in found)
    want = sorted((int(c), *b) for b, c in zip(boxes, labels))
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose(np.array(got)[:, 1:], np.array(want)[:, 1:], atol=1e-3)


def test_model_outputs_channels_last_maps():
    from edgepilot.train.models import create_model

    net = create_model("stoplight_detector").eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 240, 320))
    assert out["heatmap"].shape == (2, 60, 80, 3) and out["box"].shape == (2, 60, 80, 4)
    assert 0 <= float(out["heatmap"].min()) and float(out["heatmap"].max()) <= 1


def test_torchrun_two_processes_end_with_identical_weights(tmp_path: Path):
    """DistributedDataParallel over gloo: two CPU processes, a few steps, the same model."""
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "edgepilot.cli", "train", "stoplight-detector", "--steps", "3",
         "--batch-size", "4", "--val-size", "2", "--save-ranks", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(out / f"weights.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    # The ranks trained (on different scenes, gradients averaged): the weights moved.
    from edgepilot.train.models import create_model

    torch.manual_seed(0)
    start = create_model("stoplight_detector").state_dict()
    assert any(not torch.equal(start[k], ranks[0][k]) for k in start if k.endswith("weight"))
    from edgepilot.train.checkpoint import load_checkpoint

    _, meta, _ = load_checkpoint(out / "stoplight_detector.pt")
    assert isinstance(meta, ModelMeta) and meta.task == "detection"
    assert result.stdout.count("wrote ") == 1  # rank 0 alone reports


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_widening_keeps_what_the_shipped_detector_computes():
    """Net2Wider: 8 more channels per unit width, the same maps on real scenes."""
    from edgepilot.train.checkpoint import load_checkpoint
    from edgepilot.train.detector import _to_input, detector_meta
    from edgepilot.train.models import count_parameters, widen_detector

    model, meta, _ = load_checkpoint(shipped_model("stoplight-detector", ".pt"))
    images, _ = generate_streets(4, seed=11, config=StreetConfig(wide=True))
    x = _to_input(images, detector_meta())
    wider = model.heatmap.in_channels // 2 + 8
    exact = widen_detector(model, wider, noise=0).eval()
    nudged = widen_detector(model, wider, seed=1).eval()
    assert count_parameters(exact) > 1.3 * count_parameters(model)
    with torch.no_grad():
        ref, out, near = model.eval()(x), exact(x), nudged(x)
    for name in ("heatmap", "box"):
        assert out[name].shape == ref[name].shape
        assert torch.allclose(out[name], ref[name], atol=1e-5), name
        assert torch.allclose(near[name], ref[name], atol=0.05), name
    # The copies are nudged apart, or training could never tell them apart.
    w = nudged.s16[1][2].weight
    assert len({tuple(row.flatten().tolist()) for row in w}) == len(w)
    assert not torch.equal(near["heatmap"], ref["heatmap"])


def test_widening_refuses_narrowing_and_other_models():
    from edgepilot.train.models import create_model, widen_detector

    with pytest.raises(ValueError, match="width 8 < the model's 16"):
        widen_detector(create_model("stoplight_detector"), 8)
    with pytest.raises(TypeError, match="grows a CentreDetector, got StoplightCNN"):
        widen_detector(create_model("stoplight_cnn", num_classes=4), 24)


def test_train_width_grows_init_and_refuses_a_narrower_one(tmp_path: Path):
    from edgepilot.train.checkpoint import load_checkpoint

    shipped, _, _ = load_checkpoint(shipped_model("stoplight-detector", ".pt"))
    width = shipped.heatmap.in_channels // 2
    base = [sys.executable, "-I", "-m", "edgepilot.cli", "train", "stoplight-detector",
            "--init", str(shipped_model("stoplight-detector", ".pt")), "--steps", "1",
            "--batch-size", "2", "--val-size", "2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    grown = subprocess.run(base + ["--width", str(width + 4), "--out", str(tmp_path / "w")],
                           capture_output=True, text=True, timeout=600, env=env)
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert f"widened init from {width} to {width + 4}" in grown.stdout + grown.stderr
    model, _, _ = load_checkpoint(tmp_path / "w" / "stoplight_detector.pt")
    assert model.heatmap.in_channels == 2 * (width + 4)
    # fine-tuning the grown checkpoint needs no --width: it keeps the init's
    again = subprocess.run(base[:6] + ["--init", str(tmp_path / "w" / "stoplight_detector.pt")]
                           + base[8:] + ["--out", str(tmp_path / "again")],
                           capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "widened" not in again.stdout + again.stderr
    model, _, _ = load_checkpoint(tmp_path / "again" / "stoplight_detector.pt")
    assert model.heatmap.in_channels == 2 * (width + 4)
    metrics = json.loads((tmp_path / "again" / "stoplight_detector.metrics.json").read_text())
    assert metrics["config"]["width"] == width + 4
    narrow = subprocess.run(base + ["--width", "8", "--out", str(tmp_path / "w8")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert narrow.returncode != 0
    assert f"is {width} wide: --width must be that or more (more grows it), got 8" in \
        narrow.stderr
    assert "Traceback" not in narrow.stderr and not (tmp_path / "w8").exists()
    other = subprocess.run([sys.executable, "-I", "-m", "edgepilot.cli", "train", "digits",
                            "--width", "24"], capture_output=True, text=True, timeout=120)
    assert other.returncode != 0 and "--width applies to 'train stoplight-detector'" in \
        other.stderr


def test_train_refuses_an_init_that_is_not_a_stoplight_detector(tmp_path: Path):
    """A detector checkpoint of another architecture: one line naming what it is."""
    from edgepilot.train.checkpoint import save_checkpoint
    from edgepilot.train.detector import DetectorConfig, detector_meta, train_detector
    from edgepilot.train.models import create_model

    other = save_checkpoint(tmp_path / "other.pt", create_model("stoplight_cnn", num_classes=3),
                            arch="stoplight_cnn", config={"num_classes": 3},
                            meta=detector_meta())
    with pytest.raises(InputError, match="is a StoplightCNN: training fine-tunes "
                                         "stoplight_detector checkpoints"):
        train_detector(tmp_path / "out", config=DetectorConfig(steps=1, init=str(other)))
