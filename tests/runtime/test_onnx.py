"""The ONNX backend and the Model wrapper over it."""

import numpy as np
import pytest

import edgepilot
from edgepilot.errors import InputError, ModelFileError, UnsupportedFormatError


def test_backend_names_the_provider_that_ran(tiny_onnx):
    model = edgepilot.load(tiny_onnx.path, threads=1)
    assert "onnxruntime" in model.backend and "CPUExecutionProvider" in model.backend
    assert model.inputs[0].shape == (None, 3, 32, 32)
    assert model.inputs[0].dtype == np.float32


def test_unavailable_provider_is_reported_not_hidden(tiny_onnx):
    model = edgepilot.load(tiny_onnx.path, providers=["CUDAExecutionProvider"])
    assert "CPUExecutionProvider" in model.backend
    assert "not available: CUDAExecutionProvider" in model.backend


def test_metadata_is_read_back(tiny_onnx, tiny_meta):
    assert edgepilot.load(tiny_onnx.path).meta == tiny_meta


def test_predict_takes_any_size_arrays_and_paths(tiny_onnx, colour_data, tmp_path):
    import cv2

    model = edgepilot.load(tiny_onnx.path)
    images, labels = colour_data
    big = cv2.resize(images[0], (97, 61), interpolation=cv2.INTER_NEAREST)
    p = model.predict(big)
    assert p.label in model.meta.labels
    assert abs(sum(p.scores.values()) - 1) < 1e-5 and p.score == max(p.scores.values())
    cv2.imwrite(str(tmp_path / "x.png"), cv2.cvtColor(images[1], cv2.COLOR_RGB2BGR))
    assert model.predict(tmp_path / "x.png").index == model.predict(images[1]).index


def test_raw_call_checks_shape_and_count(tiny_onnx):
    model = edgepilot.load(tiny_onnx.path)
    assert model(np.zeros((5, 3, 32, 32), np.float32)).shape == (5, 4)
    assert model(np.zeros((1, 3, 32, 32), np.float64)).dtype == np.float32  # cast, not refused
    with pytest.raises(InputError, match="expects shape \\?x3x32x32, got 1x32x32x3"):
        model(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(InputError, match="takes 1 input"):
        model(np.zeros((1, 3, 32, 32)), np.zeros(1))


def test_load_errors(tmp_path, tiny_onnx):
    with pytest.raises(ModelFileError, match="not found"):
        edgepilot.load(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match="onnxruntime cannot load"):
        edgepilot.load(tmp_path / "junk.onnx")
    with pytest.raises(UnsupportedFormatError, match="Did you mean '.onnx'"):
        edgepilot.load(tmp_path / "model.onnxx")
    with pytest.raises(InputError, match="threads"):
        edgepilot.load(tiny_onnx.path, threads=0)


def test_file_without_metadata_runs_raw_but_explains_predict(tmp_path, trained_tiny):
    import torch

    net, _ = trained_tiny
    path = tmp_path / "plain.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=True,
                      external_data=False)
    model = edgepilot.load(path)
    assert model.meta is None
    assert model(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 4)
    with pytest.raises(InputError, match="no edgepilot metadata"):
        model.predict(np.zeros((32, 32, 3), np.uint8))
