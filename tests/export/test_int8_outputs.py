"""An int8 ONNX file's last layer returns its result in float instead of rounding it to 256
levels first: the file's outputs are float32 anyway, and a classifier's close logits are where
the rounding changes the top-1 (issue 32: 14 of 300 photo crops on EfficientNet-Lite0). The
last layer keeps its int8 weights. A TFLite int8 classifier stays integer up to its float
softmax: the Edge TPU, phone NPUs and tflite-runtime's kernels take it as full-integer. A
TFLite detector's head (its last convolutions and sigmoid) runs in float, so its scores and
boxes are not rounded to 256 levels, except in a file bound for the Edge TPU."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from torch import nn  # noqa: E402

import edgepilot  # noqa: E402
from edgepilot.meta import ModelMeta  # noqa: E402

META = ModelMeta(name="tiny", labels=tuple("abcde"), input_size=(16, 16),
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5)).eval()


def _images(n):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 16, 16, 3)).astype(np.uint8)


def test_the_onnx_files_logits_come_from_the_gemm_not_a_dequantize(tmp_path):
    [report] = edgepilot.export(_net(), torch.zeros(1, 3, 16, 16), formats="onnx",
                                precision="int8", out=tmp_path / "t", meta=META,
                                calib=_images(32), max_drop=None, quiet=True)
    graph = onnx.load(report.path).graph
    producer = {name: node for node in graph.node for name in node.output}
    last = producer[graph.output[0].name]
    assert last.op_type == "Gemm"
    weight = producer[last.input[1]]  # still int8 codes, dequantized
    assert weight.op_type == "DequantizeLinear"
    assert report.notes["int8_settings"]["float_outputs"]["outputs"] == [graph.output[0].name]
    assert report.top1_agreement is not None


def test_the_tflite_file_stays_integer_up_to_its_float_softmax(tmp_path):
    pytest.importorskip("litert_torch")
    from ai_edge_litert import schema_py_generated as schema

    [report] = edgepilot.export(_net(), torch.zeros(1, 3, 16, 16), formats="tflite",
                                precision="int8", out=tmp_path / "t", meta=META,
                                calib=_images(32), max_drop=None, quiet=True)
    data = open(report.path, "rb").read()
    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    graph = tree.subgraphs[0]
    produced = {out: op for op in graph.operators for out in op.outputs}

    def kind(op):
        code = tree.operatorCodes[op.opcodeIndex]
        return max(code.builtinCode, code.deprecatedBuiltinCode)

    softmax = produced[graph.outputs[0]]
    assert kind(softmax) == schema.BuiltinOperator.SOFTMAX
    dequantize = produced[softmax.inputs[0]]
    assert kind(dequantize) == schema.BuiltinOperator.DEQUANTIZE
    fc = produced[dequantize.inputs[0]]
    assert kind(fc) == schema.BuiltinOperator.FULLY_CONNECTED
    assert graph.tensors[fc.outputs[0]].type == schema.TensorType.INT8
    assert graph.tensors[fc.inputs[1]].type == schema.TensorType.INT8


class _Head(nn.Module):
    """A detector's head as the stoplight detector ends: sigmoid scores and box offsets, each
    transposed to channels-last."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU())  # the head: 6.6% of MACs
        self.scores = nn.Conv2d(8, 3, 1)
        self.boxes = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.body(x)
        return torch.sigmoid(self.scores(y)).permute(0, 2, 3, 1), \
            self.boxes(y).permute(0, 2, 3, 1)


def test_a_detectors_sigmoid_scores_and_boxes_are_not_rounded_after_its_last_layer(tmp_path):
    [report] = edgepilot.export(_Head().eval(), torch.zeros(1, 3, 16, 16), formats="onnx",
                                precision="int8", out=tmp_path / "t", meta=META,
                                calib=_images(32), max_drop=None, quiet=True)
    graph = onnx.load(report.path).graph
    producer = {name: node for node in graph.node for name in node.output}
    scores, boxes = (producer[o.name] for o in graph.output)
    assert scores.op_type == boxes.op_type == "Transpose"
    assert producer[scores.input[0]].op_type == "Sigmoid"
    assert producer[producer[scores.input[0]].input[0]].op_type == "Conv"
    assert producer[boxes.input[0]].op_type == "Conv"
    assert set(report.notes["int8_settings"]["float_outputs"]["outputs"]) == \
        {o.name for o in graph.output}
    # the scores are no longer on the 1/255 grid of a uint8 sigmoid
    import onnxruntime as ort

    session = ort.InferenceSession(report.path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).normal(size=(1, 3, 16, 16)).astype(np.float32)
    values = session.run(None, {graph.input[0].name: x})[0].ravel()
    off_grid = np.abs(values * 255 - np.round(values * 255)) > 1e-3
    assert off_grid.mean() > 0.5


