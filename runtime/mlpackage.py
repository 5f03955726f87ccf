"""A Core ML package (``.mlpackage``, a folder) checked before anything reads it.

A package is a folder, so a hostile one can hold what a single file cannot: symlinks to
secrets or to ``/dev/zero``, FIFOs that block a reader forever, and a ``Manifest.json`` that
points outside the folder. coremltools follows all of them, and rewrites ``Manifest.json``
when it opens a package. So edgepilot reads only what `check_package` has vetted:

    >>> package = check_package(Path("model.mlpackage"))
    >>> with spec_copy(package) as private:   # coremltools reads (and may rewrite) a copy
    ...     spec = coremltools.utils.load_spec(str(private))

`copy_package` copies a vetted package file by file (deploy bundles). Standard library only.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgepilot.errors import ModelFileError

__all__ = ["Package", "check_package", "spec_copy", "copy_package", "model_size",
           "MAX_PACKAGE_BYTES"]

MANIFEST = "Manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
MAX_SPEC_BYTES = 256 << 20  # the model description; weights live beside it
MAX_PACKAGE_BYTES = 8 << 30
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Package:
    """A vetted package: its regular files (relative path -> size) and the root model spec."""

    path: Path
    files: dict[str, int]
    spec: str  # relative path of the root model description, e.g. Data/com.apple.CoreML/...
    manifest: dict  # a Manifest naming the root model only (what `spec_copy` writes)

    @property
    def size_bytes(self) -> int:
        return sum(self.files.values())


def _refuse(path: Path, problem: str) -> ModelFileError:
    return ModelFileError(f"'{path}' is not a Core ML package edgepilot will read: {problem}")


def _walk(path: Path) -> dict[str, int]:
    """Every entry below `path` by lstat, never following a link: regular files only."""
    files: dict[str, int] = {}
    count = 0
    for root, dirs, names in os.walk(path, onerror=lambda err: _raise(path, err)):
        for name in dirs + names:
            count += 1
            if count > MAX_ENTRIES:
                raise _refuse(path, f"it holds more than {MAX_ENTRIES:,} entries")
            entry = Path(root, name)
            rel = entry.relative_to(path).as_posix()
            try:
                info = entry.lstat()
            except OSError as err:  # a name too long, a path past PATH_MAX, a race
                raise _refuse(path, f"{_name(rel)} cannot be read ({err.strerror})") from err
            if stat.S_ISLNK(info.st_mode):
                raise _refuse(path, f"{_name(rel)} is a symbolic link (a package holds files "
                                    "only)")
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                raise _refuse(path, f"{_name(rel)} is not a regular file (a FIFO, socket or "
                                    "device)")
            files[rel] = info.st_size
    if sum(files.values()) > MAX_PACKAGE_BYTES:
        raise _refuse(path, f"its files add up to more than {MAX_PACKAGE_BYTES >> 30} GiB")
    return files


def _name(rel: str) -> str:
    """An entry name from the package, quoted for an error line: a name may hold line breaks
    or terminal escape codes, which repr() spells out (and long names are cut)."""
    text = repr(rel)
    return text if len(text) <= 120 else text[:119] + "…"


def _raise(path: Path, err: OSError):
    raise _refuse(path, f"cannot read it ({err.strerror or err})") from err


def check_package(path: Path) -> Package:
    """Vet a package folder: only folders and regular files, none behind a link, sizes
    bounded, and a Manifest whose root model is a file inside the package.

    Raises:
        ModelFileError: naming the package and the first thing wrong with it.
    """
    path = Path(path)
    try:
        info = path.lstat()
    except OSError as err:
        raise ModelFileError(f"Model not found: '{path}' ({err.strerror})") from err
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise _refuse(path, "it is not a folder")
    files = _walk(path)
    size = files.get(MANIFEST)
    if size is None:
        raise _refuse(path, f"there is no {MANIFEST} inside")
    if size > MAX_MANIFEST_BYTES:
        raise _refuse(path, f"its {MANIFEST} is {size:,} bytes (at most "
                            f"{MAX_MANIFEST_BYTES:,})")
    try:
        manifest = json.loads((path / MANIFEST).read_bytes())
        entry = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
        where = entry["path"]
        if not isinstance(where, str):
            raise TypeError(where)
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise _refuse(path, f"its {MANIFEST} names no root model ({type(err).__name__})") \
            from err
    spec = posixpath.normpath(posixpath.join("Data", where))
    if where.startswith("/") or spec.split("/")[0] != "Data" or ".." in spec.split("/"):
        raise _refuse(path, f"its {MANIFEST} points outside the package ({where[:80]!r})")
    if spec not in files:
        raise _refuse(path, f"its root model {_name(spec)} is not a file in the package")
    if files[spec] > MAX_SPEC_BYTES:
        raise _refuse(path, f"its model description is {files[spec]:,} bytes (at most "
                            f"{MAX_SPEC_BYTES:,})")
    root = manifest["rootModelIdentifier"]
    own = {"fileFormatVersion": "1.0.0", "itemInfoEntries": {root: {**entry, "path": where}},
           "rootModelIdentifier": root}
    return Package(path, files, spec, own)


def model_size(path: Path) -> int:
    """Bytes of a model file, or of every file in a vetted package (a folder model)."""
    path = Path(path)
    return check_package(path).size_bytes if path.is_dir() else path.stat().st_size


@contextmanager
def spec_copy(package: Package) -> Iterator[Path]:
    """A private package holding the root model description and a Manifest that names only
    it: what coremltools needs to read the spec. It may rewrite the copy; the user's package
    is left as it was."""
    with tempfile.TemporaryDirectory(prefix="edgepilot-mlpackage-") as work:
        private = Path(work) / package.path.name
        _copy_file(package, package.spec, private)
        (private / MANIFEST).write_text(json.dumps(package.manifest))
        yield private


def copy_package(package: Package, destination: Path) -> None:
    """Copy a vetted package to `destination`, file by file (never a link's target)."""
    for rel in package.files:
        _copy_file(package, rel, Path(destination))


def _copy_file(package: Package, rel: str, destination: Path) -> None:
    """Copy one vetted file, refusing one that changed kind or grew since the check."""
    target = destination / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(package.path / rel, flags)
    except OSError as err:
        raise _refuse(package.path, f"{_name(rel)} cannot be opened ({err.strerror})") from err
    with os.fdopen(fd, "rb") as reader, open(target, "wb") as writer:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _refuse(package.path, f"{_name(rel)} is no longer a regular file")
        left = package.files[rel]
        while chunk := reader.read(min(left + 1, 1 << 20)):
            left -= len(chunk)
            if left < 0:
                raise _refuse(package.path, f"{_name(rel)} grew while it was being read")
            writer.write(chunk)
