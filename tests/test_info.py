"""`edgepilot.info`: the same counts from every file of one network, checked against torch.

The module imports no torch: the model files are built in fixtures (which need torch and the
exporters), the checkpoint tests import it themselves, and the rest is what a runtime install
runs.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

import edgepilot
from edgepilot.errors import MissingDependencyError, ModelFileError, UnsupportedFormatError
from edgepilot.formats import format_by_name
from edgepilot.info import inspect_model, print_info
from edgepilot.meta import ModelMeta

# Nielsen's 784-15-10 digit network: 784*15 + 15*10 weights, 15 + 10 biases; one MAC per weight.
DIGIT_WEIGHTS, DIGIT_BIASES, DIGIT_MACS = 11_910, 25, 11_910
DIGIT_META = ModelMeta(name="digits", labels=tuple("0123456789"), input_size=(28, 28),
                       layout="NC", color="GRAY", mean=(0.0,), std=(1.0,))
FILES = [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")]


def _file(out, fmt: str, precision: str):
    """The path `edgepilot.export` writes for a format and precision."""
    name = out.name if precision == "fp32" else f"{out.name}_{precision}"
    return out.with_name(name + format_by_name(fmt).suffix)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digit network as .onnx and .tflite, fp32 and int8: the path stem."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("litert_torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(784, 15), torch.nn.Sigmoid(),
                              torch.nn.Linear(15, 10)).eval()
    out = tmp_path_factory.mktemp("digits") / "digits"
    calib = np.random.default_rng(0).integers(0, 256, (50, 28, 28, 3), np.uint8)
    edgepilot.export(net, torch.zeros(1, 784), formats=["onnx", "tflite"],
                     precision=["fp32", "int8"], out=out, meta=DIGIT_META, calib=calib,
                     max_drop=None, quiet=True)
    return out


@pytest.fixture(scope="module")
def tiny_conv(tmp_path_factory):
    """Conv2d(3, 8, 3, padding=1) on 8x8: 8*8*8 outputs x 27 MACs each = 13,824 MACs."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("litert_torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 4)).eval()
    out = tmp_path_factory.mktemp("conv") / "conv"
    edgepilot.export(net, torch.zeros(1, 3, 8, 8), formats=["onnx", "tflite"], out=out,
                     quiet=True)
    return out


@pytest.mark.parametrize("fmt, precision", FILES)
def test_digit_network_counts_the_same_in_every_file(digits, fmt, precision):
    info = inspect_model(_file(digits, fmt, precision))
    assert (info.weights, info.biases) == (DIGIT_WEIGHTS, DIGIT_BIASES)
    assert info.parameters == 11_935
    assert info.macs == DIGIT_MACS
    assert [(layer.parameters, layer.macs) for layer in info.layers] == [(11_775, 11_760),
                                                                         (160, 150)]
    assert info.format == fmt and info.meta["name"] == "digits"
    assert info.size_bytes == _file(digits, fmt, precision).stat().st_size
    json.dumps(info.to_dict())  # JSON-ready, for `edgepilot info --json`


def test_op_histograms(digits):
    assert inspect_model(_file(digits, "onnx", "fp32")).op_histogram == {"Gemm": 2, "Sigmoid": 1}
    qdq = inspect_model(_file(digits, "onnx", "int8")).op_histogram
    assert qdq["Gemm"] == 2 and qdq["DequantizeLinear"] >= 4  # weights and biases at least
    for precision in ("fp32", "int8"):
        ops = inspect_model(_file(digits, "tflite", precision)).op_histogram
        assert ops == {"FULLY_CONNECTED": 2, "LOGISTIC": 1}


