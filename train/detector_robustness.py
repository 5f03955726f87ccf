"""Robustness report of a stoplight detector: mAP and recall per factor of the street scene.

The scene generator records what it drew (`scenes.render_street(..., info={})`): per light its
size, orientation, housing, lamp look and whether the frame's edge cuts it; per scene the
lighting, background family and camera effects. This module scores detections per value of each
factor, on seeds no training run uses, for the families training sees ("val") and for those it
never sees ("holdout": `scenes.HOLDOUT`, rows marked ``held out``).

- A light is *found* when a detection of its state at the runtime's score threshold overlaps it
  with IoU >= 0.5: the share found is the recall of that factor value.
- Scene factors (lighting, background, camera) also get mAP@0.5 over the scenes that have that
  value; light factors get mAP@0.5 scored only on the lights of that value (the others and the
  detections that match them are ignored, unmatched detections count against every value).

    >>> report = detector_report({"pytorch": detect}, val_size=1000, holdout_size=500)
    >>> print(format_detector_report(report))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgepilot.draw.scenes import (
    HOLDOUT,
    STATES,
    StreetConfig,
    holdout_config,
    render_street,
    train_config,
)
from edgepilot.runtime.detection import Detection, iou_matrix
from edgepilot.runtime.detection_metrics import evaluate

__all__ = ["LIGHT_FACTORS", "SCENE_FACTORS", "IOU", "street_split", "light_recall",
           "detector_report", "format_detector_report"]

#: Seed of the report's scenes: far from the seeds training, validation and the demo use.
REPORT_SEED = 60_000_029
IOU = 0.5
#: Size bands of a light's box height in pixels.
SIZE_BANDS = ((0, 16, "<16 px"), (16, 24, "16-24 px"), (24, 48, "24-48 px"),
              (48, 96, "48-96 px"), (96, 1e9, ">=96 px"))


def _band(height: float) -> str:
    return next(name for lo, hi, name in SIZE_BANDS if lo <= height < hi)


def _jpeg(q: int) -> str:
    return "none" if q == 0 else "q<40" if q < 40 else "q>=40"


#: factor -> bucket of one light (its box height, its recorded dict)
LIGHT_FACTORS: dict[str, Callable[[float, dict], str]] = {
    "size": lambda height, light: _band(height),
    "orientation": lambda height, light: light["orientation"],
    "housing": lambda height, light: light["housing"],
    "lamp": lambda height, light: light["lamp"],
    "frame edge": lambda height, light: "cut" if light["truncated"] else "whole",
}
#: factor -> bucket of one scene (its recorded dict)
SCENE_FACTORS: dict[str, Callable[[dict], str]] = {
    "lighting": lambda scene: scene["lighting"],
    "background": lambda scene: scene["background"],
    "blur": lambda scene: scene["blur"],
    "jpeg": lambda scene: _jpeg(int(scene["jpeg"])),
    "resolution": lambda scene: "low (scaled up)" if scene["lowres"] else "full",
}


def street_split(split: str, n: int, config: StreetConfig = StreetConfig(wide=True)):
    """n report scenes of `split` ("val": training's families, "holdout": the held-out ones):
    images (n, H, W, 3) uint8, truths [(boxes, labels)], infos [{"scene", "lights"}]."""
    chosen = holdout_config(config) if split == "holdout" else train_config(config)
    seed = REPORT_SEED + (1 if split == "holdout" else 0)
    images = np.empty((n, chosen.height, chosen.width, 3), np.uint8)
    truths, infos = [], []
    for i in range(n):
        info: dict = {}
        images[i], boxes, labels = render_street(np.random.default_rng((seed, i)), chosen,
                                                 info=info)
        truths.append((boxes, labels))
        infos.append(info)
    return images, truths, infos


def light_recall(detections: list[Detection], boxes: np.ndarray, labels: np.ndarray,
                 threshold: float) -> tuple[np.ndarray, int]:
    """Which lights of one image are found (a detection of their state, score >= threshold,
    IoU >= 0.5; each detection finds at most one light, best score first), and how many
    detections at that threshold overlap no light at IoU >= 0.5 (false detections)."""
    shown = sorted((d for d in detections if d.score >= threshold), key=lambda d: -d.score)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    found = np.zeros(len(boxes), bool)
    false = 0
    for d in shown:
        overlap = iou_matrix([d.box], boxes)[0]
        same = (np.asarray(labels) == d.index) & ~found & (overlap >= IOU)
        if same.any():
            found[int(np.argmax(np.where(same, overlap, -1)))] = True
        elif not (overlap >= IOU).any():
            false += 1
    return found, false


def _keep(truths, masks):
    """Truths with only the lights in `masks` kept; the others become "ignore" (label -1)."""
    return [(boxes, np.where(mask, labels, -1)) for (boxes, labels), mask in zip(truths, masks)]


def _map50(detections, truths) -> float:
    return float(evaluate(detections, truths, STATES, iou_thresholds=(0.5,))["map50"])


def _order(factor: str, values: set[str]) -> list[str]:
    if factor == "size":
        return [name for _, _, name in SIZE_BANDS if name in values]
    return sorted(values)


def detector_report(detectors: dict[str, Callable[[np.ndarray], list[list[Detection]]]], *,
                    threshold: float = 0.3, val_size: int = 1000, holdout_size: int = 500,
                    config: StreetConfig = StreetConfig(wide=True)) -> dict:
    """Recall and mAP@0.5 per factor value for each detector (images (N, H, W, 3) uint8 ->
    detections per image, scored from 0.05 up so that mAP sees the whole curve).

    Returns ``{"models", "overall", "rows", "threshold", "holdout_families"}``; each row has
    split, factor, value, lights, held_out and per model ``recall`` and ``map50``."""
    rows, overall = [], {}
    for split, n in (("val", val_size), ("holdout", holdout_size)):
        if not n:
            continue
        images, truths, infos = street_split(split, n, config)
        found = {name: detect(images) for name, detect in detectors.items()}
        recalls = {name: [light_recall(d, b, c, threshold) for d, (b, c) in zip(dets, truths)]
                   for name, dets in found.items()}
        heights = [b[:, 3] - b[:, 1] for b, _ in truths]
        overall[split] = {name: {
            "map50": _map50(found[name], truths),
            "recall": float(np.mean(np.concatenate([f for f, _ in recalls[name]] or [[]]))),
            "false_per_100_scenes": 100 * sum(x for _, x in recalls[name]) / n,
            "lights": int(sum(len(c) for _, c in truths)), "scenes": n}
            for name in detectors}
        for factor, bucket in LIGHT_FACTORS.items():
            values = [[bucket(float(h), light) for h, light in zip(hs, info["lights"])]
                      for hs, info in zip(heights, infos)]
            for value in _order(factor, {v for vs in values for v in vs}):
                masks = [np.array([v == value for v in vs], bool) for vs in values]
                kept = _keep(truths, masks)
                row = _row(split, factor, value, int(sum(m.sum() for m in masks)))
                for name in detectors:
                    hits = np.concatenate([f[m] for (f, _), m in zip(recalls[name], masks)])
                    row[name] = {"recall": float(hits.mean()),
                                 "map50": _map50(_only_matching(found[name], truths, masks),
                                                 kept)}
                rows.append(row)
        for factor, bucket in SCENE_FACTORS.items():
            values = [bucket(info["scene"]) for info in infos]
            for value in sorted(set(values)):
                pick = [i for i, v in enumerate(values) if v == value]
                row = _row(split, factor, value, int(sum(len(truths[i][1]) for i in pick)))
                row["scenes"] = len(pick)
                for name in detectors:
                    hits = np.concatenate([recalls[name][i][0] for i in pick])
                    row[name] = {"recall": float(hits.mean()) if len(hits) else float("nan"),
                                 "map50": _map50([found[name][i] for i in pick],
                                                 [truths[i] for i in pick])}
                rows.append(row)
    return {"models": list(detectors), "overall": overall, "rows": rows,
            "threshold": threshold, "holdout_families": HOLDOUT, "wide": config.wide}


def _row(split: str, factor: str, value: str, lights: int) -> dict:
    held = split == "holdout" or value in HOLDOUT["backgrounds"] + HOLDOUT["lightings"]
    return {"split": split, "factor": factor, "value": value, "lights": lights,
            "held_out": held}


def _only_matching(detections, truths, masks):
    """Detections with those that overlap (IoU >= 0.5) an ignored light of their state dropped:
    finding a light of another value is neither a hit nor a false detection here."""
    kept = []
    for dets, (boxes, labels), mask in zip(detections, truths, masks):
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        other = boxes[~mask]
        other_labels = np.asarray(labels)[~mask]
        if not len(other):
            kept.append(dets)
            continue
        kept.append([d for d in dets
                     if not ((other_labels == d.index)
                             & (iou_matrix([d.box], other)[0] >= IOU)).any()])
    return kept


def format_detector_report(report: dict) -> str:
    """A plain-text table: one line per factor value, recall and mAP@0.5 per model."""
    models = report["models"]
    head = (f"{'split':8} {'factor':12} {'value':18} {'lights':>6} "
            + " ".join(f"{m[:18]:>18}" for m in models))
    sub = f"{'':8} {'':12} {'':18} {'':>6} " + " ".join(f"{'recall   mAP@0.5':>18}"
                                                         for _ in models)
    lines = [head, sub, "-" * len(head)]
    for r in report["rows"]:
        mark = "  held out" if r["held_out"] else ""
        cells = " ".join(f"{100 * r[m]['recall']:8.1f}% {100 * r[m]['map50']:7.1f}%"
                         for m in models)
        lines.append(f"{r['split']:8} {r['factor']:12} {r['value'][:18]:18} "
                     f"{r['lights']:6d} {cells}{mark}")
    for split, per_model in report["overall"].items():
        cells = " ".join(f"{100 * v['recall']:8.1f}% {100 * v['map50']:7.1f}%"
                         for v in per_model.values())
        any_model = next(iter(per_model.values()))
        lines.append(f"{split:8} {'overall':12} {'':18} {any_model['lights']:6d} {cells}")
        for m, v in per_model.items():
            lines.append(f"{'':8} {m}: {v['false_per_100_scenes']:.1f} false detections per "
                         f"100 scenes at score >= {report['threshold']}")
    return "\n".join(lines)
