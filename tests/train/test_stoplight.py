"""Tests for the procedural traffic-light generator (edgepilot.draw.stoplight)."""
from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgepilot.draw import stoplight

RED, YELLOW, GREEN, NONE = (stoplight.LABELS.index(n) for n in ("red", "yellow", "green", "none"))


def _peak(img: np.ndarray) -> tuple[int, int, int]:
    """(hue class, x, y) of the brightest saturated spot: 0 red, 1 amber, 2 green, 3 other.

    A crude stand-in for "where is the lit lamp and what colour is it"."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
    score = cv2.GaussianBlur(hsv[..., 1] * hsv[..., 2], (5, 5), 0)
    y, x = np.unravel_index(int(np.argmax(score)), score.shape)
    h = hsv[y, x, 0]  # OpenCV hue is 0..180
    cls = 0 if (h < 10 or h >= 165) else 1 if h < 30 else 2 if 35 <= h < 100 else 3
    return cls, int(x), int(y)


def _peaks(label: int, n: int, seed: int, config: stoplight.SceneConfig,
           min_size: float = 0.0) -> np.ndarray:
    """Peaks of n images of `label`, leaving out lights smaller than `min_size` of the frame."""
    info: list[dict] = []
    images, _ = stoplight.generate(n, seed=seed, config=config, labels=np.full(n, label),
                                   info=info)
    return np.array([_peak(im) for im, f in zip(images, info)
                     if not f["light"] or f["size"] >= min_size])


def test_public_constants() -> None:
    assert stoplight.LABELS == ("red", "yellow", "green", "none")
    assert stoplight.LAYOUTS == ("vertical", "horizontal")
    assert stoplight.LAMP_STYLES == ("disc", "led")
    assert len(stoplight.BACKGROUNDS) >= 4 and {"night", "photo"} <= set(stoplight.BACKGROUNDS)
    assert {"black", "yellow", "grey"} <= set(stoplight.HOUSINGS)
    config = stoplight.SceneConfig()
    assert (config.size, config.empty_fraction, config.jpeg_fraction) == (96, 0.5, 0.3)
    assert config.backgrounds == stoplight.BACKGROUNDS
    assert (config.housings, config.photos) == (stoplight.HOUSINGS, stoplight.PHOTOS)


def test_shapes_and_dtypes() -> None:
    images, labels = stoplight.generate(9, seed=1)
    assert images.shape == (9, 96, 96, 3) and images.dtype == np.uint8
    assert labels.shape == (9,) and labels.dtype == np.int64
    assert set(labels.tolist()) <= {0, 1, 2, 3}
    small, _ = stoplight.generate(3, seed=1, config=stoplight.SceneConfig(size=32))
    assert small.shape == (3, 32, 32, 3)
    empty, empty_labels = stoplight.generate(0)
    assert empty.shape == (0, 96, 96, 3) and empty_labels.shape == (0,)
    one = stoplight.render(np.random.default_rng(0), GREEN, stoplight.SceneConfig(size=48))
    assert one.shape == (48, 48, 3) and one.dtype == np.uint8


def test_images_are_not_blank() -> None:
    images, _ = stoplight.generate(16, seed=2)
    assert all(im.std() > 3 for im in images)  # something was drawn, not a flat fill


def test_render_scene_non_square() -> None:
    frame = stoplight.render_scene(np.random.default_rng(3), RED, 160, 120, stoplight.SceneConfig())
    assert frame.shape == (120, 160, 3) and frame.dtype == np.uint8


def test_same_seed_same_bytes_and_different_seed_differs() -> None:
    a_img, a_lab = stoplight.generate(12, seed=5)
    b_img, b_lab = stoplight.generate(12, seed=5)
    assert a_img.tobytes() == b_img.tobytes() and np.array_equal(a_lab, b_lab)
    c_img, _ = stoplight.generate(12, seed=6)
    assert a_img.tobytes() != c_img.tobytes()


@pytest.mark.parametrize("short, long", [(5, 10), (3, 7), (8, 13)])
def test_prefix_property(short: int, long: int) -> None:
    s_img, s_lab = stoplight.generate(short, seed=11)
    l_img, l_lab = stoplight.generate(long, seed=11)
    assert np.array_equal(l_img[:short], s_img)
    assert np.array_equal(l_lab[:short], s_lab)


def test_image_depends_only_on_seed_index_and_own_label() -> None:
    a = np.array([0, 1, 2, 3, 0, 1])
    b = np.array([0, 1, 3, 3, 2, 1])
    a_img, a_lab = stoplight.generate(6, seed=4, labels=a)
    b_img, _ = stoplight.generate(6, seed=4, labels=b)
    assert np.array_equal(a_lab, a)
    same = a == b
    assert all(np.array_equal(a_img[i], b_img[i]) for i in np.flatnonzero(same))
    assert all(not np.array_equal(a_img[i], b_img[i]) for i in np.flatnonzero(~same))


def test_render_is_deterministic_given_generator_state() -> None:
    config = stoplight.SceneConfig(size=40)
    x = stoplight.render(np.random.default_rng(123), YELLOW, config)
    y = stoplight.render(np.random.default_rng(123), YELLOW, config)
    assert np.array_equal(x, y)


@pytest.mark.parametrize("n", [4, 37, 202])
def test_class_balance(n: int) -> None:
    _, labels = stoplight.generate(n, seed=9, config=stoplight.SceneConfig(size=16))
    counts = np.bincount(labels, minlength=4)
    assert counts.max() - counts.min() <= 1, counts


def test_labels_are_shuffled_not_cycled() -> None:
    _, a = stoplight.generate(40, seed=1, config=stoplight.SceneConfig(size=16))
    _, b = stoplight.generate(40, seed=2, config=stoplight.SceneConfig(size=16))
    assert not np.array_equal(a, np.tile(np.arange(4), 10))
    assert not np.array_equal(a, b)


def test_labels_argument_validated() -> None:
    with pytest.raises(ValueError):
        stoplight.generate(3, labels=np.array([0, 1]))
    with pytest.raises(ValueError):
        stoplight.generate(2, labels=np.array([0, 4]))
    with pytest.raises(ValueError):
        stoplight.generate(2, labels=np.array([-1, 0]))
    with pytest.raises(ValueError):
        stoplight.render(np.random.default_rng(0), 7)


@pytest.mark.parametrize("field, valid", [("layouts", stoplight.LAYOUTS),
                                          ("backgrounds", stoplight.BACKGROUNDS),
                                          ("lamp_styles", stoplight.LAMP_STYLES),
                                          ("housings", stoplight.HOUSINGS),
                                          ("photos", stoplight.PHOTOS)])
def test_config_rejects_unknown_names_and_lists_valid_ones(field: str, valid: tuple) -> None:
    with pytest.raises(ValueError) as err:
        stoplight.SceneConfig(**{field: (valid[0], "bogus")})
    message = str(err.value)
    assert "bogus" in message and all(name in message for name in valid)
    with pytest.raises(ValueError):
        stoplight.SceneConfig(**{field: ()})
    with pytest.raises(ValueError):
        stoplight.SceneConfig(**{field: valid[0]})  # a bare string is not a tuple of names


@pytest.mark.parametrize("kwargs", [{"size": 15}, {"size": 0}, {"size": 32.5},
                                    {"empty_fraction": -0.1}, {"empty_fraction": 1.5},
                                    {"jpeg_fraction": 2.0}, {"tilt": -0.2}, {"tilt": 1.1}])
def test_config_rejects_bad_numbers(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        stoplight.SceneConfig(**kwargs)


def test_config_is_frozen_and_accepts_lists() -> None:
    config = stoplight.SceneConfig(layouts=["horizontal"], size=16)
    assert config.layouts == ("horizontal",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.size = 32  # type: ignore[misc]


@pytest.mark.parametrize("label", [RED, YELLOW, GREEN])
def test_lit_lamp_has_the_label_colour(label: int) -> None:
    """The brightest saturated spot is usually the lit lamp, in its class colour.

    Clutter (red cars, green signs...) sometimes wins, hence a statistical test. Photographs
    and yellow paint are saturated colours bigger than any lamp, so they are left out here,
    and so are lights under a third of the frame (a third of upright ones): their lamps are a
    few pixels that a red car outshines."""
    plain = stoplight.SceneConfig(
        backgrounds=tuple(b for b in stoplight.BACKGROUNDS if b != "photo"),
        housings=tuple(h for h in stoplight.HOUSINGS if h != "yellow"))
    peaks = _peaks(label, 200, seed=100 + label, config=plain, min_size=1 / 3)
    assert len(peaks) >= 150
    frac = np.bincount(peaks[:, 0], minlength=4) / len(peaks)
    others = [frac[c] for c in (RED, YELLOW, GREEN) if c != label]
    assert frac[label] > 0.5, frac
    assert frac[label] > 2.5 * max(others), frac


def test_none_images_have_no_dominant_lamp_colour() -> None:
    """Without a lit lamp, no single lamp colour dominates the brightest saturated spot."""
    peaks = _peaks(NONE, 150, seed=7, config=stoplight.SceneConfig())
    frac = np.bincount(peaks[:, 0], minlength=4) / len(peaks)
    assert frac[:3].max() < 0.5, frac


@pytest.mark.parametrize("layout, axis", [("vertical", 2), ("horizontal", 1)])
def test_layout_restriction_and_lamp_order(layout: str, axis: int) -> None:
    """Red sits above (vertical) or left of (horizontal) green; across the other axis they agree."""
    config = stoplight.SceneConfig(layouts=(layout,), backgrounds=("night", "gradient"))
    red = _peaks(RED, 100, seed=31, config=config)
    green = _peaks(GREEN, 100, seed=32, config=config)
    red, green = red[red[:, 0] == RED], green[green[:, 0] == GREEN]  # keep spots that are the lamp
    assert len(red) > 50 and len(green) > 50
    assert green[:, axis].mean() - red[:, axis].mean() > 15
    other = 3 - axis
    assert abs(green[:, other].mean() - red[:, other].mean()) < 12


def test_background_restriction() -> None:
    night, _ = stoplight.generate(40, seed=3, config=stoplight.SceneConfig(backgrounds=("night",)))
    sky, _ = stoplight.generate(40, seed=3, config=stoplight.SceneConfig(backgrounds=("sky",)))
    assert night.mean() < 0.5 * sky.mean()
    # sky backgrounds are bluish on average; night scenes are dark everywhere
    assert sky[..., 2].mean() > sky[..., 0].mean()
    assert np.median(night.reshape(40, -1).mean(1)) < 60


def test_lamp_style_and_fraction_options_change_output() -> None:
    def images(**kwargs: object) -> np.ndarray:
        return stoplight.generate(8, seed=8, config=stoplight.SceneConfig(**kwargs))[0]

    assert not np.array_equal(images(lamp_styles=("disc",)), images(lamp_styles=("led",)))
    assert not np.array_equal(images(jpeg_fraction=0.0), images(jpeg_fraction=1.0))
    assert not np.array_equal(images(empty_fraction=0.0), images(empty_fraction=1.0))


def test_module_imports_only_numpy_cv2_and_stdlib() -> None:
    tree = ast.parse(Path(stoplight.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            roots.add(node.module.split(".")[0])
    allowed = {"__future__", "colorsys", "importlib", "math", "numbers", "dataclasses", "pathlib",
               "cv2", "numpy"}
    assert roots <= allowed, roots


# --------------------------------------------------------------- factors, photos, exposure
def test_info_records_the_factors_without_changing_the_images() -> None:
    info: list[dict] = []
    with_info, labels = stoplight.generate(24, seed=21, info=info)
    without, _ = stoplight.generate(24, seed=21)
    assert with_info.tobytes() == without.tobytes()
    assert len(info) == 24
    for factors, label in zip(info, labels):
        assert factors["background"] in stoplight.BACKGROUNDS
        assert factors["blur"] in ("none", "defocus", "motion")
        assert factors["jpeg"] == 0 or 20 <= factors["jpeg"] <= 90
        assert abs(factors["white_balance"]) <= 0.15
        assert factors["light"] or label == NONE
        if factors["light"]:
            assert factors["housing"] in stoplight.HOUSINGS
            assert factors["orientation"] in ("vertical", "horizontal", "tilted")
            assert 0.2 <= factors["size"] <= 0.95
        assert ("photo" in factors) == (factors["background"] == "photo")
    again: list[dict] = []
    stoplight.generate(24, seed=21, info=again)
    assert again == info


def test_start_renders_the_same_images_as_one_long_run() -> None:
    whole, whole_labels = stoplight.generate(9, seed=13, config=stoplight.SceneConfig(size=32))
    tail, tail_labels = stoplight.generate(4, seed=13, config=stoplight.SceneConfig(size=32),
                                           start=5)
    assert np.array_equal(tail, whole[5:]) and np.array_equal(tail_labels, whole_labels[5:])


def test_housing_restriction_is_obeyed() -> None:
    info: list[dict] = []
    config = stoplight.SceneConfig(housings=("yellow",), empty_fraction=0.0, size=48)
    stoplight.generate(20, seed=4, config=config, info=info)
    assert {f["housing"] for f in info} == {"yellow"}


@pytest.mark.parametrize("tilt", [0.0, 1.0])
def test_tilt_sets_the_share_of_rolled_lights(tilt: float) -> None:
    info: list[dict] = []
    config = stoplight.SceneConfig(tilt=tilt, empty_fraction=0.0, size=32)
    stoplight.generate(40, seed=6, config=config, info=info)
    tilted = [abs(f["angle"]) >= 12 for f in info if f["light"]]
    assert len(tilted) == 40 and all(tilted) == (tilt == 1.0) and any(tilted) == (tilt == 1.0)


def test_light_sizes_are_log_uniform_so_small_lights_are_common() -> None:
    """Upright lights span 20-90% of the frame, log-uniformly: a third of them under 1/3 of
    the frame (a uniform draw gives a fifth), the far lights a camera sees most."""
    info: list[dict] = []
    config = stoplight.SceneConfig(layouts=("vertical",), empty_fraction=0.0, size=24)
    stoplight.generate(600, seed=8, config=config, info=info)
    sizes = np.array([f["size"] for f in info if f["light"]])
    assert len(sizes) == 600 and sizes.min() >= 0.2 and sizes.max() <= 0.9
    small, large = np.mean(sizes < 1 / 3), np.mean(sizes >= 0.6)
    assert 0.28 <= small <= 0.40 and 0.20 <= large <= 0.32, (small, large)


def test_light_size_sets_the_range_and_leaves_the_default_images_alone() -> None:
    """A lower floor draws far lights down to it; the default range renders the same images as
    before the option existed (the shipped model's report must not move)."""
    info: list[dict] = []
    config = stoplight.SceneConfig(layouts=("vertical",), empty_fraction=0.0, size=24,
                                   light_size=(0.1, 0.3))
    stoplight.generate(200, seed=8, config=config, info=info)
    sizes = np.array([f["size"] for f in info])
    assert sizes.min() >= 0.1 and sizes.max() <= 0.3 and np.mean(sizes < 0.2) > 0.5
    default = stoplight.SceneConfig(size=24)
    same = stoplight.SceneConfig(size=24, light_size=[0.2, 0.9])
    assert same.light_size == default.light_size == (0.2, 0.9)
    assert np.array_equal(stoplight.generate(6, seed=2, config=default)[0],
                          stoplight.generate(6, seed=2, config=same)[0])


@pytest.mark.parametrize("bad", [(0.5, 0.2), (0.0, 0.5), (0.2, 1.5), (0.2, float("nan")),
                                 (0.2,), "0.2 0.9", None])
def test_bad_light_size_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="light_size must be two numbers 0.05 <= low <= high"):
        stoplight.SceneConfig(light_size=bad)