DETECTOR_META = META.replace(task="detection", labels=("red", "yellow", "green"), extra={
    "decode": {"type": "centre-heatmap", "stride": 2, "heatmap": 0, "box": 1,
               "score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 50}})


def _tflite_ops(path):
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    graph = tree.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    produced = {out: op for op in graph.operators for out in op.outputs}

    def kind(op):
        code = tree.operatorCodes[op.opcodeIndex]
        return names[max(code.builtinCode, code.deprecatedBuiltinCode)]

    return graph, produced, kind, schema.TensorType


def _tflite_detector(tmp_path, **options):
    pytest.importorskip("litert_torch")
    from edgepilot.export import litert
    from edgepilot.export.options import ExportOptions

    path = tmp_path / "head_int8.tflite"
    litert.export(_Head().eval(), torch.zeros(1, 3, 16, 16), path, ExportOptions(
        meta=DETECTOR_META, precision="int8", calibration=_images(32), **options))
    return path


def test_a_tflite_detectors_head_runs_in_float_so_its_scores_and_boxes_are_not_rounded(
        tmp_path):
    path = _tflite_detector(tmp_path)
    graph, produced, kind, types = _tflite_ops(path)
    scores, boxes = (produced[o] for o in graph.outputs)
    assert kind(scores) == "LOGISTIC" and kind(boxes) == "CONV_2D"
    head = [produced[scores.inputs[0]], boxes]
    assert [kind(op) for op in head] == ["CONV_2D", "CONV_2D"]
    for op in head:  # float weights, float result
        assert graph.tensors[op.inputs[1]].type == types.FLOAT32
        assert graph.tensors[op.outputs[0]].type == types.FLOAT32
    # the body before the head stays int8
    body = [op for op in graph.operators if kind(op) == "CONV_2D" and op not in head]
    assert body and all(graph.tensors[op.inputs[1]].type == types.INT8 for op in body)

    model = edgepilot.load(path, threads=1)
    x = np.random.default_rng(3).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    values = model.run(model.prepare(x).input)[0].ravel()
    off_grid = np.abs(values * 256 - np.round(values * 256)) > 1e-3
    assert off_grid.mean() > 0.5  # not the 1/256 steps of an int8 sigmoid


def test_an_edge_tpu_bound_detector_stays_integer_to_its_outputs(tmp_path):
    path = _tflite_detector(tmp_path, full_integer=True)
    graph, produced, kind, types = _tflite_ops(path)
    convs = [op for op in graph.operators if kind(op) == "CONV_2D"]
    assert len(convs) == 4
    assert all(graph.tensors[op.inputs[1]].type == types.INT8 for op in convs)
    assert all(graph.tensors[op.outputs[0]].type == types.INT8 for op in convs)


class _HeavyHead(nn.Module):
    """A detector whose head convolutions (3x3) hold nearly all of its MACs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 1, 2), nn.ReLU())
        self.scores = nn.Conv2d(4, 3, 3, padding=1)
        self.boxes = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.body(x)
        return torch.sigmoid(self.scores(y)).permute(0, 2, 3, 1), \
            self.boxes(y).permute(0, 2, 3, 1)


def test_a_head_holding_most_of_the_work_stays_int8(tmp_path):
    pytest.importorskip("litert_torch")
    from edgepilot.export import litert
    from edgepilot.export.options import ExportOptions

    path = tmp_path / "heavy_int8.tflite"
    notes = litert.export(_HeavyHead().eval(), torch.zeros(1, 3, 16, 16), path, ExportOptions(
        meta=DETECTOR_META, precision="int8", calibration=_images(32)))
    graph, produced, kind, types = _tflite_ops(path)
    convs = [op for op in graph.operators if kind(op) == "CONV_2D"]
    assert len(convs) == 3
    assert all(graph.tensors[op.inputs[1]].type == types.INT8 for op in convs)
    assert "output" not in notes
