"""Names and labels from a model file reach the terminal as text (issue 30, finding 7): no
escape sequence (window title, clear screen, OSC-8 link) gets through `info`, `predict`,
`bench` or `export`'s report, and rich markup in a name is shown, not parsed."""

import json
import subprocess
import sys

import numpy as np
import pytest

from edgepilot.assets import shipped_model
from edgepilot.terminal import printable

HOSTILE = ["[/]x", "\x1b]0;owned\x07", "\x1b[2J\x1b[H", "\x1b]8;;http://evil.invalid\x1b\\go"]


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory):
    """The shipped stoplight .onnx with hostile labels and name, in a hostile file name."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(shipped_model("stoplight")))
    for prop in model.metadata_props:
        if prop.key == "edgepilot":
            meta = json.loads(prop.value)
            meta.update(labels=HOSTILE, name="[bold]\x1b]0;title\x07")
            prop.value = json.dumps(meta)
    folder = tmp_path_factory.mktemp("hostile")
    path = folder / "m\x1b[31m[bold].onnx"
    path.write_bytes(model.SerializeToString())
    image = folder / "scene.png"
    import cv2

    cv2.imwrite(str(image), np.full((64, 64, 3), 90, np.uint8))
    return path, image


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-m", "edgepilot.cli", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["info", "predict", "bench", "info --json"])
def test_no_escape_sequence_or_markup_error_reaches_the_terminal(hostile_model, command):
    path, image = hostile_model
    extra = {"predict": [str(image)], "bench": ["--runs", "5", "--threads", "1"]}
    out = _run(*command.split(), str(path), *extra.get(command, []))
    assert out.returncode == 0, out.stderr
    for stream in (out.stdout, out.stderr):
        assert "\x1b" not in stream and "\x07" not in stream
        assert "MarkupError" not in stream
    if command == "info":  # shown, escaped, so the user sees what the file holds
        assert "[bold]\\x1b]0;title\\x07" in out.stdout and "[bold].onnx" in out.stdout


def test_a_hostile_name_in_an_error_is_one_plain_line(tmp_path):
    out = _run("info", str(tmp_path / "gone\x1b]0;x\x07.onnx"))
    assert out.returncode == 1
    assert "\x1b" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_printable_keeps_text_and_shows_controls():
    assert printable("green → ± [/]") == "green → ± [/]"
    assert printable("a\nb\x1b\u202e") == "a\\nb\\x1b\\u202e"
