"""Detections from a centre-heatmap detector's outputs, in numpy: decode, suppression, mAP.

A detector file (metadata ``task: "detection"``) outputs, for an input of H x W pixels and a
stride s, two maps of (H/s) x (W/s) cells, channels last:

- ``heatmap``: one probability per label and cell that an object's centre falls in that cell;
- ``box``: per cell, the centre's offset inside the cell (dx, dy in 0..1) and the object's
  size as log(width / s), log(height / s).

Decoding keeps the cells that are the highest of their 3x3 neighbourhood in their label's
channel and above the score threshold, turns them into boxes, and suppresses boxes that
overlap a better one of any label (one light has one state). None of this is in the graph,
so every format exports the same two convolutions at the end.

`evaluate` scores detections COCO-style: average precision per label at IoU 0.5 and averaged
over IoU 0.5:0.95, 101-point interpolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgepilot.errors import EdgepilotError, InputError, ModelFileError
from edgepilot.meta import ModelMeta

__all__ = ["Detection", "DecodeParams", "fit", "letterbox", "decode", "nms", "iou_matrix",
           "evaluate", "agreement", "read_boxes_folder", "write_boxes_folder",
           "DETECTION_TASK"]

DETECTION_TASK = "detection"
#: Bounds on what a file may claim for decoding (a hostile file must not make it allocate).
MAX_DETECTIONS = 1000
MAX_STRIDE = 64


@dataclass(frozen=True)
class Detection:
    """One object: box (x0, y0, x1, y1) in the image's pixels, its label and score."""

    box: tuple[float, float, float, float]
    label: str
    score: float
    index: int

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    def to_dict(self) -> dict:
        return {"box": [round(v, 1) for v in self.box], "label": self.label,
                "score": round(self.score, 4), "index": self.index}


@dataclass(frozen=True)
class DecodeParams:
    """How to read a detector's outputs; written in its metadata under ``extra["decode"]``."""

    stride: int = 4
    heatmap: int = 0  # output index of the heatmap
    box: int = 1  # output index of the box map
    score_threshold: float = 0.3
    iou_threshold: float = 0.5
    max_detections: int = 50

    def to_dict(self) -> dict:
        return {"type": "centre-heatmap", "stride": self.stride, "heatmap": self.heatmap,
                "box": self.box, "score_threshold": self.score_threshold,
                "iou_threshold": self.iou_threshold, "max_detections": self.max_detections}

    @classmethod
    def from_meta(cls, meta: ModelMeta) -> DecodeParams:
        """The parameters a detector file carries; a missing or malformed entry is a
        ModelFileError naming what is wrong."""
        raw = meta.extra.get("decode")
        if not isinstance(raw, dict) or raw.get("type") != "centre-heatmap":
            raise ModelFileError(f"'{meta.name}' says task: detection but carries no "
                                 "centre-heatmap decode parameters (extra.decode); re-export "
                                 "it with edgepilot")
        try:
            params = cls(**{k: raw[k] for k in ("stride", "heatmap", "box", "score_threshold",
                                                 "iou_threshold", "max_detections") if k in raw})
            ok = (isinstance(params.stride, int) and 1 <= params.stride <= MAX_STRIDE
                  and params.heatmap in (0, 1) and params.box in (0, 1)
                  and params.heatmap != params.box
                  and 0.0 <= float(params.score_threshold) <= 1.0
                  and 0.0 < float(params.iou_threshold) <= 1.0
                  and isinstance(params.max_detections, int)
                  and 1 <= params.max_detections <= MAX_DETECTIONS)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ModelFileError(f"'{meta.name}' carries malformed decode parameters {raw}"[:300])
        return params


