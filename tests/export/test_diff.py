"""`edgepilot diff` finds the layer where a file departs from its model.

Each trial corrupts one layer of an exported file (its weights in a float ONNX or TFLite file,
its weight scale in an int8 ONNX file), and diff must rank that layer's block first. (Ranking
by the SQNR a layer loses against its inputs, not its SQNR alone, is the guard's
`rank_by_sqnr_loss`, tested with the guard.)"""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402

import edgepilot  # noqa: E402
from edgepilot.cli import main  # noqa: E402
from edgepilot.diff import diff, print_diff  # noqa: E402
from edgepilot.meta import ModelMeta  # noqa: E402

META = ModelMeta(name="blocks", labels=tuple(f"c{i}" for i in range(6)), input_size=(24, 24),
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
BLOCKS = 5
TRIALS = 10


def _net():
    torch.manual_seed(0)
    widths = [3, 8, 12, 12, 16, 16]
    blocks = [nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 3, 2 if i in (0, 2) else 1, 1,
                                      bias=False),
                            nn.BatchNorm2d(widths[i + 1]), nn.ReLU())
              for i in range(BLOCKS)]
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(*blocks))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("head", nn.Linear(widths[-1], 6))
    with torch.no_grad():  # trained-looking statistics, not the identity
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _images(n, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))
    return np.clip(base + rng.normal(0, 40, (n, 24, 24, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diff")
    net = _net()
    edgepilot.export(net, torch.zeros(1, 3, 24, 24), formats=["onnx", "tflite"],
                     precision=["fp32"], out=folder / "net", meta=META, quiet=True)
    edgepilot.export(net, torch.zeros(1, 3, 24, 24), formats=["onnx"], precision=["int8"],
                     out=folder / "net", meta=META, calib=_images(64, 1), max_drop=None,
                     quiet=True)
    return net, folder


def _block(module: str) -> int | None:
    parts = module.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "features" else None


def _corrupt_onnx(source, target, initializer: str, change) -> None:
    model = onnx.load(str(source))
    for tensor in model.graph.initializer:
        if tensor.name == initializer:
            tensor.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(tensor)),
                                                    tensor.name))
            break
    else:
        raise AssertionError(f"no initializer {initializer}")
    onnx.save(model, str(target))


