"""Models as users write them: several outputs, batch assumptions, wrong labels, files that
fail their own check, int8 classifiers with many classes, and every way a model is saved."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
from torch import nn  # noqa: E402

import edgepilot  # noqa: E402
from edgepilot.cli import main  # noqa: E402
from edgepilot.errors import EdgepilotError  # noqa: E402
from edgepilot.export.guard import Guard, LayerError  # noqa: E402
from edgepilot.export.noise import plain  # noqa: E402
from edgepilot.meta import ModelMeta  # noqa: E402

META = ModelMeta(name="m", labels=("a", "b", "c"), input_size=(16, 16))


class TwoHeads(nn.Module):
    """A detector's shape: a class vector and a map."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.classes = nn.Linear(8, 3)
        self.boxes = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.body(x)
        return self.classes(y.mean((2, 3))), self.boxes(y)


class FixedBatch(nn.Module):
    """Specialises its batch to one, as ConvNeXt's and many users' reshapes do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x):
        return self.fc(self.conv(x).reshape(1, -1))


def small_cnn(classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, classes)).eval()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_two_output_model_round_trips_with_both_outputs_checked(tmp_path, fmt):
    torch.manual_seed(0)
    net = TwoHeads().eval()
    [report] = edgepilot.export(net, torch.zeros(1, 3, 16, 16), formats=fmt,
                                out=tmp_path / "two", meta=META, quiet=True)
    outputs = report.notes["outputs"]
    assert [o["name"] for o in outputs] == ["output_0", "output_1"]
    assert [o["shape"] for o in outputs] == [[3], [4, 16, 16]]
    assert max(o["max_abs_diff"] for o in outputs) < 1e-4
    model = edgepilot.load(report.path)
    image = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    x = edgepilot.runtime.image.preprocess(image, model.meta)
    first, second = model(x)
    with torch.no_grad():
        want = net(torch.from_numpy(edgepilot.runtime.image.preprocess(image, META)))
    np.testing.assert_allclose(first, want[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(second.reshape(want[1].shape), want[1].numpy(), atol=1e-4)


@pytest.mark.slow
def test_a_model_that_specialises_its_batch_exports_with_batch_one(tmp_path):
    net = FixedBatch().eval()
    [plain_one] = edgepilot.export(net, torch.zeros(1, 3, 16, 16), out=tmp_path / "a",
                                   meta=META, quiet=True)
    assert plain_one.notes["batch"] == "1"
    [asked] = edgepilot.export(net, torch.zeros(1, 3, 16, 16), out=tmp_path / "b", meta=META,
                               dynamic_batch=True, quiet=True)
    assert asked.notes["batch"].startswith("1 (the model specialises its batch")
    assert edgepilot.load(asked.path).inputs[0].shape == (1, 3, 16, 16)
    [dynamic] = edgepilot.export(small_cnn(), torch.zeros(1, 3, 16, 16), out=tmp_path / "c",
                                 meta=META, dynamic_batch=True, quiet=True)
    assert dynamic.notes["batch"] == "dynamic"
    assert edgepilot.load(dynamic.path).inputs[0].shape[0] is None


@pytest.mark.slow
def test_a_batch_sample_still_writes_a_batch_one_tflite_that_runs(tmp_path):
    net = small_cnn()
    [report] = edgepilot.export(net, torch.zeros(4, 3, 16, 16), formats="tflite",
                                out=tmp_path / "m", meta=META, quiet=True)
    model = edgepilot.load(report.path)
    assert model.inputs[0].shape == (1, 16, 16, 3)
    # Parity on random images the export never saw (it checks seed 0's), through the
    # runtime, PyTorch the oracle: the same probabilities to 1e-5, the same top-1.
    images = np.random.default_rng(7).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    got = np.array([list(model.predict(image).scores.values()) for image in images])
    x = np.concatenate([edgepilot.runtime.image.preprocess(image, META) for image in images])
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    # The report's own figures (its random images) say the same.
    assert report.top1_agreement == 1.0 and report.max_abs_diff < 1e-5


def test_label_count_is_checked_before_anything_is_written(tmp_path):
    meta = META.replace(labels=("a", "b"))
    with pytest.raises(EdgepilotError, match="outputs 3 value.*2 label"):
        edgepilot.export(small_cnn(), torch.zeros(1, 3, 16, 16), out=tmp_path / "m",
                         meta=meta, quiet=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("labels, message", [
    (np.arange(5) % 3, "5 image.*5 label|one label per image"),
    (np.array([0, 1, 2, 3, 0, 1]), "labels range 0..3.*3 labels"),
    (np.zeros((6, 2), int), "class indices"),
])
def test_val_data_mistakes_are_named(tmp_path, labels, message):
    images = np.zeros((6, 16, 16, 3), np.uint8)
    with pytest.raises(EdgepilotError, match=message):
        edgepilot.export(small_cnn(), torch.zeros(1, 3, 16, 16), out=tmp_path / "m",
                         meta=META, data=(images, labels), quiet=True)


def test_a_file_that_fails_its_own_check_is_not_written(tmp_path, monkeypatch):
    import edgepilot.export.onnx as onnx_exporter

    target = tmp_path / "m.onnx"
    target.write_bytes(b"the user's earlier export")

    def broken(module, sample, path, options):
        path.write_bytes(b"not a model")
        return {}

    monkeypatch.setattr(onnx_exporter, "export", broken)
    with pytest.raises(EdgepilotError, match="failed its own check, so it was not written"):
        edgepilot.export(small_cnn(), torch.zeros(1, 3, 16, 16), out=target, meta=META,
                         quiet=True)
    assert target.read_bytes() == b"the user's earlier export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


@pytest.mark.slow
def test_int8_tflite_classifier_keeps_its_ranking(tmp_path):
    """100 classes, uncertain outputs: int8 probabilities (steps of 1/256) would read 0 for
    nearly every class; the float softmax keeps the top-5."""
    classes = 100
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(16, classes)).eval()
    meta = ModelMeta(name="many", labels=tuple(f"c{i}" for i in range(classes)),
                     input_size=(16, 16))
    images = np.random.default_rng(0).integers(0, 256, (80, 16, 16, 3), dtype=np.uint8)
    [fp32, int8] = edgepilot.export(net, torch.zeros(1, 3, 16, 16), formats="tflite",
                                    precision=["fp32", "int8"], out=tmp_path / "m", meta=meta,
                                    calib=images, max_drop=None, quiet=True)
    assert int8.notes["output"].startswith("float32 probabilities")
    a, b = edgepilot.load(fp32.path), edgepilot.load(int8.path)
    assert b.outputs[0].dtype == np.float32
    overlap = []
    for image in images[:40]:
        pa, pb = a.predict(image), b.predict(image)
        top_a = sorted(pa.scores, key=pa.scores.get)[-5:]
        top_b = sorted(pb.scores, key=pb.scores.get)[-5:]
        overlap.append(len(set(top_a) & set(top_b)) / 5)
        assert sum(v > 0 for v in pb.scores.values()) > 50  # no wall of zeros
    assert np.mean(overlap) >= 0.8


def test_guard_reports_progress_names_layers_and_stops_at_its_budget():
    now = [0.0]

    def quantize(keep):
        now[0] += 10.0  # every trial costs 10 s on the fake clock
        return tuple(keep)

    lines = []
    guard = Guard(lambda path: 0.5, baseline=0.9, max_drop=1.0, budget_s=45.0, candidates=2,
                  progress=lines.append, clock=lambda: now[0])
    ranked = [LayerError("getitem_132", 10.0, 30.0, "features.3.conv.0 (Conv)"),
              LayerError("hardtanh_3", 20.0, 20.0, "features.4 (Clip)"),
              LayerError("add_7", 25.0, 10.0, "features.5 (Add)")]
    with pytest.raises(EdgepilotError, match="time budget \\(45 s"):
        guard.run(quantize, lambda path: ranked, "onnx")
    text = "\n".join(lines)
    assert "features.3.conv.0 (Conv)" in text and "getitem_132" not in text
    assert "accuracy 50.00% (drop 40.00 points" in lines[0]
    # Step 1 (two trials) fit: 10 + 2 x 10 s; step 2 would end at 50 s, so it never started.
    assert now[0] == 30.0
    assert len(guard.kept) == 1 and guard.kept[0]["layer"] == "features.3.conv.0 (Conv)"


def test_terminal_colour_codes_are_removed_from_messages():
    assert plain("\x1b[31mError\x1b[0m: in \x1b[1mforward\x1b[0m") == "Error: in forward"


# The command line, on every kind of saved model.

@pytest.fixture
def cli(capsys):
    def run(*args):
        capsys.readouterr()
        code = main(["export", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.mark.slow
def test_cli_exports_torchscript_and_a_pt2_program(tmp_path, cli):
    net = small_cnn()
    sample = torch.zeros(1, 3, 24, 24)
    scripted = tmp_path / "net.ts.pt"
    torch.jit.save(torch.jit.trace(net, sample), scripted)
    program = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (sample,)), program)
    labels = tmp_path / "labels.txt"
    labels.write_text("red\nyellow\ngreen\n")
    with torch.no_grad():
        want = net(sample + 0.25).numpy()
    for model, extra in [(scripted, ["--input-size", "24"]), (program, [])]:
        code, out, err = cli(model, "--labels", labels, "--out", tmp_path / model.stem, *extra)
        assert code == 0, err[-2000:]
        path = out.strip().splitlines()[-1]
        loaded = edgepilot.load(path)
        assert loaded.meta.labels == ("red", "yellow", "green")
        assert loaded.inputs[0].shape == (1, 3, 24, 24)  # the .pt2 records its input size
        np.testing.assert_allclose(loaded(np.full((1, 3, 24, 24), 0.25, np.float32)), want,
                                   atol=1e-5)


def test_cli_exports_a_state_dict_with_its_factory(tmp_path, cli, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "from torch import nn\n"
        "def tiny():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mynets

    torch.manual_seed(3)
    net = mynets.tiny().eval()
    weights = tmp_path / "weights.pth"
    torch.save({"state_dict": net.state_dict(), "epoch": 7}, weights)
    code, out, err = cli(weights, "--input-size", "32")
    assert code == 2 or code == 1
    assert "state_dict" in err and "--arch" in err
    code, out, err = cli(weights, "--arch", "mynets:tiny", "--input-size", "32",
                         "--out", tmp_path / "net")
    assert code == 0, err[-2000:]
    loaded = edgepilot.load(out.strip().splitlines()[-1])
    assert loaded.meta.labels == tuple(f"class_{i}" for i in range(5))
    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x), net(torch.from_numpy(x)).numpy(), atol=1e-5)
    # Weights of another architecture: named, not a raw load_state_dict traceback.
    code, out, err = cli(weights, "--arch", "torch.nn:Identity")
    assert code != 0 and "do not fit" in err and "Traceback" not in err


def test_cli_refuses_a_pickled_module_unless_trusted(tmp_path, cli):
    path = tmp_path / "whole.pt"
    torch.save(small_cnn(), path)
    code, out, err = cli(path, "--input-size", "16", "--out", tmp_path / "w")
    assert code != 0 and "--trust-pickle" in err and not list(tmp_path.glob("w.*"))
    code, out, err = cli(path, "--input-size", "16", "--out", tmp_path / "w", "--trust-pickle")
    assert code == 0, err[-2000:]
    assert edgepilot.load(out.strip().splitlines()[-1]).meta.input_size == (16, 16)


def test_bench_warns_when_a_quantized_file_is_slower_or_fragmented():
    from edgepilot.bench import BenchResult, slower_quantized

    def row(name, p50, backend="onnxruntime"):
        return BenchResult(model=name, format=name.rsplit(".", 1)[1], threads=1,
                           backend=backend, latency_ms={"p50": p50})

    rows = [row("net.onnx", 1.0), row("net_int8.onnx", 3.5), row("net_fp16.onnx", 0.9),
            row("net.tflite", 1.0), row("net_int8.tflite", 0.5,
                                        "ai-edge-litert (XNNPACK, 41 partitions, 1 threads)")]
    rows[-1].fallback_ops = ["DIV", "DIV", "HARD_SWISH"]
    warnings = slower_quantized(rows)
    assert len(warnings) == 2
    assert warnings[0].startswith("net_int8.onnx is 3.50x slower than its float file")
    assert "net_int8.tflite: the delegate is split" in warnings[1]
    assert "DIV x2, HARD_SWISH x1 run on the CPU's builtin kernels" in warnings[1]


class Fragmented(nn.Module):
    """CUMSUM between two convolutions: XNNPACK takes the convolutions, not the CUMSUM."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.b(torch.cumsum(self.a(x), dim=1)).mean((2, 3)))