def test_housings_are_drawn_as_often_as_their_weights() -> None:
    """The classifier's images draw light-coloured housings more often than the detector's
    street scenes do (the street weights are the ones the shipped detector was trained on)."""
    assert stoplight.STREET_HOUSING_WEIGHTS["aluminium"] < stoplight._HOUSING_WEIGHTS["aluminium"]
    info: list[dict] = []
    config = stoplight.SceneConfig(empty_fraction=0.0, size=24)
    stoplight.generate(800, seed=10, config=config, info=info)
    housings = [f["housing"] for f in info if f["light"]]
    weights = stoplight._HOUSING_WEIGHTS
    expected = weights["aluminium"] / sum(weights.values())
    assert abs(housings.count("aluminium") / len(housings) - expected) < 0.04


@pytest.mark.parametrize("photo", ["coffee", "brick", "astronaut", "grace_hopper", "flower"])
def test_photo_backgrounds_come_from_the_installed_packages(photo: str) -> None:
    """Each photograph loads offline; the crops are real image content, not a flat fill."""
    config = stoplight.SceneConfig(backgrounds=("photo",), photos=(photo,), size=48)
    info: list[dict] = []
    images, _ = stoplight.generate(6, seed=5, config=config, info=info)
    assert {f["photo"] for f in info} == {photo}
    src, _ = stoplight._photo(photo)
    assert src.ndim == 3 and min(src.shape[:2]) >= 256  # the whole photograph was decoded
    assert all(im.std() > 3 for im in images)


