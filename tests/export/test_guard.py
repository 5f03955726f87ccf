"""The int8 accuracy guard on a model built to have one quantization-hostile layer."""

import io

import numpy as np
import pytest
from rich.console import Console

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
from torch import nn  # noqa: E402

import edgepilot  # noqa: E402
from edgepilot.errors import EdgepilotError  # noqa: E402
from edgepilot.export.guard import Guard, LayerError, channel_sqnr, rank_by_sqnr_loss  # noqa: E402
from edgepilot.export.report import print_reports  # noqa: E402


class Hostile(nn.Module):
    """A trained net with an identity detour whose extra channel is a constant 1000: the float
    output is unchanged, but per-tensor int8 of the detour crushes every real channel."""

    def __init__(self, net):
        super().__init__()
        self.stem, self.rest = net.features[:1], net.features[1:]
        self.pool, self.head = net.pool, net.head
        c = net.features[0][0].out_channels
        self.spike = nn.Conv2d(c, c + 1, 1)
        self.merge = nn.Conv2d(c + 1, c, 1)
        with torch.no_grad():
            self.spike.weight.zero_()
            self.spike.bias.zero_()
            self.merge.weight.zero_()
            self.merge.bias.zero_()
            for i in range(c):
                self.spike.weight[i, i] = 1.0
                self.merge.weight[i, i] = 1.0
            self.spike.bias[c] = 1000.0

    def forward(self, x):
        x = self.merge(self.spike(self.stem(x)))
        return self.head(torch.flatten(self.pool(self.rest(x)), 1))


@pytest.fixture(scope="module")
def hostile(trained_tiny, colour_data, tiny_meta):
    net, _ = trained_tiny
    model = Hostile(net).eval()
    x = torch.from_numpy(np.concatenate([edgepilot.runtime.preprocess(i, tiny_meta)
                                         for i in colour_data[0][:8]]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))  # the detour is a no-op in float
    return model


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_guard_keeps_the_hostile_layer_in_float(hostile, colour_data, tiny_meta, tmp_path,
                                                 fmt, fresh_colour_data, torch_top1,
                                                 model_top1):
    common = dict(formats=fmt, precision="int8", meta=tiny_meta, data=colour_data,
                  quiet=True)
    [naive] = edgepilot.export(hostile, torch.zeros(1, 3, 32, 32), out=tmp_path / "naive",
                               max_drop=None, **common)
    naive_drop = 100 * (naive.accuracy_torch - naive.accuracy_export)
    assert naive_drop > 1.0, f"the hostile layer should hurt int8 ({naive_drop:.2f} points)"

    [guarded] = edgepilot.export(hostile, torch.zeros(1, 3, 32, 32), out=tmp_path / "guarded",
                                 max_drop=1.0, **common)
    assert 100 * (guarded.accuracy_torch - guarded.accuracy_export) <= 1.0
    kept = guarded.notes["kept_float"]
    assert kept and "SQNR" in kept[0]["reason"]
    # Named as the user's module names it, whatever the format calls the tensor (ONNX:
    # conv2d_1; TFLite: a scope path of class names): "spike (Conv)", "spike (Conv2d)".
    assert kept[0]["layer"].startswith("spike ("), kept[0]["layer"]
    attempts = guarded.notes["guard_attempts"]
    assert attempts[0]["drop_points"] > 1.0
    assert min(a["drop_points"] for a in attempts) <= 1.0
    assert not list(tmp_path.glob("*.try*"))  # no trial files left behind
    # Our own measure on images the guard never evaluated: the guarded file agrees with
    # PyTorch, the naive one does not.
    images = fresh_colour_data[0][:200]
    expected = torch_top1(hostile, images, tiny_meta)

    def agree(report):
        return np.mean(model_top1(edgepilot.load(report.path), images) == expected)

    assert agree(guarded) >= 0.97 and agree(guarded) - agree(naive) > 0.01


def test_channel_sqnr_sees_a_crushed_channel_that_whole_tensor_sqnr_misses():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 8, 8))
    x[:, 2] += 1000  # an outlier channel
    step = 2000 / 255
    q = np.round(x / step) * step  # per-tensor int8 quantization
    whole = 10 * np.log10((x ** 2).sum() / ((x - q) ** 2).sum())
    assert whole > 40  # looks healthy as a whole
    assert channel_sqnr(x, q, 1) < 10  # two of three channels are noise
    assert channel_sqnr(x, x + 1e-6, 1) > 55


def test_rank_blames_the_layer_that_loses_signal_not_its_heirs():
    order = ["a", "b", "fused", "c"]
    inputs_of = {"a": ["input"], "b": ["a"], "fused": ["b"], "c": ["fused"]}
    # "fused" was not measured: "c" is judged against what "fused" was computed from;
    # the input is credited with 40 dB (8-bit), so "a" lost 10.
    ranked = rank_by_sqnr_loss(order, inputs_of, {"a": 30.0, "b": 5.0, "c": 3.0})
    assert [e.layer for e in ranked] == ["b", "a", "c"]
    assert [e.loss_db for e in ranked] == [25.0, 10.0, 2.0]


def test_guard_fails_clearly_when_nothing_helps(tmp_path):
    guard = Guard(evaluate=lambda path: 0.5, baseline=0.9, max_drop=1.0, max_steps=2)
    layers = [LayerError("x", 1.0, 30.0), LayerError("y", 2.0, 20.0), LayerError("z", 3.0, 9.0)]
    with pytest.raises(EdgepilotError, match="loses 40.00 points of accuracy .* 2 layer\\(s\\)"):
        guard.run(lambda keep: tmp_path / "m.onnx", lambda path: layers, "onnx")
    assert [k["layer"] for k in guard.kept] == ["x", "y"]  # ties go to the worse-ranked


