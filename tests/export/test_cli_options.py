"""`edgepilot export` options the README documents, each checked on the file it writes:
``--mean/--std`` (carried in the file's metadata and used by ``predict``), ``--guard-budget``
(the int8 guard "stops at --guard-budget seconds, saying so") and ExecuTorch's
``--calib-method minmax|histogram``."""

import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
from torch import nn  # noqa: E402

import edgepilot  # noqa: E402
from edgepilot.cli import main  # noqa: E402

MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)  # nobody's default: using them is visible


@pytest.fixture
def cli(capsys):
    def run(*args):
        capsys.readouterr()
        code = main(["export", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3)).eval()


def normalised(image: np.ndarray, mean, std) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32, normalised independently of edgepilot."""
    x = (image.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_mean_and_std_travel_in_the_file_and_preprocess_its_images(tmp_path, cli, fmt,
                                                                  monkeypatch):
    # A state_dict and its factory: a model every format takes (litert-torch refuses
    # TorchScript files).
    (tmp_path / "meannets.py").write_text(
        "from torch import nn\n"
        "def small():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(8, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = small_cnn()
    torch.save(net.state_dict(), tmp_path / "net.pth")
    code, out, err = cli(tmp_path / "net.pth", "--arch", "meannets:small", "--input-size", "24",
                         "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)),
                         "--format", fmt, "--val-size", "0", "--out", tmp_path / "net")
    assert code == 0, err[-2000:]
    path = out.strip().splitlines()[-1]
    if fmt == "onnx":  # the file itself, read without edgepilot
        import onnx

        props = {p.key: p.value for p in onnx.load(path).metadata_props}
        stored = json.loads(props["edgepilot"])
        assert (tuple(stored["mean"]), tuple(stored["std"])) == (MEAN, STD)
    model = edgepilot.load(path)
    if fmt == "onnx":
        assert (model.meta.mean, model.meta.std) == (MEAN, STD)
    else:  # normalisation inside the graph (README): the file takes raw pixels, NHWC
        assert model.meta.layout == "NHWC" and model.meta.mean == (0.0, 0.0, 0.0)
        np.testing.assert_allclose(model.meta.std, [1 / 255] * 3)

    rng = np.random.default_rng(0)
    for image in rng.integers(0, 256, (4, 24, 24, 3), dtype=np.uint8):
        with torch.no_grad():
            logits = net(normalised(image, MEAN, STD)).numpy()[0]
        probs = np.exp(logits - logits.max())
        scores = list(model.predict(image).scores.values())
        np.testing.assert_allclose(scores, probs / probs.sum(), atol=1e-4)


class Hostile(nn.Module):
    """A trained net with an identity detour whose extra channel is a constant 1000: the float
    output is unchanged, but per-tensor int8 of the detour crushes every real channel, so the
    int8 file needs the guard (as in test_guard.py)."""

    def __init__(self, net):
        super().__init__()
        self.stem, self.rest = net.features[:1], net.features[1:]
        self.pool, self.head = net.pool, net.head
        c = net.features[0][0].out_channels
        self.spike, self.merge = nn.Conv2d(c, c + 1, 1), nn.Conv2d(c + 1, c, 1)
        with torch.no_grad():
            for conv in (self.spike, self.merge):
                conv.weight.zero_()
                conv.bias.zero_()
            for i in range(c):
                self.spike.weight[i, i] = self.merge.weight[i, i] = 1.0
            self.spike.bias[c] = 1000.0

    def forward(self, x):
        x = self.merge(self.spike(self.stem(x)))
        return self.head(torch.flatten(self.pool(self.rest(x)), 1))


def labelled_folder(folder, images, labels, names) -> None:
    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / names[label]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / names[label] / f"{i}.png"),
                    cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


@pytest.mark.slow
def test_a_tiny_guard_budget_stops_the_guard_saying_so(tmp_path, cli, trained_tiny, tiny_meta,
                                                       colour_data):
    model_file = tmp_path / "hostile.ts.pt"
    torch.jit.save(torch.jit.trace(Hostile(trained_tiny[0]).eval(),
                                   torch.zeros(1, 3, 32, 32)), model_file)
    (tmp_path / "labels.txt").write_text("\n".join(tiny_meta.labels) + "\n")
    labelled_folder(tmp_path / "val", *(a[:128] for a in colour_data), tiny_meta.labels)
    common = [model_file, "--input-size", "32", "--labels", tmp_path / "labels.txt",
              "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--data", tmp_path / "val",
              "--precision", "int8", "--max-drop", "1"]
    # A budget no guard step fits in: the first int8 file is measured (over the allowed drop),
    # and the guard stops before trying any layer in float, saying so in one line.
    code, out, err = cli(*common, "--guard-budget", "1e-6", "--out", tmp_path / "tight")
    assert code == 1, err[-2000:]
    [line] = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert "onnx int8 loses" in line and "the guard stopped at its time budget" in line, line
    assert "--guard-budget" in line  # and says what to change
    assert "int8 fine-tuning without labels (--qat)" in line  # or what else to try
    assert "guard step" not in err  # no layer was tried in float
    assert not list(tmp_path.glob("tight*"))  # no file written


@pytest.fixture(scope="module")
def stoplight():
    pytest.importorskip("executorch.exir")
    from edgepilot.assets import shipped_model
    from edgepilot.runtime import preprocess
    from edgepilot.train.checkpoint import load_checkpoint
    from edgepilot.train.datasets import load_dataset

    net, meta, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    calib, _ = load_dataset("stoplight", "val", 100, meta.input_size)
    # The images test_executorch.py checks its int8 file on: never calibrated on.
    images, labels = load_dataset("stoplight", "val", 300, meta.input_size, seed=4242)
    with torch.no_grad():
        x = torch.from_numpy(np.concatenate([preprocess(img, meta) for img in images]))
        expected = net(x).numpy()
    return net, meta, calib, (images, labels, expected)


@pytest.mark.slow
def test_executorch_histogram_calibration_agrees_with_pytorch(tmp_path, stoplight,
                                                              monkeypatch):
    import torchao.quantization.pt2e.quantize_pt2e as pt2e

    observers = set()  # what really gathered the activation ranges
    prepare = pt2e.prepare_pt2e

    def spy(model, quantizer):
        prepared = prepare(model, quantizer)
        observers.update(type(m).__name__ for m in prepared.modules())
        return prepared

    monkeypatch.setattr(pt2e, "prepare_pt2e", spy)
    net, meta, calib, (images, labels, expected) = stoplight
    [report] = edgepilot.export(net, torch.zeros(meta.input_shape), formats="executorch",
                                precision="int8", out=tmp_path / "hist", meta=meta, calib=calib,
                                calib_method="histogram", max_drop=None, quiet=True)
    assert report.notes["calibration"]["method"] == "histogram"
    assert "HistogramObserver" in observers and "MinMaxObserver" not in observers, observers
    # The guard is off: what is measured is the histogram calibration itself, on images it
    # never saw, with test_executorch.py's int8 bounds.
    model = edgepilot.load(report.path)
    predicted = np.array([model.predict(img).index for img in images])
    agrees = predicted == expected.argmax(1)
    assert np.mean(agrees) >= 0.99
    probs = np.exp(expected - expected.max(1, keepdims=True))
    top2 = np.sort(probs / probs.sum(1, keepdims=True), 1)[:, -2:]
    assert agrees[top2[:, 1] - top2[:, 0] >= 0.15].all()
    drop = 100 * (np.mean(expected.argmax(1) == labels) - np.mean(predicted == labels))
    assert drop <= 1.0


def test_an_unknown_executorch_calibration_method_lists_the_valid_ones(tmp_path, cli):
    pytest.importorskip("executorch.exir")
    from edgepilot.assets import shipped_model

    code, out, err = cli(shipped_model("stoplight", ".pt"), "--format", "executorch",
                         "--precision", "int8", "--calib-method", "entropy", "--val-size", "8",
                         "--out", tmp_path / "m")
    assert code == 1
    [line] = err.strip().splitlines()[-1:]
    assert line.startswith("error: ") and "'entropy'" in line, err
    assert "Valid: minmax, histogram" in line
    assert not list(tmp_path.glob("m*"))
