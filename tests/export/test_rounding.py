"""int8 weights rounded once on the PyTorch module, with bias correction: every format's
file ends up with exactly those weights, each layer's mean output shift is taken off its bias,
and a model whose batch norms cannot be folded safely is left to each exporter."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

import edgepilot  # noqa: E402
from edgepilot.export.calibration import as_inputs  # noqa: E402
from edgepilot.export.rounding import _on_grid, round_weights  # noqa: E402
from edgepilot.meta import ModelMeta  # noqa: E402

META = ModelMeta(name="dw", labels=tuple("abcdef"), input_size=(20, 20),
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _net():
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 12, 3, 2, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU6(),
        nn.Conv2d(12, 12, 3, 1, 1, groups=12, bias=False), nn.BatchNorm2d(12), nn.ReLU6(),
        nn.Conv2d(12, 16, 1, bias=False), nn.BatchNorm2d(16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 6))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.3, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _images(n, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))
    return np.clip(base + rng.normal(0, 35, (n, 20, 20, 3)), 0, 255).astype(np.uint8)


def test_weights_land_on_the_per_channel_int8_grid():
    weight = torch.randn(5, 3, 3, 3)
    rounded = _on_grid(weight)
    scale = weight.reshape(5, -1).abs().max(1).values / 127
    codes = rounded.reshape(5, -1) / scale[:, None]
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert torch.allclose(codes.abs().max(1).values, torch.full((5,), 127.0))
    assert torch.equal(_on_grid(rounded), rounded) or torch.allclose(_on_grid(rounded), rounded)


def _assert_rounded_down_or_up(weight, rounded):
    """On `weight`'s own per-channel grid (scale max |w| / 127), each code its floor or ceil,
    each channel's largest weight at exactly ±127 steps."""
    flat, got = weight.reshape(len(weight), -1).double(), rounded.reshape(len(weight), -1)
    scale = flat.abs().max(1).values[:, None] / 127
    codes, ratio = got.double() / scale, flat / scale
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    codes = codes.round()
    assert bool(((codes == ratio.floor()) | (codes == ratio.ceil())).all())
    assert torch.equal(codes.abs().max(1).values, torch.full((len(weight),), 127.0,
                                                              dtype=torch.float64))
    assert torch.allclose(_on_grid(rounded), rounded, atol=1e-7)


def test_each_weight_is_rounded_down_or_up_whichever_moves_the_layers_output_least():
    from edgepilot.export.rounding import _descend

    torch.manual_seed(0)
    # inputs that move together, as neighbouring pixels do: a Gram matrix far from diagonal
    mixing = torch.randn(6, 6, dtype=torch.float64)
    inputs = torch.randn(400, 1, dtype=torch.float64) + 0.3 * torch.randn(400, 6,
                                                                          dtype=torch.float64)
    inputs = inputs @ (torch.eye(6, dtype=torch.float64) + 0.2 * mixing)
    gram = (inputs.T @ inputs)[None]
    weight = torch.randn(1, 8, 6, dtype=torch.float64)
    codes, before, after = _descend(weight.clone(), gram)
    rounded = codes * weight.abs().amax(2, keepdim=True) / 127

    def error(values):
        e = values - weight
        return float(torch.einsum("grn,gnm,grm->", e, gram, e))

    nearest = _on_grid(weight[0])[None]
    assert before == pytest.approx(error(nearest))
    assert after == pytest.approx(error(rounded))
    assert after < 0.8 * before  # correlated inputs: errors that cancel were found
    _assert_rounded_down_or_up(weight[0], rounded[0])
    # no single flip of a free weight lowers it further (a local minimum of the descent)
    scale = weight.abs().amax(2, keepdim=True) / 127
    for row in range(8):
        for j in range(6):
            if abs(float(weight[0, row, j])) == float(weight[0, row].abs().max()):
                continue
            other = rounded.clone()
            code = float((rounded[0, row, j] / scale[0, row, 0]).round())
            floor = float(np.floor(float(weight[0, row, j] / scale[0, row, 0])))
            other[0, row, j] = (floor + 1 if code == floor else floor) * scale[0, row, 0]
            assert error(other) >= after - 1e-9


