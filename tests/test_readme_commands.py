"""The README's commands, run as written (issue 35), top to bottom, in one folder that
`edgepilot samples` filled, as the README says to.

Every command in a ```bash block runs, except those listed in `NOT_RUN` with the reason: hours
of training, a camera, a board over ssh, a page served until Ctrl-C, files only the reader
has, package installs. Each edgepilot command among those is still parsed by the real parser,
so a renamed or missing flag fails here too. The trainings not run leave what they would have
written: the shipped checkpoints stand in (`runs/stoplight/stoplight.pt`,
`runs/stoplight_detector/stoplight_detector.pt`), and the commands after them run on those.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgepilot.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]

# (pattern on the command, why it is not run here). Everything else runs.
NOT_RUN: list[tuple[str, str]] = [
    (r"^make (demo|test)$", "what CI runs (.ci/run: make test; tests/test_demo.py: the demo)"),
    (r"^(python -m )?pip ", "installs packages into the environment"),
    (r"^edgepilot train stoplight(-detector)?\b", "13-112 min of training; the shipped "
     "checkpoint stands in for its output"),
    (r"^torchrun ", "a detector training on two processes (tests/detection/test_training.py "
     "runs one for a few steps)"),
    (r"^python benchmarks/(robustness|detector|detector_robustness)\.py$",
     "benchmark scripts of 10+ min; their --help is run"),
    (r"^edgepilot webcam .*--serve ", "serves its page until Ctrl-C (tests/test_webcam.py "
     "serves and reads it)"),
    (r"^edgepilot webcam .*--source (0|rtsp://)", "needs a camera"),
    (r"^edgepilot bench .*--on ", "needs boards over ssh (tests/arm runs it on emulated boards)"),
    (r"(run\.py|^python3 -m venv )", "on the board, in a bundle: tests/devices/test_bundles.py "
     "runs a bundle's run.py in a venv made from its requirements.txt"),
    (r"^edgepilot export timm:", "needs timm and its weights file (pip install timm)"),
]
# The files "Any PyTorch model" exports are the reader's own: small ones stand in, made by
# `_your_models` the first time a command names one.
YOUR_FILES = ("net.ts.pt", "net.pt2", "weights.pth", "whole_model.pt", "labels.txt")
_PACKAGE = """import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def build_net():
    return Net()
"""
STAND_INS = {"runs/stoplight/stoplight.pt": "stoplight",
             "runs/stoplight_detector/stoplight_detector.pt": "stoplight-detector"}


def readme_blocks() -> list[list[str]]:
    """The ```bash blocks of the README: their commands, continuation lines joined and
    comments dropped."""
    blocks, current, inside = [], [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            if inside:
                blocks.append(_commands("\n".join(current)))
            inside, current = line == "```bash", []
        elif inside:
            current.append(line)
    return blocks


def _commands(text: str) -> list[str]:
    text = text.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words:  # quoted as a shell would need, the && between commands left as it is
            commands.append(" ".join(w if w == "&&" else shlex.quote(w) for w in words))
    return commands


def why_not_run(command: str) -> str | None:
    for pattern, reason in NOT_RUN:
        if re.search(pattern, command):
            return reason
    return None


BLOCKS = readme_blocks()
# Blocks whose commands take minutes (trainings of the digit networks, exports with the int8
# guard, a benchmark of every format): still in `make test`, marked slow.
SLOW = {i for i, block in enumerate(BLOCKS)
        if any(re.match(r"edgepilot (train|export|bench --export|webcam)", c) and
               not why_not_run(c) for c in block)}


