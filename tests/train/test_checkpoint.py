import pytest

torch = pytest.importorskip("torch")

from edgepilot.errors import ModelFileError, UnknownArchitectureError  # noqa: E402
from edgepilot.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from edgepilot.train.models import create_model  # noqa: E402


def test_round_trip_loads_with_weights_only(tmp_path, tiny_meta):
    net = create_model("stoplight_cnn", num_classes=4, width=8).eval()
    path = save_checkpoint(tmp_path / "c.pt", net, arch="stoplight_cnn",
                           config={"num_classes": 4, "width": 8}, meta=tiny_meta,
                           metrics={"val_accuracy": 0.5})
    raw = torch.load(path, weights_only=True)
    assert raw["arch"] == "stoplight_cnn" and raw["metrics"] == {"val_accuracy": 0.5}
    back, meta, _ = load_checkpoint(path)
    assert meta == tiny_meta
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(back(x), net(x))
    assert not list(tmp_path.glob("*.partial"))


def test_unknown_architecture_in_checkpoint(tmp_path, tiny_meta):
    net = create_model("stoplight_cnn", num_classes=4, width=8)
    path = save_checkpoint(tmp_path / "c.pt", net, arch="stoplight_cnn", config={},
                           meta=tiny_meta)
    payload = torch.load(path, weights_only=True)
    payload["arch"] = "resnet9000"
    torch.save(payload, path)
    with pytest.raises(UnknownArchitectureError, match="c.pt.*Unknown architecture 'resnet9000'"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ModelFileError, match="Cannot read"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save(create_model("stoplight_cnn").state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ModelFileError, match="lacks arch"):
        load_checkpoint(tmp_path / "plain.pt")


def test_weights_that_do_not_fit(tmp_path, tiny_meta):
    net = create_model("stoplight_cnn", num_classes=4, width=8)
    path = save_checkpoint(tmp_path / "c.pt", net, arch="stoplight_cnn",
                           config={"num_classes": 4, "width": 16}, meta=tiny_meta)
    with pytest.raises(ModelFileError, match="do not fit"):
        load_checkpoint(path)
