"""The library names its parameters; the command line translates them into flags (issue 34).
A Python caller of `export(calib=...)` is told about ``calib=``, never about ``--calib``; the
same error printed by `edgepilot` says ``--calib``."""

from __future__ import annotations

import argparse
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
    ("headless=True needs frames=N or record=FILE (or both)",
     "--headless needs --frames N or --record FILE (or both)"),
    ("calibration images (calib=), a larger max_drop= or guard_budget=, or fp16",
     "calibration images (--calib), a larger --max-drop or --guard-budget, or fp16"),
    ("one label per output: labels= (a file) or meta=ModelMeta(labels=[...])",
     "one label per output: --labels (a file) or meta=ModelMeta(labels=[...])"),
    ("export one with formats=executorch", "export one with --format executorch"),
    ("batch_size=12 must divide by the 5 processes", "--batch-size 12 must divide by the 5 "
     "processes"),
    ("a file named x=1.onnx and hue=3", "a file named x=1.onnx and hue=3"),  # not ours
])
def test_the_cli_speaks_flags(names, message, spoken):
    assert in_flags(message, names) == spoken


def test_the_same_error_in_python_and_on_the_command_line(capsys):
    from edgepilot.errors import InputError
    from edgepilot.live.webcam import run_webcam

    with pytest.raises(InputError) as info:
        run_webcam("stoplight", headless=True)
    assert str(info.value) == "headless=True needs frames=N or record=FILE (or both)"
    assert main(["webcam", "--headless"]) == 1
    assert capsys.readouterr().err.strip() == \
        "error: --headless needs --frames N or --record FILE (or both)"


# One vocabulary (issue 35): a flag means one thing, in one table, in every command that has it.

def _commands(parser) -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _flags(command: argparse.ArgumentParser) -> set[str]:
    """The long flags a command shows in its help (old spellings are hidden)."""
    return {s for a in command._actions if a.help != argparse.SUPPRESS
            for s in a.option_strings if s.startswith("--") and s != "--help"}


