"""The LiteRT backend: interpreter choice, what ran, metadata, quantized I/O, errors."""

import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")

import edgepilot  # noqa: E402
from edgepilot.errors import MissingDependencyError, ModelFileError  # noqa: E402
from edgepilot.runtime import litert  # noqa: E402
from edgepilot.runtime.tflite_metadata import (  # noqa: E402
    build_metadata,
    read_metadata,
    write_metadata,
)


@pytest.fixture(scope="module")
def tflite_files(tmp_path_factory, trained_tiny, tiny_meta, colour_data):
    out = tmp_path_factory.mktemp("tflite") / "tiny"
    reports = edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats="tflite",
                               precision=["fp32", "int8"], out=out, meta=tiny_meta,
                               val_data=colour_data, quiet=True)
    return {r.precision: r.path for r in reports}


def test_backend_names_interpreter_delegate_and_threads(tflite_files):
    model = edgepilot.load(tflite_files["fp32"], threads=2)
    assert model.backend.startswith("ai-edge-litert ")
    assert "XNNPACK" in model.backend and "2 threads" in model.backend


def test_int8_io_is_hidden_from_the_user(tflite_files, colour_data):
    model = edgepilot.load(tflite_files["int8"])
    assert model.inputs[0].dtype == np.int8
    images, labels = colour_data
    predictions = [model.predict(img).index for img in images[:64]]
    assert np.mean(np.asarray(predictions) == labels[:64]) > 0.9
    # A batch through the fixed batch-one file runs row by row.
    x = np.concatenate([edgepilot.runtime.preprocess(img, model.meta) for img in images[:5]])
    assert model(x).shape == (5, 4) and model(x).dtype == np.float32


def test_falls_back_to_tflite_runtime(monkeypatch, tflite_files):
    from ai_edge_litert import interpreter as real

    fake = types.ModuleType("tflite_runtime")
    fake.__version__ = "2.14.0"
    fake_interpreter = types.ModuleType("tflite_runtime.interpreter")
    fake_interpreter.Interpreter = real.Interpreter  # the same API, as on a Raspberry Pi
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails
    monkeypatch.setitem(sys.modules, "tflite_runtime", fake)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake_interpreter)
    model = edgepilot.load(tflite_files["fp32"])
    assert model.backend.startswith("tflite-runtime 2.14.0")


def test_missing_interpreter_names_the_extra(monkeypatch, tflite_files):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(MissingDependencyError, match="pip install 'edgepilot\\[tflite\\]'"):
        edgepilot.load(tflite_files["fp32"])


def test_junk_file(tmp_path):
    (tmp_path / "junk.tflite").write_bytes(b"0123456789" * 10)
    with pytest.raises(ModelFileError):
        edgepilot.load(tmp_path / "junk.tflite")


def test_standard_metadata_alone_is_enough(tflite_files, tmp_path):
    """A .tflite from another tool with only the standard metadata still predicts."""
    raw = open(tflite_files["fp32"], "rb").read()
    standard = build_metadata(name="other", description="", version="1", width=32, height=32,
                              mean=[127.5], std=[127.5], num_classes=4)
    labels = b"a\nb\nc\nd\n"
    rewritten = write_metadata(raw, standard=standard, edgepilot_json="{}",
                               files={"labels.txt": labels})
    # edgepilot's own entry is empty here, as in a file another tool wrote.
    metadata = read_metadata(rewritten)
    assert metadata.edgepilot_json == "{}"
    assert metadata.labels == ["a", "b", "c", "d"] and metadata.mean == [127.5]
    json_meta = litert._meta_from_standard(metadata, litert.LiteRTBackend(
        tflite_files["fp32"]).inputs[0])
    meta = edgepilot.ModelMeta.from_json(json_meta)
    assert meta.labels == ("a", "b", "c", "d") and meta.layout == "NHWC"
    np.testing.assert_allclose(meta.mean, [0.5] * 3)
    np.testing.assert_allclose(meta.std, [0.5] * 3)


def test_metadata_is_rewritten_in_place_not_appended(tflite_files):
    raw = open(tflite_files["fp32"], "rb").read()
    standard = build_metadata(name="x", description="", version="1", width=32, height=32,
                              mean=[0.0], std=[1.0], num_classes=4)
    once = write_metadata(raw, standard=standard, edgepilot_json="{}", files={"labels.txt": b"a"})
    twice = write_metadata(once, standard=standard, edgepilot_json="{}",
                           files={"labels.txt": b"a"})
    assert len(once) == len(twice)
