"""Never slower than float: the kinds of layers int8 makes slower on this CPU stay in float,
chosen by timings (injected here), only when the file gets faster beyond the timing noise and
the accuracy budget holds."""

import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from edgepilot.export.report import print_reports
from edgepilot.export.speed import SPEED_GAIN, keep_slow_kinds_float

KINDS = {"stem convolution": ["stem"], "depthwise convolutions": ["dw1", "dw2"],
         "pointwise convolutions": ["pw1", "pw2"], "fully connected": ["fc"]}
# What each kind costs in int8 and in float, ms: depthwise and stem are slower in int8 (as on
# a CPU without int8 dot products); the stem's gain is inside the timing noise.
COST = {"stem convolution": (1.0, 0.96), "depthwise convolutions": (4.0, 2.5),
        "pointwise convolutions": (4.0, 6.0), "fully connected": (1.0, 1.2)}


def _fake(kinds=KINDS, cost=COST):
    def quantize(float_layers):
        return Path("+".join(sorted(float_layers)) or "all-int8")

    def time_ms(files):
        timings = {}
        for key, path in files.items():
            in_float = set(path.name.split("+"))
            timings[key] = sum(cost[k][1] if set(kinds[k]) <= in_float else cost[k][0]
                               for k in kinds)
        return timings

    return quantize, time_ms


def test_the_kind_slower_in_int8_goes_to_float_and_the_others_stay_int8():
    quantize, time_ms = _fake()
    path, kept, notes = keep_slow_kinds_float(KINDS, Path("all-int8"), quantize, time_ms)
    assert kept == ["dw1", "dw2"] and path.name == "dw1+dw2"
    chosen = {n["kind"]: n for n in notes}
    assert chosen["depthwise convolutions"]["chosen"] == "float"
    assert "faster" in chosen["depthwise convolutions"]["why"]
    assert chosen["depthwise convolutions"]["int8_ms"] == 10.0
    assert chosen["depthwise convolutions"]["with_float_ms"] == 8.5
    # 4% faster is inside the noise; slower kinds stay int8, each saying why
    assert chosen["stem convolution"]["chosen"] == "int8"
    assert f"within the timing noise ({SPEED_GAIN:.0%})" in chosen["stem convolution"]["why"]
    assert chosen["pointwise convolutions"]["chosen"] == "int8"
    assert "slower" in chosen["pointwise convolutions"]["why"]
    assert {n["layers"] for n in notes} == {1, 2}


def test_the_file_kept_is_the_confirmed_one_not_the_one_timed():
    quantize, time_ms = _fake()
    path, kept, _ = keep_slow_kinds_float(KINDS, Path("all-int8"), quantize, time_ms,
                                          lambda layers: Path("full-" + "+".join(layers)))
    assert kept == ["dw1", "dw2"] and path.name == "full-dw1+dw2"


def test_two_kinds_slower_in_int8_both_go_to_float_fastest_first():
    cost = dict(COST, **{"fully connected": (3.0, 1.0)})
    quantize, time_ms = _fake(cost=cost)
    path, kept, _ = keep_slow_kinds_float(KINDS, Path("all-int8"), quantize, time_ms)
    assert kept == ["fc", "dw1", "dw2"] and path.name == "dw1+dw2+fc"


def test_a_kind_faster_in_float_stays_int8_when_the_budget_would_break():
    quantize, time_ms = _fake()
    tried = []

    def confirm(layers):  # the file with these layers in float breaks the budget
        tried.append(sorted(layers))
        return None

    path, kept, notes = keep_slow_kinds_float(KINDS, Path("all-int8"), quantize, time_ms,
                                              confirm)
    assert kept == [] and path.name == "all-int8" and tried == [["dw1", "dw2"]]
    depthwise = next(n for n in notes if n["kind"] == "depthwise convolutions")
    assert depthwise["chosen"] == "int8" and "accuracy budget" in depthwise["why"]