@pytest.mark.slow
def test_export_report_names_the_ops_that_split_the_delegate(tmp_path):
    torch.manual_seed(0)
    [report] = edgepilot.export(Fragmented().eval(), torch.zeros(1, 3, 16, 16),
                                formats="tflite", out=tmp_path / "f", meta=META, quiet=True)
    [warning] = report.notes["warnings"]
    assert "2 partitions" in warning and "CUMSUM x1 run on the CPU's builtin kernels" in warning
    assert "CONV_2D" not in warning  # delegated ops are not blamed


def _images_classified_as(net, index: int, n: int) -> list[np.ndarray]:
    """`n` random 20x20 uint8 RGB images PyTorch's `net` puts clearly (by a logit margin of
    0.05) in class `index`, preprocessed as the runtime does (META's 16x16)."""
    rng = np.random.default_rng(0)
    found = []
    while len(found) < n:
        tint = rng.integers(0, 256, 3)
        image = np.clip(tint + rng.integers(-40, 40, (20, 20, 3)), 0, 255).astype(np.uint8)
        with torch.no_grad():
            logits = net(torch.from_numpy(edgepilot.runtime.image.preprocess(image, META)))[0]
        second, first = np.sort(logits.numpy())[-2:]
        if int(logits.argmax()) == index and first - second > 0.05:
            found.append(image)
    return found