def fit(shape: tuple[int, int], size: tuple[int, int]) -> tuple[float, tuple[float, float],
                                                                 tuple[int, int]]:
    """Where an image of `shape` (h, w) lands when letterboxed into `size` (height, width):
    scale, (x, y) padding and the resized (h, w)."""
    (h, w), (height, width) = shape, size
    if (h, w) == (height, width):
        return 1.0, (0.0, 0.0), (h, w)
    scale = min(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return scale, (float((width - nw) // 2), float((height - nh) // 2)), (nh, nw)


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float, tuple]:
    """Fit an (h, w, 3) image into `size` = (height, width) keeping its aspect ratio, centred
    on black. Returns the canvas, the scale and the (x, y) padding, to map boxes back."""
    scale, pad, (nh, nw) = fit(image.shape[:2], size)
    if scale == 1.0 and image.shape[:2] == tuple(size):
        return image, scale, pad
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interpolation)
    canvas = np.zeros((size[0], size[1], image.shape[2]), image.dtype)
    left, top = int(pad[0]), int(pad[1])
    canvas[top:top + nh, left:left + nw] = resized
    return canvas, scale, pad


def _peaks(heatmap: np.ndarray) -> np.ndarray:
    """Mask of cells that are the maximum of their 3x3 neighbourhood, per channel."""
    padded = np.pad(heatmap, ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    h, w = heatmap.shape[:2]
    best = heatmap.copy()
    for dy in range(3):
        for dx in range(3):
            if dy != 1 or dx != 1:
                np.maximum(best, padded[dy:dy + h, dx:dx + w], out=best)
    return heatmap >= best


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (n, 4) with every box in b (m, 4), boxes as x0, y0, x1, y1."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) -
                 np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) -
                 np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept, best first: each box suppresses the worse ones that overlap
    it by more than `iou_threshold`."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    if len(order) <= 1:
        return order
    overlap = iou_matrix(boxes[order], boxes[order])
    keep = []
    suppressed = np.zeros(len(order), bool)
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        suppressed |= overlap[i] > iou_threshold
    return np.array(keep, np.int64)


def decode(heatmap: np.ndarray, box: np.ndarray, params: DecodeParams,
           labels: tuple[str, ...], *, scale: float = 1.0, pad: tuple = (0.0, 0.0),
           image_size: tuple[int, int] | None = None,
           score_threshold: float | None = None) -> list[Detection]:
    """Detections from one image's maps: heatmap (h, w, labels), box (h, w, 4).

    Boxes are in the model input's pixels, or in the original image's when `scale` and `pad`
    come from `letterbox` (then clipped to `image_size` = (height, width))."""
    heatmap = np.asarray(heatmap, np.float32)
    box = np.asarray(box, np.float32)
    if heatmap.ndim == 4:
        heatmap, box = heatmap[0], box[0]
    if heatmap.ndim != 3 or box.shape != heatmap.shape[:2] + (4,) or \
            heatmap.shape[2] != len(labels):
        raise InputError(f"a detector's outputs must be heatmap (h, w, {len(labels)}) and box "
                         f"(h, w, 4); got {heatmap.shape} and {box.shape}")
    threshold = params.score_threshold if score_threshold is None else score_threshold
    mask = _peaks(heatmap) & (heatmap >= threshold)
    ys, xs, cs = np.nonzero(mask)
    if not len(ys):
        return []
    scores = heatmap[ys, xs, cs]
    if len(scores) > 4 * params.max_detections:  # bound the suppression's n^2 work
        top = np.argpartition(-scores, 4 * params.max_detections)[:4 * params.max_detections]
        ys, xs, cs, scores = ys[top], xs[top], cs[top], scores[top]
    reg = box[ys, xs].astype(np.float64)
    s = params.stride
    cx, cy = (xs + reg[:, 0]) * s, (ys + reg[:, 1]) * s
    # Sizes are logs: clip before exp so a wild value cannot overflow to inf.
    bw = np.exp(np.clip(reg[:, 2], -8.0, 8.0)) * s
    bh = np.exp(np.clip(reg[:, 3], -8.0, 8.0)) * s
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    keep = nms(boxes, scores, params.iou_threshold)[:params.max_detections]
    boxes = (boxes[keep] - (pad[0], pad[1], pad[0], pad[1])) / scale
    if image_size is not None:
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, image_size[1])
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, image_size[0])
    return [Detection(tuple(float(v) for v in b), labels[int(c)], float(sc), int(c))
            for b, c, sc in zip(boxes, cs[keep], scores[keep])]


def agreement(reference: list[list[Detection]], other: list[list[Detection]],
              tolerance_px: float = 2.0, *, threshold: float = 0.0,
              margin: float = 0.05) -> dict:
    """How far two runs of a detector agree, image by image: the share of the reference's
    detections (score >= `threshold`) that the other run has too (same label, every box edge
    within `tolerance_px`), the largest edge difference of the pairs, and detections only one
    run has. A light scored just above the threshold by one run and just below by the other
    is the same answer: the other run's detections count down to `threshold - margin`, and
    its extras only from `threshold` up."""
    pairs, matched, extra, worst = 0, 0, 0, 0.0
    for ref, got in zip(reference, other):
        free = [g for g in got if g.score >= threshold - margin]
        for d in (d for d in ref if d.score >= threshold):
            pairs += 1
            if not free:
                continue
            gaps = [max(abs(a - b) for a, b in zip(d.box, g.box)) if g.index == d.index
                    else math.inf for g in free]
            best = int(np.argmin(gaps))
            if gaps[best] <= tolerance_px:
                matched += 1
                worst = max(worst, gaps[best])
                free.pop(best)
        extra += sum(1 for g in free if g.score >= threshold)
    return {"detections": pairs, "agree": round(matched / pairs, 4) if pairs else 1.0,
            "max_box_px": round(worst, 3), "unmatched": pairs - matched + extra,
            "tolerance_px": tolerance_px}


