"""Street scenes for the stoplight detector: 0-4 traffic lights per frame, each with its box.

The pieces are the classifier's generator's (`stoplight.py`, beside this one): its backgrounds,
clutter, traffic light and camera. This module only composes a wider frame from them: where
lights go, how large they are, what else competes with them (tail lights, signs, neon,
reflections, occluders), and the lighting of the scene (day, dusk, night).

    image, boxes, labels = render_street(np.random.default_rng(0))
    # image (240, 320, 3) uint8 RGB; boxes (n, 4) float32 x0, y0, x1, y1 px; labels (n,) 0..2

Unlit and turned-away housings are drawn but carry no box: they are background, as for the
classifier. Labels index `STATES` (red, yellow, green).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edgepilot.draw import stoplight as sl

__all__ = ["STATES", "LIGHTINGS", "StreetConfig", "render_street", "generate_streets",
           "HOLDOUT"]

STATES = ("red", "yellow", "green")
LIGHTINGS = ("day", "dusk", "night")
#: Box height range in pixels: a light 12 px tall is ~40 m away with a phone's main camera.
MIN_HEIGHT, MAX_HEIGHT = 14.0, 150.0  # drawn long side; foreshortening takes ~10% off
#: Wide scenes draw lights down to this height (a light ~55 m away).
WIDE_MIN_HEIGHT = 9.0
#: Families never drawn in training; the held-out figure is measured on scenes made of them.
HOLDOUT = {"backgrounds": ("buildings",), "lightings": ("dusk",)}
_LIGHT_COUNTS = np.cumsum([0.12, 0.33, 0.25, 0.17, 0.13])  # P(0..4 lights)


@dataclass(frozen=True)
class StreetConfig:
    """What the scene generator may draw; restrict the tuples to hold families out."""

    width: int = 320
    height: int = 240
    backgrounds: tuple[str, ...] = tuple(b for b in sl.BACKGROUNDS if b != "night")
    lamp_styles: tuple[str, ...] = sl.LAMP_STYLES
    layouts: tuple[str, ...] = sl.LAYOUTS
    lightings: tuple[str, ...] = LIGHTINGS
    unlit_fraction: float = 0.15  # housings drawn dark (or turned away): background
    jpeg_fraction: float = 0.3
    # Wide scenes vary what the first ones held fixed: lights down to WIDE_MIN_HEIGHT px,
    # horizontal housings 2.3-3.6x wider than tall (not only 2.6x), lamps filling more or less
    # of the housing, sectioned housings, arrow lamps, lights cut by the frame's edge, and
    # low-resolution cameras (a frame scaled down and up). False renders the scenes the
    # shipped detector's first four runs trained on, seed for seed.
    wide: bool = False

    def __post_init__(self) -> None:
        for name, valid in (("backgrounds", sl.BACKGROUNDS), ("lamp_styles", sl.LAMP_STYLES),
                            ("layouts", sl.LAYOUTS), ("lightings", LIGHTINGS)):
            value = getattr(self, name)
            if isinstance(value, str) or not value or any(v not in valid for v in value):
                raise ValueError(f"{name} must be a non-empty tuple drawn from {valid}, "
                                 f"got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.width < 64 or self.height < 64:
            raise ValueError(f"scenes are at least 64x64, got {self.width}x{self.height}")

    @property
    def camera(self) -> sl.SceneConfig:
        return sl.SceneConfig(jpeg_fraction=self.jpeg_fraction)


def holdout_config(base: StreetConfig = StreetConfig()) -> StreetConfig:
    """Scenes made only of the families `train_config` leaves out."""
    return StreetConfig(base.width, base.height, backgrounds=HOLDOUT["backgrounds"],
                        lightings=HOLDOUT["lightings"], lamp_styles=base.lamp_styles,
                        layouts=base.layouts, jpeg_fraction=base.jpeg_fraction, wide=base.wide)


def train_config(base: StreetConfig = StreetConfig()) -> StreetConfig:
    """`base` without the held-out families."""
    keep = {k: tuple(v for v in getattr(base, k) if v not in HOLDOUT[k]) for k in HOLDOUT}
    return StreetConfig(base.width, base.height, lamp_styles=base.lamp_styles,
                        layouts=base.layouts, jpeg_fraction=base.jpeg_fraction, wide=base.wide,
                        **keep)


def _background(rng: sl._Rand, config: StreetConfig, lighting: str) -> tuple[np.ndarray, str]:
    w, h = config.width, config.height
    name = "night" if lighting == "night" else \
        config.backgrounds[rng.integers(len(config.backgrounds))]
    bg = sl._BACKGROUND_FNS[name](rng, (w + 1) // 2, (h + 1) // 2)
    if lighting == "dusk":  # low sun: darker, warm low in the sky, bluish above
        tint = sl._vgrad(np.array([0.55, 0.6, 0.85]), np.array([1.0, 0.7, 0.5]), bg.shape[2],
                         bg.shape[1])  # backgrounds are channel-first (3, h, w)
        bg = bg * tint * rng.uniform(0.3, 0.55)
    img = cv2.merge(list(np.clip(bg, 0, 255).astype(np.uint8)))
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR), name


def _overlaps(box, boxes, gap: float) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + gap and b[0] < x1 + gap and y0 < b[3] + gap and b[1] < y1 + gap
               for b in boxes)


def _reflection(img: np.ndarray, box, rng: sl._Rand) -> None:
    """A dim, blurred, mirrored copy of a light below it: a wet road or a shop window."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, x1 = max(0, x0), min(w, x1)
    top = y1 + int(rng.uniform(2, 20))
    height = min(y1 - max(0, y0), h - top)
    if x1 - x0 < 3 or height < 3:
        return
    patch = img[y1 - height:y1, x0:x1][::-1].astype(np.float32)
    patch = cv2.GaussianBlur(patch, (0, 0), max(1.0, (x1 - x0) / 6))
    roi = img[top:top + height, x0:x1]
    alpha = rng.uniform(0.15, 0.4)
    roi[:] = np.clip(roi * (1 - alpha) + patch * alpha, 0, 255).astype(np.uint8)


