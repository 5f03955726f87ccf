"""Procedural traffic-light (stoplight) images with labels, for training small classifiers.

Images are drawn at the output resolution with OpenCV primitives and a few vectorised numpy
ops. To generalise to real photos, everything a camera sees is randomised: housing shape,
paint (several countries' colours) and pose (tilted, horizontal, small and off-centre), lamp
style (plain disc or LED dots) and hue, exposure (daylight lamps whose centre clips to white,
the colour left in the rim and the bloom), visors, sun reflections, clutter with
red/green/yellow hard negatives, real photographs as backgrounds, white balance, blur, noise
and JPEG. Stages, in file order: background (float, channel-first, half resolution) -> objects
drawn on uint8 (cv2 anti-aliasing needs 8-bit) -> camera effects.

Pass ``info=[]`` to `generate` to get, per image, the factors it was drawn with (background,
housing, size, orientation, exposure, blur, JPEG quality, white balance): the robustness
report (`edgepilot.train.robustness`) scores a model per factor from them.
"""
from __future__ import annotations

import colorsys
import importlib.util
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

LABELS: tuple[str, ...] = ("red", "yellow", "green", "none")
LAYOUTS: tuple[str, ...] = ("vertical", "horizontal")
BACKGROUNDS: tuple[str, ...] = ("sky", "gradient", "texture", "buildings", "foliage", "night",
                                 "photo")
LAMP_STYLES: tuple[str, ...] = ("disc", "led")
# Housing paints by family, as several countries use them: black (most of Europe), grey (Germany,
# Japan), yellow (US), dark green (US, UK), olive and aluminium (Japan, older US).
_HOUSING_PAINTS = {
    "black": ((22, 22, 24), (30, 31, 30), (40, 40, 42)),
    "grey": ((60, 62, 65), (95, 97, 100)),
    "yellow": ((205, 165, 35), (228, 190, 25), (185, 150, 55)),
    "green": ((28, 62, 42), (22, 48, 30)),
    "olive": ((85, 88, 45),),
    "aluminium": ((140, 140, 135), (168, 168, 162)),
}
HOUSINGS: tuple[str, ...] = tuple(_HOUSING_PAINTS)
# How often each family is drawn. The classifier's images give the light-coloured and yellow
# housings (its weakest families in the robustness report) more weight than the street scenes
# the detector was trained on; the street weights stay as they were, so its figures reproduce.
_HOUSING_WEIGHTS = {"black": 3.0, "grey": 2.0, "yellow": 3.0, "green": 1.5, "olive": 1.5,
                    "aluminium": 2.5}
STREET_HOUSING_WEIGHTS = {"black": 4.0, "grey": 2.0, "yellow": 2.5, "green": 1.5, "olive": 1.0,
                          "aluminium": 1.0}
# Real photographs that packages edgepilot may depend on ship in their wheels (read from the
# installed package, never downloaded): name -> (package, path inside it, extra that brings it).
_PHOTO_FILES = {
    "astronaut": ("skimage", "data/astronaut.png", "export"),
    "coffee": ("skimage", "data/coffee.png", "export"),
    "chelsea": ("skimage", "data/chelsea.png", "export"),
    "brick": ("skimage", "data/brick.png", "export"),
    "rocket": ("skimage", "data/rocket.jpg", "export"),
    "motorcycle": ("skimage", "data/motorcycle_left.png", "export"),
    "grass": ("skimage", "data/grass.png", "export"),
    "gravel": ("skimage", "data/gravel.png", "export"),
    "camera": ("skimage", "data/camera.png", "export"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "plot"),
    "china": ("sklearn", "datasets/images/china.jpg", "digits"),
    "flower": ("sklearn", "datasets/images/flower.jpg", "digits"),
}
PHOTOS: tuple[str, ...] = tuple(_PHOTO_FILES)
RED, YELLOW, GREEN, NONE = range(4)

_F32 = np.float32  # colours are passed to cv2 via .tolist(); it saturates them on uint8
AA = cv2.LINE_AA
_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel placement matters at 96 px
_ONE = 1 << _SHIFT

# Lens hue (degrees) and saturation ranges. Red ~(255,40,30), amber ~(255,170,0), bluish LED
# green ~(40,255,170); the gaps keep classes apart after the camera's white-balance shifts.
_LAMP_HSV = (((-7.0, 7.0), (0.8, 0.95)), ((33.0, 45.0), (0.9, 1.0)), ((128.0, 168.0), (0.66, 0.92)))
# Saturated everyday colours for hard negatives, and dull materials for walls and textures.
_NEG_COLORS = np.array([(205, 30, 30), (240, 55, 40), (40, 160, 60), (60, 220, 120),
                        (240, 200, 40), (245, 125, 20), (30, 80, 200), (235, 235, 235),
                        (120, 80, 50), (20, 20, 20)], _F32)
_MATERIALS = np.array([(128, 128, 124), (70, 70, 72), (150, 75, 55), (170, 160, 140), (110, 85, 60),
                       (90, 100, 80)], _F32)


def _fractal_bank(count: int, size: int, seed: int) -> np.ndarray:
    """Smooth multi-octave value noise in [0, 1]; cropped and resized for every texture."""
    rng = np.random.default_rng(seed)
    bank = np.empty((count, size, size), _F32)
    for k in range(count):
        acc, amp, persistence = np.zeros((size, size), _F32), 1.0, rng.uniform(0.4, 0.75)
        for cells in (3, 6, 12, 24, 48):
            acc += amp * cv2.resize(rng.random((cells, cells), dtype=_F32), (size, size),
                                    interpolation=cv2.INTER_CUBIC)
            amp *= persistence
        acc -= acc.min()
        bank[k] = acc / acc.max()
    return bank


_TEX_SIZE = 128
_TEXTURES = _fractal_bank(8, _TEX_SIZE, seed=20240611)
# Sensor noise is a random crop of one fixed field: fresh normals would cost more than the scene.
_NOISE = np.random.default_rng(7).standard_normal((_TEX_SIZE, _TEX_SIZE, 3), dtype=_F32)
_RAMP = (np.arange(256, dtype=_F32) / 255)[:, None]  # input levels of the camera's lookup table