def test_accuracy_decides_among_the_proposed_layers(tmp_path):
    def quantize(keep):
        return tmp_path / ("+".join(keep) or "none")

    # SQNR ranks "x" worst, but only keeping "y" in float restores accuracy.
    guard = Guard(evaluate=lambda p: 0.9 if "y" in p.name else 0.5, baseline=0.9)
    layers = [LayerError("x", 1.0, 30.0), LayerError("y", 2.0, 20.0)]
    assert guard.run(quantize, lambda path: layers, "onnx").name == "y"
    assert [k["layer"] for k in guard.kept] == ["y"]


def test_a_layer_made_useless_by_a_later_one_goes_back_to_int8(tmp_path):
    def quantize(keep):
        return tmp_path / ("+".join(keep) or "none")

    # One candidate per step: "x" (ranked worst) is kept first though only "y" matters.
    guard = Guard(evaluate=lambda p: 0.9 if "y" in p.name.split("+") else 0.5, baseline=0.9,
                  candidates=1)
    ranked = [LayerError("x", 1.0, 30.0), LayerError("y", 2.0, 20.0)]
    assert guard.run(quantize, lambda path: ranked, "onnx").name == "y"
    assert [k["layer"] for k in guard.kept] == ["y"]
    assert [a["kept_float"] for a in guard.attempts] == [[], ["x"], ["x", "y"], ["y"]]


def test_layers_needed_together_both_stay_in_float(tmp_path):
    def quantize(keep):
        return tmp_path / ("+".join(sorted(keep)) or "none")

    guard = Guard(evaluate=lambda p: 0.9 if p.name == "x+y" else 0.5, baseline=0.9,
                  candidates=1)
    ranked = [LayerError("x", 1.0, 30.0), LayerError("y", 2.0, 20.0)]
    assert guard.run(quantize, lambda path: ranked, "onnx").name == "x+y"
    assert [k["layer"] for k in guard.kept] == ["x", "y"]
    assert [a["kept_float"] for a in guard.attempts][-2:] == [["y"], ["x"]]  # both tried back


@pytest.mark.slow
def test_without_labels_the_guard_measures_on_the_calibration_images(hostile, colour_data,
                                                                    tiny_meta, tmp_path,
                                                                    fresh_colour_data,
                                                                    torch_top1, model_top1):
    """No labelled data: the guard still runs, on the calibration images, with PyTorch's own
    class probabilities for labels, and keeps the hostile layer in float."""
    common = dict(formats="onnx", precision="int8", meta=tiny_meta, calib=colour_data[0],
                  quiet=True)
    [naive] = edgepilot.export(hostile, torch.zeros(1, 3, 32, 32), out=tmp_path / "naive",
                               max_drop=None, **common)
    [guarded] = edgepilot.export(hostile, torch.zeros(1, 3, 32, 32), out=tmp_path / "guarded",
                                 max_drop=1.0, **common)
    assert guarded.measured_on == "calibration images" and guarded.accuracy_torch is None
    guard = guarded.notes["guard"]
    assert guard["measure"].startswith("expected top-1") and guard["max_drop"] == 1.0
    table = io.StringIO()
    print_reports([guarded], console=Console(file=table, width=250, color_system=None))
    assert "the int8 guard had no labels: it measured expected top-1" in table.getvalue()
    attempts = guarded.notes["guard_attempts"]
    assert attempts[0]["drop_points"] > 1.0
    assert min(a["drop_points"] for a in attempts) <= 1.0
    assert guarded.notes["kept_float"][0]["layer"].startswith("spike (")
    images = fresh_colour_data[0][:200]
    expected = torch_top1(hostile, images, tiny_meta)

    def agree(report):
        return np.mean(model_top1(edgepilot.load(report.path), images) == expected)

    assert agree(guarded) >= 0.97 and agree(guarded) - agree(naive) > 0.01


def test_the_unlabelled_measure_weighs_a_flip_by_what_pytorch_believed():
    """Flipping an image PyTorch is sure about costs nearly a whole image; flipping one it
    hesitates on (0.36 against 0.34) costs 0.02 of one."""
    from edgepilot.export.probe import _soft_labels
    from edgepilot.meta import ModelMeta

    meta = ModelMeta(name="three", labels=("a", "b", "c"), input_size=(8, 8))
    probs = np.array([[0.98, 0.01, 0.01], [0.36, 0.34, 0.30]])
    soft = _soft_labels(np.log(probs), meta)  # logits
    np.testing.assert_allclose(soft, probs, atol=1e-9)
    expected = soft.max(1)
    sure_flipped = soft[[0, 1], [1, 0]]
    unsure_flipped = soft[[0, 1], [0, 1]]
    assert expected[0] - sure_flipped[0] > 0.9
    assert abs(expected[1] - unsure_flipped[1] - 0.02) < 1e-9
    assert _soft_labels(np.zeros((2, 4)), meta.replace(output="probs")).shape == (2, 4)
    sigmoid = _soft_labels(np.array([[0.8]]), meta.replace(labels=("stop", "go"),
                                                             output="sigmoid"))
    np.testing.assert_allclose(sigmoid, [[0.2, 0.8]])
