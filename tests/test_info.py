"""`edgepilot.info`: the same counts from every file of one network, checked against torch.

The module imports no torch: the model files are built in fixtures (which need torch and the
exporters), the checkpoint tests import it themselves, and the rest is what a runtime install
runs.
"""

import importlib.util
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import edgepilot
from edgepilot.assets import shipped_model
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
    torch = pytest.importorskip("torch")
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
    # Untrained: each batch norm folds into a bias-free conv as a new bias of zeros, which
    # TFLite and ExecuTorch keep (C fewer each) and torch's ONNX exporter drops (2C fewer).
    channels = sum(m.num_features for m in net.modules()
                   if isinstance(m, torch.nn.BatchNorm2d))
    exported = info.parameters - channels
    assert info.details["parameters when exported"] == exported
    note = info.details["batch norm"]
    assert note.startswith(f"{2 * channels:,} parameters in 6 layers, folded into the conv")
    assert f"count {channels:,} fewer" in note
    onnx_count = info.parameters - 2 * channels
    assert f"ONNX: {2 * channels:,} fewer, {onnx_count:,}:" in note
    if importlib.util.find_spec("litert_torch"):  # the claims, against the exported files
        reports = edgepilot.export(net, torch.zeros(1, 3, 32, 32), formats=["onnx", "tflite"],
                                   out=tmp_path / "s", quiet=True)
        assert [inspect_model(r.path).parameters for r in reports] == [onnx_count, exported]


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


# The shipped stoplight CNN: 7 convolutions each followed by a BatchNorm2d, which exporters fold.
STOPLIGHT_PARAMETERS, STOPLIGHT_EXPORTED, STOPLIGHT_MACS = 208_980, 208_580, 21_897_600


def test_checkpoint_says_its_batch_norm_is_folded_on_export():
    pytest.importorskip("torch")
    info = inspect_model(shipped_model("stoplight", ".pt"))
    onnx_info = inspect_model(shipped_model("stoplight"))  # exported from that checkpoint
    assert info.parameters == STOPLIGHT_PARAMETERS and info.macs == STOPLIGHT_MACS
    assert onnx_info.parameters == STOPLIGHT_EXPORTED and onnx_info.macs == STOPLIGHT_MACS
    # 7 x (weight + bias) of 16..96 channels; their shifts become the bias-free convs' biases
    assert info.details["batch norm"] == (
        "800 parameters in 7 layers, folded into the convolutions before them on export: "
        "exported files count 400 fewer")
    assert info.details["parameters when exported"] == onnx_info.parameters
    assert json.loads(json.dumps(info.to_dict()))["details"]["parameters when exported"] \
        == STOPLIGHT_EXPORTED
    text = _printed(info, width=200)  # on one line
    assert "batch norm" in text and "exported files count 400 fewer" in text
    assert "208,580" in text
    # The exported file states its own count and claims nothing about batch norm.
    assert not any("batch norm" in key for key in onnx_info.details)
    text = _printed(onnx_info)
    assert "208,580" in text and "batch norm" not in text.lower() and "fold" not in text


def _printed(info, width: int = 120) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, markup=False)
    print_info(info, console=console)
    return console.file.getvalue()


