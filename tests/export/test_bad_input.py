"""Bad input to the exporters: clear errors, nothing half-written, nothing of the user's lost."""

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgepilot  # noqa: E402
from edgepilot.errors import EdgepilotError, UnsupportedFormatError  # noqa: E402
from edgepilot.export.calibration import load_calibration  # noqa: E402


def test_calibration_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(EdgepilotError, match="has no image files"):
        load_calibration(tmp_path, (32, 32))


def test_undecodable_calibration_images_are_skipped_and_counted(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"ok{i}.png"), np.full((40, 50, 3), 80 * i, np.uint8))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "empty.png").write_bytes(b"")
    calibration = load_calibration(tmp_path, (32, 32))
    assert calibration.images.shape == (3, 32, 32, 3) and calibration.skipped == 2
    for i in range(3):
        (tmp_path / f"ok{i}.png").unlink()
    with pytest.raises(EdgepilotError, match="2 image file\\(s\\), none decodable"):
        load_calibration(tmp_path, (32, 32))


def test_calibration_npy_must_be_uint8_images(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(EdgepilotError, match="must be \\(N, H, W, 3\\) uint8 RGB"):
        load_calibration(tmp_path / "x.npy", (8, 8))
    np.save(tmp_path / "y.npy", np.zeros((4, 8, 8, 3), np.uint8))
    assert load_calibration(tmp_path / "y.npy", (16, 16), limit=2).images.shape == (2, 16, 16, 3)


def test_skipped_calibration_images_reach_the_report(tmp_path, trained_tiny, tiny_meta,
                                                     colour_data):
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, image in enumerate(colour_data[0][:20]):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (folder / "bad.png").write_text("x")
    [report] = edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats="onnx",
                                precision="int8", out=tmp_path / "m", meta=tiny_meta,
                                data=colour_data, calib=folder, quiet=True)
    assert report.notes["calibration"] == {"method": "minmax", "images": 20,
                                           "source": str(folder), "skipped": 1}


@pytest.mark.parametrize("fmt,precision", [("onnx", "dynamic"), ("tflite", "int4")])
def test_unsupported_precision_lists_the_valid_ones(tmp_path, trained_tiny, fmt, precision):
    valid = ", ".join(edgepilot.formats.format_by_name(fmt).precisions)
    with pytest.raises(UnsupportedFormatError, match=f"Valid precisions: {valid}"):
        edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats=fmt,
                         precision=precision, out=tmp_path / "m")


def test_unknown_calibration_method(tmp_path, trained_tiny, tiny_meta, colour_data):
    with pytest.raises(UnsupportedFormatError, match="entropy, percentile"):
        edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats="onnx",
                         precision="int8", out=tmp_path / "m", meta=tiny_meta,
                         data=colour_data, calib_method="kl", quiet=True)
    assert not list(tmp_path.glob("m*"))


def test_int8_without_calibration_source(tmp_path, trained_tiny, tiny_meta):
    with pytest.raises(EdgepilotError, match="needs calibration images"):
        edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats="onnx",
                         precision="int8", out=tmp_path / "m", meta=tiny_meta)


class Unconvertible(torch.nn.Module):
    def forward(self, x):
        return torch.special.bessel_j0(x)


def test_an_op_the_converter_cannot_handle_is_named(tmp_path):
    pytest.importorskip("litert_torch")
    with pytest.raises(EdgepilotError) as info:
        edgepilot.export(Unconvertible(), torch.randn(1, 8), formats="tflite",
                         out=tmp_path / "m", quiet=True)
    message = str(info.value)
    assert "to TFLite" in message and "bessel_j0" in message and "Try ONNX" in message
    assert not list(tmp_path.iterdir())


def test_uint8_io_is_only_for_tflite(tmp_path, trained_tiny, tiny_meta, colour_data):
    with pytest.raises(UnsupportedFormatError, match="float32 inputs and outputs"):
        edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats="onnx",
                         precision="int8", io_dtype="uint8", out=tmp_path / "m",
                         meta=tiny_meta, data=colour_data, quiet=True)