@pytest.mark.slow
def test_the_onnx_file_keeps_its_depthwise_convolutions_float_when_timed_slower(
        monkeypatch, tmp_path):
    """A real export with injected timings: the file written has its depthwise convolution in
    float (a plain Conv on float weights) and its other convolutions int8."""
    torch = pytest.importorskip("torch")
    import onnx
    from torch import nn

    import edgepilot
    from edgepilot.export import onnx as onnx_export
    from edgepilot.meta import ModelMeta

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU(),
                        nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 4)).eval()
    meta = ModelMeta(name="dw", labels=("a", "b", "c", "d"), input_size=(16, 16))
    monkeypatch.setattr(onnx_export, "SEARCH_ABOVE_MS", 0.0)
    monkeypatch.setattr(onnx_export, "_fidelity", lambda paths, inputs: {
        k: 40.0 for k in paths if k != "fp32"})

    def time_ms(paths, x, seconds):  # 3 ms for each int8 depthwise conv, 1 in float
        timings = {}
        for key, path in paths.items():
            graph = onnx.load(str(path)).graph
            dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
            timings[key] = 5.0 + sum(3.0 if n.op_type == "QLinearConv" or
                                     n.input[1] in dequantized else 1.0
                                     for n in graph.node
                                     if n.op_type in ("Conv", "QLinearConv") and
                                     any(a.name == "group" and a.i > 1 for a in n.attribute))
        return timings

    monkeypatch.setattr(onnx_export, "_time_ms", time_ms)
    rng = np.random.default_rng(0)
    [report] = edgepilot.export(net, torch.zeros(1, 3, 16, 16), formats="onnx",
                                precision="int8", out=tmp_path / "dw", meta=meta,
                                calib=rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8),
                                max_drop=None, quiet=True)
    speed = {n["kind"]: n for n in report.notes["int8_settings"]["speed"]}
    assert speed["depthwise convolutions"]["chosen"] == "float"
    table = io.StringIO()
    print_reports([report], console=Console(file=table, width=250, color_system=None))
    assert "kept in float because int8 was slower on this CPU: depthwise convolutions " \
        "(6.00 ms against 8.00 ms all int8)" in table.getvalue()
    assert speed["stem convolution"]["chosen"] == "int8"
    graph = onnx.load(report.path).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    depthwise = [n for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert depthwise and all(n.input[1] not in dequantized for n in depthwise)  # float weights
    assert any(n.input[1] in dequantized for n in convs if n not in depthwise)  # the rest int8
    assert not list(tmp_path.glob("*.try*"))


@pytest.mark.slow
def test_the_tflite_file_keeps_its_depthwise_convolutions_float_when_timed_slower(
        monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("litert_torch")
    from ai_edge_litert import schema_py_generated as schema
    from torch import nn

    import edgepilot
    from edgepilot.export import litert as litert_export
    from edgepilot.meta import ModelMeta

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU(),
                        nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 4)).eval()
    meta = ModelMeta(name="dw", labels=("a", "b", "c", "d"), input_size=(16, 16))

    def float_depthwise(path) -> bool:
        data = path.read_bytes()
        tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
        graph = tree.subgraphs[0]
        for op in graph.operators:
            code = tree.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) == \
                    schema.BuiltinOperator.DEPTHWISE_CONV_2D:
                return graph.tensors[op.inputs[1]].type == schema.TensorType.FLOAT32
        raise AssertionError("no depthwise convolution")

    def time_ms(paths, x, seconds):  # the float model 10 ms; int8 depthwise 3 ms, float 1
        return {key: 10.0 if key == "fp32" else 5.0 + (1.0 if float_depthwise(p) else 3.0)
                for key, p in paths.items()}

    monkeypatch.setattr(litert_export, "_time_ms", time_ms)
    rng = np.random.default_rng(0)
    [report] = edgepilot.export(net, torch.zeros(1, 3, 16, 16), formats="tflite",
                                precision="int8", out=tmp_path / "dw", meta=meta,
                                calib=rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8),
                                max_drop=None, quiet=True)
    speed = {n["kind"]: n for n in report.notes["speed"]}
    assert speed["depthwise convolutions"]["chosen"] == "float"
    assert speed["stem convolution"]["chosen"] == "int8"
    assert float_depthwise(Path(report.path))
    assert not list(tmp_path.glob("*.try*"))
    model = edgepilot.load(report.path)
    assert model(np.zeros((1, 16, 16, 3), np.float32)).shape == (1, 4)
