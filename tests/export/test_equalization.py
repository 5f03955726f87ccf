"""Activation ranges equalized across channels before int8 (`export.equalization`): the model
computes the same function, every channel of a tensor between two layers spans the tensor's
range, and a file records the factors so `edgepilot diff` still compares it in the float
model's units."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgepilot.export.equalization import MAX_SCALE, equalize  # noqa: E402
from edgepilot.meta import CHANNEL_SCALES, ModelMeta  # noqa: E402


def _spread(net: nn.Module, first: nn.Module, factors) -> nn.Module:
    """Make the channels of `first`'s output differ in range by `factors`."""
    with torch.no_grad():
        factor = torch.tensor(factors, dtype=torch.float32)
        first.weight.mul_(factor.reshape(-1, *(1,) * (first.weight.ndim - 1)))
        first.bias.mul_(factor)
    return net.eval()


class _Separable(nn.Module):
    """Conv -> ReLU -> max pool -> depthwise -> F.relu -> grouped 1x1; a residual conv whose
    output is read twice; a Linear pair at the end."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 8, 1, groups=2)
        self.residual = nn.Conv2d(8, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 6)
        self.fc2 = nn.Linear(6, 4)

    def forward(self, x):
        y = self.pool(torch.relu(self.conv(x)))
        y = self.pointwise(nn.functional.relu(self.depthwise(y)))
        r = self.residual(y)
        y = torch.relu(r) + r  # r is read twice: no positive scale commutes with this
        y = y.mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(y)))


def _input_peaks(net, layer, x):
    seen = {}
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.update(v=args[0]))
    with torch.no_grad():
        net(x)
    handle.remove()
    value = seen["v"]
    dims = [d for d in range(value.ndim) if d != (1 if value.ndim == 4 else value.ndim - 1)]
    return value.abs().amax(dim=dims)


def test_the_model_computes_the_same_and_every_channel_spans_the_tensor():
    net = _Separable()
    _spread(net, net.conv, [1, 0.01, 5, 0.2, 1, 30, 0.05, 2])
    _spread(net, net.depthwise, [0.1, 1, 10, 1, 0.3, 3, 1, 0.02])
    _spread(net, net.fc1, [1, 0.05, 4, 1, 0.5, 20])
    x = torch.randn(24, 3, 16, 16)
    with torch.no_grad():
        before = net(x)
    note, scales = equalize(net, x)
    with torch.no_grad():
        after = net(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    # not pointwise -> residual (no activation between), nor the residual conv, read twice
    assert set(scales) == {"conv", "depthwise", "fc1"}
    assert note["pairs"] == 3 and note["range_spread_before"]["worst"] > 100
    for first, second in (("conv", "depthwise"), ("depthwise", "pointwise"), ("fc1", "fc2")):
        peaks = _input_peaks(net, getattr(net, second), x)
        capped = torch.tensor(scales[first]) >= MAX_SCALE
        level = peaks[(peaks > 0) & ~capped]
        assert float(level.max() / level.min()) < 1.001  # every channel up to the largest
        assert bool((peaks[capped] <= level.max()).all())  # but never by more than the cap
    assert all(1.0 <= v <= MAX_SCALE for values in scales.values() for v in values)


def test_relu6_and_activations_that_do_not_commute_are_left_alone():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 8, 1), nn.Sigmoid(),
                        nn.Conv2d(8, 4, 1)).eval()
    _spread(net, net[0], [1, 0.01, 5, 0.2, 1, 30, 0.05, 2])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    note, scales = equalize(net, torch.randn(8, 3, 12, 12))
    assert note["pairs"] == 0 and scales == {}
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key])


class _Detector(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU())
        self.head = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        return self.head(self.pw(self.dw(self.stem(x)))).mean(dim=(2, 3))


META = ModelMeta(name="eq", labels=("a", "b", "c"), input_size=(24, 24),
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 24, 24, 3)).astype(np.uint8)


def test_an_equalized_int8_file_records_its_scales_and_diff_finds_no_false_departure(tmp_path):
    pytest.importorskip("onnxruntime")
    import edgepilot
    from edgepilot.diff import diff

    net = _Detector().eval()
    _spread(net, net.stem[0], [1, 0.01, 5, 0.2, 1, 30, 0.05, 2] * 2)
    [report] = edgepilot.export(net, torch.zeros(1, 3, 24, 24), formats="onnx",
                                precision="int8", out=tmp_path / "eq", meta=META,
                                calib=_images(48), max_drop=None, quiet=True)
    assert report.notes["bias_correction"]["equalization"]["pairs"] >= 2
    assert CHANNEL_SCALES not in report.notes["bias_correction"]
    recorded = edgepilot.load(report.path).meta.extra[CHANNEL_SCALES]
    assert set(recorded) >= {"stem.0", "dw.0"}
    result = diff(net, [report.path], images=_images(8, seed=1), meta=META).files[0]
    by_module = {layer.module.split(" + ")[0]: layer for layer in result.layers}
    assert by_module["stem.0"].sqnr_db > 25  # in the float model's units again
    assert result.departs is None


def test_diff_ignores_scales_a_file_records_that_are_not_positive_numbers():
    from edgepilot.diff import channel_scales

    meta = ModelMeta(name="x", labels=("a",), input_size=(8, 8), extra={CHANNEL_SCALES: {
        "good": [1.0, 2.5], "negative": [1.0, -2.0], "text": ["1"], "empty": [],
        "nan": [float("nan")], "flag": [True], "nested": {"a": 1}}})
    found = channel_scales(meta)
    assert list(found) == ["good"] and found["good"].tolist() == [1.0, 2.5]
    assert channel_scales(ModelMeta(name="x", labels=("a",), input_size=(8, 8),
                                    extra={CHANNEL_SCALES: [1, 2]})) == {}