@dataclass(frozen=True)
class SceneConfig:
    """What the generator may draw. Restrict the tuples to hold families out of training."""

    size: int = 96
    layouts: tuple[str, ...] = LAYOUTS
    backgrounds: tuple[str, ...] = BACKGROUNDS
    lamp_styles: tuple[str, ...] = LAMP_STYLES
    housings: tuple[str, ...] = HOUSINGS
    photos: tuple[str, ...] = PHOTOS  # the photographs the "photo" background picks from
    empty_fraction: float = 0.5  # share of `none` images with no light at all (rest: unlit housing)
    jpeg_fraction: float = 0.3
    tilt: float = 0.3  # share of lights rolled by 12-40 degrees
    # Range of the light's long side as a share of the frame's short side (`render`), drawn
    # log-uniformly. Training on a lower floor than the evaluation sets use teaches far lights.
    light_size: tuple[float, float] = (0.2, 0.9)
    # Share of the non-signal lights in the clutter drawn as bright as a lit lamp: a clipped
    # white core in a coloured halo, with no housing (`_glare`). Such a disc alone looks like a
    # lit lamp; training on them teaches that the housing decides. 0 draws them as before.
    glare: float = 0.0
    # Share of images drawn on a real photograph (when "photo" is among `backgrounds`); the rest
    # pick uniformly among the other backgrounds. None: every background equally often.
    # Photographs are the nearest to a camera's world and the weakest seen backgrounds.
    photo_share: float | None = None

    def __post_init__(self) -> None:
        names = {"layouts": LAYOUTS, "backgrounds": BACKGROUNDS, "lamp_styles": LAMP_STYLES,
                 "housings": HOUSINGS, "photos": PHOTOS}
        for field, valid in names.items():
            value = getattr(self, field)
            if isinstance(value, str) or not value:
                raise ValueError(f"{field} must be a non-empty tuple drawn from {valid}, "
                                 f"got {value!r}")
            unknown = [v for v in value if v not in valid]
            if unknown:
                raise ValueError(f"unknown {field} {unknown}; valid choices are {valid}")
            object.__setattr__(self, field, tuple(value))  # lists are accepted, stored as tuples
        if not isinstance(self.size, numbers.Integral) or self.size < 16:
            raise ValueError(f"size must be an integer >= 16, got {self.size!r}")
        for field in ("empty_fraction", "jpeg_fraction", "tilt", "glare"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ValueError(f"{field} must be in [0, 1], got {getattr(self, field)!r}")
        if self.photo_share is not None:
            if not 0.0 <= self.photo_share <= 1.0:  # also False for NaN
                raise ValueError(f"photo_share must be in [0, 1], got {self.photo_share!r}")
            if "photo" not in self.backgrounds:
                raise ValueError(f"photo_share needs 'photo' among the backgrounds, got "
                                 f"{self.backgrounds}")
            if self.photo_share < 1.0 and set(self.backgrounds) == {"photo"}:
                raise ValueError("photo_share below 1 needs a background other than 'photo'")
        try:
            lo, hi = (float(v) for v in self.light_size)
        except (TypeError, ValueError):
            lo = hi = math.nan
        if not 0.05 <= lo <= hi <= 1.0:  # also False for NaN
            raise ValueError(f"light_size must be two numbers 0.05 <= low <= high <= 1 (share of "
                             f"the frame's short side), got {self.light_size!r}")
        object.__setattr__(self, "light_size", (lo, hi))


# ----------------------------------------------------------------------------- helpers
class _Rand:
    """Scalar draws from a numpy Generator, buffered 64 at a time.

    A Generator scalar call costs ~1 us, mostly overhead, and a scene needs ~80 of them.
    Array draws use the wrapped Generator, `.gen`, directly."""

    __slots__ = ("gen", "_buf")

    def __init__(self, gen: np.random.Generator) -> None:
        self.gen, self._buf = gen, []

    def random(self) -> float:
        if not self._buf:
            self._buf = self.gen.random(64).tolist()
        return self._buf.pop()

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()

    def integers(self, lo: int, hi: int | None = None) -> int:
        lo, hi = (0, lo) if hi is None else (lo, hi)
        return lo + int((hi - lo) * self.random())


def _hsv(hue_deg: float, sat: float, val: float = 1.0) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_deg / 360.0) % 1.0, sat, val), _F32) * 255.0


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _jitter(rng: _Rand, c: np.ndarray, amount: float) -> np.ndarray:
    noise = np.array((rng.random(), rng.random(), rng.random()), _F32) - _F32(0.5)
    return c + noise * _F32(2 * amount)


def _pick_weighted(rng: _Rand, names: tuple[str, ...], weights: dict[str, float]) -> str:
    u = rng.random() * sum(weights[n] for n in names)
    for name in names:
        u -= weights[name]
        if u < 0:
            return name
    return names[-1]