def test_the_layers_inputs_are_read_after_the_padding_they_get():
    from edgepilot.export.rounding import _input_grams

    class SamePad(nn.Conv2d):  # pads in its own forward, as TensorFlow-style ports do
        def forward(self, x):
            return super().forward(nn.functional.pad(x, [0, 1, 0, 1]))

    layers = {"zeros": nn.Conv2d(3, 4, 3, padding=1),
              "reflect": nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
              "same": nn.Conv2d(3, 4, 3, padding="same", dilation=2),
              "grouped": nn.Conv2d(4, 4, 3, 2, padding=1, groups=2),
              "subclass": SamePad(3, 4, 3, 2),
              "linear": nn.Linear(5, 2)}
    torch.manual_seed(1)
    x = torch.randn(6, 3, 9, 9)
    wanted = {"zeros": x, "reflect": nn.functional.pad(x, [1, 1, 1, 1], mode="reflect"),
              "same": nn.functional.pad(x, [2, 2, 2, 2]),
              "subclass": nn.functional.pad(x, [0, 1, 0, 1])}
    for name, layer in layers.items():
        inp = torch.randn(6, 4, 9, 9) if name == "grouped" else \
            torch.randn(6, 7, 5) if name == "linear" else x
        with torch.no_grad():
            gram = _input_grams(layer, {name: layer}, inp)[name]
        assert "_conv_forward" not in vars(layer)  # the layer is left as it was
        if name == "linear":
            rows = inp.reshape(-1, 5).double()
            assert torch.allclose(gram[0], rows.T @ rows, rtol=1e-5, atol=1e-3)
            continue
        if name == "grouped":
            patches = nn.functional.unfold(inp, 3, padding=1, stride=2)  # (6, 36, positions)
            for group in range(2):
                part = patches[:, group * 18:(group + 1) * 18].transpose(1, 2).reshape(-1, 18)
                assert torch.allclose(gram[group], part.T.double() @ part.double(), rtol=1e-4,
                                      atol=1e-3)
            continue
        patches = nn.functional.unfold(wanted[name], 3, dilation=layer.dilation,
                                       padding=1 if name == "zeros" else 0,
                                       stride=layer.stride).transpose(1, 2).reshape(-1, 27)
        assert gram.shape == (1, 27, 27)
        assert torch.allclose(gram[0], patches.T.double() @ patches.double(), rtol=1e-4,
                              atol=1e-3), name


def _folded(net):
    import copy

    from edgepilot.export.rounding import _fold_batch_norms

    model = copy.deepcopy(net)
    _fold_batch_norms(model, torch.zeros(1, 3, 20, 20))
    return model


def _layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_every_layers_mean_shift_is_taken_off_its_bias():
    net = _net()
    inputs = as_inputs(_images(32, 1), META)
    rounded, note = round_weights(net, inputs)
    assert note["applied"] and note["batch_norms_folded"] == 3 and note["layers"] == 4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in rounded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 3  # a copy was made
    folded = _folded(net)
    seen = []
    handles = [m.register_forward_hook(lambda module, args, out: seen.append(args[0]))
               for m in _layers(folded)]
    with torch.no_grad():
        folded(torch.from_numpy(np.concatenate(inputs)))
    for handle in handles:
        handle.remove()
    for before, after, x in zip(_layers(folded), _layers(rounded), seen):
        dims = [0, 2, 3] if x.ndim == 4 else [0]
        with torch.no_grad():
            want = before(x)
            corrected = (after(x) - want).mean(dims)
            uncorrected = nn.functional.conv2d(x, after.weight, before.bias, before.stride,
                                               before.padding, before.dilation,
                                               before.groups) if x.ndim == 4 else \
                nn.functional.linear(x, after.weight, before.bias)
            shift = (uncorrected - want).mean(dims)
        _assert_rounded_down_or_up(before.weight, after.weight)
        assert corrected.abs().max() < 1e-5 * want.abs().max()
        assert shift.abs().max() > 100 * corrected.abs().max()


@pytest.mark.slow
def test_the_onnx_and_tflite_files_hold_exactly_the_rounded_weights(tmp_path):
    pytest.importorskip("litert_torch")
    from ai_edge_litert import schema_py_generated as schema

    net = _net()
    calib = _images(48, 2)
    rounded, _ = round_weights(net, as_inputs(calib, META))
    want = sorted(tuple(round(float(v), 5) for v in m.weight.detach().numpy().ravel()[:6])
                  for m in _layers(rounded))
    reports = edgepilot.export(net, torch.zeros(1, 3, 20, 20), formats=["onnx", "tflite"],
                               precision="int8", out=tmp_path / "dw", meta=META, calib=calib,
                               max_drop=None, quiet=True)
    assert all(r.notes["bias_correction"]["applied"] for r in reports)
    onnx_model = onnx.load(reports[0].path)
    values = {i.name: numpy_helper.to_array(i) for i in onnx_model.graph.initializer}
    got = []
    for node in onnx_model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("weight_quantized"):
            codes, scale = values[node.input[0]].astype(np.float64), values[node.input[1]]
            shape = (-1,) + (1,) * (codes.ndim - 1)
            got.append(tuple(round(float(v), 5)
                             for v in (codes * scale.reshape(shape)).ravel()[:6]))
    assert len(got) == len(want)
    for a, b in zip(sorted(got), want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    data = open(reports[1].path, "rb").read()
    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    graph = tree.subgraphs[0]
    codes_per_layer = []
    for op in graph.operators:
        code = tree.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) in (
                schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D,
                schema.BuiltinOperator.FULLY_CONNECTED):
            tensor = graph.tensors[op.inputs[1]]
            codes = np.frombuffer(bytes(tree.buffers[tensor.buffer].data), np.int8)
            codes_per_layer.append(int(np.abs(codes).max()))
    assert codes_per_layer and set(codes_per_layer) == {127}


