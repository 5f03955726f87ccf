"""The export report says what its agreement was measured on: real images the user gave
(validation or calibration) or random inputs, where every file agrees and agreement means
little. Every classifier row also carries measures that need no labels: the KL divergence
from PyTorch's class probabilities, and the overlap of the top-5 classes."""

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402

import edgepilot  # noqa: E402
from edgepilot.export.probe import _in_probabilities  # noqa: E402
from edgepilot.export.report import print_reports  # noqa: E402
from edgepilot.meta import ModelMeta  # noqa: E402

LABELS = tuple(f"class{i}" for i in range(10))
META = ModelMeta(name="ten", labels=LABELS, input_size=(16, 16), mean=(0.5, 0.5, 0.5),
                 std=(0.25, 0.25, 0.25))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def _images(n, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))  # flat-ish photographs, not noise
    return np.clip(base + rng.normal(0, 12, (n, 16, 16, 3)), 0, 255).astype(np.uint8)


def _table(reports) -> str:
    from rich.console import Console

    out = io.StringIO()
    print_reports(reports, console=Console(file=out, width=200, color_system=None))
    return out.getvalue()


def test_without_data_an_int8_file_is_checked_on_the_calibration_images(tmp_path):
    calib = _images(40, 1)
    reports = edgepilot.export(_net(), torch.zeros(1, 3, 16, 16), formats=["onnx"],
                               precision=["fp32", "int8"], out=tmp_path / "ten", meta=META,
                               calib=calib, quiet=True)
    for report in reports:
        assert report.measured_on == "calibration images"
        assert report.n_inputs == len(calib)
        assert 0.0 <= report.kl_divergence < 0.5
        assert 0.0 <= report.top5_overlap <= 1.0
    assert reports[0].kl_divergence < 1e-6 and reports[0].top5_overlap == 1.0  # fp32
    assert reports[1].kl_divergence > reports[0].kl_divergence  # int8 rounds
    table = _table(reports)
    assert "random" not in table and "top-5" in table and "KL" in table


def test_agreement_on_random_inputs_says_so(tmp_path):
    reports = edgepilot.export(_net(), torch.zeros(1, 3, 16, 16), formats=["onnx"],
                               out=tmp_path / "ten", meta=META, quiet=True)
    assert reports[0].measured_on == "random images"
    table = " ".join(_table(reports).split())
    assert "100.00%*" in table
    assert "measured on 16 random images, not real ones" in table
    saved = (tmp_path / "ten.onnx.json").read_text()
    assert '"measured_on": "random images"' in saved


def test_given_data_the_report_says_validation_images(tmp_path):
    images = _images(24, 2)
    labels = np.arange(24) % 10
    reports = edgepilot.export(_net(), torch.zeros(1, 3, 16, 16), formats=["onnx"],
                               out=tmp_path / "ten", meta=META, data=(images, labels),
                               quiet=True)
    assert reports[0].measured_on == "validation images" and reports[0].n_inputs == 24


def test_the_distribution_measures_see_what_top1_agreement_misses():
    meta = ModelMeta(name="ten", labels=LABELS, input_size=(16, 16), output="logits")
    want = np.tile(np.arange(10, dtype=np.float64)[::-1], (4, 1))  # class 0 first, then 1...
    same = _in_probabilities(want, want.copy(), meta)
    assert same["kl_divergence"] == pytest.approx(0.0, abs=1e-12)
    assert same["top5_overlap"] == 1.0
    shuffled = want.copy()
    shuffled[:, 1:] = shuffled[:, 1:][:, ::-1]  # the top class kept, the runners-up reversed
    moved = _in_probabilities(want, shuffled, meta)
    assert moved["top5_overlap"] == pytest.approx(0.2)  # only class 0 is in both top-5s
    assert moved["kl_divergence"] > 0.1
    few = ModelMeta(name="four", labels=("a", "b", "c", "d"), input_size=(16, 16),
                    output="logits")
    assert _in_probabilities(want[:, :4], want[:, :4], few)["top5_overlap"] is None