def test_different_photos_give_different_images() -> None:
    def images(photo: str) -> np.ndarray:
        config = stoplight.SceneConfig(backgrounds=("photo",), photos=(photo,), size=48)
        return stoplight.generate(4, seed=6, config=config)[0]

    assert not np.array_equal(images("coffee"), images("brick"))


def test_light_size_reaches_the_training_split_only() -> None:
    from edgepilot.errors import EdgepilotError
    from edgepilot.train import datasets

    assert datasets.scene_config("train", light_size=(0.1, 0.4)).light_size == (0.1, 0.4)
    assert datasets.scene_config("val").light_size == stoplight.SceneConfig().light_size
    assert datasets.scene_config("train", glare=0.5).glare == 0.5
    assert datasets.scene_config("holdout").glare == datasets.scene_config("val").glare == 0.0
    assert datasets.scene_config("train", photo_share=0.4).photo_share == 0.4
    assert datasets.scene_config("val").photo_share is None
    default = datasets.load_dataset("stoplight", "train", 8, (32, 32), seed=3)[0]
    small = datasets.load_dataset("stoplight", "train", 8, (32, 32), seed=3,
                                  light_size=(0.1, 0.2))[0]
    assert not np.array_equal(default, small)
    with pytest.raises(EdgepilotError, match="Dataset 'digits' takes no options"):
        datasets.load_dataset("digits", "val", 1, (28, 28), light_size=(0.1, 0.2))


