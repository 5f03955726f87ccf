"""int8 fine-tuning without labels (`export.qat`): the weights it writes are the int8 codes it
trained with, it never hands back a model worse on its held-out images than bias correction
alone, it stops at its time budget, and export(qat=True) carries the fine-tuned weights into
the int8 file."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
from torch import nn  # noqa: E402

import edgepilot  # noqa: E402
from edgepilot.errors import EdgepilotError, InputError  # noqa: E402
from edgepilot.export.calibration import as_inputs  # noqa: E402
from edgepilot.export.guard import Guard, LayerError  # noqa: E402
from edgepilot.export.qat import STEP_RATE, finetune  # noqa: E402
from edgepilot.export.rounding import _on_grid, round_weights  # noqa: E402
from edgepilot.meta import ModelMeta  # noqa: E402

META = ModelMeta(name="dw", labels=tuple("abcdef"), input_size=(16, 16),
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _net():
    """Weights with one large value per channel: the int8 grid is coarse for the rest."""
    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 12, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 6))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.view(m.weight.shape[0], -1)[:, 0] *= 25
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _images(n, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))
    return np.clip(base + rng.normal(0, 40, (n, 16, 16, 3)), 0, 255).astype(np.uint8)


def _layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _rounded(net, n=64):
    inputs = as_inputs(_images(n, 1), META)
    model, note = round_weights(net, inputs)
    assert note["applied"]
    return inputs, model


def _nearest(net, n=64):
    """A start with room to learn: batch norms folded, each weight rounded to its nearest
    code (`round_weights` already rounds these toy layers almost as well as they can be)."""
    from edgepilot.export.rounding import _fold_batch_norms

    inputs = as_inputs(_images(n, 1), META)
    model = copy.deepcopy(net).eval()
    with torch.no_grad():
        _fold_batch_norms(model, torch.from_numpy(inputs[0]))
        for layer in _layers(model):
            layer.weight.copy_(_on_grid(layer.weight))
    return inputs, model


def test_fine_tuning_lowers_the_held_out_loss_and_writes_the_codes_it_trained_with():
    net = _net()
    inputs, start = _nearest(net)
    frozen = copy.deepcopy(start.state_dict())
    lines = []
    tuned, note = finetune(net, start, inputs, classifier=True, epochs=12, learning_rate=3e-3,
                           step_rate=0.1, progress=lines.append)
    assert note["applied"] and note["epochs"] == 12 and len(lines) == 12
    assert note["images"] + note["held_out"] == 64 and note["held_out"] == 8
    loss = note["held_out_loss"]
    assert loss["kept"] == min([loss["start"], *loss["per_epoch"]])
    assert loss["kept"] < 0.8 * loss["start"], loss  # it learned, not only held its ground
    for layer in _layers(tuned):  # on the grid, no parametrization left behind
        assert type(layer.weight) is nn.Parameter and not layer.weight.requires_grad
        assert torch.allclose(layer.weight, _on_grid(layer.weight), atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(_layers(tuned), _layers(start))
               for a, b in [(a.weight, b.weight)])
    for name, value in start.state_dict().items():  # the student was copied, not trained
        assert torch.equal(value, frozen[name])


def test_a_model_made_worse_is_never_kept():
    net = _net()
    inputs, start = _rounded(net)
    # A learning rate this large wrecks the model at once: the start must be what comes back.
    tuned, note = finetune(net, start, inputs, classifier=True, epochs=2, learning_rate=10.0,
                           step_rate=50.0)
    assert note["kept_epoch"] == 0
    assert min(note["held_out_loss"]["per_epoch"]) > note["held_out_loss"]["start"]
    for a, b in zip(_layers(tuned), _layers(start)):
        assert torch.allclose(a.weight, b.weight) and torch.allclose(a.bias, b.bias)


def test_it_stops_at_its_time_budget_before_a_step():
    net = _net()
    inputs, start = _rounded(net)
    tuned, note = finetune(net, start, inputs, classifier=True, budget_s=0.0)
    assert note["applied"] and note["epochs"] == 0 and note["kept_epoch"] == 0
    assert "time budget (0 s) in epoch 1" in note["stopped"]
    for a, b in zip(_layers(tuned), _layers(start)):
        assert torch.equal(a.weight, b.weight)


def test_non_classifier_outputs_are_matched_by_scaled_squared_error():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _net()[:7]
            self.boxes, self.scores = nn.Linear(12 * 8 * 8, 4), nn.Linear(12 * 8 * 8, 2)

        def forward(self, x):
            h = self.body(x).flatten(1)
            return {"boxes": self.boxes(h), "scores": self.scores(h)}

    torch.manual_seed(0)
    net = TwoHeads().eval()
    inputs, start = _rounded(net, 64)
    tuned, note = finetune(net, start, inputs, classifier=False, epochs=12, learning_rate=1e-4)
    assert note["loss"] == "scaled MSE"
    assert note["held_out_loss"]["kept"] < note["held_out_loss"]["start"]


def test_export_writes_the_fine_tuned_weights_into_the_int8_file(tmp_path):
    import onnx
    from onnx import numpy_helper

    net = _net()
    calib = _images(64, 1)
    [report] = edgepilot.export(net, torch.zeros(1, 3, 16, 16), formats="onnx",
                                precision="int8", out=tmp_path / "q", meta=META, calib=calib,
                                max_drop=None, qat=True, quiet=True)
    note = report.notes["qat"]
    assert note["applied"] and note["epochs"] >= 1 and report.notes["bias_correction"]["applied"]
    assert "qat" not in report.notes["bias_correction"]
    model = onnx.load(report.path)
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    codes = [values[n.input[0]] for n in model.graph.node
             if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_quantized")]
    assert len(codes) == 4 and all(int(np.abs(c).max()) == 127 for c in codes)


def test_qat_without_int8_or_without_bias_correction_is_refused(tmp_path):
    net = _net()
    with pytest.raises(InputError, match="precision int8"):
        edgepilot.export(net, torch.zeros(1, 3, 16, 16), formats="onnx", precision="fp32",
                         out=tmp_path / "q", meta=META, qat=True, quiet=True)
    with pytest.raises(InputError, match="leave bias_correction on"):
        edgepilot.export(net, torch.zeros(1, 3, 16, 16), formats="onnx", precision="int8",
                         out=tmp_path / "q", meta=META, calib=_images(16, 1), qat=True,
                         bias_correction=False, quiet=True)
    assert not list(tmp_path.iterdir())


def test_a_refusing_guard_offers_fine_tuning_unless_it_was_used(tmp_path):
    layers = [LayerError("x", 1.0, 30.0)]
    for offer in (True, False):
        guard = Guard(evaluate=lambda path: 0.5, baseline=0.9, max_steps=1, offer_qat=offer)
        with pytest.raises(EdgepilotError) as refused:
            guard.run(lambda keep: tmp_path / "m.onnx", lambda path: layers, "onnx")
        assert ("fine-tuning without labels (qat=True)" in str(refused.value)) is offer


def test_the_views_it_trains_on_are_mirrored_and_cropped_and_keep_their_shape():
    from edgepilot.export.qat import _augmented

    # Each image is a ramp left to right, so a mirror reverses it and a crop-and-scale
    # narrows its range; neither changes the batch's shape.
    ramp = torch.linspace(0, 1, 32).expand(3, 32, 32)
    batch = ramp.expand(64, 3, 32, 32).clone()
    views = _augmented(batch, torch.Generator().manual_seed(0))
    assert views.shape == batch.shape
    mirrored = views[:, 0, 0, 0] > views[:, 0, 0, -1]
    spans = (views[:, 0, 0, :].max(1).values - views[:, 0, 0, :].min(1).values)
    cropped = spans < 0.95
    assert 10 < int(mirrored.sum()) < 54 and 10 < int(cropped.sum()) < 54
    assert float(spans.min()) > 0.6  # never less than 70% of the side
    again = _augmented(batch, torch.Generator().manual_seed(0))
    assert torch.equal(views, again)  # seeded: the same export gives the same weights
    tiny = torch.rand(4, 2, 4, 4)  # too small to crop: only mirrored
    out = _augmented(tiny, torch.Generator().manual_seed(1))
    assert all(torch.equal(o, t) or torch.equal(o, t.flip(-1)) for o, t in zip(out, tiny))


def test_weights_move_in_steps_of_their_own_channel_whatever_its_scale():
    """Adam moves every parameter by about its rate per update: in weight units a channel
    whose int8 step is tiny would flip dozens of codes at once, so weights train in steps."""
    net = _net()
    with torch.no_grad():
        net[-1].weight[:3] *= 1e-4  # three classes' weights with a tiny int8 step
    inputs, start = _rounded(net)
    tuned, note = finetune(net, start, inputs, classifier=True, epochs=1)
    assert note["epochs"] == 1 and note["step_rate"] == STEP_RATE
    for before, after in zip(_layers(start), _layers(tuned)):
        flat = before.weight.reshape(len(before.weight), -1)
        scale = flat.abs().max(1).values[:, None] / 127
        old = flat / scale
        new = after.weight.reshape(len(flat), -1) / scale
        assert torch.allclose(new, new.round(), atol=1e-3)  # on the same grid
        assert (new.round() - old.round()).abs().max() <= 1  # at most one step in an epoch
        assert torch.equal(new.round().abs().max(1).values, torch.full((len(flat),), 127.0))