def test_the_readme_has_the_commands_this_file_knows():
    commands = [c for block in BLOCKS for c in block]
    assert len(commands) > 40 and "edgepilot samples" in " ".join(commands)
    # every pattern still matches a README command: a rule for a command that is gone goes too
    unused = [p for p, _ in NOT_RUN if not any(re.search(p, c) for c in commands)]
    assert not unused, unused
    ran = [c for c in commands if not why_not_run(c)]
    assert len(ran) >= 20, ran


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Where the README's commands run (its `mkdir try && cd try` moves there), and which
    blocks ran: a block runs the blocks before it first, so each test also runs alone."""
    base = tmp_path_factory.mktemp("readme")
    yield {"cwd": base, "done": set()}
    shutil.rmtree(base, ignore_errors=True)


def _stand_ins(cwd: Path) -> None:
    from edgepilot.assets import shipped_model

    for target, name in STAND_INS.items():
        path = cwd / target
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shipped_model(name, ".pt"), path)


def _your_models(cwd: Path) -> None:
    """A TorchScript file, a torch.export program, a state_dict with its factory (package
    mypkg, importable from the folder the command runs in) and a whole pickled module."""
    if (cwd / "labels.txt").exists():
        return
    import torch

    (cwd / "mypkg").mkdir()
    (cwd / "mypkg" / "__init__.py").write_text("")
    (cwd / "mypkg" / "models.py").write_text(_PACKAGE)
    sys.path.insert(0, str(cwd))
    try:
        from mypkg.models import build_net

        net = build_net().eval()
        x = torch.zeros(1, 3, 224, 224)
        torch.jit.save(torch.jit.trace(net, x), cwd / "net.ts.pt")
        torch.export.save(torch.export.export(net, (x,)), cwd / "net.pt2")
        torch.save(net.state_dict(), cwd / "weights.pth")
        torch.save(net, cwd / "whole_model.pt")
    finally:
        sys.path.remove(str(cwd))
        sys.modules.pop("mypkg.models", None)
        sys.modules.pop("mypkg", None)
    (cwd / "labels.txt").write_text("cat\ndog\nbird\n")


def _run(command: str, state: dict) -> None:
    whole = why_not_run(command)  # a line not run is not run in any of its parts
    for part in command.split(" && "):
        words = shlex.split(part)
        cwd: Path = state["cwd"]
        if words[0] in ("mkdir", "cd"):
            assert len(words) == 2, f"one folder, not {words[1:]} ({command})"
            if words[0] == "mkdir":
                (cwd / words[1]).mkdir()
            else:
                state["cwd"] = cwd / words[1]
            continue
        reason = whole or why_not_run(part)
        if reason:
            if words[0] == "edgepilot":
                build_parser().parse_args(words[1:])  # the flags exist, spelled as now
            elif words[0] == "torchrun":
                build_parser().parse_args(words[words.index("edgepilot.cli") + 1:])
            elif words[0] == "python" and words[1].startswith("benchmarks/"):
                _check([sys.executable, str(ROOT / words[1]), "--help"], cwd, part)
            if re.match(r"^edgepilot train stoplight", part):
                _stand_ins(cwd)
            continue
        if any(name in words for name in YOUR_FILES):
            _your_models(cwd)
        if words[0] == "edgepilot":
            argv = [sys.executable, "-m", "edgepilot.cli", *words[1:]]
        elif words[0] == "python":
            argv = [sys.executable, *words[1:]]
        else:
            raise AssertionError(f"the README runs '{words[0]}': teach this test how ({part})")
        _check(argv, cwd, part)


def _check(argv: list[str], cwd: Path, command: str) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    notes = [line for line in result.stderr.splitlines() if "the old spelling" in line]
    assert not notes, f"{command}: the README uses an old spelling: {notes}"


def _block_params():
    for i, block in enumerate(BLOCKS):
        marks = [pytest.mark.slow] if i in SLOW else []
        yield pytest.param(i, marks=marks, id=f"block{i + 1}:{block[0][:40] if block else ''}")


@pytest.mark.parametrize("index", _block_params())
def test_readme_block_runs_as_written(folder, index):
    for earlier in range(index + 1):
        if earlier not in folder["done"]:
            folder["done"].add(earlier)
            for command in BLOCKS[earlier]:
                _run(command, folder)
