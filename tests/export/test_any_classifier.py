"""Every format and precision works for user modules, not only ours: each block a vision
classifier is commonly built from, trained briefly, exported, loaded back and compared."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
from torch import nn  # noqa: E402

import edgepilot  # noqa: E402
from edgepilot.errors import EdgepilotError  # noqa: E402
from edgepilot.formats import FORMATS  # noqa: E402
from edgepilot.meta import ModelMeta  # noqa: E402
from edgepilot.train.trainer import TrainConfig, fit  # noqa: E402

META = ModelMeta(name="block", labels=("red", "yellow", "green", "none"), input_size=(16, 16),
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c // 2, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())

    def forward(self, x):
        return x + self.body(x)


def head(c):
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 4)]


BLOCKS = {
    "mlp": lambda: nn.Sequential(nn.Flatten(), nn.Linear(768, 32), nn.ReLU(), nn.Linear(32, 4)),
    "cnn_batchnorm": lambda: nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), *head(16)),
    "depthwise_separable": lambda: nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU6(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.BatchNorm2d(16), nn.ReLU6(), nn.Conv2d(16, 24, 1), nn.ReLU6(), *head(24)),
    "residual_add": lambda: nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), Residual(16),
                                          Residual(16), *head(16)),
    "hardswish": lambda: nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.Hardswish(),
                                       nn.Conv2d(16, 16, 3, padding=1), nn.Hardswish(),
                                       *head(16)),
    "squeeze_excite": lambda: nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(),
                                            SqueezeExcite(16), *head(16)),
}
#: Every block goes through the formats most users deploy; the newer formats (each export
#: costs seconds more) through the two blocks mobile models are made of.
EVERY_FORMAT = {"depthwise_separable", "squeeze_excite"}


def formats_for(block: str):
    return [f for f in FORMATS if block in EVERY_FORMAT or f.name in ("onnx", "tflite")]


def combos(block: str):
    return {(f.name, p) for f in formats_for(block) for p in f.precisions}


def blobs(n: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = rng.integers(0, 60, size=(n, 16, 16, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        if label < 3:
            y, x = rng.integers(2, 9, size=2)
            images[i, y:y + 6, x:x + 6, label] = 230
    return images, labels


@pytest.fixture(scope="module")
def data():
    return blobs(400, seed=1)


@pytest.fixture(scope="module", params=sorted(BLOCKS))
def exported(request, data, tmp_path_factory):
    torch.manual_seed(0)
    net = BLOCKS[request.param]()
    fit(net, data, data, META, TrainConfig(steps=120, batch_size=32, lr=5e-3, progress=False))
    out = tmp_path_factory.mktemp(request.param) / request.param
    reports = []
    for fmt in formats_for(request.param):
        reports += edgepilot.export(net, torch.zeros(1, 3, 16, 16), formats=fmt.name,
                                    precision=list(fmt.precisions), out=out, meta=META,
                                    data=data, quiet=True, max_drop=None)
    return request.param, net, {(r.format, r.precision): r for r in reports}


@pytest.mark.slow
def test_every_format_and_precision_round_trips(exported, torch_top1):
    name, net, reports = exported
    assert set(reports) == combos(name)
    fresh_images, fresh_labels = blobs(200, seed=99)  # never seen by training or exporter
    torch_fresh = torch_top1(net, fresh_images, META)
    torch_accuracy = np.mean(torch_fresh == fresh_labels)
    assert torch_accuracy > 0.9  # the block learned the task
    for (fmt, precision), report in reports.items():
        where = f"{name} {fmt} {precision}"
        if report.notes.get("unchecked"):  # Core ML off macOS, Edge TPU without a TPU
            with pytest.raises(EdgepilotError) as refused:
                edgepilot.load(report.path)
            assert len(str(refused.value).splitlines()) == 1, where
            continue
        model = edgepilot.load(report.path)
        assert model.meta.labels == META.labels, where
        if precision == "fp32":
            assert report.max_abs_diff < 1e-4, where
            assert report.top1_agreement == 1.0, where
        else:
            assert report.top1_agreement >= 0.97, where
            assert report.accuracy_export >= report.accuracy_torch - 0.03, where
        # Our own measure, not the exporter's: the runtime's predict path on images the
        # exporter never saw, against PyTorch on the same images.
        predicted = np.array([model.predict(img).index for img in fresh_images])
        agree = np.mean(predicted == torch_fresh)
        assert agree >= (0.999 if precision == "fp32" else 0.95), (where, agree)
        assert np.mean(predicted == fresh_labels) >= torch_accuracy - 0.05, where
        if fmt == "tflite":
            assert model.inputs[0].shape == (1, 16, 16, 3), where  # NHWC, no transposes
        if fmt == "tflite" and precision == "int8":
            # int8 in; float32 probabilities out (the softmax runs in float, see #18)
            assert model.inputs[0].dtype == np.int8 and model.outputs[0].dtype == np.float32
