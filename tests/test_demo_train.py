"""`edgepilot demo --train`: "trains the model anew first (the first of the four runs under
'How the shipped classifier was trained')", then exports and evaluates *that* model.

The demo has no size knob (a real run is 120,000 images x 6 epochs), so the run here shrinks
the recipe's sizes (and the export's validation set) in-process; another test checks that,
those sizes aside, the demo trains exactly what ``edgepilot train stoplight --deepen 1`` (the
first stage) trains.
"""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgepilot  # noqa: E402
from edgepilot.assets import shipped_model  # noqa: E402
from edgepilot.cli import main  # noqa: E402
from edgepilot.demo import run_demo  # noqa: E402
from edgepilot.train import recipes  # noqa: E402
from edgepilot.train.checkpoint import load_checkpoint  # noqa: E402
from edgepilot.train.trainer import TrainConfig  # noqa: E402

SIGNATURE = inspect.signature(recipes.train_stoplight)


class _Stop(BaseException):
    """Ends a run at its training call (neither the CLI nor the demo catches it)."""


def recorded_call(monkeypatch, run) -> dict:
    """The arguments `run()` makes `train_stoplight` use, defaults included (no training)."""
    calls = []

    def record(*args, **kwargs):
        bound = SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        raise _Stop

    monkeypatch.setattr(recipes, "train_stoplight", record)
    try:
        run()
    except _Stop:
        pass
    [call] = calls
    for name in ("out", "log"):
        del call[name]
    config = call.pop("config") or TrainConfig(epochs=6)  # the recipe's own default
    call["config"] = {k: v for k, v in vars(config).items() if k != "progress"}
    return call


def test_demo_trains_the_first_stage_of_the_shipped_lineage(tmp_path, monkeypatch):
    demo = recorded_call(monkeypatch, lambda: run_demo(tmp_path / "demo", train=True,
                                                       log=lambda line: None))
    stage_1 = json.loads(shipped_model("stoplight", ".metrics.json").read_text())["lineage"][0]
    assert stage_1["command"] == "edgepilot train stoplight --deepen 1 --out runs/stoplight"
    cli = recorded_call(monkeypatch, lambda: main(["train", "stoplight", "--deepen", "1",
                                                   "--quiet", "--out", str(tmp_path / "cli")]))
    assert demo == cli
    assert demo["deepen"] == 1 and demo["train_size"] == 120_000 and demo["config"]["epochs"] == 6


@pytest.mark.slow
def test_demo_train_exports_and_evaluates_the_model_it_trained(tmp_path, monkeypatch):
    from edgepilot.train import datasets

    train, load = recipes.train_stoplight, datasets.load_dataset

    def small(out, **options):  # the demo's own call, at a size a test can afford
        return train(out, train_size=128, val_size=64, holdout_size=64, **options,
                     config=TrainConfig(steps=4, batch_size=16, progress=False))

    def fewer(name, split, n, *args, **kwargs):  # the export's 2,000 validation images
        return load(name, split, min(n, 200), *args, **kwargs)

    monkeypatch.setattr(recipes, "train_stoplight", small)
    monkeypatch.setattr(datasets, "load_dataset", fewer)
    out = tmp_path / "demo"
    lines = []
    summary = run_demo(out, train=True, n_images=1, n_eval=40, log=lines.append)
    assert json.loads(json.dumps(summary)) == json.loads((out / "summary.json").read_text())

    assert Path(summary["checkpoint"]) == out / "stoplight.pt"
    net, meta, payload = load_checkpoint(out / "stoplight.pt")
    assert payload["metrics"]["n_val"] == 64 and payload["metrics"]["deepen"] == 1
    assert summary["training_metrics"]["n_val"] == 64  # this run's, not the shipped model's
    shipped, _, _ = load_checkpoint(shipped_model("stoplight", ".pt"))

    # The file the demo exported and evaluated is the model it trained, not the shipped one.
    assert Path(summary["model"]) == out / "stoplight.onnx"
    model = edgepilot.load(out / "stoplight.onnx")
    x = np.random.default_rng(0).normal(size=(1, 3, *meta.input_size)).astype(np.float32)
    with torch.no_grad():
        trained, before = net(torch.from_numpy(x)).numpy(), shipped(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), trained, atol=1e-4)
    assert np.abs(trained - before).max() > 1e-2
    assert summary["accuracy_validation"]["n"] == 40
    assert summary["accuracy_held_out_families"]["n"] == 40
    assert lines[0] == "1/3 training the stoplight classifier"
