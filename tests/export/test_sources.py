"""`export/sources.py` and the ONNX exporter's fallback, as the README promises them:
``edgepilot export timm:NAME --weights FILE`` and ``torchvision:NAME --weights FILE`` (timm's
own normalisation, ImageNet's for torchvision), and "when torch.export cannot capture a model,
the TorchScript exporter is tried; a trace that warns it may be wrong for other inputs is
refused".

timm and torchvision are not in ``pip install -e '.[all]'`` (the README gives them their own
venv, as they pin their own torch), so the tests stand in for them with modules that have
their API (``timm.create_model(name, pretrained=False)`` with a ``pretrained_cfg``,
``torchvision.models.get_model(name, weights=None)``), put in ``sys.modules``: what is tested
is edgepilot's side, every file checked against PyTorch through ``edgepilot.load``.
"""

import importlib.machinery
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
from torch import nn  # noqa: E402

import edgepilot  # noqa: E402
from edgepilot.cli import main  # noqa: E402
from edgepilot.errors import EdgepilotError  # noqa: E402
from edgepilot.export.sources import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from edgepilot.meta import ModelMeta  # noqa: E402

#: What the stand-in timm model declares: not ImageNet's, so using it is visible.
TIMM_CFG = {"input_size": (3, 40, 40), "mean": (0.3, 0.4, 0.5), "std": (0.2, 0.25, 0.3)}


def tiny_net(classes: int = 5) -> nn.Module:
    torch.manual_seed(0)  # the architecture's own (untrained) initialisation, always the same
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def stand_in(monkeypatch, name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for key, value in attributes.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def fake_timm(monkeypatch) -> types.ModuleType:
    def create_model(name, pretrained=False):
        assert name == "tinynet" and pretrained is False
        net = tiny_net()
        net.pretrained_cfg = dict(TIMM_CFG)
        return net

    return stand_in(monkeypatch, "timm", create_model=create_model)


def fake_torchvision(monkeypatch) -> types.ModuleType:
    def get_model(name, weights=None):
        assert name == "tinynet" and weights is None
        return tiny_net()

    models = stand_in(monkeypatch, "torchvision.models", get_model=get_model)
    stand_in(monkeypatch, "torchvision", models=models)
    return models


def trained_weights(net: nn.Module, path, seed: int = 1) -> nn.Module:
    """`net` with weights (and batch-norm statistics) unlike its initialisation, saved."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.dtype.is_floating_point:
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    torch.save(net.state_dict(), path)
    return net.eval()


@pytest.fixture
def cli(capsys):
    def run(*args):
        capsys.readouterr()
        code = main(["export", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def normalised(image: np.ndarray, mean, std) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32, normalised independently of edgepilot."""
    x = (image.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_a_named_architecture_exports_with_the_weights_given(tmp_path, cli, monkeypatch,
                                                             library):
    build = fake_timm(monkeypatch).create_model if library == "timm" else \
        fake_torchvision(monkeypatch).get_model
    net = trained_weights(build("tinynet"), tmp_path / "w.pth")
    size = ["--input-size", "32"] if library == "torchvision" else []  # timm records its own
    code, out, err = cli(f"{library}:tinynet", "--weights", tmp_path / "w.pth", *size,
                         "--val-size", "0", "--out", tmp_path / "net")
    assert code == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == str(tmp_path / "net.onnx")
    assert f"with weights from {tmp_path / 'w.pth'}" in err

    model = edgepilot.load(tmp_path / "net.onnx")
    side = 40 if library == "timm" else 32
    mean, std = (TIMM_CFG["mean"], TIMM_CFG["std"]) if library == "timm" else \
        (IMAGENET_MEAN, IMAGENET_STD)
    assert model.meta.input_size == (side, side)
    np.testing.assert_allclose(model.meta.mean, mean)
    np.testing.assert_allclose(model.meta.std, std)
    assert model.meta.labels == tuple(f"class_{i}" for i in range(5))

    x = np.random.default_rng(0).normal(size=(1, 3, side, side)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
        untrained = build("tinynet").eval()(torch.from_numpy(x)).numpy()
    assert np.abs(want - untrained).max() > 0.1  # the weights file matters
    np.testing.assert_allclose(model(x), want, atol=1e-4)

    # predict() preprocesses with the normalisation the library declares for the model.
    image = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
    with torch.no_grad():
        logits = net(normalised(image, mean, std)).numpy()[0]
    scores = np.array(list(model.predict(image).scores.values()))
    np.testing.assert_allclose(scores, softmax(logits), atol=1e-4)


def test_weights_that_do_not_fit_the_named_architecture_are_one_line(tmp_path, cli,
                                                                     monkeypatch):
    fake_timm(monkeypatch)
    torch.save(tiny_net(classes=7).state_dict(), tmp_path / "other.pth")
    code, out, err = cli("timm:tinynet", "--weights", tmp_path / "other.pth", "--val-size", "0",
                         "--out", tmp_path / "net")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "do not fit the architecture" in err and "Traceback" not in err
    assert not list(tmp_path.glob("net*"))


# The TorchScript fallback, and the trace it refuses.

META = ModelMeta(name="m", labels=("a", "b", "c"), input_size=(16, 16))


class RefusesTorchExport(nn.Module):
    """Stands for a model torch.export cannot capture (it raises while being exported), yet
    whose trace is exact: one path for every input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 3)

    def forward(self, x):
        if torch.compiler.is_exporting():
            raise RuntimeError("this model cannot be captured by torch.export")
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class BranchesOnValues(RefusesTorchExport):
    """Python control flow on a tensor's value: torch.export refuses it, and a trace records
    only the branch the sample took (TracerWarning), so it would be wrong for other inputs."""

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if y.mean() > 0.1:
            y = -y
        return self.fc(y.mean((2, 3)))


def test_a_model_torch_export_cannot_capture_falls_back_to_torchscript(tmp_path):
    net = RefusesTorchExport().eval()
    [report] = edgepilot.export(net, torch.zeros(1, 3, 16, 16), out=tmp_path / "m", meta=META,
                                quiet=True)
    assert "written by the TorchScript exporter (torch.export failed" in report.notes["batch"]
    x = np.random.default_rng(0).normal(size=(4, 1, 3, 16, 16)).astype(np.float32)
    model = edgepilot.load(report.path)
    with torch.no_grad():
        for row in x:
            np.testing.assert_allclose(model(row), net(torch.from_numpy(row)).numpy(),
                                       atol=1e-5)


def test_a_trace_that_warns_is_refused_in_one_line(tmp_path):
    net = BranchesOnValues().eval()
    with pytest.raises(EdgepilotError) as caught:
        edgepilot.export(net, torch.zeros(1, 3, 16, 16), out=tmp_path / "m", meta=META,
                         quiet=True)
    message = str(caught.value)
    assert "\n" not in message and "Both of torch's exporters failed" in message, message
    assert list(tmp_path.iterdir()) == []  # no file, no scratch folder left behind
