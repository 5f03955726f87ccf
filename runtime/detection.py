"""Detections from a centre-heatmap detector's outputs, in numpy: decode and suppression.

A detector file (metadata ``task: "detection"``) outputs, for an input of H x W pixels and a
stride s, two maps of (H/s) x (W/s) cells, channels last:

- ``heatmap``: one probability per label and cell that an object's centre falls in that cell;
- ``box``: per cell, the centre's offset inside the cell (dx, dy in 0..1) and the object's
  size as log(width / s), log(height / s).

Decoding keeps the cells that are the highest of their 3x3 neighbourhood in their label's
channel and above the score threshold, turns them into boxes, and suppresses boxes that
overlap a better one of any label (one light has one state). None of this is in the graph,
so every format exports the same two convolutions at the end. Scoring detections (mAP,
agreement) is in detection_metrics.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgepilot.errors import InputError, ModelFileError
from edgepilot.meta import ModelMeta

__all__ = ["Detection", "DecodeParams", "fit", "letterbox", "decode", "nms", "iou_matrix",
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