def test_cli_val_data_folder_gives_accuracy_and_names_unknown_labels(tmp_path, cli):
    import cv2

    net = small_cnn()
    model = tmp_path / "net.ts.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 16, 16)), model)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    # Folder a holds images the model calls a (right), folder c images it calls b (wrong).
    for label, index in (("a", 0), ("c", 1)):
        (tmp_path / "val" / label).mkdir(parents=True)
        for i, image in enumerate(_images_classified_as(net, index, 3)):
            cv2.imwrite(str(tmp_path / "val" / label / f"{i}.png"), image[:, :, ::-1])
    code, out, err = cli(model, "--input-size", "16", "--labels", labels, "--data",
                         tmp_path / "val", "--val-size", "4", "--out", tmp_path / "m")
    assert code == 0, err[-2000:]
    report = json.loads((tmp_path / "m.onnx.json").read_text())
    assert report["n_inputs"] == 4  # --val-size caps the 6 images at 4
    # Re-measured through the runtime on the folder's files: every a right, every c wrong,
    # so 4 images spread evenly over the two folders score one half, in PyTorch and the file.
    exported = edgepilot.load(tmp_path / "m.onnx")
    measured = {label: np.mean([exported.predict(f).label == label
                                for f in sorted((tmp_path / "val" / label).glob("*.png"))])
                for label in ("a", "c")}
    assert measured == {"a": 1.0, "c": 0.0}
    assert report["accuracy_torch"] == report["accuracy_export"] == 0.5
    (tmp_path / "val" / "zebra").mkdir()
    cv2.imwrite(str(tmp_path / "val" / "zebra" / "0.png"), np.zeros((8, 8, 3), np.uint8))
    code, out, err = cli(model, "--input-size", "16", "--labels", labels, "--data",
                         tmp_path / "val", "--out", tmp_path / "m2")
    assert code != 0 and "zebra" in err and len(err.strip().splitlines()) <= 2


def test_cli_flags_override_only_what_they_name_in_an_edgepilot_checkpoint(tmp_path, cli):
    from edgepilot.assets import shipped_model
    from edgepilot.train.checkpoint import load_checkpoint

    _, shipped, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    labels = tmp_path / "labels.txt"
    labels.write_text("rot\ngelb\ngruen\nkeins\n")
    code, out, err = cli(shipped_model("stoplight", ".pt"), "--labels", labels, "--val-size",
                         "0", "--out", tmp_path / "de")
    assert code == 0, err[-2000:]
    meta = edgepilot.load(out.strip().splitlines()[-1]).meta
    assert meta.labels == ("rot", "gelb", "gruen", "keins")
    assert meta.replace(labels=shipped.labels) == shipped  # normalisation, size, task kept
