"""The ONNX backend and the Model wrapper over it."""

import os

import numpy as np
import pytest

import edgepilot
from edgepilot.errors import InputError, ModelFileError, UnsupportedFormatError


def test_backend_names_the_provider_that_ran(tiny_onnx):
    model = edgepilot.load(tiny_onnx.path, threads=1)
    assert "onnxruntime" in model.backend and "CPUExecutionProvider" in model.backend
    assert model.inputs[0].shape == (1, 3, 32, 32)  # batch one unless asked (#18)
    assert model.inputs[0].dtype == np.float32


def test_unavailable_provider_is_reported_not_hidden(tiny_onnx):
    model = edgepilot.load(tiny_onnx.path, providers=["CUDAExecutionProvider"])
    assert "CPUExecutionProvider" in model.backend
    assert "not available: CUDAExecutionProvider" in model.backend


def test_metadata_is_read_back(tiny_onnx, tiny_meta):
    assert edgepilot.load(tiny_onnx.path).meta == tiny_meta


def test_predict_takes_any_size_arrays_and_paths(tiny_onnx, colour_data, tmp_path, trained_tiny,
                                                 tiny_meta, torch_top1):
    import cv2

    model = edgepilot.load(tiny_onnx.path)
    images, labels = colour_data
    # One image of each label (red, yellow, green, none), enlarged to another aspect ratio:
    # the label PyTorch gives the image at the model's size, and the one it was drawn with.
    expected = torch_top1(trained_tiny[0], images[:4], tiny_meta)
    assert list(expected) == list(labels[:4])
    for image, index in zip(images[:4], expected):
        big = cv2.resize(image, (97, 61), interpolation=cv2.INTER_NEAREST)
        p = model.predict(big)
        assert p.label == model.meta.labels[index] and p.index == index
    assert abs(sum(p.scores.values()) - 1) < 1e-5 and p.score == max(p.scores.values())
    cv2.imwrite(str(tmp_path / "x.png"), cv2.cvtColor(images[1], cv2.COLOR_RGB2BGR))
    assert model.predict(tmp_path / "x.png").index == model.predict(images[1]).index


def test_raw_call_checks_shape_and_count(tiny_onnx):
    model = edgepilot.load(tiny_onnx.path)
    assert model(np.zeros((5, 3, 32, 32), np.float32)).shape == (5, 4)
    assert model(np.zeros((1, 3, 32, 32), np.float64)).dtype == np.float32  # cast, not refused
    with pytest.raises(InputError, match="expects shape 1x3x32x32, got 1x32x32x3"):
        model(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(InputError, match="takes 1 input"):
        model(np.zeros((1, 3, 32, 32)), np.zeros(1))


def test_load_errors(tmp_path, tiny_onnx):
    with pytest.raises(ModelFileError, match="not found"):
        edgepilot.load(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match="cannot load .*junk.onnx|junk.onnx.* not a valid"):
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


def test_threads_are_applied_to_the_session(tiny_onnx):
    options = edgepilot.load(tiny_onnx.path, threads=3)._backend.session.get_session_options()
    assert options.intra_op_num_threads == 3
    default = edgepilot.load(tiny_onnx.path, threads=None)._backend.session.get_session_options()
    assert default.intra_op_num_threads == 0  # 0: onnxruntime picks, one per core


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"),
                    reason="os: counting a process's threads needs Linux /proc")
def test_threads_start_that_many_workers(tiny_onnx, threads_after_loading):
    # onnxruntime's intra-op pool is the calling thread plus threads-1 workers: 3 threads
    # instead of 1 ask for 2 more OS threads. A count of a live process's threads is a proxy
    # that a busy machine can leave one short (a worker not started yet when counted), so:
    # more threads than with 1 (the setting reached the pool), never more than the 2 asked.
    one, three = (threads_after_loading(tiny_onnx.path, n) for n in (1, 3))
    assert 1 <= three - one <= 2, f"1 thread -> {one} OS threads, 3 threads -> {three}"


def test_load_with_meta_predicts_a_file_without_metadata(tmp_path, trained_tiny, tiny_meta,
                                                         fresh_colour_data, torch_top1,
                                                         model_top1):
    import torch

    net, _ = trained_tiny
    path = tmp_path / "plain.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=True,
                      external_data=False)
    model = edgepilot.load(path, meta=tiny_meta)
    assert model.meta is tiny_meta
    images, _ = fresh_colour_data
    np.testing.assert_array_equal(model_top1(model, images[:50]),
                                  torch_top1(net, images[:50], tiny_meta))


def test_meta_argument_wins_over_the_file(tiny_onnx, tiny_meta, fresh_colour_data):
    renamed = tiny_meta.replace(labels=("w", "x", "y", "z"))
    model = edgepilot.load(tiny_onnx.path, meta=renamed)
    original = edgepilot.load(tiny_onnx.path)
    for image in fresh_colour_data[0][:8]:
        assert model.predict(image).label == "wxyz"[original.predict(image).index]


@pytest.mark.parametrize("entry,needle", [
    ("{not json", "malformed edgepilot metadata"),
    ('{"name": "m", "labels": ["a"], "input_size": [32, 32], "layout": "CHW"}', "NCHW, NHWC"),
    ('["a list"]', "malformed edgepilot metadata"),
])
def test_malformed_metadata_is_a_clear_error(tiny_onnx, tmp_path, entry, needle):
    onnx = pytest.importorskip("onnx")
    from edgepilot.meta import META_KEY

    model = onnx.load(tiny_onnx.path)
    for prop in model.metadata_props:
        if prop.key == META_KEY:
            prop.value = entry
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelFileError, match=needle):
        edgepilot.load(tmp_path / "bad.onnx")


def test_fp16_keeps_float32_inputs_and_outputs(tmp_path, trained_tiny, tiny_meta, colour_data,
                                              fresh_colour_data, torch_top1, model_top1):
    import torch

    onnx = pytest.importorskip("onnx")
    [report] = edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats="onnx",
                                precision="fp16", out=tmp_path / "m", meta=tiny_meta,
                                data=colour_data, quiet=True)
    model = edgepilot.load(report.path)
    assert model.inputs[0].dtype == np.float32 and model.outputs[0].dtype == np.float32
    graph = onnx.load(report.path).graph
    # The weights inside are float16: that is what makes the file fp16.
    assert {t.data_type for t in graph.initializer if len(t.dims) == 4} == \
        {onnx.TensorProto.FLOAT16}
    images, _ = fresh_colour_data
    agree = np.mean(model_top1(model, images) == torch_top1(trained_tiny[0], images, tiny_meta))
    assert agree >= 0.99
