"""Each room imports only what sits below it (issue 34). The walk reads every import in every
module, the lazy ones inside functions included, and follows edgepilot's own modules to the
end: a module that is fine today but reaches train/ through a helper fails here."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Where each subpackage lives (pyproject's package-dir).
FOLDERS = {"edgepilot.train": ROOT / "train", "edgepilot.export": ROOT / "export",
           "edgepilot.runtime": ROOT / "runtime", "edgepilot.devices": ROOT / "devices",
           "edgepilot": ROOT / "edgepilot"}


def _file(module: str) -> Path | None:
    """The source file of an edgepilot module, or None when it is not one of ours."""
    for package, folder in FOLDERS.items():
        if module == package or module.startswith(package + "."):
            rest = module[len(package):].lstrip(".").split(".") if module != package else []
            base = folder.joinpath(*rest)
            for candidate in ((base.with_suffix(".py"),) if rest else ()) + (base / "__init__.py",):
                if candidate.is_file():
                    return candidate
            return None
    return None


def _modules() -> list[str]:
    found = []
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "edgepilot" and parts[0] == "assets":
                continue
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found.append(".".join((package, *parts)))
    return sorted(set(found))


@cache
def imports(module: str) -> frozenset[str]:
    """Every edgepilot module `module` imports, at the top or inside a function."""
    path = _file(module)
    if path is None:
        return frozenset()
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package up
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}  # submodules by name
    return frozenset(n for n in names if n.startswith("edgepilot") and _file(n) is not None)


def reaches(module: str) -> dict[str, list[str]]:
    """Every edgepilot module `module` reaches through imports -> one path to it."""
    paths = {module: [module]}
    todo = [module]
    while todo:
        current = todo.pop()
        for name in imports(current):
            if name not in paths:
                paths[name] = paths[current] + [name]
                todo.append(name)
    return paths


MODULES = _modules()


def _forbidden(start: str, prefixes: tuple[str, ...]) -> list[str]:
    return [" -> ".join(path) for name, path in reaches(start).items()
            if name.startswith(prefixes)]


def test_the_walk_sees_lazy_imports_and_the_rooms_it_guards():
    # The walk itself: a lazy import inside a function is found, and the rooms exist.
    assert "edgepilot.train.checkpoint" in imports("edgepilot.info")  # inside _read_checkpoint
    assert {"edgepilot.live.webcam", "edgepilot.draw.scenes", "edgepilot.runtime.model"} \
        <= set(MODULES)
    assert any(m.startswith("edgepilot.runtime.") for m in reaches("edgepilot.live.loop"))


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("edgepilot.runtime")])
def test_the_runtime_runs_model_files_only(module):
    bad = _forbidden(module, ("edgepilot.train", "edgepilot.live", "edgepilot.cli",
                              "edgepilot.export", "edgepilot.info", "edgepilot.bench",
                              "edgepilot.deploy", "edgepilot.demo", "edgepilot.datafolders"))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("edgepilot.draw")])
def test_the_drawing_kit_stands_alone(module):
    bad = _forbidden(module, ("edgepilot.train", "edgepilot.live", "edgepilot.cli",
                              "edgepilot.export", "edgepilot.runtime"))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("edgepilot.devices")])
def test_device_profiles_need_no_training_and_no_demo(module):
    bad = _forbidden(module, ("edgepilot.train", "edgepilot.live", "edgepilot.cli"))
    assert not bad, "\n".join(bad)


def test_nothing_below_the_cli_imports_it():
    bad = [m for m in MODULES if m != "edgepilot.cli" and "edgepilot.cli" in imports(m)]
    assert not bad, bad
