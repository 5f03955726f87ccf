"""The LiteRT backend: interpreter choice, what ran, threads, metadata, quantized I/O, errors.

Runtime-only: this module imports no torch. The .tflite files come from the session fixture
`tiny_tflite` (which needs torch and litert-torch to build them); what is tested here is what a
runtime-only install runs.
"""

import os
import subprocess
import sys
import types

import numpy as np
import pytest

import edgepilot
from edgepilot.errors import MissingDependencyError, ModelFileError
from edgepilot.runtime.tflite_metadata import build_metadata, read_metadata, write_metadata


def test_runs_without_torch_or_the_converters(tiny_tflite):
    """What a runtime-only install does: load and predict with torch and the converters made
    unimportable, and none of them imported along the way."""
    code = ("import sys\n"
            "for name in ('torch', 'litert_torch', 'ai_edge_quantizer', 'onnx', 'tensorflow'):\n"
            "    sys.modules[name] = None  # import fails, as when it is not installed\n"
            "import numpy as np, edgepilot\n"
            "m = edgepilot.load(sys.argv[1])\n"
            "print(m.predict(np.zeros((20, 30, 3), np.uint8)).label)")
    for path in tiny_tflite.values():
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() in ("red", "yellow", "green", "none")


def test_backend_names_interpreter_delegate_and_threads(tiny_tflite):
    model = edgepilot.load(tiny_tflite["fp32"], threads=2)
    assert model.backend.startswith("ai-edge-litert ")
    assert "XNNPACK" in model.backend and "2 threads" in model.backend


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"),
                    reason="os: counting a process's threads needs Linux /proc")
def test_threads_really_reach_the_interpreter(tiny_tflite, threads_after_loading):
    # XNNPACK's thread pool runs on the calling thread plus threads-1 workers: 3 threads
    # instead of 1 ask for 2 more OS threads. A count of a live process's threads is a proxy
    # that a busy machine can leave one short (a worker not started yet when counted), so:
    # more threads than with 1 (the option reached the pool), never more than the 2 asked.
    one, three = (threads_after_loading(tiny_tflite["fp32"], n) for n in (1, 3))
    assert 1 <= three - one <= 2, f"1 thread -> {one} OS threads, 3 threads -> {three}"


def test_int8_io_is_hidden_from_the_user(tiny_tflite, fresh_colour_data, model_top1):
    model = edgepilot.load(tiny_tflite["int8"])
    assert model.inputs[0].dtype == np.int8 and model.outputs[0].dtype == np.float32
    images, labels = fresh_colour_data
    assert np.mean(model_top1(model, images[:100]) == labels[:100]) > 0.9
    # A batch through the fixed batch-one file runs row by row, with the same answers.
    x = np.concatenate([edgepilot.runtime.preprocess(img, model.meta) for img in images[:5]])
    batch = model(x)
    assert batch.shape == (5, 4) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, np.concatenate([model(row[None]) for row in x]))


def test_falls_back_to_tflite_runtime(monkeypatch, tiny_tflite):
    from ai_edge_litert import interpreter as real

    fake = types.ModuleType("tflite_runtime")
    fake.__version__ = "2.14.0"
    fake_interpreter = types.ModuleType("tflite_runtime.interpreter")
    fake_interpreter.Interpreter = real.Interpreter  # the same API, as on a Raspberry Pi
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails
    monkeypatch.setitem(sys.modules, "tflite_runtime", fake)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake_interpreter)
    model = edgepilot.load(tiny_tflite["fp32"])
    assert model.backend.startswith("tflite-runtime 2.14.0")


def test_missing_interpreter_names_the_extra(monkeypatch, tiny_tflite):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(MissingDependencyError, match="pip install 'edgepilot\\[tflite\\]'"):
        edgepilot.load(tiny_tflite["fp32"])


def test_junk_file(tmp_path):
    (tmp_path / "junk.tflite").write_bytes(b"0123456789" * 10)
    with pytest.raises(ModelFileError):
        edgepilot.load(tmp_path / "junk.tflite")


def _rewrite(path, out, edgepilot_json: str, labels=b"a\nb\nc\nd\n"):
    """`path` with its metadata replaced: standard entry as edgepilot writes it (raw pixels
    in: mean 0, std 1), labels a-d, and `edgepilot_json` as edgepilot's own entry."""
    standard = build_metadata(name="other", description="", version="1", width=32, height=32,
                              mean=[0.0], std=[1.0], num_classes=4)
    raw = open(path, "rb").read()
    out.write_bytes(write_metadata(raw, standard=standard, edgepilot_json=edgepilot_json,
                                   files={"labels.txt": labels}))
    return out


def test_standard_metadata_alone_is_enough(tiny_tflite, fresh_colour_data, tmp_path,
                                           model_top1):
    """A .tflite from another tool, whose edgepilot entry is empty ("{}"), predicts from the
    standard metadata alone: the same classes as the original file, under the new labels."""
    other = _rewrite(tiny_tflite["fp32"], tmp_path / "other.tflite", "{}")
    assert read_metadata(other.read_bytes()).edgepilot_json == "{}"
    model = edgepilot.load(other)
    assert model.meta.labels == ("a", "b", "c", "d") and model.meta.layout == "NHWC"
    assert model.meta.input_size == (32, 32)
    images = fresh_colour_data[0][:40]
    expected = model_top1(edgepilot.load(tiny_tflite["fp32"]), images)
    np.testing.assert_array_equal(model_top1(model, images), expected)
    assert model.predict(images[0]).label == "abcd"[expected[0]]


@pytest.mark.parametrize("entry,needle", [("{not json", "malformed edgepilot metadata"),
                                          ('{"name": "m", "labels": [], "input_size": [32, 32]}',
                                           "malformed edgepilot metadata.*empty"),
                                          ('{"name": "m", "labels": ["a"], "input_size": [32, 32],'
                                           ' "layout": "CHW"}', "NCHW, NHWC")])
def test_malformed_edgepilot_metadata_is_a_clear_error(tiny_tflite, tmp_path, entry, needle):
    bad = _rewrite(tiny_tflite["fp32"], tmp_path / "bad.tflite", entry)
    with pytest.raises(ModelFileError, match=needle):
        edgepilot.load(bad)


def test_meta_argument_overrides_the_file(tiny_tflite, fresh_colour_data):
    original = edgepilot.load(tiny_tflite["fp32"])
    meta = original.meta.replace(labels=("w", "x", "y", "z"))
    model = edgepilot.load(tiny_tflite["fp32"], meta=meta)
    assert model.meta is meta
    for image in fresh_colour_data[0][:8]:
        assert model.predict(image).label == "wxyz"[original.predict(image).index]


def test_metadata_is_rewritten_in_place_not_appended(tiny_tflite):
    raw = open(tiny_tflite["fp32"], "rb").read()
    standard = build_metadata(name="x", description="", version="1", width=32, height=32,
                              mean=[0.0], std=[1.0], num_classes=4)
    once = write_metadata(raw, standard=standard, edgepilot_json="{}", files={"labels.txt": b"a"})
    twice = write_metadata(once, standard=standard, edgepilot_json="{}",
                           files={"labels.txt": b"a"})
    assert len(once) == len(twice)
    assert read_metadata(twice).labels == ["a"]
