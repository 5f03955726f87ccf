"""`edgepilot deploy MODEL --device NAME --out DIR`: a self-contained bundle for one device.

A bundle holds the model (exported for the device when MODEL is a checkpoint), a pinned
``requirements.txt`` with only the runtime that device needs (never torch), ``run.py``
(predict images, ``--serve`` for the live demo, ``--bench`` for `bench --on`), a README with
the commands, and ``bundle.json`` describing it.

edgepilot itself travels as its runtime modules, copied into ``DIR/edgepilot/`` (no wheel to
build, no package metadata): ``run.py`` imports them from beside itself. Installing edgepilot
from a wheel would make pip install its declared dependencies too, onnxruntime among them,
which a LiteRT board does not need; requirements files cannot say ``--no-deps`` per line. The
copy is the exact code that exported and checked the model.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edgepilot.errors import EdgepilotError, InputError, ModelFileError
from edgepilot.runtime.mlpackage import check_package, copy_package

__all__ = ["deploy", "write_bundle", "requirements_for", "BUNDLE_FILE"]

BUNDLE_FILE = "bundle.json"
#: Pythons for which every runtime pin of constraints.txt has aarch64 and x86-64 wheels on
#: PyPI (tests/devices/test_bundles.py resolves them; numpy 2.4 has none for 3.10).
WHEEL_PYTHONS = ("3.11", "3.12", "3.13", "3.14")
# Subpackages the bundle needs: the runtime, the live demo and the drawing kit its synthetic
# camera draws with, the device profiles (the host description in `bench --on`), and
# `export` because `import edgepilot` names it (it imports torch only when called). Training
# code stays behind.
_PACKAGES = ("edgepilot", "edgepilot.runtime", "edgepilot.live", "edgepilot.draw",
             "edgepilot.devices", "edgepilot.export")


def requirements_for(formats: Sequence[str], profile=None) -> list[str]:
    """Pinned requirement lines for running `formats`: the format table's
    `Format.runtime_requirements`, each pinned to the version installed here (what edgepilot
    was tested with), or its lowest supported version where it is not installed here.
    (`profile` is accepted for callers that have one; the format alone decides.)"""
    from edgepilot.formats import format_by_name

    specs: dict[str, str] = {}
    for name in formats:
        fmt = format_by_name(name)
        if not fmt.runtime_requirements:
            raise EdgepilotError(f"The '{fmt.name}' format has no torch-free Python runtime to "
                                 "bundle: its files run in their own runtime on the device")
        for spec in fmt.runtime_requirements:
            specs.setdefault(re.split(r"[<>=!~;\s\[]", spec, maxsplit=1)[0], spec)
    lines = []
    for package, spec in specs.items():
        try:
            lines.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(spec)
    return lines


def _copy_runtime(target: Path) -> None:
    """The edgepilot modules `run.py` imports, copied as plain files (no build step)."""
    for name in _PACKAGES:
        source = Path(importlib.import_module(name).__path__[0])
        dest = target.joinpath(*name.split("."))
        dest.mkdir(parents=True, exist_ok=True)
        for file in source.glob("*.py"):
            shutil.copy2(file, dest / file.name)


def _copy_model_file(model: Path, target: Path) -> None:
    """Copy a model file (a link to one is followed: the user named it) as the regular file it
    is when opened: never a FIFO, a device or ``/dev/zero``, and never more bytes than it held
    when opened."""
    from edgepilot.runtime.model import open_model_file

    with open_model_file(model) as reader:
        info = os.fstat(reader.fileno())
        with open(target, "wb") as writer:
            left = info.st_size
            while left > 0 and (chunk := reader.read(min(left, 1 << 20))):
                writer.write(chunk)
                left -= len(chunk)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))  # as shutil.copy2 kept it


def _check_out(out: Path) -> None:
    """`out` may be new, empty, or an earlier bundle; anything else is the user's and kept."""
    if out.exists() and not out.is_dir():
        raise InputError(f"out= '{out}' is a file: give a folder for the bundle")
    if out.is_dir() and any(out.iterdir()) and not (out / BUNDLE_FILE).is_file():
        raise InputError(f"out= '{out}' holds files that are not an edgepilot bundle: give a "
                         "new or empty folder (nothing there is overwritten)")