@pytest.mark.parametrize("hue,channel", [(0, 0), (120, 1)])
def test_glare_is_a_clipped_lamp_with_its_colour_in_the_rim(hue: int, channel: int) -> None:
    """A non-signal light as bright as a lamp: white at the centre, the colour (red; the
    signals' bluish green for hue 120) only around it, and no housing drawn."""
    img = np.zeros((96, 96, 3), np.uint8)
    stoplight._glare(stoplight._Rand(np.random.default_rng(4)), img, 48.0, 48.0, 96, hue)
    assert img[48, 48].min() >= 235  # clipped core
    lit = img.max(axis=2) > 60
    coloured = lit & (img.argmax(axis=2) == channel) & (img.min(axis=2) < 0.6 * img.max(axis=2))
    assert coloured.sum() >= 4  # the colour survives in the rim and the bloom
    assert not lit[0].any() and not lit[:, 0].any()  # a lamp alone: nothing else was drawn


def test_glare_turns_some_clutter_lights_into_lamps_without_housings() -> None:
    """glare=1 draws every emissive clutter light as a clipped lamp: far more clutter layers
    then hold a white core; the default, 0, draws them as plain discs."""
    assert stoplight.SceneConfig().glare == 0.0

    def with_white(glare: float) -> int:
        count = 0
        for seed in range(300):
            img = np.zeros((96, 96, 3), np.uint8)
            stoplight._clutter(stoplight._Rand(np.random.default_rng(seed)), img, 1.0, False,
                               glare)
            count += bool((img.min(axis=2) >= 235).any())
        return count

    plain, glare = with_white(0.0), with_white(1.0)
    assert plain < 20 and glare > 3 * plain + 30, (plain, glare)  # measured 6 and 85
    with pytest.raises(ValueError, match=r"glare must be in \[0, 1\]"):
        stoplight.SceneConfig(glare=-0.1)