def _readme_table() -> dict[str, set[str]]:
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- vocabulary:", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[3:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        flag = re.match(r"`(--[a-z-]+)", cells[0]).group(1)
        rows[flag] = {c.strip() for c in cells[2].split(",")}
    return rows


def test_the_readme_table_names_every_shared_flag_and_where_it_is():
    commands = _commands(build_parser())
    where: dict[str, set[str]] = {}
    for name, command in commands.items():
        for flag in _flags(command):
            where.setdefault(flag, set()).add(name)
    table = _readme_table()
    assert len(table) >= 10
    for flag, listed in table.items():
        assert flag in where, f"the README lists {flag}, which no command has"
        expected = {"every command"} if where[flag] == set(commands) and flag == "--debug" \
            else where[flag]
        assert listed == expected, f"{flag}: README says {sorted(listed)}, the parser has " \
                                   f"{sorted(where[flag])}"
    shared = {flag for flag, names in where.items() if len(names) > 1}
    assert not shared - set(table), f"flags of several commands missing from the README " \
                                    f"table: {sorted(shared - set(table))}"


def test_every_command_prints_json():
    missing = [name for name, command in _commands(build_parser()).items()
               if "--json" not in _flags(command)]
    assert not missing


def test_every_default_is_in_the_help():
    """A flag with a default says it (``default: …``) in its help."""
    silent = []
    for name, command in _commands(build_parser()).items():
        for action in command._actions:
            if action.help in (None, argparse.SUPPRESS) or not action.option_strings or \
                    action.default in (None, False, [], argparse.SUPPRESS) or \
                    action.dest == "token":  # from $EDGEPILOT_TOKEN: a secret, not printed
                continue
            if "default" not in action.help:
                silent.append(f"{name} {action.option_strings[0]}")
    assert not silent, silent


def test_the_helps_name_every_format_and_shipped_model(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "stoplight-detector" in capsys.readouterr().out
    for command in ("bench", "info", "predict"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for suffix in (".onnx", ".tflite", "_edgetpu.tflite", ".mlpackage", ".pte"):
            assert suffix in text, (command, suffix)


@pytest.mark.parametrize("old, new", [
    (["train", "stoplight", "--size", "64"], ["train", "stoplight", "--input-size", "64"]),
    (["train", "stoplight", "--n-train", "9"], ["train", "stoplight", "--train-size", "9"]),
    (["train", "stoplight", "--n-val", "9"], ["train", "stoplight", "--val-size", "9"]),
    (["export", "m.pt", "--val-data", "d/"], ["export", "m.pt", "--data", "d/"]),
    (["predict", "m.onnx", "a.jpg", "--draw", "o.jpg"],
     ["predict", "m.onnx", "a.jpg", "--out", "o.jpg"]),
    (["webcam", "--save", "o.mp4"], ["webcam", "--record", "o.mp4"]),
])
def test_old_spellings_still_work_with_one_note(capsys, old, new):
    parser = build_parser()
    assert vars(parser.parse_args(old)) == vars(parser.parse_args(new))
    [note] = capsys.readouterr().err.strip().splitlines()
    assert note == f"note: {old[-2]} is now {new[-2]}; the old spelling will be removed in the " \
                   "next release"


def test_old_spellings_are_refused_with_a_bad_value():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "stoplight", "--n-val", "zero"])


def test_accelerator_is_the_runtime_device_and_device_its_old_name():
    import edgepilot
    from edgepilot.assets import shipped_model
    from edgepilot.errors import InputError

    onnx = shipped_model("stoplight", ".onnx")
    with pytest.raises(InputError, match=r"accelerator='usb:0' picks a Coral Edge TPU.*"
                                         r"'stoplight.onnx' \(onnx\) runs on the CPU"):
        edgepilot.load(onnx, accelerator="usb:0")
    with pytest.warns(DeprecationWarning, match=r"device=\.\.\.\) is now accelerator="):
        with pytest.raises(InputError, match="picks a Coral Edge TPU"):
            edgepilot.load(onnx, device="usb:0")


def test_renamed_python_parameters_warn_and_still_apply():
    from edgepilot.errors import InputError
    from edgepilot.renamed import renamed
    from edgepilot.train.recipes import train_stoplight

    with pytest.warns(DeprecationWarning, match=r"f\(n_val=\.\.\.\) is now val_size="):
        assert renamed({"n_val": 3}, {"n_val": "val_size"}, "f", val_size=9) == {"val_size": 3}
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_vall'"):
        renamed({"n_vall": 3}, {"n_val": "val_size"}, "f", val_size=9)
    # train_stoplight reads its old names first, then refuses the bad setting before any work
    with pytest.warns(DeprecationWarning, match="n_train=.* is now train_size="):
        with pytest.raises(InputError, match="interpolate= needs init="):
            train_stoplight("unused", n_train=8, interpolate=0.5)


def test_one_thread_count_where_one_model_runs(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["predict", "stoplight", "x.jpg", "--threads", "1", "2"])
    assert stop.value.code == 1
    assert "unrecognized arguments: 2" in capsys.readouterr().err
    assert build_parser().parse_args(["bench", "m.onnx", "--threads", "1", "auto"]).threads \
        == [1, "auto"]


def test_deploy_writes_the_threads_it_was_given(tmp_path, capsys):
    import json

    from edgepilot.assets import shipped_model

    assert main(["deploy", str(shipped_model("stoplight", ".onnx")), "--device", "jetson",
                 "--out", str(tmp_path / "b"), "--threads", "3", "--json"]) == 0
    out = capsys.readouterr()
    shown = json.loads(out.out)
    assert shown["threads"] == 3 and shown["bundle"] == str(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["threads"] == 3
    assert "next: copy " in out.err and "run.py" in out.err