@pytest.fixture(scope="module")
def stoplight_files(tmp_path_factory):
    """The shipped stoplight checkpoint as .onnx, .pte (XNNPACK, as edgepilot exports it; and
    with portable kernels only) and .mlpackage: format -> path."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("executorch.exir")
    pytest.importorskip("coremltools")
    from edgepilot.train.checkpoint import load_checkpoint

    net, meta, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    out = tmp_path_factory.mktemp("stoplight") / "stoplight"
    x = torch.zeros(meta.input_shape)
    reports = edgepilot.export(net, x, formats=["onnx", "executorch", "coreml"], out=out,
                               meta=meta, max_drop=None, quiet=True)
    files = {r.format: Path(r.path) for r in reports}
    from executorch.exir import to_edge

    portable = out.with_name("portable.pte")
    portable.write_bytes(to_edge(torch.export.export(net.eval(), (x,))).to_executorch().buffer)
    files["portable"] = portable
    return files


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["executorch", "coreml"])
def test_pte_and_mlpackage_count_what_the_onnx_file_counts(stoplight_files, fmt):
    onnx_info = inspect_model(stoplight_files["onnx"])
    info = inspect_model(stoplight_files[fmt])
    assert (onnx_info.parameters, onnx_info.macs) == (STOPLIGHT_EXPORTED, STOPLIGHT_MACS)
    assert (info.parameters, info.weights, info.biases, info.macs) == \
        (onnx_info.parameters, onnx_info.weights, onnx_info.biases, onnx_info.macs)
    assert [(x.parameters, x.macs) for x in info.layers] == \
        [(x.parameters, x.macs) for x in onnx_info.layers]  # layer by layer, 7 convs and a FC
    assert [x.op for x in info.layers] == (["XNNConv2d"] * 7 + ["XNNFullyConnected"]
                                           if fmt == "executorch" else ["conv"] * 7 + ["linear"])
    assert "counts" not in info.details and "0 layers" not in _printed(info)


@pytest.mark.slow
def test_a_pte_of_portable_kernels_counts_its_batch_norm(stoplight_files):
    """Lowered without a delegate, the program keeps batch norm as a kernel of its own: it
    counts what the checkpoint counts."""
    info = inspect_model(stoplight_files["portable"])
    assert info.details["delegated subgraphs"] == "none (portable kernels only)"
    assert (info.parameters, info.macs) == (STOPLIGHT_PARAMETERS, STOPLIGHT_MACS)
    ops = Counter(x.op for x in info.layers)
    assert ops == {"aten::convolution": 7, "aten::_native_batch_norm_legit_no_training": 7,
                   "aten::addmm": 1}


@pytest.mark.slow
def test_a_delegate_that_cannot_be_read_is_unknown_not_zero(stoplight_files, tmp_path):
    data = stoplight_files["executorch"].read_bytes()
    assert data.count(b"XnnpackBackend") == 1  # the delegate's id: same length, other backend
    path = tmp_path / "npu.pte"
    path.write_bytes(data.replace(b"XnnpackBackend", b"AcmeNpuBackend"))
    info = inspect_model(path)
    assert (info.parameters, info.weights, info.biases, info.macs) == (None, None, None, None)
    assert info.details["counts"] == "unknown (delegated to AcmeNpuBackend)"
    assert info.details["delegated subgraphs"] == {"AcmeNpuBackend": 1}
    assert json.loads(json.dumps(info.to_dict()))["parameters"] is None
    text = _printed(info)
    assert "unknown (delegated to AcmeNpuBackend)" in text
    assert " 0 (" not in text and "0 layers" in text  # no 0 parameters or MACs claimed


@pytest.mark.slow
def test_an_xnnpack_graph_of_another_schema_is_unknown_not_an_error(stoplight_files,
                                                                     tmp_path):
    data = stoplight_files["executorch"].read_bytes()
    assert data.count(b"XN01") == 1  # the XNNPACK graph's file identifier
    path = tmp_path / "future.pte"
    path.write_bytes(data.replace(b"XN01", b"XN99"))
    info = inspect_model(path)
    assert info.parameters is None and info.macs is None and info.layers == []
    assert info.details["counts"].startswith("unknown (delegated to XnnpackBackend: its graph")


def test_a_batch_norm_not_after_a_convolution_is_not_said_to_fold():
    torch = pytest.importorskip("torch")
    from edgepilot.info import _batch_norm_note

    norm = torch.nn.BatchNorm1d(10)  # after a Linear, say: exporters may keep it
    assert _batch_norm_note({"bn": norm}, {}, {"bn": norm}, set(), 100) == {
        "batch norm": "20 parameters in 1 layer; 1 not right after a convolution, which this "
                      "count assumes exporters keep"}


@pytest.mark.slow
def test_a_delegate_called_many_times_is_read_once(stoplight_files, tmp_path):
    """A hostile program that calls its XNNPACK delegate 20,001 times (the fuzzer's
    '100,000 instructions' hung info for minutes reading the same graph again per call, and
    claimed 20,001 times the parameters): the graph is read and counted once."""
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    pte = deserialize_pte_binary(stoplight_files["executorch"].read_bytes())
    [plan] = [p for p in pte.program.execution_plan if p.name == "forward"]
    calls = plan.chains[0].instructions
    assert type(calls[0].instr_args).__name__ == "DelegateCall"
    calls.extend(calls[:1] * 20_000)
    path = tmp_path / "loop.pte"
    path.write_bytes(bytes(serialize_pte_binary(pte, extract_delegate_segments=True)))
    info = inspect_model(path)
    assert (info.parameters, info.macs) == (STOPLIGHT_EXPORTED, STOPLIGHT_MACS)
    assert info.details["delegated subgraphs"] == {"XnnpackBackend": 20_001}
    assert len(info.layers) == 8
