"""The library names its parameters; the command line translates them into flags (issue 34).
A Python caller of `export(calib=...)` is told about ``calib=``, never about ``--calib``; the
same error printed by `edgepilot` says ``--calib``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from edgepilot.cli import build_parser, flag_names, in_flags, main

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("edgepilot", "runtime", "export", "train", "devices")
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def _raises_outside_the_cli():
    for folder in LIBRARY:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "edgepilot" / "cli.py" or path.name == "bundle_run.py":
                continue  # the command lines themselves (bundle_run.py is a bundle's run.py)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    text = "".join(c.value for c in ast.walk(node.exc)
                                   if isinstance(c, ast.Constant) and isinstance(c.value, str))
                    yield f"{path.relative_to(ROOT)}:{node.lineno}", text


def test_no_library_error_names_a_command_line_flag():
    raises = list(_raises_outside_the_cli())
    assert len(raises) > 300  # the scan sees the library's errors
    bad = [f"{where}: {text[:100]}" for where, text in raises if FLAG.search(text)]
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def names():
    return flag_names(build_parser())


@pytest.mark.parametrize("message, spoken", [
    ("Full int8 needs calibration images: pass calib=PATH or a model",
     "Full int8 needs calibration images: pass --calib PATH or a model"),
    ("roi= takes x,y,w,h in pixels", "--roi takes x,y,w,h in pixels"),
    ("headless=True needs frames=N or save=FILE (or both)",
     "--headless needs --frames N or --save FILE (or both)"),
    ("calibration images (calib=), a larger max_drop= or guard_budget=, or fp16",
     "calibration images (--calib), a larger --max-drop or --guard-budget, or fp16"),
    ("one label per output: labels= (a file) or meta=ModelMeta(labels=[...])",
     "one label per output: --labels (a file) or meta=ModelMeta(labels=[...])"),
    ("export one with formats=executorch", "export one with --format executorch"),
    ("batch_size=12 must divide by the 5 processes", "--batch-size 12 must divide by the 5 "
     "processes"),
    ("a file named x=1.onnx and width=3", "a file named x=1.onnx and width=3"),  # not ours
])
def test_the_cli_speaks_flags(names, message, spoken):
    assert in_flags(message, names) == spoken


def test_the_same_error_in_python_and_on_the_command_line(capsys):
    from edgepilot.errors import InputError
    from edgepilot.live.webcam import run_webcam

    with pytest.raises(InputError) as info:
        run_webcam("stoplight", headless=True)
    assert str(info.value) == "headless=True needs frames=N or save=FILE (or both)"
    assert main(["webcam", "--headless"]) == 1
    assert capsys.readouterr().err.strip() == \
        "error: --headless needs --frames N or --save FILE (or both)"