def _ramp(n: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """n evenly spaced float32 values from lo to hi (np.linspace is ~10x slower for small n)."""
    return np.arange(n, dtype=_F32) * _F32((hi - lo) / max(n - 1, 1)) + _F32(lo)


def _clip01(x: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(x, 0), 1)  # np.clip has a slow Python wrapper


def _box(cx: float, cy: float, ext: float, w: int, h: int) -> tuple[int, int, int, int]:
    """Integer ROI (x0, x1, y0, y1) of a square of half-size `ext`, clipped to a w x h frame."""
    return (max(int(cx - ext - 1), 0), min(int(cx + ext + 2), w),
            max(int(cy - ext - 1), 0), min(int(cy + ext + 2), h))


def _texture(rng: _Rand, w: int, h: int) -> np.ndarray:
    """A random (possibly stretched) crop of the noise bank, resized to (h, w), in [0, 1]."""
    t = _TEXTURES[rng.integers(len(_TEXTURES))]
    cw, ch = rng.integers(20, _TEX_SIZE + 1), rng.integers(20, _TEX_SIZE + 1)
    x, y = rng.integers(0, _TEX_SIZE - cw + 1), rng.integers(0, _TEX_SIZE - ch + 1)
    return cv2.resize(t[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_LINEAR)


_ARC = np.linspace(0, math.pi / 2, 6)
_CORNER_DIRS = np.stack([np.stack([np.cos(a), np.sin(a)], -1)  # (4 corners, 6 points, xy)
                         for a in (_ARC + q * math.pi / 2 for q in range(4))])
_CORNER_SIGNS = np.array([(1, 1), (-1, 1), (-1, -1), (1, -1)], float)


def _rrect(cx: float, cy: float, hw: float, hh: float, rc: float,
           pose: np.ndarray | None = None) -> np.ndarray:
    """Rounded-rectangle polygon (rc=0: rect, rc=min(hw, hh): pill) in cv2 fixed point.

    With a 2x3 affine `pose`, (cx, cy) are in the object's own frame and mapped to the image."""
    rc = min(max(rc, 0.0), hw, hh)
    centres = np.array([cx, cy]) + _CORNER_SIGNS * (np.array([hw, hh]) - rc)
    pts = (centres[:, None, :] + rc * _CORNER_DIRS).reshape(-1, 2)
    if pose is not None:
        pts = pts @ pose[:, :2].T + pose[:, 2]
    return np.round(pts * _ONE).astype(np.int32)[None]


def _vgrad(top: np.ndarray, bottom: np.ndarray, w: int, h: int, gamma: float = 1.0) -> np.ndarray:
    t = _ramp(h) ** _F32(gamma)
    return np.repeat((top[:, None] + (bottom - top)[:, None] * t)[:, :, None], w, axis=2)


def _lerp(c1: np.ndarray, c2: np.ndarray, t: np.ndarray) -> np.ndarray:
    return c1[:, None, None] + (c2 - c1)[:, None, None] * t


# ------------------------------------------------------------------------- backgrounds
# Channel-first (3, h, w) float arrays: numpy broadcasting over a trailing axis of length 3
# is ~15x slower than over whole planes.
def _bg_sky(rng: _Rand, w: int, h: int) -> np.ndarray:
    if rng.random() < 0.3:  # overcast
        top = np.full(3, rng.uniform(130, 225), _F32) * np.array([0.97, 0.99, 1.03], _F32)
        bottom = top * _F32(rng.uniform(0.95, 1.15))
    else:
        hue, sat, val = rng.uniform(196, 224), rng.uniform(0.3, 0.75), rng.uniform(0.55, 0.95)
        top = _hsv(hue, sat, val)
        bottom = _hsv(hue + rng.uniform(-8, 8), sat * 0.35, min(1.0, val + 0.15))
    img = _vgrad(top, bottom, w, h, rng.uniform(0.5, 1.6))
    if rng.random() < 0.6:  # clouds: soft thresholded noise pulled towards white
        m = _clip01((_texture(rng, w, h) - rng.uniform(0.3, 0.65)) * rng.uniform(2, 5))
        img += m * (_F32(rng.uniform(190, 250)) - img)
    return img


def _bg_gradient(rng: _Rand, w: int, h: int) -> np.ndarray:
    c1, c2 = (_hsv(rng.uniform(0, 360), rng.uniform(0, 0.55), rng.uniform(0.12, 0.9))
              for _ in range(2))
    a = rng.uniform(0, 2 * math.pi)
    xs, ys = _ramp(w, -0.5, 0.5), _ramp(h, -0.5, 0.5)
    return _lerp(c1, c2, _clip01(math.cos(a) * xs[None, :] + math.sin(a) * ys[:, None] + 0.5))


def _bg_texture(rng: _Rand, w: int, h: int) -> np.ndarray:
    base = _jitter(rng, _MATERIALS[rng.integers(len(_MATERIALS))], 25) * _F32(rng.uniform(0.5, 1.3))
    other = _jitter(rng, base * _F32(rng.uniform(0.4, 1.5)), 20)
    img = _lerp(base, other, _texture(rng, w, h))
    if rng.random() < 0.3:  # brick / tile joints
        py, px = rng.uniform(0.05, 0.2) * h, rng.uniform(0.1, 0.35) * w
        ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
        joint = ((ys % py) < 1.2) | (((xs + (ys // py % 2) * px / 2) % px) < 1.2)
        img *= np.where(joint, _F32(rng.uniform(0.55, 1.4)), _F32(1))
    return img


def _facades(rng: _Rand, img: np.ndarray, night: bool) -> np.ndarray:
    """Paint building fronts with window grids over the (3, h, w) `img`, left to right."""
    h, w = img.shape[1:]
    x = int(rng.uniform(-0.3, 0.2) * w)
    while x < w:
        bw, top = int(rng.uniform(0.3, 0.9) * w) + 4, int(rng.uniform(-0.2, 0.6) * h)
        x0, x1, y0 = max(x, 0), min(x + bw, w), max(top, 0)
        x += bw
        if x1 <= x0 or y0 >= h:
            continue
        wall = _jitter(rng, _MATERIALS[rng.integers(len(_MATERIALS))], 25)
        wall *= _F32(0.15 if night else 1.0)
        px, py = rng.uniform(0.07, 0.2) * w, rng.uniform(0.07, 0.2) * h
        cols, rows = np.arange(x1 - x0) + rng.uniform(0, px), np.arange(h - y0) + rng.uniform(0, py)
        fy, fx = rng.uniform(0.4, 0.75), rng.uniform(0.35, 0.7)  # window share of each grid cell
        win = ((rows % py) < py * fy)[:, None] & ((cols % px) < px * fx)[None]
        # Per-window brightness so facades do not look like perfect grids.
        grid = (int(rows[-1] // py) + 1, int(cols[-1] // px) + 1)
        cells = rng.gen.uniform(0.6, 1.3, grid).astype(_F32)
        shade = cells[(rows // py).astype(np.intp)][:, (cols // px).astype(np.intp)]
        if night:  # only some windows are lit
            glass = _hsv(rng.uniform(30, 55), rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.75))
            shade = np.where(shade > rng.uniform(0.9, 1.2), shade, _F32(0.08))
        else:
            glass = _hsv(rng.uniform(190, 230), rng.uniform(0.05, 0.4), rng.uniform(0.2, 0.75))
        img[:, y0:h, x0:x1] = np.where(win, shade * glass[:, None, None], wall[:, None, None])
    return img


def _bg_foliage(rng: _Rand, w: int, h: int) -> np.ndarray:
    img = _bg_sky(rng, w, h)  # seen through gaps in the canopy
    hue = rng.uniform(70, 135)
    dark = _hsv(hue, rng.uniform(0.4, 0.85), rng.uniform(0.06, 0.3))
    light = _hsv(hue - 15, rng.uniform(0.3, 0.8), rng.uniform(0.4, 0.85))
    density = _clip01((_texture(rng, w, h) - rng.uniform(0.15, 0.5)) * 6)
    img += density * (_lerp(dark, light, _texture(rng, w, h)) - img)
    return img


def _bg_night(rng: _Rand, w: int, h: int) -> np.ndarray:
    top = _hsv(rng.uniform(200, 260), rng.uniform(0.3, 0.8), rng.uniform(0.02, 0.1))
    # Light pollution near the horizon.
    bottom = _hsv(rng.uniform(20, 240), rng.uniform(0.2, 0.7), rng.uniform(0.05, 0.25))
    img = _vgrad(top, bottom, w, h, rng.uniform(0.5, 2.0))
    if rng.random() < 0.5:
        img = _facades(rng, img, night=True)
    n = rng.integers(0, 6)
    if n:  # out-of-focus street lamps, windows and tail lights
        bokeh, s = np.zeros((h, w, 3), _F32), min(w, h)
        for _ in range(n):
            c = _hsv(rng.uniform(0, 50), rng.uniform(0, 0.9))  # white, sodium orange, red
            centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            radius = int(rng.uniform(0.01, 0.05) * s) + 1
            cv2.circle(bokeh, centre, radius, (c * _F32(rng.uniform(0.3, 1.0))).tolist(), -1)
        img += cv2.GaussianBlur(bokeh, (0, 0), rng.uniform(0.5, 2.0) * s / 96).transpose(2, 0, 1)
    return img


_PHOTO_CACHE: dict[str, tuple[np.ndarray, bool]] = {}


def _photo(name: str) -> tuple[np.ndarray, bool]:
    """The photograph `name` as (H, W, 3) uint8 RGB and whether it is grey; decoded once."""
    if name not in _PHOTO_CACHE:
        package, rel, extra = _PHOTO_FILES[name]
        spec = importlib.util.find_spec(package)  # finds the package without importing it
        path = Path(spec.origin).parent / rel if spec is not None and spec.origin else None
        if path is None or not path.is_file():
            raise ModuleNotFoundError(
                f"the 'photo' background '{name}' is read from the {package} package, which is "
                f"not installed: pip install 'edgepilot[{extra}]' (or leave '{name}' out of "
                f"SceneConfig.photos)", name=package)
        img = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        grey = bool(np.abs(img[..., 0].astype(np.int16) - img[..., 2]).max() < 8)
        _PHOTO_CACHE[name] = img, grey
    return _PHOTO_CACHE[name]


def _bg_photo(rng: _Rand, w: int, h: int, photos: tuple[str, ...] = PHOTOS,
              info: dict | None = None) -> np.ndarray:
    """A random crop of a real photograph (skin, wood, coffee, brick, fur...), zoomed and tinted.

    Grey photographs get a random warm or cool tint, so brick and gravel come in many colours."""
    name = photos[rng.integers(len(photos))]
    if info is not None:
        info["photo"] = name
    src, grey = _photo(name)
    ph, pw = src.shape[:2]
    side = rng.uniform(0.12, 0.8) * min(ph, pw)
    cw = int(min(pw, side * rng.uniform(0.8, 1.25) * w / h))
    ch = int(min(ph, side))
    x, y = rng.integers(0, pw - cw + 1), rng.integers(0, ph - ch + 1)
    img = cv2.resize(src[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        img = cv2.flip(img, 1)
    if grey:
        gains = _hsv(rng.uniform(-20, 60), rng.uniform(0.1, 0.6)) / 255
    else:
        gains = 1 + (np.array((rng.random(), rng.random(), rng.random()), _F32) - 0.5) * 0.16
    gains *= _F32(rng.uniform(0.6, 1.15))
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=_F32) * gains[:, None, None]


_BACKGROUND_FNS = {"sky": _bg_sky, "gradient": _bg_gradient, "texture": _bg_texture,
                   "buildings": lambda rng, w, h: _facades(rng, _bg_sky(rng, w, h), night=False),
                   "foliage": _bg_foliage, "night": _bg_night, "photo": _bg_photo}


# ------------------------------------------------------------------------ hard negatives
# Road-sign outlines (unit size): round, octagon (stop), triangle, diamond and rectangle.
_SIGN_SHAPES = tuple(np.stack([np.cos(a), np.sin(a)], -1) * stretch for a, stretch in (
    (np.arange(24) * math.pi / 12, 1.0), (np.arange(8) * math.pi / 4 + math.pi / 8, 1.0),
    (np.arange(3) * 2 * math.pi / 3 - math.pi / 2, 1.0), (np.arange(4) * math.pi / 2, 1.0),
    (np.arange(4) * math.pi / 2 + math.pi / 4, (1.3, 0.8))))


def _clutter(rng: _Rand, img: np.ndarray, ambient: float, night: bool,
             glare: float = 0.0) -> None:
    """Non-signal objects, drawn in every class so that colour alone never gives the label away.

    `glare`: share of the emissive ones drawn as bright as a lit lamp (`_glare`)."""
    h, w = img.shape[:2]
    s = min(w, h)
    for _ in range(rng.integers(0, 4)):
        kind = rng.integers(0, 5)
        cx, cy, size = rng.uniform(0, w), rng.uniform(0, h), s * rng.uniform(0.06, 0.35)
        col = _jitter(rng, _NEG_COLORS[rng.integers(len(_NEG_COLORS))], 20) * ambient
        if kind == 0:  # blob: balloon, clothing, flowers, a painted surface
            axes = _pt(size, size * rng.uniform(0.3, 1.0))
            angle = rng.uniform(0, 180)
            cv2.ellipse(img, _pt(cx, cy), axes, angle, 0, 360, col.tolist(), -1, AA, _SHIFT)
        elif kind == 1:  # car: body, windows, wheels and red tail lights
            bw, bh = size * 1.6, size * 0.55
            cv2.fillPoly(img, _rrect(cx, cy, bw / 2, bh / 2, bh * 0.3), col.tolist(), AA, _SHIFT)
            cabin = _rrect(cx, cy - bh * 0.55, bw * 0.3, bh * 0.3, bh * 0.2)
            cv2.fillPoly(img, cabin, (col * 0.35).tolist(), AA, _SHIFT)
            tail = [255.0 if night else 255 * rng.uniform(0.5, 0.9), 30.0, 25.0]
            for side in (-1, 1):
                wheel = _pt(cx + side * 0.3 * bw, cy + bh / 2)
                cv2.circle(img, wheel, int(bh * 0.3 * _ONE), (15, 15, 15), -1, AA, _SHIFT)
                lamp = _pt(cx + side * 0.44 * bw, cy - bh * 0.1)
                cv2.circle(img, lamp, int(bh * 0.12 * _ONE) + 4, tail, -1, AA, _SHIFT)
        elif kind == 2:  # road sign: coloured face + white rim, or white face + coloured rim
            shape = _SIGN_SHAPES[rng.integers(len(_SIGN_SHAPES))]
            poly = np.round((shape * size + (cx, cy)) * _ONE).astype(np.int32)[None]
            white = np.full(3, 230 * ambient)
            face, rim = (col, white) if rng.random() < 0.6 else (white, col)
            cv2.fillPoly(img, poly, face.tolist(), AA, _SHIFT)
            cv2.polylines(img, poly, True, rim.tolist(), max(1, int(size * 0.15)), AA, _SHIFT)
        elif kind == 3:  # pole, mast or overhead wire (poles also appear without any light)
            x2, y2 = cx + rng.uniform(-0.3, 0.3) * s, cy + (2 * s if rng.random() < 0.5 else -2 * s)
            grey = [rng.uniform(25, 150) * ambient] * 3
            thick = max(1, int(size * rng.uniform(0.05, 0.25)))
            cv2.line(img, _pt(cx, cy), _pt(x2, y2), grey, thick, AA, _SHIFT)
        else:  # emissive light that is not a signal: street lamp, neon, brake light
            hue = (0, 15, 30, 45, 120, 200)[rng.integers(6)]
            if glare and rng.random() < glare:  # as bright as a lamp: clipped core, halo
                _glare(rng, img, cx, cy, s, hue)
                continue
            glow = _hsv(hue, rng.uniform(0, 0.9)) * rng.uniform(0.6, 1.0)
            radius = int(size * rng.uniform(0.08, 0.25) * _ONE) + 8
            cv2.circle(img, _pt(cx, cy), radius, glow.tolist(), -1, AA, _SHIFT)


def _glare(rng: _Rand, img: np.ndarray, cx: float, cy: float, s: int, hue: float) -> None:
    """A bright light that is not a signal, as a camera sees a lamp: a white clipped core, the
    colour left in its rim and its bloom, at a signal lamp's sizes and hues (a brake light,
    a green pharmacy cross, an amber street lamp), but with no housing around it."""
    r = s * math.exp(rng.uniform(math.log(0.015), math.log(0.13)))
    if hue == 120:  # the signals' bluish green
        hue = rng.uniform(128, 168)
    color = _hsv(hue + rng.uniform(-5, 5), rng.uniform(0.7, 0.95))
    sx = rng.uniform(0.6, 1.0)  # round, or an oval lamp / a lamp seen at an angle
    angle = rng.uniform(0, 180)
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    pose = np.array([[ca * sx, -sa], [sa * sx, ca]])
    _lit_lens(img, cx, cy, r, pose, color, rng.random() < 0.3, 0.0, rng.uniform(1.3, 6.0))
    _glow(img, cx, cy, (r * sx, r), angle, color, r * rng.uniform(0.4, 1.4),
          rng.uniform(0.5, 1.3))


# ------------------------------------------------------------------------ traffic light
def _lit_lens(img: np.ndarray, cx: float, cy: float, r: float, pose: np.ndarray,
              color: np.ndarray, led: bool, visor: float, core: float,
              dot_pitch: float = 3.2, dot_gap: float = 0.35) -> None:
    """Paint the lit lens in place: per-pixel radial shading inside an anti-aliased ellipse.

    `core` is how over-exposed the centre is: below 1 a whitish centre, above 1 a white plateau
    that leaves the colour only in a rim of relative width ~1/(2 core) (a daylight camera).

    `pose` (2x2) maps the light's own frame to the image; measuring in the light's frame makes
    the lens, its LED grid and the visor shadow follow the pose. Only the lit lamp gets this
    (slower) treatment; unlit lenses are plain cv2 ellipses."""
    h, w = img.shape[:2]
    x0, x1, y0, y1 = _box(cx, cy, r * max(np.abs(pose).sum(1)), w, h)
    if x1 <= x0 or y1 <= y0:
        return
    (a, b), (c, e) = pose.tolist()
    det = a * e - b * c
    ia, ib, ic, ie = _F32(e / det), _F32(-b / det), _F32(-c / det), _F32(a / det)  # inverse pose
    xs = np.arange(x0, x1, dtype=_F32) - _F32(cx)
    ys = (np.arange(y0, y1, dtype=_F32) - _F32(cy))[:, None]
    u, v = ia * xs + ib * ys, ic * xs + ie * ys  # pixel offsets in the light's frame
    d = np.sqrt(u * u + v * v)
    m = _clip01((r - d) * _F32(1.0 / max(abs(ia) + abs(ib), 1e-3)) + 0.5)  # ~1 px anti-aliased edge
    falloff = 1.0 - np.minimum(d * _F32(1 / r), 1.0) ** 2
    if led and r >= 4.5:  # LED matrix as a cosine dot grid; below ~4.5 px the dots merge anyway
        p = _F32(2 * math.pi / max(1.7, r / dot_pitch))
        dots = (0.5 + 0.5 * np.cos(u * p)) * (0.5 + 0.5 * np.cos(v * p))
        shade, white = dot_gap + (1 - dot_gap) * dots, np.minimum(core * falloff, 1.0) * dots
    else:
        shade, white = 0.75 + 0.25 * falloff, np.minimum(core * falloff, 1.0)
    if visor > 0:  # the hood shades the top of the lens
        shade = shade * (1.0 - visor * _clip01(-v / r - 0.1))
    # The ROI is small, so broadcasting over RGB (slow per element) beats per-channel ops.
    val = shade[..., None] * color
    val += white[..., None] * (255.0 - val)  # over-exposed, whitish centre
    roi = img[y0:y1, x0:x1]
    bg = roi.astype(_F32)
    bg += m[..., None] * (val - bg)
    roi[:] = np.minimum(bg, 255)


# An arrow in a unit circle, pointing right: shaft and head, as (x, y) pairs.
_ARROW = np.array([(-0.75, -0.2), (0.1, -0.2), (0.1, -0.55), (0.8, 0.0), (0.1, 0.55),
                   (0.1, 0.2), (-0.75, 0.2)])


def _arrow(img: np.ndarray, cx: float, cy: float, r: float, pose: np.ndarray,
           color: np.ndarray, direction: int) -> None:
    """A lit arrow lamp (left, up or right) inside the lens of radius `r`, posed like it."""
    turn = (np.array([[-1, 0], [0, 1]]), np.array([[0, 1], [-1, 0]]), np.eye(2))[direction]
    pts = (_ARROW * r) @ turn.T @ pose.T + (cx, cy)
    bright = np.minimum(color * 0.9 + 50, 255)  # a lit arrow is paler than its colour
    cv2.fillPoly(img, [np.round(pts * _ONE).astype(np.int32)], bright.tolist(), AA, _SHIFT)


def _glow(img: np.ndarray, cx: float, cy: float, axes: tuple[float, float], angle: float,
          color: np.ndarray, sigma: float, strength: float) -> None:
    """Bloom: the lit lens blurred with a Gaussian and added (light scattered in the optics)."""
    h, w = img.shape[:2]
    x0, x1, y0, y1 = _box(cx, cy, max(axes) + 3 * sigma, w, h)
    if x1 <= x0 or y1 <= y0:
        return
    # Wide blurs run at reduced resolution (sigma ~2 px there) and are upsampled: the result is
    # smooth anyway, and a full-size 100-px kernel would dominate the render time.
    q = max(1.0, sigma / 2.0)
    src = np.zeros((max(2, round((y1 - y0) / q)), max(2, round((x1 - x0) / q))), _F32)
    centre, small_axes = _pt((cx - x0) / q, (cy - y0) / q), _pt(axes[0] / q, axes[1] / q)
    cv2.ellipse(src, centre, small_axes, angle, 0, 360, 1.0, -1, cv2.LINE_8, _SHIFT)
    g = cv2.GaussianBlur(src, (0, 0), sigma / q, borderType=cv2.BORDER_CONSTANT)
    if q > 1.0:
        g = cv2.resize(g, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    roi = img[y0:y1, x0:x1]  # saturating uint8 add: over-exposure clips towards white like a sensor
    planes = [cv2.convertScaleAbs(g, alpha=float(c) * strength) for c in color]
    cv2.add(roi, cv2.merge(planes), dst=roi)


def _draw_light(rng: _Rand, img: np.ndarray, lit: int | None, long_px: float, vertical: bool,
                led: bool, ambient: float, night: bool, at: tuple[float, float] | None = None,
                *, housings: tuple[str, ...] = HOUSINGS, tilt: float = 0.2,
                weights: dict[str, float] = _HOUSING_WEIGHTS, wide: bool = False,
                info: dict | None = None) -> tuple[float, float, float, float]:
    """Housing (+ optional backplate, pole, visors) with three lenses; `lit` in {0, 1, 2} or None.

    The paint is drawn from the `housings` families (as often as `weights` says); with
    probability `tilt` the light is rolled by 12-40 degrees (a camera held askew, a light on a
    leaning mast). `info`, when given, receives the factors drawn (housing, orientation,
    exposure).

    Returns the posed housing's axis-aligned box (x0, y0, x1, y1) in pixels, unclipped: the
    detector's label (edgepilot/draw/scenes.py).

    Geometry is built in the light's own frame and mapped by a pose (roll + foreshortening),
    much cheaper than warping the image: circles become cv2 ellipses. Without an explicit
    centre `at`, the housing lies inside the frame, or (30%) has up to ~10% cut off.

    `wide` draws looks the detector's first scenes never had (`scenes.StreetConfig.wide`):
    lamps filling more or less of the housing, housings in separate sections, and arrow lamps.
    Without it the same numbers are drawn as always, so older images render as they were."""
    h, w = img.shape[:2]
    pitch = long_px / 3
    short = pitch * rng.uniform(0.95, 1.35)  # aspect jitter
    half = min(pitch, short) * 0.5
    r = half * rng.uniform(0.6, 0.84)
    sections = arrow = False
    if wide:  # lamps from small in a large housing to nearly touching; sectioned; arrows
        r = min(0.95 * half, r * rng.uniform(0.85, 1.15))
        sections, arrow = rng.random() < 0.3, rng.random() < 0.1
    hw, hh = (short / 2, long_px / 2) if vertical else (long_px / 2, short / 2)
    # Corner radius: rounded rectangle, rectangle or pill.
    rc = (min(hw, hh) * rng.uniform(0.2, 0.6), 0.0, min(hw, hh))[rng.integers(3)]
    # Pose: roll, and foreshortening along x or y (light seen from the side or from below).
    angle = rng.uniform(-8, 8)
    if rng.random() < tilt:
        angle = math.copysign(rng.uniform(12, 40), angle)
    sx, sy = (rng.uniform(0.75, 1.0), 1.0) if rng.random() < 0.5 else (1.0, rng.uniform(0.8, 1.0))
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    ex = abs(ca * sx) * hw + abs(sa * sy) * hh  # half extents of the posed housing
    ey = abs(sa * sx) * hw + abs(ca * sy) * hh
    if at is None:
        k = 1.0 if rng.random() < 0.7 else 0.8
        cx, cy = (rng.uniform(k * e, max(size - k * e, k * e)) for e, size in ((ex, w), (ey, h)))
    else:
        cx, cy = at
    pose = np.array([[ca * sx, -sa * sy, cx], [sa * sx, ca * sy, cy]])
    family = _pick_weighted(rng, housings, weights)
    paints = _HOUSING_PAINTS[family]
    paint = _jitter(rng, np.array(paints[rng.integers(len(paints))], _F32), 8) * ambient
    if rng.random() < 0.5:  # mounting pole / bracket leaving the frame
        dy = -3 * h if (not vertical) or rng.random() < 0.5 else 3 * h
        thick = max(1, int(min(hw, hh) * rng.uniform(0.25, 0.6)))
        grey = [rng.uniform(30, 120) * ambient] * 3
        cv2.line(img, _pt(cx, cy), _pt(cx - sa * dy, cy + ca * dy), grey, thick, AA, _SHIFT)
    if rng.random() < 0.3:  # backplate, sometimes with a retro-reflective border
        m = short * rng.uniform(0.2, 0.45)
        plate = _rrect(0, 0, hw + m, hh + m, rc * 0.5, pose)
        cv2.fillPoly(img, plate, (paint * 0.7).tolist(), AA, _SHIFT)
        if rng.random() < 0.5:
            border = (235, 200, 30) if rng.random() < 0.5 else (225, 225, 225)
            cv2.polylines(img, plate, True, [v * ambient for v in border], max(1, int(m * 0.3)),
                          AA, _SHIFT)
    # Housing with a 3D bevel: a shadowed body and a lit face offset towards the light.
    cv2.fillPoly(img, _rrect(0, 0, hw, hh, rc, pose), (paint * 0.55).tolist(), AA, _SHIFT)
    bev = max(0.6, 0.06 * min(hw, hh))
    face = _rrect(-bev / 2, -bev / 2, hw - bev, hh - bev, rc - bev, pose)
    cv2.fillPoly(img, face, paint.tolist(), AA, _SHIFT)
    if sections:  # a seam between each two lamps: three heads bolted together
        for k in (-0.5, 0.5):
            at = k * pitch
            ends = [(-hw, at), (hw, at)] if vertical else [(at, -hh), (at, hh)]
            pts = [pose @ np.array([x, y, 1.0]) for x, y in ends]
            cv2.line(img, _pt(*pts[0]), _pt(*pts[1]), (paint * 0.35).tolist(),
                     max(1, int(0.08 * min(hw, hh))), AA, _SHIFT)

    visor_style = rng.integers(3)  # 0: none, 1: cap (top arc), 2: tunnel (ring + thicker top)
    visor_col, visor_thick = (paint * 0.85).tolist(), max(1, int(r * rng.uniform(0.18, 0.4)))
    bezel_col = (paint * 0.4).tolist()
    dark = rng.uniform(0.05, 0.18) * ambient  # unlit glass: dark, tinted by its own colour
    spec_size, spec_gain = rng.uniform(0.15, 0.3), rng.uniform(15, 60) * ambient
    phantom = [0.0, 0.0, 0.0]
    if not night and rng.random() < 0.12:  # sun reflected in one (sometimes more) unlit lenses
        phantom = [rng.uniform(0.05, 0.15) if rng.random() < 0.3 else 0.0 for _ in range(3)]
        phantom[rng.integers(3)] = rng.uniform(0.1, 0.22)
    # How washed-out (over-exposed) the lit centre is: often clipped to white, as most cameras
    # see a lamp (the colour then survives in the rim and the bloom).
    clipped = rng.random() < (0.6 if night else 0.45)
    if clipped:
        core = rng.uniform(1.3, 6.0)
    else:
        core = rng.uniform(0.3, 0.65) if night else rng.uniform(0.05, 0.35)
    dot_pitch, dot_gap = rng.uniform(2.3, 4.0), rng.uniform(0.1, 0.45)
    if info is not None:
        info.update(housing=family, clipped=clipped, angle=angle,
                    lamp="arrow" if arrow else "led" if led else "disc",
                    orientation="tilted" if abs(angle) >= 12 else
                    "vertical" if vertical else "horizontal")
    axes = _pt(r * sx, r * sy)
    step = (-sa * sy, ca * sy) if vertical else (ca * sx, sa * sx)  # image direction of lamp axis
    jit = rng.gen.random((3, 3))  # per lamp: hue, saturation, position jitter
    lamps = []
    for i in range(3):  # top-to-bottom / left-to-right: red, yellow, green
        off = (i - 1 + 0.06 * (jit[i, 2] - 0.5)) * pitch
        lx, ly = cx + step[0] * off, cy + step[1] * off
        (h0, h1), (s0, s1) = _LAMP_HSV[i]
        color = _hsv(h0 + (h1 - h0) * jit[i, 0], s0 + (s1 - s0) * jit[i, 1])
        lamps.append((lx, ly, color))
        c = _pt(lx, ly)
        if i == lit and arrow:  # an arrow lamp: a lit arrow on the dark lens
            cv2.ellipse(img, c, axes, angle, 0, 360, (color * dark).tolist(), -1, AA, _SHIFT)
            _arrow(img, lx, ly, r, pose[:, :2], color, rng.integers(3))
        elif i == lit:
            shadow = rng.uniform(0.1, 0.3) * (visor_style > 0)
            _lit_lens(img, lx, ly, r, pose[:, :2], color, led, shadow, core, dot_pitch, dot_gap)
        else:  # dark tinted glass + sun highlight; a "phantom" is whitish, never as bright as lit
            glass = color * (dark + 0.5 * phantom[i]) + 110 * phantom[i] * ambient
            cv2.ellipse(img, c, axes, angle, 0, 360, glass.tolist(), -1, AA, _SHIFT)
            highlight = (glass + spec_gain + 150 * phantom[i] * ambient).tolist()
            spec = _pt(lx - 0.35 * r * sx, ly - 0.4 * r * sy)
            cv2.circle(img, spec, int(r * spec_size * _ONE), highlight, -1, AA, _SHIFT)
        cv2.ellipse(img, c, axes, angle, 0, 360, bezel_col, 1, AA, _SHIFT)
        if visor_style == 2:
            ring = _pt(1.12 * r * sx, 1.12 * r * sy)
            cv2.ellipse(img, c, ring, angle, 0, 360, visor_col, 1, AA, _SHIFT)
        if visor_style:
            cap = _pt(1.15 * r * sx, 1.15 * r * sy)
            cv2.ellipse(img, c, cap, angle, 195, 345, visor_col, visor_thick, AA, _SHIFT)
    if lit is not None:
        lx, ly, color = lamps[lit]
        sigma = r * (rng.uniform(0.8, 2.2) if night else rng.uniform(0.25, 0.9))
        strength = rng.uniform(0.8, 1.8) if night else rng.uniform(0.25, 0.9)
        if clipped and not night:  # the coloured halo around a clipped lamp
            sigma, strength = r * rng.uniform(0.4, 1.4), rng.uniform(0.5, 1.3)
        _glow(img, lx, ly, (r * sx, r * sy), angle, color, sigma, strength)
    return cx - ex, cy - ey, cx + ex, cy + ey


# ------------------------------------------------------------------------------ camera
def _camera(rng: _Rand, img: np.ndarray, config: SceneConfig, night: bool,
            warp: bool = True, info: dict | None = None) -> np.ndarray:
    """Sensor and lens effects on the finished uint8 scene: warp, blur, WB, tone, noise, JPEG.

    `warp=False` keeps the geometry, for scenes whose boxes must stay where they were drawn.
    `info`, when given, receives the blur kind, JPEG quality (0: none) and white-balance shift."""
    info = {} if info is None else info
    h, w = img.shape[:2]
    s = min(w, h)
    if warp and rng.random() < 0.3:  # small roll + keystone of the frame (camera not square-on)
        rot = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-5, 5), rng.uniform(1.0, 1.04))
        src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        dst = src @ rot[:, :2].T + rot[:, 2] + rng.gen.uniform(-0.03, 0.03, (4, 2)) * s
        dst = dst.astype(np.float32)
        img = cv2.warpPerspective(img, cv2.getPerspectiveTransform(src, dst), (w, h),
                                  borderMode=cv2.BORDER_REFLECT101)
    u = rng.random()
    info["blur"] = "defocus" if u < 0.25 else "motion" if u < 0.4 else "none"
    if u < 0.25:  # defocus
        sigma = rng.uniform(0.4, 1.2) * s / 96
        k = 2 * math.ceil(1.8 * sigma) + 1  # short kernel: OpenCV's uint8 blur is fast up to 5x5
        img = cv2.GaussianBlur(img, (k, k), sigma)
    elif u < 0.4:  # motion blur along a random direction
        k = int(rng.integers(3, 8) * s / 96) | 1
        c, a = (k - 1) / 2, rng.uniform(0, math.pi)
        dx, dy = c * math.cos(a), c * math.sin(a)
        kern = np.zeros((k, k), _F32)
        cv2.line(kern, _pt(c - dx, c - dy), _pt(c + dx, c + dy), 1.0, 1, AA, _SHIFT)
        img = cv2.filter2D(img, -1, kern / kern.sum())
    # White balance error (moderate: red must stay distinguishable from amber), exposure and a
    # tone curve, folded into one per-channel lookup table.
    temp, tint = rng.uniform(-0.15, 0.15), rng.uniform(-0.05, 0.05)
    info["white_balance"] = temp
    exposure = rng.uniform(0.8, 1.35) if night else rng.uniform(0.75, 1.25)
    gamma = rng.uniform(0.75, 1.3) if rng.random() < 0.5 else 1.0
    gains = np.array([1 + temp, 1 + tint, 1 - temp], _F32) * _F32(exposure)
    lut = np.minimum(_RAMP * gains, 1.0) ** _F32(gamma) * 255 + 0.5
    img = cv2.LUT(img, lut.astype(np.uint8)[:, None, :])
    sigma = rng.uniform(2, 10) if night else rng.uniform(0, 6)  # sensor noise, stronger at night
    if h <= _TEX_SIZE and w <= _TEX_SIZE:
        y, x = rng.integers(0, _TEX_SIZE - h + 1), rng.integers(0, _TEX_SIZE - w + 1)
        noise = _NOISE[y:y + h, x:x + w]
    else:  # large frames (demo scenes) draw fresh noise
        noise = rng.gen.standard_normal((h, w, 3), dtype=_F32)
    img = cv2.addWeighted(img, 1.0, noise, sigma, 0.0, dtype=cv2.CV_8U)
    info["jpeg"] = 0
    if rng.random() < config.jpeg_fraction:
        info["jpeg"] = rng.integers(20, 91)
        quality = [cv2.IMWRITE_JPEG_QUALITY, info["jpeg"]]
        _, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), quality)
        img = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return img


def _background(rng: _Rand, config: SceneConfig) -> str:
    """The background family of one scene: uniform, or photographs at `config.photo_share`."""
    if config.photo_share is None:  # one draw, as the generator always made
        return config.backgrounds[rng.integers(len(config.backgrounds))]
    if rng.random() < config.photo_share:
        return "photo"
    others = tuple(b for b in config.backgrounds if b != "photo")
    return others[rng.integers(len(others))]


# ---------------------------------------------------------------------------- public API
def render_scene(rng: np.random.Generator, label: int, width: int, height: int,
                 config: SceneConfig = SceneConfig(),
                 scale: tuple[float, float] = (0.12, 0.6), info: dict | None = None) -> np.ndarray:
    """One (height, width, 3) uint8 RGB frame, e.g. a 640x480 street scene for a live demo.

    The light's long side spans `scale` x min(width, height), drawn log-uniformly (horizontal
    lights a bit more); `config.tilt` of the lights are rolled.
    `config.size` and `config.light_size` are ignored here. `info`, when given, receives the
    factors drawn: background (and photo), night, light (drawn or not), size (long side / short
    side of the frame), lamp_style, housing, orientation, clipped, blur, jpeg, white_balance."""
    if label not in range(len(LABELS)):
        raise ValueError(f"label must be in 0..{len(LABELS) - 1} {LABELS}, got {label!r}")
    info = {} if info is None else info
    rng = _Rand(rng)
    bg_name = _background(rng, config)
    night = bg_name == "night"
    info.update(background=bg_name, night=night, light=False)
    # Backgrounds are rendered at half resolution: 4x cheaper, and real backgrounds are softer
    # than the in-focus light anyway.
    extra = {"photos": config.photos, "info": info} if bg_name == "photo" else {}
    bg = _BACKGROUND_FNS[bg_name](rng, (width + 1) // 2, (height + 1) // 2, **extra)
    img = cv2.merge(list(np.clip(bg, 0, 255, out=bg).astype(np.uint8)))
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    ambient = rng.uniform(0.1, 0.3) if night else rng.uniform(0.7, 1.05)  # on non-emissive things
    _clutter(rng, img, ambient, night, config.glare)
    if label != NONE or rng.random() >= config.empty_fraction:
        vertical = config.layouts[rng.integers(len(config.layouts))] == "vertical"
        led = config.lamp_styles[rng.integers(len(config.lamp_styles))] == "led"
        # A horizontal light is ~3x wider than tall: give it a larger share of the frame width.
        lo, hi = scale if vertical else (min(1.6 * scale[0], 0.95), min(1.05 * scale[1], 0.95))
        # Log-uniform: as many lights from 20% to 30% of the frame as from 60% to 90%. Far,
        # small lights are common in a camera's view and the hardest to read.
        long_px = math.exp(rng.uniform(math.log(lo), math.log(hi))) * min(width, height)
        if rng.random() < 0.08:  # a second, smaller and always unlit light further away
            at = (rng.uniform(0, width), rng.uniform(0, height))
            far = long_px * rng.uniform(0.3, 0.55)
            _draw_light(rng, img, None, far, vertical, led, ambient, night, at,
                        housings=config.housings, tilt=config.tilt)
        lit = None if label == NONE else label
        info.update(light=True, size=long_px / min(width, height),
                    lamp_style="led" if led else "disc")
        _draw_light(rng, img, lit, long_px, vertical, led, ambient, night,
                    housings=config.housings, tilt=config.tilt, info=info)
    return _camera(rng, img, config, night, info=info)


def render(rng: np.random.Generator, label: int, config: SceneConfig = SceneConfig(),
           info: dict | None = None) -> np.ndarray:
    """One image, (size, size, 3) uint8 RGB; the housing spans `config.light_size` of the
    frame (default 20-90%)."""
    return render_scene(rng, label, config.size, config.size, config, scale=config.light_size,
                        info=info)


def _balanced_labels(n: int, seed: int) -> np.ndarray:
    """Each block of 4 consecutive images is a shuffled permutation of the 4 classes.

    Block k depends only on (seed, k) because `random` fills its output sequentially, which
    keeps the prefix property of `generate`."""
    keys = np.random.default_rng((seed, 1 << 63)).random((-(-n // len(LABELS)), len(LABELS)))
    return np.argsort(keys, axis=1, kind="stable").reshape(-1)[:n].astype(np.int64)


def generate(n: int, *, seed: int = 0, config: SceneConfig = SceneConfig(),
             labels: np.ndarray | None = None, info: list | None = None,
             start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, size, size, 3) uint8 RGB and labels (n,) int64.

    Labels are balanced (shuffled blocks of 4) unless given. Image i is rendered from its own
    generator seeded by (seed, i), so it depends only on (seed, i, its label, config):
    generate(10, seed=s)[0][:5] == generate(5, seed=s)[0]. A list passed as `info` gets one
    dict per image: the factors it was drawn with (see `render_scene`). `start` renders images
    start..start+n-1 of the sequence instead (a large set made in chunks is the same set)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    seed = int(seed) % (1 << 64)  # SeedSequence wants non-negative entropy
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if labels is None:
        labels = _balanced_labels(start + n, seed)[start:]
    else:
        labels = np.asarray(labels).astype(np.int64)
        if labels.shape != (n,) or (n and (labels.min() < 0 or labels.max() >= len(LABELS))):
            raise ValueError(f"labels must have shape ({n},) with values in 0..{len(LABELS) - 1}")
    images = np.empty((n, config.size, config.size, 3), np.uint8)
    for i in range(n):
        factors = {} if info is not None else None
        images[i] = render(np.random.default_rng((seed, start + i)), int(labels[i]), config,
                           factors)
        if info is not None:
            info.append(factors)
    return images, labels
