import cv2
import numpy as np
import pytest

from edgepilot.errors import InputError
from edgepilot.meta import ModelMeta
from edgepilot.runtime.image import check_image, preprocess, read_image


def test_read_image_returns_rgb(tmp_path):
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = read_image(tmp_path / "red.png")
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [200, 0, 0]


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="Cannot decode"):
        read_image(tmp_path / "text.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="Cannot decode"):
        read_image(tmp_path / "empty.jpg")


@pytest.mark.parametrize("image,needle", [
    (np.zeros((8, 8, 3), np.float32), "uint8 image.*\\* 255"),
    (np.zeros((8, 8, 3), np.int32), "uint8"),
    (np.zeros((8, 8, 4), np.uint8), "RGBA"),
    (np.zeros((2, 8, 8, 3), np.uint8), "one image at a time"),
    (np.zeros((8, 8, 2), np.uint8), "shape \\(H, W, 3\\)"),
    ([[1, 2], [3, 4]], "numpy array"),
])
def test_bad_images_get_clear_errors(image, needle):
    with pytest.raises(InputError, match=needle):
        check_image(image)


def test_grey_images_become_three_channels():
    assert check_image(np.zeros((6, 6), np.uint8)).shape == (6, 6, 3)


def test_preprocess_matches_a_hand_computation():
    meta = ModelMeta(name="m", labels=("a",), input_size=(2, 2), layout="NCHW",
                     mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    image = np.full((4, 4, 3), (255, 0, 51), np.uint8)
    x = preprocess(image, meta)
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [1.0, -1.0, 0.2], atol=1e-6)


def test_preprocess_layouts_and_colour_orders():
    image = np.zeros((3, 3, 3), np.uint8)
    image[..., 0] = 255
    base = dict(name="m", labels=("a",), input_size=(3, 3), mean=(0, 0, 0), std=(1, 1, 1))
    nhwc = preprocess(image, ModelMeta(**base, layout="NHWC"))
    assert nhwc.shape == (1, 3, 3, 3) and nhwc[0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    bgr = preprocess(image, ModelMeta(**base, layout="NHWC", color="BGR"))
    assert bgr[0, 0, 0].tolist() == [0.0, 0.0, 1.0]
    grey = preprocess(image, ModelMeta(**{**base, "mean": (0,), "std": (1,)}, color="GRAY",
                                       layout="NC"))
    assert grey.shape == (1, 9)
    np.testing.assert_allclose(grey[0, 0], 76 / 255, atol=1 / 255)  # 0.299 * 255