def test_photo_share_sets_how_often_scenes_are_drawn_on_photographs() -> None:
    """photo_share draws that share of the scenes on a real photograph and the rest uniformly
    on the other backgrounds; None keeps every background equally likely."""
    from collections import Counter

    def backgrounds(**fields) -> Counter:
        info: list = []
        stoplight.generate(600, seed=2, config=stoplight.SceneConfig(size=32, **fields),
                           info=info)
        return Counter(i["background"] for i in info)

    uniform, photos = backgrounds(), backgrounds(photo_share=0.5)
    assert stoplight.SceneConfig().photo_share is None
    assert 50 <= uniform["photo"] <= 125  # 1 in 7: ~86
    assert 255 <= photos["photo"] <= 345, photos  # half of 600
    assert set(photos) == set(stoplight.BACKGROUNDS)  # the others are still drawn
    assert backgrounds(photo_share=1.0) == Counter(photo=600)
    assert "photo" not in backgrounds(photo_share=0.0)
    for bad, needle in ((1.5, r"photo_share must be in \[0, 1\], got 1.5"),
                        (math.nan, r"photo_share must be in \[0, 1\], got nan")):
        with pytest.raises(ValueError, match=needle):
            stoplight.SceneConfig(photo_share=bad)
    with pytest.raises(ValueError, match="photo_share needs 'photo' among the backgrounds"):
        stoplight.SceneConfig(backgrounds=("sky",), photo_share=0.3)
    with pytest.raises(ValueError, match="needs a background other than 'photo'"):
        stoplight.SceneConfig(backgrounds=("photo",), photo_share=0.3)