def write_bundle(models: Sequence[Path], out: str | Path, *, profile=None,
                 threads: int | str | None = None, title: str = "",
                 _checked: bool = False) -> Path:
    """Write a bundle around model files already made (copied in), for `profile` or for any
    machine that runs their formats. Returns the bundle folder."""
    from edgepilot.formats import format_for_path

    out = Path(out)
    if not _checked:  # deploy() checked it before exporting into it
        _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    formats = list(dict.fromkeys(format_for_path(m).name for m in models))
    for model in models:  # names land in requirements.txt, the README and bundle.json
        if not Path(model).name.isprintable():
            raise InputError(f"The model file name {Path(model).name!r} holds control "
                             "characters (a new line?): rename the file")
    names = []
    for model in models:
        model = Path(model)
        try:  # a link loop makes resolve() raise RuntimeError, not OSError
            already_there = model.resolve() == (out / model.name).resolve()
        except (OSError, RuntimeError) as err:
            raise ModelFileError(f"'{model}' cannot be followed to a file ({err.__class__.__name__}"
                                 "): a symbolic link that leads to itself?") from err
        if not already_there:
            if format_for_path(model).folder:  # a Core ML .mlpackage: its vetted files only
                copy_package(check_package(model), out / model.name)
            else:
                _copy_model_file(model, out / model.name)
        names.append(model.name)
    _copy_runtime(out)
    requirements = requirements_for(formats, profile)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    (out / "requirements.txt").write_text(
        f"# Runtime of {', '.join(names)}"
        f"{f' on {profile.name}' if profile else ''}; pinned to what edgepilot was tested with"
        f" (Python {python}). No torch.\n" + "\n".join(requirements) + "\n")
    info = {"device": profile.name if profile else None, "models": names, "formats": formats,
            # "auto": measured on the board at first load (and cached there), not guessed here
            "threads": threads if threads is not None else "auto",
            "providers": list(profile.providers) if profile else [],
            "edgepilot": _version(), "requirements": requirements, "title": title,
            "python": python}
    (out / BUNDLE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    run = out / "run.py"  # edgepilot/bundle_run.py, a module linted and tested as any other
    shutil.copyfile(Path(__file__).with_name("bundle_run.py"), run)
    run.chmod(0o755)
    (out / "README.md").write_text(_readme(info, profile))
    return out


def deploy(model: str | Path, device: str, out: str | Path, *, val_size: int = 500,
           threads: int | str = "auto", log: Callable[[str], None] = print) -> Path:
    """Bundle `model` for `device` in `out`; a checkpoint (.pt) is exported for it first.
    `threads`: the bundle's model threads, "auto" (measured on the board at first load and
    cached there) or a count.

    Example:
        >>> deploy("runs/stoplight/stoplight.pt", "rpi5", "bundle/")
    """
    from edgepilot.assets import resolve_model
    from edgepilot.devices.profiles import profile_by_name
    from edgepilot.formats import format_for_path

    profile = profile_by_name(device)
    if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or
                              threads < 1):
        raise InputError(f"threads must be 1 or more or 'auto', got {threads!r}")
    out = Path(out)
    _check_out(out)
    path = resolve_model(str(model))
    if not path.exists():
        raise ModelFileError(f"Model file not found: '{model}'")
    if path.suffix.lower() in (".pt", ".pth"):
        path = _export_for(path, profile, out, val_size, log)
    else:
        fmt = format_for_path(path).name
        if fmt != profile.format:
            log(f"warning: '{path.name}' is {fmt}; {profile.name} is profiled for "
                f"{profile.format} {profile.precision} ({profile.why})")
        _check_model(path, log)
    bundle = write_bundle([path], out, profile=profile, threads=threads, title=profile.title,
                          _checked=True)
    return bundle


