"""Hostile Core ML packages (issue 30, finding 4): a package is a folder, so it can hold links,
FIFOs and a Manifest that points outside it. `info` and `deploy` read only what
runtime/mlpackage.py vetted: one clear ModelFileError, no hang, nothing read from outside the
package, nothing copied from outside it, and the user's package left unchanged."""

import json
import os
import shutil
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("coremltools")

import edgepilot  # noqa: E402
from edgepilot.deploy import write_bundle  # noqa: E402
from edgepilot.errors import EdgepilotError, ModelFileError  # noqa: E402
from edgepilot.info import inspect_model  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory, trained_tiny, tiny_meta):
    out = tmp_path_factory.mktemp("coreml") / "tiny"
    [report] = edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats="coreml",
                                precision="fp32", out=out, meta=tiny_meta, quiet=True)
    return report.path


@pytest.fixture
def copy(package, tmp_path):
    """A fresh copy of the good package to make hostile."""
    target = tmp_path / "model.mlpackage"
    shutil.copytree(package, target)
    return target


def _deadline(call, seconds: float = 60):
    """Run `call` in a thread; fail (not hang) if it has not returned in `seconds`."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as err:  # handed to the test below
            outcome["error"] = err

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s (a hang)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _root_entry(package) -> dict:
    manifest = json.loads((package / "Manifest.json").read_text())
    return manifest, manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]


def _point_root_at(package, where: str) -> None:
    manifest, entry = _root_entry(package)
    entry["path"] = where
    (package / "Manifest.json").write_text(json.dumps(manifest))


def _spec_file(package):
    return package / "Data" / _root_entry(package)[1]["path"]


def test_info_leaves_the_package_exactly_as_it_was(copy):
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in copy.rglob("*") if p.is_file()}
    assert inspect_model(copy).format == "coreml"
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in copy.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize("where, needle", [("../../../../../../../../dev/zero", "outside"),
                                           ("/etc/passwd", "outside"),
                                           ("com.apple.CoreML/missing", "not a file")])
def test_a_manifest_pointing_elsewhere_is_refused(copy, where, needle):
    _point_root_at(copy, where)
    with pytest.raises(ModelFileError, match=needle) as info:
        _deadline(lambda: inspect_model(copy))
    assert "\n" not in str(info.value) and str(copy) in str(info.value)


def test_a_fifo_in_the_package_is_refused_not_waited_on(copy):
    spec = _spec_file(copy)
    spec.unlink()
    os.mkfifo(spec)
    with pytest.raises(ModelFileError, match="not a regular file"):
        _deadline(lambda: inspect_model(copy))


@pytest.mark.parametrize("target", ["secret", "/dev/zero"])
def test_links_out_of_the_package_are_never_followed(copy, tmp_path, target):
    secret = tmp_path / "secret"
    secret.write_text("AWS_SECRET=hunter2\n")
    link = copy / "Data" / "com.apple.CoreML" / "extra.bin"
    link.symlink_to(secret if target == "secret" else target)
    with pytest.raises(ModelFileError, match="symbolic link"):
        _deadline(lambda: inspect_model(copy))
    bundle = tmp_path / "bundle"
    with pytest.raises(ModelFileError, match="symbolic link"):
        _deadline(lambda: write_bundle([copy], bundle))
    copied = [p for p in bundle.rglob("*") if p.is_file()] if bundle.exists() else []
    assert not any(b"hunter2" in p.read_bytes() for p in copied)


def test_a_good_package_is_bundled_file_by_file(copy, tmp_path):
    bundle = write_bundle([copy], tmp_path / "bundle")
    inside = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file())
    there = bundle / copy.name
    assert sorted(p.relative_to(there).as_posix() for p in there.rglob("*")
                  if p.is_file()) == inside
    assert all((there / rel).read_bytes() == (copy / rel).read_bytes() for rel in inside)


def test_a_model_name_cannot_add_lines_to_the_requirements(tmp_path):
    from edgepilot.assets import shipped_model

    hostile = tmp_path / "m\npwnpkg==6.6.6\n--trusted-host evil.invalid\n#.onnx"
    shutil.copy(shipped_model("stoplight"), hostile)
    with pytest.raises(EdgepilotError, match="control characters") as info:
        write_bundle([hostile], tmp_path / "bundle")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "bundle" / "requirements.txt").exists()