def _occlude(img: np.ndarray, box, rng: sl._Rand, ambient: float) -> None:
    """A pole, branch or sign edge covering one side of a light (at most ~35% of its width)."""
    x0, y0, x1, y1 = box
    cover = (x1 - x0) * rng.uniform(0.15, 0.35)
    left = rng.random() < 0.5
    xa, xb = (x0 - 2, x0 + cover) if left else (x1 - cover, x1 + 2)
    pad = (y1 - y0) * 0.2
    grey = rng.uniform(20, 120) * ambient
    colour = [grey * rng.uniform(0.8, 1.2) for _ in range(3)]
    cv2.rectangle(img, sl._pt(xa, y0 - pad), sl._pt(xb, y1 + pad), colour, -1, sl.AA, sl._SHIFT)


def render_street(rng: np.random.Generator, config: StreetConfig = StreetConfig(), *,
                  state: int | None = None, info: dict | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: (height, width, 3) uint8 RGB, boxes (n, 4) float32, labels (n,) int64.

    `state` (an index of STATES) lights every lit light in that state and leaves the rest of
    the scene as the same seed draws it without: the demo's street changing its lights.
    `info`, when given, receives what was drawn: `scene` (lighting, background, blur, jpeg,
    lowres) and `lights`, one dict per box (orientation, housing, lamp, truncated)."""
    rng = sl._Rand(rng)
    w, h = config.width, config.height
    wide = config.wide
    lowest = WIDE_MIN_HEIGHT if wide else MIN_HEIGHT
    lighting = config.lightings[rng.integers(len(config.lightings))]
    night = lighting != "day"
    img, background = _background(rng, config, lighting)
    scene = {"lighting": lighting, "background": background}
    lights = []
    ambient = {"day": rng.uniform(0.7, 1.05), "dusk": rng.uniform(0.3, 0.55),
               "night": rng.uniform(0.1, 0.3)}[lighting]
    for _ in range(1 + rng.integers(3)):  # tail lights, signs, neon, poles: 0-9 objects
        sl._clutter(rng, img, ambient, night)
    count = int(np.searchsorted(_LIGHT_COUNTS, rng.random() * _LIGHT_COUNTS[-1]))
    boxes, labels, taken = [], [], []
    for _ in range(count):
        vertical = config.layouts[rng.integers(len(config.layouts))] == "vertical"
        led = config.lamp_styles[rng.integers(len(config.lamp_styles))] == "led"
        tall = math.exp(rng.uniform(math.log(lowest), math.log(MAX_HEIGHT)))
        # A vertical light's long side is its height; a horizontal one is ~2.6x wider than tall.
        aspect = rng.uniform(2.3, 3.6) if wide else 2.6
        long_px = tall if vertical else min(tall * aspect, 0.9 * w)
        extent = (0.35 * long_px, 0.55 * long_px) if vertical else (0.55 * long_px, 0.35 * long_px)
        # Cut by the frame's edge across the lamps' axis (never a lamp cut away whole): up to
        # ~45% of a vertical light's width at the left or right, of a horizontal one's height
        # at the top or bottom.
        cut = wide and rng.random() < 0.12
        for _attempt in range(8):
            cx, cy = rng.uniform(extent[0], w - extent[0]), rng.uniform(extent[1], h - extent[1])
            if cut:  # the short side's half is ~0.19 long_px; a share f of it is off-frame
                edge = 0.19 * long_px * (1 - 2 * rng.uniform(0.1, 0.45))
                far = rng.random() < 0.5
                if vertical:
                    cx = w - edge if far else edge
                else:
                    cy = h - edge if far else edge
            guess = (cx - extent[0], cy - extent[1], cx + extent[0], cy + extent[1])
            if not _overlaps(guess, taken, 1.0):
                break
        else:
            continue
        lit = None if rng.random() < config.unlit_fraction else rng.integers(3)
        if state is not None and lit is not None:
            lit = state
        drawn = {}
        box = sl._draw_light(rng, img, lit, long_px, vertical, led, ambient, night, at=(cx, cy),
                             weights=sl.STREET_HOUSING_WEIGHTS, wide=wide, info=drawn)
        taken.append(box)
        if lit is None:
            continue
        lights.append({"orientation": drawn["orientation"], "housing": drawn["housing"],
                       "lamp": drawn["lamp"], "truncated": cut})
        if rng.random() < 0.12:
            _occlude(img, box, rng, ambient)
        if rng.random() < 0.1:
            _reflection(img, box, rng)
        boxes.append(box)
        labels.append(lit)
    scene["lowres"] = wide and rng.random() < 0.2
    if scene["lowres"]:  # a small sensor or digital zoom: detail lost, then scaled back up
        f = rng.uniform(1.5, 2.6)
        small = cv2.resize(img, (round(w / f), round(h / f)), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    img = sl._camera(rng, img, config.camera, night, warp=False, info=scene)
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    if info is not None:
        info["scene"], info["lights"] = scene, lights
    return img, boxes, np.array(labels, np.int64)


def generate_streets(n: int, *, seed: int = 0, config: StreetConfig = StreetConfig()):
    """n scenes: images (n, H, W, 3) uint8 and a list of (boxes, labels) per image.

    Scene i comes from its own generator seeded by (seed, i): a prefix of a larger set is the
    smaller set, and any scene can be re-rendered alone."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    seed = int(seed) % (1 << 64)
    images = np.empty((n, config.height, config.width, 3), np.uint8)
    targets = []
    for i in range(n):
        images[i], boxes, labels = render_street(np.random.default_rng((seed, i)), config)
        targets.append((boxes, labels))
    return images, targets
