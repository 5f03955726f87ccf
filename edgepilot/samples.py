"""`edgepilot samples`: the images the README's examples read, drawn here (no download).

    >>> written = write_samples("try/")
    >>> sorted(p.name for p in written)[:3]
    ['classes.txt', 'other.png', 'photo.jpg']

Everything is drawn by `edgepilot.draw` with seeds of its own (none that training or validation
uses), so the files are new to the shipped models:

* ``photo.jpg`` (a green light), ``other.png`` (a red one): `predict` a classifier on them;
* ``photo_of_a_7.jpg``: a handwritten-looking 7 for the digit models;
* ``street.jpg``: a street with traffic lights, for the detector;
* ``labelled_images/<label>/*.png``: a few images per label of the stoplight classifier,
  the layout ``--data`` takes;
* ``scenes/*.png`` with YOLO ``.txt`` boxes (``class cx cy w h``) and ``classes.txt`` (the
  class ids, one label per line): detection data for ``bench --data``;
* ``photos/*.jpg``: unlabelled images, the layout ``--calib`` takes.

Nothing is overwritten: a target that exists stops the command before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgepilot.errors import InputError

__all__ = ["write_samples", "SEED"]

SEED = 20_261_203  # no training, validation or held-out split draws with it
_TOP = ("photo.jpg", "other.png", "photo_of_a_7.jpg", "street.jpg", "labelled_images",
        "scenes", "photos")


def write_samples(out: str | Path = ".", *, per_label: int = 5, scenes: int = 8,
                  log: Callable[[str], None] = print) -> list[Path]:
    """Write the sample files into `out` (created if needed); returns what was written."""
    import cv2

    from edgepilot.datafolders import write_boxes_folder
    from edgepilot.draw import scenes as streets
    from edgepilot.draw import stoplight as sl

    if per_label < 1 or scenes < 1:
        raise InputError(f"per_label= and scenes= must be 1 or more, got {per_label}, {scenes}")
    out = Path(out)
    taken = [out / name for name in _TOP if (out / name).exists() or (out / name).is_symlink()]
    if taken:
        raise InputError(f"'{taken[0]}' exists: samples never overwrite anything; give another "
                         "out= folder, or move it away")
    if out.exists() and not out.is_dir():
        raise InputError(f"out= '{out}' is a file: give a folder")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(path: Path, rgb: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise InputError(f"Could not write '{path}'")
        written.append(path)

    green, red = sl.LABELS.index("green"), sl.LABELS.index("red")
    save(out / "photo.jpg", sl.render_scene(np.random.default_rng((SEED, 0)), green, 480, 360))
    save(out / "other.png", sl.render_scene(np.random.default_rng((SEED, 1)), red, 320, 320))
    save(out / "photo_of_a_7.jpg", _seven(np.random.default_rng((SEED, 2))))
    save(out / "street.jpg", _street_with_lights(streets, SEED))
    labels = np.repeat(np.arange(len(sl.LABELS)), per_label)
    images, labels = sl.generate(len(labels), seed=SEED + 1, labels=labels)
    for i, (image, label) in enumerate(zip(images, labels)):
        save(out / "labelled_images" / sl.LABELS[label] / f"{i:03d}.png", image)
    for i, image in enumerate(sl.generate(4, seed=SEED + 2)[0]):
        save(out / "photos" / f"{i:03d}.jpg", image)
    street_images, truths = streets.generate_streets(scenes, seed=SEED + 3)
    written += write_boxes_folder(out / "scenes", street_images, truths)
    written += [p.with_suffix(".txt") for p in written if p.parent == out / "scenes"
                and p.suffix == ".png"]
    classes = out / "scenes" / "classes.txt"
    classes.write_text("".join(f"{name}\n" for name in streets.STATES))
    written.append(classes)
    log(f"wrote {len(written)} files in {out}: photo.jpg, other.png, photo_of_a_7.jpg, "
        f"street.jpg, labelled_images/ ({len(sl.LABELS)} labels x {per_label}), scenes/ "
        f"({scenes} streets, YOLO boxes, classes.txt: {', '.join(streets.STATES)}), photos/")
    return written


def _street_with_lights(streets, seed: int) -> np.ndarray:
    """The first street of this seed with two or more lit lights in daylight-sized boxes."""
    for i in range(64):
        image, boxes, labels = streets.render_street(np.random.default_rng((seed, 100 + i)))
        heights = boxes[:, 3] - boxes[:, 1]
        if len(labels) >= 2 and (heights >= 24).all():
            return image
    return image


def _seven(rng: np.random.Generator) -> np.ndarray:
    """A dark 7 on paper, slightly rotated, as a phone photo of one would be."""
    import cv2

    paper = np.full((280, 280, 3), (235, 232, 225), np.uint8)
    paper = np.clip(paper + rng.normal(0, 4, paper.shape), 0, 255).astype(np.uint8)
    cv2.putText(paper, "7", (70, 230), cv2.FONT_HERSHEY_SIMPLEX, 8.0, (30, 30, 40), 22,
                cv2.LINE_AA)
    turn = cv2.getRotationMatrix2D((140, 140), float(rng.uniform(-8, 8)), 1.0)
    return cv2.warpAffine(paper, turn, (280, 280), borderMode=cv2.BORDER_REPLICATE)
