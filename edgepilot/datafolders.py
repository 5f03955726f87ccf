"""Labelled data folders on disk: images in one sub-folder per label (classifiers), and images
with YOLO .txt box labels (detectors), read for `edgepilot bench --data` and validation, and
written from generated scenes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgepilot.errors import EdgepilotError

__all__ = ["labelled_folder", "read_boxes_folder", "write_boxes_folder"]


def labelled_folder(path: str | Path) -> tuple[list[Path], list[str]]:
    """Images in class sub-folders (``data/red/1.jpg``): files and their labels."""
    root = Path(path)
    if not root.is_dir():
        raise EdgepilotError(f"data= takes a folder with one sub-folder per label, got '{root}'")
    files, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            files.append(file)
            labels.append(folder.name)
    if not files:
        raise EdgepilotError(f"'{root}' has no files in label sub-folders (e.g. {root}/red/1.jpg)")
    return files, labels


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _label_file(image: Path) -> Path:
    """YOLO's layout: ``x.txt`` beside ``x.jpg``, or under a sibling ``labels/`` folder for
    images under ``images/``."""
    beside = image.with_suffix(".txt")
    if beside.is_file() or "images" not in image.parts:
        return beside
    parts = list(image.parts)
    at = len(parts) - 1 - parts[::-1].index("images")
    parts[at] = "labels"
    return Path(*parts).with_suffix(".txt")


def read_boxes_folder(folder: str | Path, labels: tuple[str, ...] | None = None):
    """Images and their boxes from a folder in YOLO's text format: per image a ``.txt`` with
    one line per object, ``class cx cy w h``, the centre and size as fractions of the image.

    Returns the image files and, per image, (boxes (n, 4) in pixels, label indices (n,));
    an image without a ``.txt`` has no objects. Errors name the file and line."""
    from edgepilot.runtime.image import image_size

    root = Path(folder)
    if not root.is_dir():
        raise EdgepilotError(f"data= takes a folder of images with YOLO .txt labels, got "
                             f"'{root}'")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise EdgepilotError(f"'{root}' has no images (.jpg, .png) for detection data")
    truths = []
    for file in files:
        with open(file, "rb") as handle:
            size = image_size(handle.read(1 << 20))
        if size is None:
            raise EdgepilotError(f"{file}: cannot read the image size (not a JPEG/PNG/BMP/WebP)")
        width, height = size
        boxes, classes = [], []
        txt = _label_file(file)
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines() \
            if txt.is_file() else []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                c, cx, cy, w, h = int(fields[0]), *map(float, fields[1:5])
                if len(fields) != 5 or c < 0 or (labels is not None and c >= len(labels)) or \
                        not all(0 <= v <= 1 for v in (cx, cy, w, h)):
                    raise ValueError
            except (ValueError, IndexError):
                classes_ok = "a class index" if labels is None else \
                    f"class 0..{len(labels) - 1}"
                raise EdgepilotError(
                    f"{txt}:{number}: expected 'class cx cy w h' with {classes_ok} and "
                    f"fractions 0..1, got {line.strip()[:80]!r}") from None
            boxes.append(((cx - w / 2) * width, (cy - h / 2) * height,
                          (cx + w / 2) * width, (cy + h / 2) * height))
            classes.append(c)
        truths.append((np.array(boxes, np.float64).reshape(-1, 4), np.array(classes, np.int64)))
    return files, truths


def write_boxes_folder(folder: str | Path, images: np.ndarray, truths) -> list[Path]:
    """Write images (N, H, W, 3) uint8 RGB as PNGs with YOLO .txt labels: the inverse of
    `read_boxes_folder` (generated scenes as a data folder for `edgepilot bench --data`)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (image, (boxes, classes)) in enumerate(zip(images, truths)):
        height, width = image.shape[:2]
        path = root / f"{i:05d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        lines = [f"{int(c)} {(b[0] + b[2]) / 2 / width:.6f} {(b[1] + b[3]) / 2 / height:.6f} "
                 f"{(b[2] - b[0]) / width:.6f} {(b[3] - b[1]) / height:.6f}"
                 for b, c in zip(np.asarray(boxes).reshape(-1, 4), classes)]
        path.with_suffix(".txt").write_text("".join(line + "\n" for line in lines))
        written.append(path)
    return written