def _corrupt_tflite(source, target, conv: int, rng) -> None:
    """Noise on the weights of the conv-th CONV_2D, patched in place in the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    data = bytearray(source.read_bytes())
    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytes(data), 0))
    graph = tree.subgraphs[0]
    convs = [op for op in graph.operators
             if tree.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.CONV_2D]
    weights = bytes(tree.buffers[graph.tensors[convs[conv].inputs[1]].buffer].data)
    at = data.find(weights)
    assert at > 0 and data.find(weights, at + 1) < 0
    values = np.frombuffer(weights, np.float32)
    noisy = values + rng.normal(0, 0.7 * values.std(), values.shape).astype(np.float32)
    data[at:at + len(weights)] = noisy.astype(np.float32).tobytes()
    target.write_bytes(bytes(data))


def test_a_corrupted_layer_ranks_first_in_nine_of_ten_trials(exported, tmp_path):
    net, folder = exported
    images = _images(8, 2)
    hits = {"onnx weights": 0, "tflite weights": 0, "int8 onnx weight scale": 0}
    for trial in range(TRIALS):
        rng = np.random.default_rng(100 + trial)
        block = int(rng.integers(BLOCKS))
        files = {}
        files["onnx weights"] = tmp_path / f"w{trial}.onnx"
        _corrupt_onnx(folder / "net.onnx", files["onnx weights"], f"features.{block}.0.weight",
                      lambda w, rng=rng: w + rng.normal(0, 0.7 * w.std(), w.shape).astype(w.dtype))
        files["tflite weights"] = tmp_path / f"w{trial}.tflite"
        _corrupt_tflite(folder / "net.tflite", files["tflite weights"], block, rng)
        files["int8 onnx weight scale"] = tmp_path / f"s{trial}.onnx"
        _corrupt_onnx(folder / "net_int8.onnx", files["int8 onnx weight scale"],
                      f"features.{block}.0.weight_scale",
                      lambda s, rng=rng: (s * rng.uniform(1.2, 1.4, s.shape)).astype(s.dtype))
        report = diff(net, list(files.values()), images=images, meta=META)
        for (kind, _), result in zip(files.items(), report.files):
            assert result.layers, result.note
            top = result.ranked[0]
            hits[kind] += _block(top.module) == block
            if _block(top.module) == block:
                assert result.departs is not None and _block(result.departs.module) == block
    assert all(count >= 9 for count in hits.values()), hits


def test_untouched_files_match_their_model_layer_by_layer(exported):
    net, folder = exported
    report = diff(net, [folder / "net.onnx", folder / "net.tflite", folder / "net_int8.onnx"],
                  images=_images(8, 3), meta=META)
    onnx_fp32, tflite_fp32, int8 = report.files
    for result in (onnx_fp32, tflite_fp32):
        # every block's output is found, in a layout of its own (NCHW, NHWC), and exact
        assert {_block(layer.module) for layer in result.layers} >= set(range(BLOCKS))
        assert min(layer.sqnr_db for layer in result.layers) > 45
        assert result.departs is None
        assert result.outputs["top1_agreement"] == 1.0
    assert int8.departs is None and 15 < min(layer.sqnr_db for layer in int8.layers) < 45
    assert report.measured_on.startswith("8 images")


def test_random_images_are_said_and_a_program_is_compared_at_its_outputs(exported, tmp_path):
    net, folder = exported
    pytest.importorskip("executorch")
    edgepilot.export(net, torch.zeros(1, 3, 24, 24), formats=["executorch"],
                     precision=["fp32"], out=tmp_path / "net", meta=META, quiet=True)
    report = diff(net, [tmp_path / "net.pte"], meta=META, count=4)
    assert report.measured_on.startswith("random images")
    (program,) = report.files
    assert not program.layers and "outputs only" in program.note
    assert program.outputs["sqnr_db"][0] > 40


def test_the_command_prints_a_table_writes_json_and_a_plot(tmp_path, capsys):
    """The shipped stoplight checkpoint against its shipped .onnx and a copy with one
    block's weights negated."""
    from edgepilot.assets import resolve_model

    checkpoint = resolve_model("stoplight").with_suffix(".pt")
    shipped = checkpoint.with_suffix(".onnx")
    np.save(tmp_path / "images.npy", _images(6, 4))
    broken = tmp_path / "broken.onnx"
    _corrupt_onnx(shipped, broken, "features.3.0.weight", lambda w: -w)
    plot = tmp_path / "diff.png"
    args = [str(checkpoint), str(shipped), str(broken), "--data", str(tmp_path / "images.npy"),
            "--plot", str(plot)]
    assert main(["diff", *args, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["measured_on"].startswith("6 images")
    clean, corrupted = found["files"]
    assert clean["departs"] is None
    assert corrupted["departs"]["module"].startswith("features.3.")
    assert corrupted["ranked"][0].startswith("features.3.")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["diff", *args[:-2], "--top", "2"]) == 0
    table = capsys.readouterr().out
    assert "departs at features.3." in table and "2 of " in table


def test_bad_references_say_what_to_give(exported, tmp_path, capsys):
    _, folder = exported
    assert main(["diff", str(tmp_path / "missing.pt"), str(folder / "net.onnx")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["diff", str(folder / "net.onnx"), str(folder / "net.onnx"), "--plot",
                 str(tmp_path / "no" / "x.png")]) == 1
    assert "--plot" in capsys.readouterr().err


def test_a_file_as_reference_matches_across_layouts(exported):
    _, folder = exported
    report = diff(folder / "net.onnx", [folder / "net.tflite"], images=_images(4, 5))
    (tflite,) = report.files
    assert {_block(layer.module) for layer in tflite.layers} >= set(range(BLOCKS))
    assert min(layer.sqnr_db for layer in tflite.layers) > 45
    print_diff(report)  # prints without touching the console's markup


def _strip_module_names(source, target) -> onnx.ModelProto:
    model = onnx.load(str(source))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(target))
    return model


def test_files_without_module_names_are_matched_by_tensor_names(exported, tmp_path):
    """Two files of the same graph that record no modules (other tools' files): diff matches
    their tensors by name, and the corrupted layer still ranks first."""
    _, folder = exported
    reference = tmp_path / "plain.onnx"
    model = _strip_module_names(folder / "net.onnx", reference)
    corrupted = tmp_path / "corrupted.onnx"
    _corrupt_onnx(reference, corrupted, "features.2.0.weight",
                  lambda w: w + np.random.default_rng(0).normal(0, w.std(), w.shape)
                  .astype(w.dtype))
    conv = next(n.output[0] for n in model.graph.node if "features.2.0.weight" in n.input)
    (result,) = diff(reference, [corrupted], images=_images(6, 6)).files
    assert result.layers and result.ranked[0].tensor == conv
    assert result.departs.tensor == conv


def test_intermediate_values_past_the_limit_are_refused_in_one_line(exported, monkeypatch):
    from edgepilot.errors import ModelFileError
    from edgepilot.runtime import reading

    net, folder = exported
    monkeypatch.setattr(reading, "LAYER_VALUES_BYTES", 10_000)
    with pytest.raises(ModelFileError, match="compare on fewer images"):
        diff(net, [folder / "net.onnx"], images=_images(8, 7), meta=META)


def test_a_feature_vector_model_is_compared_on_random_inputs_and_says_so(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    meta = ModelMeta(name="vec", labels=("no", "yes"), input_size=(1, 4), layout="NC",
                     color="GRAY", mean=(0.0,), std=(1.0,), preprocess="none")
    edgepilot.export(net, torch.zeros(1, 4), formats="onnx", out=tmp_path / "vec", meta=meta,
                     quiet=True)
    report = diff(net, [tmp_path / "vec.onnx"], meta=meta, count=5)
    assert report.measured_on.startswith("random inputs") and report.images == 5
    (result,) = report.files
    assert {layer.module for layer in result.layers} >= {"0", "2"}
    assert result.outputs["top1_agreement"] == 1.0
