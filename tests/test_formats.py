import pytest

from edgepilot.errors import UnsupportedFormatError
from edgepilot.formats import FORMATS, Format, format_by_name, format_for_path


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_every_format_resolves_by_name_and_suffix(fmt):
    assert format_by_name(fmt.name) is fmt
    assert format_for_path(f"dir/model{fmt.suffix}") is fmt
    assert format_for_path(f"dir/MODEL{fmt.suffix.upper()}") is fmt


def test_longest_suffix_wins(monkeypatch):
    import edgepilot.formats as formats

    short = Format("a", ".tflite", "x", "x", ("fp32",), "", "")
    long = Format("b", "_edgetpu.tflite", "y", "y", ("int8",), "", "")
    monkeypatch.setattr(formats, "FORMATS", (short, long))
    assert formats.format_for_path("m_edgetpu.tflite") is long
    assert formats.format_for_path("m.tflite") is short


def test_unknown_suffix_lists_valid_ones_and_suggests():
    with pytest.raises(UnsupportedFormatError) as info:
        format_for_path("model.onx")
    message = str(info.value)
    assert "Did you mean '.onnx'?" in message
    assert all(f.suffix in message for f in FORMATS)


def test_checkpoint_suffix_points_to_export():
    with pytest.raises(UnsupportedFormatError, match="edgepilot export"):
        format_for_path("model.pt")


def test_unknown_format_name():
    with pytest.raises(UnsupportedFormatError, match="Did you mean 'onnx'"):
        format_by_name("onxx")


def test_readme_format_table_matches_the_format_table():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for fmt in FORMATS:
        row = next((line for line in readme.splitlines() if line.startswith(f"| {fmt.name} |")),
                   None)
        assert row is not None, f"README has no row for {fmt.name}"
        assert f"`{fmt.suffix}`" in row and ", ".join(fmt.precisions) in row
