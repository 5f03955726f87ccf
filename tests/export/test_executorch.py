"""ExecuTorch: the shipped stoplight model to .pte, fp32 and int8, then load, predict, bench and
info through edgepilot's runtime, compared with PyTorch on images the exporter never saw."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch.exir")

import edgepilot  # noqa: E402
from edgepilot.assets import shipped_model  # noqa: E402
from edgepilot.errors import ModelFileError  # noqa: E402
from edgepilot.train.checkpoint import load_checkpoint  # noqa: E402
from edgepilot.train.datasets import load_dataset  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    net, meta, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    val = load_dataset("stoplight", "val", 300, meta.input_size)
    out = tmp_path_factory.mktemp("executorch") / "stoplight"
    reports = edgepilot.export(net, torch.zeros(meta.input_shape), formats="executorch",
                               precision=["fp32", "int8"], out=out, meta=meta, data=val,
                               quiet=True)
    return {r.precision: r for r in reports}


@pytest.fixture(scope="module")
def fresh():
    from edgepilot.runtime import preprocess

    net, meta, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    images, labels = load_dataset("stoplight", "val", 300, meta.input_size, seed=4242)
    with torch.no_grad():
        x = torch.from_numpy(np.concatenate([preprocess(img, meta) for img in images]))
        expected = net(x).numpy()
    return images, labels, expected


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_pte_agrees_with_pytorch_on_unseen_images(files, fresh, precision):
    images, labels, expected = fresh
    model = edgepilot.load(files[precision].path)
    assert model.format.name == "executorch"
    assert "XNNPACK" in model.backend
    predicted = np.array([model.predict(img).index for img in images])
    agrees = predicted == expected.argmax(1)
    assert np.mean(agrees) >= (0.995 if precision == "fp32" else 0.99)
    # int8 may flip a near-tie, never a clear answer: PyTorch's top two within 0.15
    probs = np.exp(expected - expected.max(1, keepdims=True))
    top2 = np.sort(probs / probs.sum(1, keepdims=True), 1)[:, -2:]
    assert agrees[top2[:, 1] - top2[:, 0] >= 0.15].all()
    drop = 100 * (np.mean(expected.argmax(1) == labels) - np.mean(predicted == labels))
    assert drop <= 1.0
    if precision == "fp32":  # raw outputs, not only decisions
        from edgepilot.runtime import preprocess

        x = np.concatenate([preprocess(img, model.meta) for img in images[:20]])
        np.testing.assert_allclose(model(x), expected[:20], atol=1e-4)


@pytest.mark.slow
def test_int8_is_int8_and_reports_its_calibration(files):
    int8, fp32 = files["int8"], files["fp32"]
    assert int8.size_bytes < 0.4 * fp32.size_bytes  # int8 weights, not float ones
    assert int8.notes["calibration"]["images"] == 300
    assert int8.notes["delegate"] == "XNNPACK"


@pytest.mark.slow
def test_info_reads_the_program(files):
    from edgepilot.info import inspect_model

    info = inspect_model(files["int8"].path)
    assert info.format == "executorch"
    assert list(info.meta["labels"]) == ["red", "yellow", "green", "none"]
    h, w = info.meta["input_size"]
    assert [t.shape for t in info.inputs] == [(1, 3, h, w)]
    assert info.details["delegated subgraphs"] == {"XnnpackBackend": 1}


@pytest.mark.slow
def test_bench_runs_the_pte(files):
    [row] = edgepilot.benchmark([files["int8"].path], threads=[1], runs=20, warmup=2,
                                rounds=2)
    assert row.error is None and row.format == "executorch" and row.runs == 20
    assert "threads" in row.backend


def test_not_a_program_is_one_line(tmp_path):
    path = tmp_path / "model.pte"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="not an ExecuTorch program") as info:
        edgepilot.load(path)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_corrupt_program_is_one_line(files, tmp_path):
    data = bytearray(open(files["fp32"].path, "rb").read())
    data[64:4096] = bytes(len(data[64:4096]))  # keep the header, zero the tables
    path = tmp_path / "corrupt.pte"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as info:
        edgepilot.load(path)
    assert "\n" not in str(info.value)


def test_runtime_import_stays_torch_free():
    import subprocess
    import sys

    code = ("import sys, edgepilot.runtime; "
            "print('torch' in sys.modules, 'executorch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_program_that_crashes_the_runtime_is_refused_not_fatal(tmp_path, monkeypatch):
    # ExecuTorch aborts the process on some corrupt programs (found by fuzzing); the child
    # that loads a file first dies instead of this process. The child here aborts for sure.
    import edgepilot.runtime.executorch as backend

    path = tmp_path / "hostile.pte"
    path.write_bytes(b"\x00\x00\x00\x00ET12" + bytes(56))
    monkeypatch.setattr(backend, "_VET", "import os; os.abort()")
    monkeypatch.setattr(backend, "_VETTED", set())  # these bytes may have been vetted already
    with pytest.raises(ModelFileError, match="SIGABRT") as info:
        edgepilot.load(path)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_method_names_from_the_file_never_break_the_error_line(files, tmp_path):
    # Found by the fuzzer (issue 30): a method renamed "for\nward" went raw into the error.
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    from edgepilot.info import inspect_model

    pte = deserialize_pte_binary(open(files["fp32"].path, "rb").read())
    next(p for p in pte.program.execution_plan if p.name == "forward").name = "for\nward\x1b[2J"
    path = tmp_path / "renamed.pte"
    path.write_bytes(bytes(serialize_pte_binary(pte, extract_delegate_segments=True)))
    for call in (inspect_model, edgepilot.load):
        with pytest.raises(ModelFileError, match="no 'forward' method") as info:
            call(path)
        assert str(info.value).isprintable(), repr(str(info.value))


@pytest.mark.slow
@pytest.mark.parametrize("extra", [1 << 20, 3 << 30])
def test_data_after_the_program_is_refused_before_it_is_read(files, tmp_path, extra):
    # Found by the fuzzer (issue 30): a program made sparse to 3 GiB was read whole (3.4 GiB
    # of RSS) before ExecuTorch found nothing of use in it. The extended header says how far
    # the program and its segments reach.
    from edgepilot.info import inspect_model

    data = open(files["fp32"].path, "rb").read()
    path = tmp_path / "padded.pte"
    path.write_bytes(data)
    os.truncate(path, len(data) + extra)
    for call in (inspect_model, edgepilot.load):
        with pytest.raises(ModelFileError, match="header accounts for") as info:
            call(path)
        assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("planned", [8 << 30, 1 << 62])
def test_absurd_planned_memory_is_refused_before_it_is_allocated(files, tmp_path, planned,
                                                                monkeypatch):
    # Found by the fuzzer (issue 30): 8 GiB or 2^62 bytes of planned memory reached
    # ExecuTorch's allocator, a MemoryError where memory is capped.
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    import edgepilot.runtime.executorch as backend

    pte = deserialize_pte_binary(open(files["fp32"].path, "rb").read())
    plan = next(p for p in pte.program.execution_plan if p.name == "forward")
    plan.non_const_buffer_sizes = [0, planned]
    path = tmp_path / "planned.pte"
    path.write_bytes(bytes(serialize_pte_binary(pte, extract_delegate_segments=True)))
    monkeypatch.setattr(backend, "memory_room", lambda: 4 << 30)  # as under a 4 GiB cap
    with pytest.raises(ModelFileError, match="of working memory") as info:
        edgepilot.load(path)
    assert "\n" not in str(info.value)


def test_int8_relu6_is_fused_into_the_conv_before_it(tmp_path):
    """A conv followed by ReLU6 (MobileNet, EfficientNet-Lite) is one int8 pattern, as ONNX and
    TFLite treat it: XNNPACK's quantizer alone gave the conv's output a scale over its whole
    pre-activation range, and ReLU6's 0..6 a few dozen levels (Lite0: 0.49 top-1 agreement
    against 0.85 in the other formats). Wide pre-activations make it show on a small net."""
    from torch import nn

    from edgepilot.meta import ModelMeta

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6(),
                        nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
                        nn.Conv2d(16, 24, 1), nn.ReLU6(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.BatchNorm2d):
                layer.weight.mul_(30)
                layer.bias.uniform_(-20, 5)
    meta = ModelMeta(name="relu6", labels=tuple(f"c{i}" for i in range(10)),
                     input_size=(32, 32))
    calib = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    pte, onnx = edgepilot.export(net.eval(), torch.zeros(1, 3, 32, 32),
                                 formats=["executorch", "onnx"], precision="int8",
                                 out=tmp_path / "relu6", meta=meta, calib=calib, quiet=True)
    # measured: 2.0e-5 fused, 4.8e-4 before; ONNX 1.4e-5, and 2.1e-6 since its last layer
    # returns float logits (the .pte still rounds them to int8: XNNPACK lowers no linear with
    # int8 weights and a float result), so unfused would be 200x ONNX's, fused is 6x
    assert pte.kl_divergence <= 12 * onnx.kl_divergence, (pte.kl_divergence,
                                                           onnx.kl_divergence)
    assert not pte.notes.get("warnings")  # one XNNPACK partition: ReLU6 inside it


def test_the_guards_ranking_compares_each_conv_with_its_folded_float_twin():
    """PT2E folds batch norm into the conv before quantizing, so the int8 graph's `conv2d`
    outputs conv+BN; the float graph the guard ranks against must be folded the same way, or
    every conv followed by BN reads as a layer that lost everything (Lite0's stem: -3.9 dB)."""
    from torch import nn
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgepilot.export import executorch as ex

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                        nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)).eval()  # a linear projection
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.BatchNorm2d):
                layer.weight.uniform_(0.2, 5.0)
                layer.bias.uniform_(-1, 1)
    x = [np.random.default_rng(i).normal(size=(1, 3, 16, 16)).astype(np.float32)
         for i in range(8)]
    program = torch.export.export(net, (torch.from_numpy(x[0]),))
    graph = program.module()
    prepared = prepare_pt2e(graph, ex._quantizer("minmax", [], graph.graph))
    for sample in x:
        prepared(torch.from_numpy(sample))
    ranked = ex._rank_nodes(ex._folded(program), convert_pt2e(prepared), x)
    assert "conv2d_1" in {layer.layer for layer in ranked}
    assert all(layer.sqnr_db > 20 for layer in ranked), ranked
