"""Core ML: converted here (any OS), validated from the spec read back; run only on macOS."""

import platform

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("coremltools")

import edgepilot  # noqa: E402
from edgepilot.errors import EdgepilotError, UnsupportedFormatError  # noqa: E402
from edgepilot.info import inspect_model  # noqa: E402
from edgepilot.runtime.coreml_info import (  # noqa: E402
    image_preprocessing,
    read_spec,
    weight_dtypes,
)


@pytest.fixture(scope="module")
def packages(tmp_path_factory, trained_tiny, tiny_meta, colour_data):
    out = tmp_path_factory.mktemp("coreml") / "tiny"
    reports = edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats="coreml",
                               precision=["fp32", "fp16", "int8"], out=out, meta=tiny_meta,
                               data=colour_data, quiet=True, compute_units="CPU_AND_NE")
    return {r.precision: r for r in reports}


def test_package_is_an_image_classifier_with_the_models_normalisation(packages, tiny_meta):
    spec = read_spec(packages["fp32"].path)
    image = spec.description.input[0].type.imageType
    assert (image.height, image.width) == (32, 32)
    # pixel * scale + bias == (pixel / 255 - mean) / std for every channel
    pre = image_preprocessing(spec)
    pixels = np.array([0.0, 17.0, 255.0])
    for c in range(3):
        want = (pixels / 255 - tiny_meta.mean[c]) / tiny_meta.std[c]
        np.testing.assert_allclose(pixels * pre["scale"] + pre["bias"][c], want, rtol=1e-6)
    assert spec.description.predictedFeatureName == "classLabel"
    labels = inspect_model(packages["fp32"].path).details["labels"].split(", ")
    assert labels == list(tiny_meta.labels)


def test_compute_units_and_precisions_are_stored(packages):
    for report in packages.values():
        info = inspect_model(report.path)
        assert info.format == "coreml"
        assert info.details["compute units"] == "CPU_AND_NE"
        assert info.size_bytes == report.size_bytes > 0
    assert weight_dtypes(packages["fp32"].path).keys() == {"float32"}
    assert "float16" in weight_dtypes(packages["fp16"].path)
    int8 = weight_dtypes(packages["int8"].path)
    assert int8.get("int8", 0) >= 1  # really stored as int8, not float with int8 values
    assert packages["int8"].size_bytes < packages["fp32"].size_bytes


def test_report_says_it_was_not_run_off_macos(packages):
    if platform.system() == "Darwin":
        pytest.skip("os: on macOS the export runs the file and measures parity")
    report = packages["fp32"]
    assert "macOS" in report.notes["unchecked"]
    assert report.top1_agreement is None


def test_bad_compute_units_list_the_valid_ones(trained_tiny, tiny_meta, tmp_path):
    with pytest.raises(UnsupportedFormatError, match="CPU_AND_NE"):
        edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats="coreml",
                         out=tmp_path / "m", meta=tiny_meta, quiet=True, compute_units="GPU")


@pytest.mark.skipif(platform.system() == "Darwin", reason="os: Core ML runs on macOS")
def test_load_off_macos_says_what_to_use_instead(packages):
    with pytest.raises(EdgepilotError) as info:
        edgepilot.load(packages["fp32"].path)
    message = str(info.value)
    assert "needs macOS" in message and "onnx" in message and "\n" not in message


@pytest.mark.skipif(platform.system() != "Darwin", reason="os: Core ML prediction needs macOS")
def test_predicts_on_macos(packages, fresh_colour_data, trained_tiny, tiny_meta, torch_top1):
    images, _ = fresh_colour_data
    model = edgepilot.load(packages["fp32"].path)
    assert "CPU_AND_NE" in model.backend
    predicted = np.array([model.predict(img).index for img in images[:100]])
    expected = torch_top1(trained_tiny[0], images[:100], tiny_meta)
    assert np.mean(predicted == expected) >= 0.99
