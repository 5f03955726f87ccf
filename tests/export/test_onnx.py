"""Round trip: a model trained here -> ONNX -> edgepilot.load -> compared with PyTorch."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import edgepilot  # noqa: E402
from edgepilot.errors import EdgepilotError, UnsupportedFormatError  # noqa: E402
from edgepilot.meta import META_KEY, ModelMeta  # noqa: E402


def test_file_is_self_contained_checked_and_carries_metadata(tiny_onnx, tiny_meta):
    path = Path(tiny_onnx.path)
    assert not list(path.parent.glob("*.data")) and not list(path.parent.glob(".partial-*"))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    props = {p.key: p.value for p in model.metadata_props}
    assert ModelMeta.from_json(props[META_KEY]) == tiny_meta
    assert props["labels"] == "red,yellow,green,none"


def test_parity_with_pytorch_on_validation_images(tiny_onnx, trained_tiny, colour_data,
                                                  tiny_meta):
    assert tiny_onnx.n_inputs == len(colour_data[0])
    assert tiny_onnx.max_abs_diff < 1e-4
    assert tiny_onnx.top1_agreement == 1.0
    assert tiny_onnx.accuracy_export == tiny_onnx.accuracy_torch > 0.9
    # The report is independent evidence: recompute on our side.
    from edgepilot.train.trainer import predict_logits

    net, _ = trained_tiny
    images, _ = colour_data
    ours = edgepilot.load(tiny_onnx.path)
    x = np.concatenate([edgepilot.runtime.preprocess(img, tiny_meta) for img in images[:64]])
    np.testing.assert_allclose(ours(x), predict_logits(net, images[:64], tiny_meta), atol=1e-4)


def test_report_json_is_saved_beside_the_model(tiny_onnx):
    saved = json.loads(Path(tiny_onnx.path + ".json").read_text())
    assert saved == tiny_onnx.to_dict()
    assert saved["size_bytes"] == Path(tiny_onnx.path).stat().st_size
    assert saved["format"] == "onnx" and saved["precision"] == "fp32"


def test_any_module_without_validation_data(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.Tanh())
    [report] = edgepilot.export(net, torch.randn(1, 3, 2, 2), out=tmp_path / "mlp.onnx",
                                quiet=True)
    assert report.path == str(tmp_path / "mlp.onnx")
    assert report.n_inputs == 17 and report.max_abs_diff < 1e-5
    assert report.accuracy_torch is None
    assert edgepilot.load(report.path).meta is None


def test_bad_options_fail_before_any_work(tmp_path, trained_tiny):
    net, _ = trained_tiny
    with pytest.raises(UnsupportedFormatError, match="Valid precisions: fp32"):
        edgepilot.export(net, torch.zeros(1, 3, 32, 32), out=tmp_path / "m", precision="int4")
    with pytest.raises(UnsupportedFormatError, match="Did you mean 'onnx'"):
        edgepilot.export(net, torch.zeros(1, 3, 32, 32), formats="onx", out=tmp_path / "m")
    with pytest.raises(EdgepilotError, match="must be a torch.Tensor"):
        edgepilot.export(net, np.zeros((1, 3, 32, 32)), out=tmp_path / "m")
    assert not list(tmp_path.iterdir())


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum().item() > 0:  # Python control flow on a tensor value cannot be exported
            return x * 2
        return x


def test_failed_export_is_clear_and_keeps_the_previous_file(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"the user's earlier export")
    with pytest.raises(EdgepilotError, match="could not export DataDependent to ONNX"):
        edgepilot.export(DataDependent(), torch.ones(1, 3), out=target, quiet=True)
    assert target.read_bytes() == b"the user's earlier export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
