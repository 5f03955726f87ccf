"""Hostile Core ML packages (issue 30, finding 4): a package is a folder, so it can hold links,
FIFOs and a Manifest that points outside it. `info` and `deploy` read only what
runtime/mlpackage.py vetted: one clear ModelFileError, no hang, nothing read from outside the
package, nothing copied from outside it, and the user's package left unchanged."""

import json
import os
import shutil
import threading
from contextlib import contextmanager

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


@pytest.mark.parametrize("make", ["link", "fifo", "root"])
def test_names_from_the_package_never_break_the_error_line(copy, tmp_path, make):
    # Found by the fuzzer (issue 30): entry names went raw into the refusal.
    evil = "evil\nname\x1b]8;;x\x07\u2028"
    if make == "link":
        os.symlink("/etc/passwd", copy / "Data" / evil)
    elif make == "fifo":
        os.mkfifo(copy / "Data" / evil)
    else:
        _point_root_at(copy, f"com.apple.CoreML/{evil}")
    for call in (lambda: inspect_model(copy), lambda: write_bundle([copy], tmp_path / "b")):
        with pytest.raises(ModelFileError) as info:
            _deadline(call)
        assert str(info.value).isprintable(), repr(str(info.value))


def test_folders_nested_past_path_max_are_one_line(copy, tmp_path):
    fd = os.open(copy / "Data", os.O_RDONLY)
    for _ in range(25):  # 25 folders of 200 characters: past PATH_MAX (4096)
        os.mkdir("d" * 200, dir_fd=fd)
        inner = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    for call in (lambda: inspect_model(copy), lambda: write_bundle([copy], tmp_path / "b")):
        with pytest.raises(ModelFileError) as info:
            _deadline(call)
        assert "\n" not in str(info.value)


@contextmanager
def _files_capped(size: int):
    """No file this process writes may grow past `size` (a write past it fails, EFBIG)."""
    import resource
    import signal

    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize("kind", ["fifo", "zero", "folder-link", "loop"])
def test_a_model_that_is_not_a_regular_file_is_not_bundled(tmp_path, package, kind):
    # Found by the fuzzer (issue 30): shutil.copy2 blocked on a FIFO and copied /dev/zero
    # until the disk was full.
    model = tmp_path / ("model.tflite" if kind != "folder-link" else "model.mlpackage")
    if kind == "fifo":
        os.mkfifo(model)
    elif kind == "zero":
        model.symlink_to("/dev/zero")
    elif kind == "loop":  # found by the fuzzer: resolve() raised RuntimeError
        model = tmp_path / "m.mlpackage"
        model.symlink_to(model)
    else:
        model.symlink_to(package)  # a package is read only as a folder of its own
    with _files_capped(64 << 20), pytest.raises(EdgepilotError) as info:  # a regression
        _deadline(lambda: write_bundle([model], tmp_path / "bundle"))  # must not fill the disk
    assert "\n" not in str(info.value)
    copied = tmp_path / "bundle" / model.name
    assert not copied.exists() or copied.lstat().st_size == 0


@pytest.mark.parametrize("suffix", [".mlpackage", ".onnx"])
def test_a_file_given_for_a_folder_model_or_a_link_to_a_model_file(tmp_path, suffix):
    # A .mlpackage that is a file is refused; a link to a regular model file is the user's
    # own way to name a model, and is copied as the file it points to.
    from edgepilot.assets import shipped_model

    real = tmp_path / "real.onnx"
    shutil.copy(shipped_model("stoplight"), real)
    model = tmp_path / f"model{suffix}"
    model.symlink_to(real)
    if suffix == ".mlpackage":
        with pytest.raises(ModelFileError, match="not a folder"):
            write_bundle([model], tmp_path / "bundle")
    else:
        bundle = write_bundle([model], tmp_path / "bundle")
        assert (bundle / model.name).read_bytes() == real.read_bytes()
        assert not (bundle / model.name).is_symlink()