def _check_model(path: Path, log: Callable[[str], None]) -> None:
    """Read the model file as `edgepilot info` does, so that a file that is not a model (a
    text file named .tflite) is refused here rather than found out on the board."""
    from edgepilot.errors import MissingDependencyError
    from edgepilot.info import inspect_model

    try:
        inspect_model(path)
    except MissingDependencyError as err:  # no reader here: the board's runtime will tell
        log(f"warning: '{path.name}' was not read before bundling: {err}")
    except ModelFileError as err:
        raise ModelFileError(f"Not bundled: {err}") from err


def _export_for(checkpoint: Path, profile, out: Path, val_size: int, log) -> Path:
    from edgepilot.errors import require
    from edgepilot.export import export
    from edgepilot.train.checkpoint import load_checkpoint

    fmt = profile.resolve_format()  # a format not built yet fails here, before any work
    torch = require("torch", "export", f"Exporting '{checkpoint.name}' for {profile.name}")
    net, meta, _ = load_checkpoint(checkpoint)
    from edgepilot.train.datasets import validation_data

    val = validation_data(meta, val_size)
    out.mkdir(parents=True, exist_ok=True)
    log(f"exporting {checkpoint.name} for {profile.name}: {fmt.name} {profile.precision}")
    [report] = export(net, torch.zeros(meta.input_shape), formats=fmt.name,
                      precision=profile.precision, out=out / checkpoint.stem, meta=meta,
                      data=val, io_dtype=profile.io_dtype, quiet=True)
    return Path(report.path)


def _version() -> str:
    import edgepilot

    return edgepilot.__version__


def _readme(info: dict, profile) -> str:
    model = info["models"][0]
    where = f"on {profile.title}" if profile else \
        f"on any machine with Python {WHEEL_PYTHONS[0]}-{WHEEL_PYTHONS[-1]}"
    why = f"\n{profile.name}: {profile.format} {profile.precision} on {profile.accelerator}; " \
          f"{profile.why}.\n" if profile else ""
    gpu = [p for p in (profile.providers if profile else ()) if p != "CPUExecutionProvider"]
    if gpu:  # PyPI's onnxruntime is the CPU build: say so where the bundle promises more
        why += (f"\nrequirements.txt installs PyPI's onnxruntime, which runs on the CPU only. "
                f"For {', '.join(gpu)}, install the GPU build your board's vendor ships "
                f"({profile.limits}) in the venv; run.py asks for them first and says which "
                "provider really ran (`--json` prints it as the backend).\n")
    return f"""# {model} {where}

Made by edgepilot {info['edgepilot']}.{why}
```bash
python3 -m venv .venv && .venv/bin/pip install -r requirements.txt   # the runtime only
.venv/bin/python run.py photo.jpg                                      # classify images
.venv/bin/python run.py --source synthetic --frames 30                 # the live loop, headless
EDGEPILOT_TOKEN=$(openssl rand -hex 16) .venv/bin/python run.py --serve 0.0.0.0:8080 --source 0
```

`requirements.txt` pins what the machine that made this bundle ran (Python
{info['python']}); with edgepilot's tested pins every wheel exists for aarch64 (64-bit OS only:
none exist for 32-bit ARM) and x86-64 on Python {', '.join(WHEEL_PYTHONS)}.

`run.py --bench --json` times the model here (what `edgepilot bench --on` runs over ssh).
`--source` takes a camera index, a video file, an rtsp:// URL or `synthetic` (a drawn street,
no camera needed). `--serve` alone listens on 127.0.0.1:8080, this machine only. On 0.0.0.0 the
live page is reachable from the network: with a token (`--token` or `EDGEPILOT_TOKEN`) it
answers only requests that carry it (the address printed at start does); without one, anyone
who reaches the port sees the camera, so keep it on a trusted network.
The `edgepilot/` folder is edgepilot's runtime, imported from here; nothing else is needed.
"""