# ------------------------------------------------------------------------------- metrics
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
_RECALL_POINTS = np.linspace(0, 1, 101)


def _ap(scores: list, matched: list, n_truth: int) -> float:
    """101-point interpolated average precision of detections (score, true-positive flag)."""
    if n_truth == 0:
        return math.nan
    if not scores:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.asarray(matched, np.float64)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / n_truth
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    idx = np.searchsorted(recall, _RECALL_POINTS, side="left")
    return float(np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)],
                          0.0).mean())


def _match(det_boxes, det_scores, truth, ignore, threshold):
    """Greedy COCO matching, best detection first: each truth box takes the best-overlapping
    detection that is still free. Returns per detection: 1 matched, 0 false, -1 ignored."""
    result = np.zeros(len(det_boxes), np.int64)
    if not len(det_boxes):
        return result
    order = np.argsort(-det_scores, kind="stable")
    taken = np.zeros(len(truth), bool)
    overlap = iou_matrix(det_boxes, truth) if len(truth) else np.zeros((len(det_boxes), 0))
    for d in order:
        best, best_iou = -1, threshold
        for t in range(len(truth)):
            # A real match beats one with an ignored box; among equals, the higher IoU wins.
            if taken[t] or overlap[d, t] < best_iou:
                continue
            if best >= 0 and ignore[t] and not ignore[best]:
                continue
            best, best_iou = t, overlap[d, t]
        if best >= 0:
            taken[best] = True
            result[d] = -1 if ignore[best] else 1
    return result


def evaluate(detections: list[list[Detection]], truths: list[tuple[np.ndarray, np.ndarray]],
             labels: tuple[str, ...], *, height_range: tuple[float, float] | None = None
             ) -> dict:
    """COCO-style mAP of detections against truths (per image: boxes (n, 4), label indices).

    `height_range` (lo, hi) in pixels scores only objects of that height: truth boxes outside
    it are ignored (a detection of one neither counts nor hurts), and so are unmatched
    detections outside it. Returns mAP@0.5, mAP@0.5:0.95 and AP@0.5 per label (NaN for a
    label with no truth box, left out of the means)."""
    if len(detections) != len(truths):
        raise InputError(f"{len(detections)} detection lists for {len(truths)} images")
    per_label = {}
    for c, name in enumerate(labels):
        aps = []
        for threshold in IOU_THRESHOLDS:
            scores, flags, n_truth = [], [], 0
            for dets, (boxes, classes) in zip(detections, truths):
                boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
                truth = boxes[np.asarray(classes) == c]
                heights = truth[:, 3] - truth[:, 1]
                ignore = np.zeros(len(truth), bool) if height_range is None else \
                    (heights < height_range[0]) | (heights >= height_range[1])
                n_truth += int((~ignore).sum())
                mine = [d for d in dets if d.index == c]
                det_boxes = np.array([d.box for d in mine], np.float64).reshape(-1, 4)
                det_scores = np.array([d.score for d in mine], np.float64)
                result = _match(det_boxes, det_scores, truth, ignore, threshold)
                for d, r, b in zip(mine, result, det_boxes):
                    if r == -1:
                        continue
                    if r == 0 and height_range is not None and \
                            not height_range[0] <= b[3] - b[1] < height_range[1]:
                        continue
                    scores.append(d.score)
                    flags.append(r == 1)
            aps.append(_ap(scores, flags, n_truth))
        per_label[name] = aps
    ap50 = {name: aps[0] for name, aps in per_label.items()}
    present = [name for name in labels if not math.isnan(ap50[name])]
    return {
        "map50": float(np.mean([ap50[n] for n in present])) if present else math.nan,
        "map50_95": float(np.mean([np.mean(per_label[n]) for n in present])) if present
        else math.nan,
        "ap50": ap50,
        "n_truth": int(sum(int(np.sum(np.asarray(c) >= 0)) for _, c in truths)),
    }


# ---------------------------------------------------------------------- labelled folders
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