def test_a_convolution_read_past_its_batch_norm_is_left_to_each_exporter():
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.head = nn.Linear(4, 6)
            with torch.no_grad():
                self.norm.running_mean.fill_(0.5)

        def forward(self, x):
            y = self.conv(x)
            z = self.norm(y) + y  # the conv's output is read twice
            return self.head(z.mean((2, 3)))

    net = Branch().eval()
    same, note = round_weights(net, as_inputs(_images(8, 3), META))
    assert same is net and not note["applied"] and "batch norms" in note["why"]


def _labelled(net, n, seed):
    images = _images(n, seed)
    with torch.no_grad():
        logits = net(torch.from_numpy(np.concatenate(as_inputs(images, META))))
    return images, logits.argmax(1).numpy()


def test_with_a_guard_the_file_with_the_better_rounding_is_kept(tmp_path, monkeypatch):
    from edgepilot.export import rounding

    net = _net()
    data = _labelled(net, 64, 4)
    [kept] = edgepilot.export(net, torch.zeros(1, 3, 20, 20), formats="onnx", precision="int8",
                              out=tmp_path / "fair", meta=META, data=data, max_drop=100,
                              quiet=True)
    measured = kept.notes["bias_correction"]["measured"]
    assert kept.notes["bias_correction"]["applied"]
    assert measured["with_correction"] >= measured["each_quantizer_rounding"]

    real = rounding.round_weights

    def harmful(module, inputs):  # a "correction" that pushes every image to the last class
        model, note = real(module, inputs)
        with torch.no_grad():
            model[-1].bias += torch.arange(6.0) * 50
        return model, note

    monkeypatch.setattr(rounding, "round_weights", harmful)
    [dropped] = edgepilot.export(net, torch.zeros(1, 3, 20, 20), formats="onnx",
                                 precision="int8", out=tmp_path / "harm", meta=META, data=data,
                                 max_drop=100, quiet=True)
    note = dropped.notes["bias_correction"]
    assert not note["applied"] and "without it measured better" in note["why"]
    assert note["measured"]["with_correction"] < note["measured"]["each_quantizer_rounding"]
    assert dropped.accuracy_export == pytest.approx(kept.accuracy_export, abs=0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fair_int8.onnx", "fair_int8.onnx.json", "harm_int8.onnx", "harm_int8.onnx.json"]


@pytest.mark.parametrize("spread, kept", [(0.02, True), (0.001, False)])
def test_the_other_rounding_replaces_the_correction_only_beyond_the_measurements_spread(
        tmp_path, monkeypatch, spread, kept):
    """On 200 detector scenes two int8 files measure a point apart by the choice of scenes
    alone: a file without the correction that scores 1 point better on the guard's images
    wins only when the difference is beyond twice its spread on resampled images."""
    from edgepilot.export.probe import Probe

    scores = iter([0.50, 0.51])  # with the correction, then each quantizer's own rounding
    real = Probe.accuracy

    def accuracy(self, path, keep=False):
        real(self, path, keep=keep)
        return next(scores) if keep else 0.5

    monkeypatch.setattr(Probe, "accuracy", accuracy)
    monkeypatch.setattr(Probe, "difference_spread", lambda self, a, b, **_: spread)
    net = _net()
    [report] = edgepilot.export(net, torch.zeros(1, 3, 20, 20), formats="onnx",
                                precision="int8", out=tmp_path / "n", meta=META,
                                data=_labelled(net, 32, 5), max_drop=100, quiet=True)
    note = report.notes["bias_correction"]
    assert note["applied"] is kept
    assert note["measured"]["difference_sd"] == spread
    if not kept:
        assert "standard deviations" in note["why"]


def test_the_spread_of_two_files_difference_is_zero_for_one_file_and_not_for_two(tmp_path):
    from edgepilot.export.probe import Probe

    net, other = _net(), _net()
    with torch.no_grad():  # another model: it decides differently on some images
        for parameter in other.parameters():
            parameter.add_(torch.randn_like(parameter) * parameter.std().nan_to_num(0.1))
    images, labels = _labelled(net, 48, 6)
    _, theirs = _labelled(other, 48, 6)
    labels = np.where(np.arange(48) % 2 == 0, labels, theirs)  # each right on some images
    first, second = (edgepilot.export(model, torch.zeros(1, 3, 20, 20), formats="onnx",
                                      out=tmp_path / name, meta=META, quiet=True)[0].path
                     for name, model in (("a", net), ("b", other)))
    probe = Probe(net, torch.zeros(1, 3, 20, 20), META, (images, labels))
    for path in (first, second):
        probe.accuracy(path, keep=True)
    assert probe.difference_spread(first, first) == 0.0
    assert probe.difference_spread(first, second) > 0.0
    probe.forget(second)
    assert probe.difference_spread(first, second) is None
