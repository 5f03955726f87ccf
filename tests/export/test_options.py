"""One options type for every exporter (issue 34): a name no format takes is an error that
names the valid ones, raised before any work; a format's own option reaches its exporter."""

import pytest

import edgepilot
from edgepilot.errors import InputError
from edgepilot.export.options import ExportOptions, check_format_options
from edgepilot.formats import FORMATS


@pytest.mark.parametrize("typo, suggestion", [("compute_unit", "compute_units"),
                                              ("computeunits", "compute_units"),
                                              ("opset", None)])
def test_an_unknown_export_option_is_refused_with_the_valid_names(typo, suggestion):
    with pytest.raises(InputError) as info:
        edgepilot.export(None, None, formats="coreml", **{typo: "ALL"})  # refused first
    message = str(info.value)
    assert f"'{typo}'" in message and "compute_units (coreml)" in message
    assert (f"Did you mean '{suggestion}'" in message) == (suggestion is not None)
    assert "\n" not in message and "--" not in message


def test_every_format_option_is_a_field_of_the_one_options_type():
    fields = set(ExportOptions.__dataclass_fields__)
    for fmt in FORMATS:
        assert set(fmt.options) <= fields, fmt.name
    check_format_options({"compute_units": "CPU_ONLY"})  # known: no error


def test_every_exporter_takes_the_options_type():
    import importlib
    import inspect

    for fmt in FORMATS:
        exporter = importlib.import_module(f"edgepilot.export.{fmt.exporter}")
        parameters = list(inspect.signature(exporter.export).parameters)
        assert parameters == ["module", "sample_input", "path", "options"], fmt.name


def test_a_format_option_reaches_its_exporter(monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    import edgepilot.export.onnx as onnx_exporter

    seen = []

    def fake(module, sample_input, path, options):
        seen.append(options)
        raise InputError("stop here")

    monkeypatch.setattr(onnx_exporter, "export", fake)
    with pytest.raises(InputError, match="stop here"):
        edgepilot.export(torch.nn.Flatten(), torch.zeros(1, 3, 4, 4), formats="onnx",
                         out=tmp_path / "m", compute_units="CPU_ONLY", quiet=True)
    assert seen[0].compute_units == "CPU_ONLY" and seen[0].precision == "fp32"
