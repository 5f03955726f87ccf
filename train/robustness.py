"""Robustness report of a stoplight classifier: accuracy per factor of the scene.

The generator records, per image, what it drew (`stoplight.generate(..., info=[])`); this
module scores predictions per value of each factor, on seeds no training run uses: the
validation scenes (families seen in training) and the held-out scenes (families never rendered
for training, `datasets.HOLDOUT`), whose rows are marked ``held out``.

    >>> report = robustness_report({"pytorch": predict}, n_val=4000, n_holdout=2000)
    >>> print(format_report(report))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgepilot.draw.stoplight import LABELS, NONE
from edgepilot.train.datasets import HOLDOUT, stoplight_split

__all__ = ["FACTORS", "factor_values", "robustness_report", "format_report", "worst"]

#: Seed offset of the report's images: far from the seeds training and the demo use.
REPORT_SEED = 50_000_017
#: Buckets with fewer images than this are listed but not held to the target.
MIN_COUNT = 60


def _size(f: dict) -> str:
    s = f["size"]
    return ("<1/3 frame" if s < 1 / 3 else "1/3-1/2" if s < 0.5 else
            "1/2-0.7" if s < 0.7 else ">=0.7")


def _jpeg(f: dict) -> str:
    q = f["jpeg"]
    return "none" if q == 0 else "q<40" if q < 40 else "q40-69" if q < 70 else "q>=70"


def _white_balance(f: dict) -> str:
    t = f["white_balance"]
    return "cool (<-0.08)" if t < -0.08 else "warm (>0.08)" if t > 0.08 else "neutral"


# factor -> (needs a light in the image, bucket of an image's recorded factors)
FACTORS: dict[str, tuple[bool, Callable[[dict], str]]] = {
    "clipped lamp": (True, lambda f: "clipped to white" if f["clipped"] else "not clipped"),
    "light size": (True, _size),
    "orientation": (True, lambda f: f["orientation"]),
    "housing colour": (True, lambda f: f["housing"]),
    "lamp style": (True, lambda f: f["lamp_style"]),
    "background": (False, lambda f: f"photo:{f['photo']}" if "photo" in f else f["background"]),
    "night": (False, lambda f: "night" if f["night"] else "day"),
    "blur": (False, lambda f: f["blur"]),
    "jpeg quality": (False, _jpeg),
    "white balance": (False, _white_balance),
}


def factor_values(info: dict, label: int) -> dict[str, str]:
    """Bucket of each factor for one image (`clipped lamp` only where a lamp is lit; light
    factors only where a light is drawn)."""
    out = {"class": LABELS[label]}
    for name, (needs_light, bucket) in FACTORS.items():
        if needs_light and not info["light"]:
            continue
        if name == "clipped lamp" and label == NONE:
            continue
        out[name] = bucket(info)
    return out


def _held_out(factor: str, value: str) -> bool:
    held = {"background": HOLDOUT["backgrounds"] + tuple(f"photo:{p}" for p in HOLDOUT["photos"]),
            "housing colour": HOLDOUT["housings"], "lamp style": HOLDOUT["lamp_styles"]}
    return value in held.get(factor, ())


def robustness_report(predictors: dict[str, Callable[[np.ndarray], np.ndarray]], *,
                      n_val: int = 4000, n_holdout: int = 2000,
                      size: tuple[int, int] = (64, 64)) -> dict:
    """Accuracy per factor value for each predictor (images (N, H, W, 3) uint8 -> (N,) labels).

    Returns ``{"models": [...], "overall": {split: {model: acc}}, "rows": [...]}``; each row has
    split, factor, value, n, held_out and one accuracy per model."""
    rows, overall = [], {}
    for split, n in (("val", n_val), ("holdout", n_holdout)):
        info: list[dict] = []
        images, labels = stoplight_split(split, n, size, seed=REPORT_SEED, info=info)
        correct = {name: predict(images) == labels for name, predict in predictors.items()}
        overall[split] = {name: float(c.mean()) for name, c in correct.items()}
        values = [factor_values(f, int(y)) for f, y in zip(info, labels)]
        for factor in ("class", *FACTORS):
            buckets = sorted({v[factor] for v in values if factor in v})
            for value in buckets:
                mask = np.array([v.get(factor) == value for v in values])
                rows.append({"split": split, "factor": factor, "value": value,
                             "n": int(mask.sum()),
                             "held_out": split == "holdout" or _held_out(factor, value),
                             **{name: float(c[mask].mean()) for name, c in correct.items()}})
    return {"models": list(predictors), "overall": overall, "rows": rows,
            "holdout_families": HOLDOUT}


def worst(report: dict, model: str, held_out: bool) -> dict:
    """The row with the lowest accuracy of `model` among (non-)held-out rows of >= MIN_COUNT
    images (all rows when none has that many: a tiny report)."""
    rows = [r for r in report["rows"] if r["held_out"] == held_out]
    rows = [r for r in rows if r["n"] >= MIN_COUNT] or rows
    return min(rows, key=lambda r: r[model])


def format_report(report: dict) -> str:
    """A plain-text table: one line per factor value, one accuracy column per model."""
    models = report["models"]
    head = (f"{'split':8} {'factor':15} {'value':22} {'n':>5} "
            + " ".join(f"{m:>12}" for m in models))
    lines = [head, "-" * len(head)]
    for r in report["rows"]:
        mark = "  held out" if r["held_out"] else ""
        lines.append(f"{r['split']:8} {r['factor']:15} {r['value']:22} {r['n']:5d} "
                     + " ".join(f"{100 * r[m]:11.1f}%" for m in models) + mark)
    for split, accs in report["overall"].items():
        lines.append(f"{split:8} {'overall':15} {'':22} {'':5} "
                     + " ".join(f"{100 * accs[m]:11.1f}%" for m in models))
    for m in models:
        seen, held = worst(report, m, False), worst(report, m, True)
        lines.append(f"{m}: worst factor {seen['factor']}={seen['value']} {100 * seen[m]:.1f}% "
                     f"(target 97%); worst held out {held['factor']}={held['value']} "
                     f"{100 * held[m]:.1f}% (target 95%)")
    return "\n".join(lines)