def test_missing_photo_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgepilot.errors import MissingDependencyError
    from edgepilot.train import datasets

    missing = ("no_such_package_xyz", "data/x.png", "export")
    monkeypatch.setitem(stoplight._PHOTO_FILES, "coffee", missing)
    monkeypatch.setattr(stoplight, "_PHOTO_CACHE", {})
    config = stoplight.SceneConfig(backgrounds=("photo",), photos=("coffee",), size=32)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'edgepilot\[export\]'"):
        stoplight.generate(1, config=config)
    monkeypatch.setattr(datasets, "scene_config", lambda split, **overrides: config)
    with pytest.raises(MissingDependencyError, match=r"edgepilot\[export\]"):
        datasets.load_dataset("stoplight", "val", 1, (32, 32))


def _white_pixels(label: int, clipped: bool, n: int = 100) -> float:
    """Mean count of near-white pixels in images whose lit lamp was (not) clipped to white."""
    config = stoplight.SceneConfig(backgrounds=("night", "gradient"), jpeg_fraction=0.0)
    info: list[dict] = []
    images, _ = stoplight.generate(n, seed=41, config=config, labels=np.full(n, label), info=info)
    counts = [(im.min(axis=2) > 235).sum()
              for im, f in zip(images, info) if f["clipped"] == clipped]
    assert len(counts) > 10
    return float(np.mean(counts))


@pytest.mark.parametrize("label", [RED, GREEN])
def test_clipped_lamps_are_white_in_the_middle(label: int) -> None:
    """A clipped lit lamp has a white core (the colour only at the rim and in the bloom)."""
    assert _white_pixels(label, True) > 4 * _white_pixels(label, False) + 15
