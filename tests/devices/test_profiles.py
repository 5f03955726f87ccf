"""The profile registry and what `export --device` makes of it."""

import dataclasses
from pathlib import Path

import pytest

from edgepilot.cli import main
from edgepilot.devices import PROFILES, UnknownDeviceError, profile_by_name
from edgepilot.devices import profiles as registry
from edgepilot.devices.plan import export_plan
from edgepilot.errors import UnsupportedFormatError
from edgepilot.formats import FORMATS

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "edgepilot" / "assets" / "stoplight.pt"


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_profile_is_complete_and_torch_free(profile):
    assert profile.layout in ("NHWC", "NCHW") and profile.why and profile.accelerator
    assert profile.requirements and not any("torch" in r for r in profile.requirements)
    if profile.available:
        assert profile.precision in profile.resolve_format().precisions
    if profile.format in ("tflite", "edgetpu"):
        assert profile.layout == "NHWC"  # TFLite files take channels-last pixels


def test_a_format_not_built_yet_is_named_in_one_line():
    future = dataclasses.replace(profile_by_name("coral-usb"), format="hailo")
    assert not future.available
    with pytest.raises(UnsupportedFormatError) as err:
        future.resolve_format()
    message = str(err.value)
    assert "coral-usb" in message and "'hailo'" in message and "\n" not in message
    assert all(f.name in message for f in FORMATS)


def test_unknown_device_suggests_the_close_one():
    with pytest.raises(UnknownDeviceError, match="Did you mean 'rpi5'"):
        profile_by_name("rpi-5")
    assert profile_by_name(" RPI5 ").name == "rpi5"


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        registry.register_profile(profile_by_name("x86"))


def test_device_picks_format_precision_and_boundary_type():
    plan = export_plan("android", None, None, None)
    assert (plan.formats, plan.precisions, plan.io_dtype) == (["tflite"], ["int8"], "uint8")
    assert plan.warnings == []
    plan = export_plan("x86", None, None, None)
    assert (plan.formats, plan.precisions, plan.io_dtype) == (["onnx"], ["int8"], None)
    assert export_plan(None, None, None, None).formats == ["onnx"]  # no device: as before


def test_explicit_flags_win_with_a_warning_where_they_contradict():
    plan = export_plan("rpi5", ["onnx"], ["fp32"], None)
    assert (plan.formats, plan.precisions, plan.io_dtype) == (["onnx"], ["fp32"], None)
    assert len(plan.warnings) == 2
    assert "'tflite'" in plan.warnings[0] and "'int8'" in plan.warnings[1]
    plan = export_plan("android", None, ["fp16"], "int8")  # fp16 is the GPU delegate's
    assert plan.precisions == ["fp16"] and plan.io_dtype == "int8"
    assert any("--io-dtype int8" in w for w in plan.warnings)
    assert export_plan("rpi5", ["tflite"], ["int8"], None).warnings == []  # no contradiction


def test_export_device_whose_format_is_missing_fails_before_loading(monkeypatch, capsys,
                                                                   tmp_path):
    future = dataclasses.replace(profile_by_name("coral-usb"), format="hailo")
    monkeypatch.setitem(registry._REGISTRY, "coral-usb", future)
    assert main(["export", str(tmp_path / "missing.pt"), "--device", "coral-usb"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'hailo'" in err and "coral-usb" in err


@pytest.mark.slow
def test_export_device_with_explicit_flags_warns_and_writes_what_was_asked(capsys, tmp_path):
    pytest.importorskip("torch")
    code = main(["export", str(CHECKPOINT), "--device", "rpi5", "--format", "onnx",
                 "--precision", "fp32", "--val-size", "0", "--out", f"{tmp_path}/"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "warning: --format onnx instead of 'tflite'" in out.err
    assert [p.name for p in tmp_path.glob("*.onnx")] == ["stoplight.onnx"]