def test_inputs_outputs_and_quantization(digits):
    onnx_info = inspect_model(_file(digits, "onnx", "fp32"))
    assert [(t.shape, t.dtype, t.quantization) for t in onnx_info.inputs + onnx_info.outputs] \
        == [((1, 784), "float32", None), ((1, 10), "float32", None)]  # batch one (#18)
    assert inspect_model(_file(digits, "tflite", "fp32")).inputs[0].quantization is None
    path = _file(digits, "tflite", "int8")
    [tensor] = inspect_model(path).inputs
    [truth] = edgepilot.load(path).inputs  # what the interpreter itself reports
    assert (tensor.shape, tensor.dtype) == ((1, 784), "int8")
    assert tensor.quantization == f"int8 scale={truth.scale:.4g} zp={truth.zero_point}"


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_conv_macs_and_parameters(tiny_conv, fmt):
    info = inspect_model(_file(tiny_conv, fmt, "fp32"))
    conv, linear = info.layers
    assert (conv.parameters, conv.macs) == (8 * 27 + 8, 13_824)
    assert (linear.parameters, linear.macs) == (512 * 4 + 4, 512 * 4)
    assert info.macs == 13_824 + 2_048 and info.meta is None


def test_checkpoint_counts_what_torch_counts(tmp_path):
    pytest.importorskip("torch")
    from edgepilot.train.checkpoint import save_checkpoint
    from edgepilot.train.models import create_model

    net = create_model("stoplight_cnn", width=8, num_classes=4)
    meta = ModelMeta(name="stoplight", labels=("red", "yellow", "green", "none"),
                     input_size=(32, 32))
    path = save_checkpoint(tmp_path / "s.pt", net, arch="stoplight_cnn",
                           config={"width": 8, "num_classes": 4}, meta=meta)
    info = inspect_model(path)
    assert info.parameters == sum(p.numel() for p in net.parameters())  # BatchNorm included
    assert info.biases == sum(p.numel() for name, p in net.named_parameters()
                              if name.endswith("bias"))
    first = info.layers[0]
    assert (first.name, first.op, first.macs) == ("features.0.0", "Conv2d", 16 * 16 * 4 * 27)
    assert info.macs > 0 and info.op_histogram["Conv2d"] == 6
    assert info.format == "checkpoint" and info.meta["name"] == "stoplight"
    assert info.inputs[0].shape == (1, 3, 32, 32) and info.outputs[0].shape == (1, 4)


def test_nielsen_checkpoint(tmp_path):
    pytest.importorskip("torch")
    from edgepilot.train.checkpoint import save_checkpoint
    from edgepilot.train.models import create_model

    path = save_checkpoint(tmp_path / "n.pth", create_model("nielsen"), arch="nielsen",
                           config={}, meta=DIGIT_META)
    info = inspect_model(path)
    assert (info.weights, info.biases, info.macs) == (DIGIT_WEIGHTS, DIGIT_BIASES, DIGIT_MACS)
    assert info.inputs[0].shape == (1, 784)


def test_print_info_shows_the_totals(digits):
    from rich.console import Console

    console = Console(record=True, width=200)
    print_info(inspect_model(_file(digits, "tflite", "int8")), console=console)
    text = console.export_text()
    for expected in ("11,935", "11,910 weights", "25 biases", "FULLY_CONNECTED", "int8 scale="):
        assert expected in text


def test_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        inspect_model(tmp_path / "none.onnx")
    with pytest.raises(UnsupportedFormatError, match=r"\.onnx.*\.pt"):
        inspect_model(tmp_path / "model.h5")
    for name in ("junk.onnx", "junk.tflite", "junk.pt"):
        (tmp_path / name).write_bytes(b"\x08\x01 this is not a model " * 8)
        with pytest.raises(ModelFileError, match="junk"):
            inspect_model(tmp_path / name)


@pytest.mark.parametrize("fmt, module, extra", [("onnx", "onnx", "export"),
                                                ("tflite", "ai_edge_litert", "tflite")])
def test_missing_reader_names_the_extra(digits, monkeypatch, fmt, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(MissingDependencyError, match=rf"pip install 'edgepilot\[{extra}\]'"):
        inspect_model(_file(digits, fmt, "fp32"))


def test_importing_info_imports_no_heavy_framework():
    code = "import sys, edgepilot.info; print(' '.join(sys.modules))"
    modules = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.split()
    assert "edgepilot.info" in modules
    assert not [m for m in ("torch", "onnx", "tensorflow") if m in modules]
