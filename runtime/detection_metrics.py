"""How good a detector's detections are: `evaluate` scores them COCO-style against truth boxes
(average precision per label at IoU 0.5 and averaged over IoU 0.5:0.95, 101-point
interpolation), and `agreement` compares two runs of a detector image by image."""

from __future__ import annotations

import math

import numpy as np

from edgepilot.errors import InputError
from edgepilot.runtime.detection import Detection, iou_matrix

__all__ = ["evaluate", "agreement", "IOU_THRESHOLDS"]


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
             labels: tuple[str, ...], *, height_range: tuple[float, float] | None = None,
             iou_thresholds: tuple[float, ...] = IOU_THRESHOLDS) -> dict:
    """COCO-style mAP of detections against truths (per image: boxes (n, 4), label indices).

    `height_range` (lo, hi) in pixels scores only objects of that height: truth boxes outside
    it are ignored (a detection of one neither counts nor hurts), and so are unmatched
    detections outside it. Returns mAP@0.5, mAP@0.5:0.95 and AP@0.5 per label (NaN for a
    label with no truth box, left out of the means). `iou_thresholds` starts at 0.5; with
    (0.5,) alone "map50_95" is mAP@0.5 too, and the call is ten times cheaper."""
    if len(detections) != len(truths):
        raise InputError(f"{len(detections)} detection lists for {len(truths)} images")
    per_label = {}
    for c, name in enumerate(labels):
        aps = []
        for threshold in iou_thresholds:
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
