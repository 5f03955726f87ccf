"""Mutations of Core ML packages (.mlpackage, a folder) for benchmarks/fuzz_models.py: bytes,
Manifest and spec edits, links, special files, sparse sizes, many entries and odd names."""

import json
import os
import random
import shutil
import stat
from pathlib import Path

from fuzz_mutations import BYTE_KINDS, _meta_attacks, _mutate_bytes

MANIFEST = "Manifest.json"


def _deep(top: Path, depth: int, name: str) -> None:
    """`depth` nested folders called `name` under `top`, an empty file at the bottom: made
    relative to an open folder, so that the path may run past PATH_MAX."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(os.open("leaf.bin", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def _many(folder: Path, count: int, folders: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        if folders:
            (folder / str(i)).mkdir()
        else:
            open(folder / str(i), "wb").close()


def _remove(path: Path) -> None:
    if path.is_symlink() or path.exists() and not path.is_dir():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _node(where: Path | bytes, kind: str) -> str:
    """A FIFO, socket or device node at `where`: "", or why a FIFO stands in for it."""
    if kind == "fifo":
        os.mkfifo(where)
        return ""
    mode, device = {"socket": (stat.S_IFSOCK, 0),
                    "char device 1:5 (/dev/zero)": (stat.S_IFCHR, os.makedev(1, 5)),
                    "char device 1:3 (/dev/null)": (stat.S_IFCHR, os.makedev(1, 3)),
                    "char device 4095:0 (no driver)": (stat.S_IFCHR, os.makedev(4095, 0)),
                    "block device 4095:0 (no driver)": (stat.S_IFBLK, os.makedev(4095, 0)),
                    }[kind]
    try:
        os.mknod(where, mode | 0o600, device)
        return ""
    except PermissionError:
        os.mkfifo(where)
        return " (mknod not permitted here: a FIFO instead)"


class PackageMutator:
    """Deterministic mutants of one Core ML package (a folder): `write(i, folder)` makes
    folder/m.mlpackage, and folder/outside/ for its links to point at -> (kind, path)."""

    kinds = ["manifest_bytes", "spec_bytes", "weights_bytes", "manifest", "spec", "link",
             "special", "size", "entries", "names", "layout"]

    def __init__(self, seed: Path, meta: dict, seed_value: int):
        self.seed, self.seed_value = Path(seed), seed_value
        self.manifest = json.loads((self.seed / MANIFEST).read_text())
        self.root = self.manifest["rootModelIdentifier"]
        self.spec = "Data/" + self.manifest["itemInfoEntries"][self.root]["path"]
        self.weights = min(p.relative_to(self.seed).as_posix() for p in self.seed.rglob("*.bin"))
        self.attacks = _meta_attacks(meta)
        self.manifests = self._manifest_edits()
        self.specs = self._spec_edits()

    def write(self, i: int, folder: Path) -> tuple[str, Path]:
        rng = random.Random(self.seed_value * 1_000_003 + i)
        kind = self.kinds[i % len(self.kinds)]
        turn = i // len(self.kinds)
        path = folder / "m.mlpackage"
        outside = folder / "outside"
        outside.mkdir()
        (outside / "secret.txt").write_text("not part of the package\n")
        if kind != "layout":
            shutil.copytree(self.seed, path)
        what = getattr(self, f"_{kind}")(path, outside, turn, rng)
        (folder / "mutation.txt").write_text(f"{kind}: {what}\n", errors="backslashreplace")
        return (f"{kind} (no mknod)" if "mknod" in what else kind), path

    # Byte mutations of one file: the weights mostly in their first 4 KiB (blob headers).
    def _bytes(self, target: Path, rng: random.Random, head: int = 0) -> str:
        kind = rng.choice(BYTE_KINDS)
        data = target.read_bytes()
        hi = min(len(data), head) if head and rng.random() < 0.5 else len(data)
        target.write_bytes(_mutate_bytes(kind, data, rng, 0, hi))
        return f"{kind} of {target.name} from [0, {hi})"

    def _manifest_bytes(self, path: Path, outside: Path, turn: int, rng: random.Random) -> str:
        return self._bytes(path / MANIFEST, rng)

    def _spec_bytes(self, path: Path, outside: Path, turn: int, rng: random.Random) -> str:
        return self._bytes(path / self.spec, rng)

    def _weights_bytes(self, path: Path, outside: Path, turn: int, rng: random.Random) -> str:
        return self._bytes(path / self.weights, rng, head=4096)

    def _manifest(self, path: Path, outside: Path, turn: int, rng: random.Random) -> str:
        what, data = self.manifests[turn % len(self.manifests)]
        (path / MANIFEST).write_bytes(data)
        return what

    def _manifest_edits(self) -> list[tuple[str, bytes]]:
        base, root = self.manifest, self.root
        spec_entry = base["itemInfoEntries"][root]
        other = next(e for k, e in base["itemInfoEntries"].items() if k != root)
        text = json.dumps(base)
        spec_path = json.dumps(spec_entry["path"])

        def edited(change) -> bytes:
            m = json.loads(text)
            change(m)
            return json.dumps(m).encode()

        def entry(**fields) -> bytes:
            return edited(lambda m: m["itemInfoEntries"][root].update(fields))

        def top(**fields) -> bytes:
            return edited(lambda m: m.update(fields))

        def drop(key) -> bytes:
            return edited(lambda m: m.pop(key))

        def listed(entries, root_id) -> bytes:
            return top(itemInfoEntries=entries, rootModelIdentifier=root_id)

        def raw(old: str, new: str) -> bytes:
            assert old in text
            return text.replace(old, new, 1).encode()

        def deep(n: int):
            return json.loads("[" * n + "]" * n)

        def padded(size: int) -> bytes:
            return text.encode() + b" " * (size - len(text.encode()))

        paths = ["../Manifest.json", "../../../../../../etc/passwd", "/etc/passwd",
                 "com.apple.CoreML/../../Manifest.json", "com.apple.CoreML/./model.mlmodel",
                 "com.apple.CoreML//model.mlmodel", "com.apple.CoreML/model.mlmodel/",
                 "com.apple.CoreML", "com.apple.CoreML/weights/weight.bin", "", ".", "..",
                 "..\\..\\etc\\passwd", "C:\\Windows\\win.ini", "~/model.mlmodel",
                 "com.apple.CoreML/model.mlmodel\0", "com.apple.CoreML/model.mlmodel\udcff",
                 "x" * 900_000, 42, None, ["com.apple.CoreML/model.mlmodel"], {"a": 1}, True,
                 float("inf")]
        renamed = "x" * 400_000
        return [
            *[(f"root path {value!r:.60}", entry(path=value)) for value in paths],
            ("no rootModelIdentifier", drop("rootModelIdentifier")),
            ("rootModelIdentifier null", top(rootModelIdentifier=None)),
            ("rootModelIdentifier names no entry", top(rootModelIdentifier="no-such-id")),
            ("entries a list, rootModelIdentifier 0", listed([spec_entry, other], 0)),
            ("entries a list, rootModelIdentifier true", listed([other, spec_entry], True)),
            ("entries a list, rootModelIdentifier false", listed([spec_entry, other], False)),
            ("entries a list, rootModelIdentifier -1", listed([other, spec_entry], -1)),
            ("entries a list, rootModelIdentifier 1.0", listed([other, spec_entry], 1.0)),
            ("rootModelIdentifier a list", top(rootModelIdentifier=[root])),
            ("rootModelIdentifier an object", top(rootModelIdentifier={root: 1})),
            ("rootModelIdentifier nested 900 deep", top(rootModelIdentifier=deep(900))),
            ("rootModelIdentifier and its entry's name 400 KB",
             top(rootModelIdentifier=renamed, itemInfoEntries={renamed: spec_entry})),
            ("no itemInfoEntries", drop("itemInfoEntries")),
            ("itemInfoEntries a string", top(itemInfoEntries="entries")),
            ("the root entry a string", edited(
                lambda m: m["itemInfoEntries"].update({root: spec_entry["path"]}))),
            ("the root entry empty", edited(lambda m: m["itemInfoEntries"].update({root: {}}))),
            ("the root entry a list", edited(
                lambda m: m["itemInfoEntries"].update({root: [spec_entry]}))),
            ("the root entry's fields of other types", entry(author=1, name=None,
                                                             description=[])),
            ("the root entry's field nested 900 deep", entry(author=deep(900))),
            ("the root entry's field of 900 KB", entry(description="x" * 900_000)),
            ("the root entry's fields NaN and Infinity", entry(author=float("nan"),
                                                               name=float("inf"))),
            ("the root entry's field with NUL and new lines", entry(name="a\0b\nc\rd")),
            ("the root entry's extra field", entry(isRoot=True, path2="../../x")),
            ("5,000 entries", edited(lambda m: m["itemInfoEntries"].update(
                {f"e{i}": dict(other) for i in range(5_000)}))),
            ("20,000 entries", edited(lambda m: m["itemInfoEntries"].update(
                {f"e{i}": {"path": "x"} for i in range(20_000)}))),
            ("fileFormatVersion 99.0.0", top(fileFormatVersion="99.0.0")),
            ("fileFormatVersion a number", top(fileFormatVersion=1)),
            ("no fileFormatVersion", drop("fileFormatVersion")),
            ("the root path twice, the second outside",
             raw(f'"path": {spec_path}', f'"path": {spec_path}, "path": "../../secret"')),
            ("rootModelIdentifier twice, the second unknown",
             raw('"rootModelIdentifier": ', '"rootModelIdentifier": "x", '
                 '"rootModelIdentifier": ')),
            ("rootModelIdentifier 1e400", raw(f'"rootModelIdentifier": "{root}"',
                                               '"rootModelIdentifier": 1e400')),
            ("not an object: []", b"[]"), ("not an object: null", b"null"),
            ("not an object: 42", b"42"), ("not an object: a string", b'"text"'),
            ("cut short: {", b"{"), ("empty", b""), ("a space", b" "),
            ("arrays nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000),
            ("objects nested 50,000 deep", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
            ("a UTF-8 byte order mark", b"\xef\xbb\xbf" + text.encode()),
            ("UTF-16", text.encode("utf-16")),
            ("the root id in bytes that are not UTF-8",
             text.encode().replace(root.encode(), b"\xff\xfe" + root[2:].encode())),
            ("padded with spaces to 1 MiB (the limit)", padded(1 << 20)),
            ("padded with spaces to 1 MiB + 1 byte", padded((1 << 20) + 1)),
        ]

    def _spec(self, path: Path, outside: Path, turn: int, rng: random.Random) -> str:
        from coremltools.proto import Model_pb2

        what, edit = self.specs[turn % len(self.specs)]
        spec = Model_pb2.Model()
        spec.ParseFromString((path / self.spec).read_bytes())
        edit(spec)
        (path / self.spec).write_bytes(spec.SerializeToString(deterministic=True))
        return what

    def _spec_edits(self) -> list[tuple[str, object]]:
        def user(key: str, value: str):
            return lambda spec: spec.description.metadata.userDefined.__setitem__(key, value)

        def image(field_: str, value: int):
            return lambda spec: setattr(spec.description.input[0].type.imageType, field_, value)

        def operations(spec):
            main = spec.mlProgram.functions["main"]
            return main.block_specializations[main.opset].operations

        def nest(spec):  # blocks inside ops inside blocks, past protobuf's recursion limit
            block = operations(spec)[0].blocks.add()
            for _ in range(200):
                block = block.operations.add(type="identity").blocks.add()

        def many(spec, field_: str, count: int):
            for i in range(count):
                if field_ == "output":
                    spec.description.output.add(name=f"o{i}")
                else:
                    spec.description.metadata.userDefined[f"k{i}"] = "v"

        def no_mul_inputs(spec):
            next(op for op in operations(spec) if op.type == "mul").inputs.clear()

        def no_const_values(spec):
            for op in operations(spec):
                if op.type == "const":
                    op.attributes.clear()

        return [
            *[(f"metadata {attack[:60]!r}", user("edgepilot", attack))
              for attack in self.attacks],
            ("no edgepilot metadata",
             lambda spec: spec.description.metadata.userDefined.__delitem__("edgepilot")),
            ("compute units of a megabyte", user("edgepilot.compute_units", "x" * 1_000_000)),
            ("compute units with a new line", user("edgepilot.compute_units", "ALL\nCPU")),
            ("100,000 metadata entries", lambda spec: many(spec, "meta", 100_000)),
            ("a 50 MB metadata value", user("x", "y" * 50_000_000)),
            ("no inputs", lambda spec: spec.description.ClearField("input")),
            ("an input that is no image",
             lambda spec: spec.description.input[0].type.multiArrayType.shape.extend([3])),
            ("an image 2^62 wide", image("width", 1 << 62)),
            ("an image -1 high", image("height", -1)),
            ("colour space 999", image("colorSpace", 999)),
            ("no outputs", lambda spec: spec.description.ClearField("output")),
            ("10,000 outputs", lambda spec: many(spec, "output", 10_000)),
            ("probabilities named by a megabyte",
             lambda spec: setattr(spec.description, "predictedProbabilitiesName", "p" * 2**20)),
            ("specification version 2^31 - 1",
             lambda spec: setattr(spec, "specificationVersion", 2**31 - 1)),
            ("a neural network instead of the program",
             lambda spec: spec.neuralNetwork.SetInParent()),
            ("no functions", lambda spec: spec.mlProgram.functions.clear()),
            ("main's opset renamed",
             lambda spec: setattr(spec.mlProgram.functions["main"], "opset", "CoreML99")),
            ("no operations", lambda spec: operations(spec).__delitem__(slice(None))),
            ("a mul without inputs", no_mul_inputs),
            ("consts without values", no_const_values),
            ("blocks nested 200 deep", nest),
        ]

    def _link(self, path: Path, outside: Path, turn: int, rng: random.Random) -> str:
        secret = str(outside / "secret.txt")
        weights_dir = str(Path(self.weights).parent)

        def copied(rel: str) -> str:  # a copy of a part of the package, outside it
            source, target = path / rel, outside / Path(rel).name
            (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)
            return str(target)

        links = [
            ("Manifest.json a link to a Manifest outside", MANIFEST, lambda: copied(MANIFEST)),
            ("the spec a link to a file outside", self.spec, secret),
            ("the spec a relative link out", self.spec, "../../../outside/secret.txt"),
            ("the weights a link to /dev/zero", self.weights, "/dev/zero"),
            ("the spec a link to /dev/zero", self.spec, "/dev/zero"),
            ("Manifest.json a link to /dev/zero", MANIFEST, "/dev/zero"),
            ("a link to /etc/passwd", "Data/passwd", "/etc/passwd"),
            ("the spec a link to /etc/passwd", self.spec, "/etc/passwd"),
            ("the weights a dangling link", self.weights, "no-such-file"),
            ("a loop of two links", "Data/loop_a", "loop_b"),
            ("a link to itself", "Data/self", "self"),
            ("the weights folder a link to a folder outside", weights_dir,
             lambda: copied(weights_dir)),
            ("Data a link to a Data folder outside", "Data", lambda: copied("Data")),
            ("a link to /", "Data/root", "/"),
            ("the spec a link to a file inside the package", self.spec, "model.mlmodel.real"),
        ]
        what, rel, target = links[turn % len(links)]
        target = target() if callable(target) else target
        if target == "model.mlmodel.real":
            (path / self.spec).rename((path / self.spec).with_name(target))
        if target == "loop_b":
            os.symlink("loop_a", path / "Data/loop_b")
        _remove(path / rel)
        os.symlink(target, path / rel)
        return what

    def _special(self, path: Path, outside: Path, turn: int, rng: random.Random) -> str:
        nodes = [("fifo", MANIFEST), ("fifo", self.spec), ("fifo", "Data/pipe"),
                 ("char device 1:5 (/dev/zero)", self.weights),
                 ("char device 1:3 (/dev/null)", self.spec),
                 ("char device 4095:0 (no driver)", "Data/nodev"),
                 ("block device 4095:0 (no driver)", "Data/block"),
                 ("socket", MANIFEST), ("socket", "Data/socket"),
                 ("char device 1:5 (/dev/zero)", MANIFEST)]
        kind, rel = nodes[turn % len(nodes)]
        _remove(path / rel)
        return f"{rel} a {kind}{_node(path / rel, kind)}"

    def _size(self, path: Path, outside: Path, turn: int, rng: random.Random) -> str:
        sizes = [(self.weights, 9 << 30), (self.weights, 64 << 30), (self.weights, 1 << 40),
                 ("Data/huge.bin", 20 << 30), (self.spec, 300 << 20), (self.spec, 256 << 20),
                 (MANIFEST, (1 << 20) + 1), (self.weights, 512 << 20),
                 ("Data/a.bin Data/b.bin", 5 << 30)]
        rels, size = sizes[turn % len(sizes)]
        for rel in rels.split():
            (path / rel).touch()
            os.truncate(path / rel, size)  # sparse: no disk used
        return f"{rels} made sparse to {size:,} bytes"

    def _entries(self, path: Path, outside: Path, turn: int, rng: random.Random) -> str:
        data = path / "Data"
        variants = [  # the quicker ones first, for the small share in the tests
            ("10,001 files in one folder", lambda: _many(data / "many", 10_001)),
            ("folders past PATH_MAX (25 of 200 characters)", lambda: _deep(data, 25, "d" * 200)),
            ("a file name of 255 characters", lambda: (data / ("x" * 255)).touch()),
            ("folders 100 deep", lambda: _deep(data, 100, "d")),
            ("10,001 folders", lambda: _many(data / "many", 10_001, folders=True)),
            ("9,990 files in one folder (under the limit)", lambda: _many(data / "many", 9_990)),
            ("20,000 files in one folder", lambda: _many(data / "many", 20_000)),
        ]
        what, make = variants[turn % len(variants)]
        make()
        return what

    def _names(self, path: Path, outside: Path, turn: int, rng: random.Random) -> str:
        names = [
            ("a link named with a new line", "Data/evil\nname", "link"),
            ("a FIFO named with escape codes", "Data/bell\x07\x1b[31mred", "fifo"),
            ("a file named with a new line", "Data/new\nline.bin", "file"),
            ("a file named in bytes that are not UTF-8", b"Data/\xff\xfe.bin", "file"),
            ("a link named in bytes that are not UTF-8", b"Data/\xff\xfe", "link"),
            ("a FIFO named with a line separator", "Data/x\u2028y", "fifo"),
            ("a folder named with a new line, holding a FIFO", "Data/a\nb/pipe", "fifo"),
            ("a link named with a carriage return", "Data/cr\rname", "link"),
            ("the root path holding a new line", "", "path"),
            ("the spec renamed with a new line, the Manifest naming it", "", "rename"),
        ]
        what, rel, kind = names[turn % len(names)]
        if kind in ("path", "rename"):
            spec = self.spec.removeprefix("Data/").replace("model.", "model\n.")
            if kind == "rename":
                (path / self.spec).rename(path / "Data" / spec)
            manifest = json.loads((path / MANIFEST).read_text())
            manifest["itemInfoEntries"][self.root]["path"] = spec
            (path / MANIFEST).write_text(json.dumps(manifest))
            return what
        target = os.path.join(os.fsencode(path), os.fsencode(rel))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if kind == "link":
            os.symlink(b"/etc/passwd", target)
        elif kind == "fifo":
            os.mkfifo(target)
        else:
            with open(target, "wb") as f:
                f.write(b"x")
        return what

    def _layout(self, path: Path, outside: Path, turn: int, rng: random.Random) -> str:
        spec, weights_dir = path / self.spec, path / Path(self.weights).parent

        def package(change=None):
            shutil.copytree(self.seed, path)
            if change:
                change()

        def replace(target: Path, folder: bool):
            _remove(target)
            target.mkdir() if folder else target.write_bytes(b"x")

        def link(target: str, make=None):
            if make:
                make()
            os.symlink(target, path)

        elsewhere = outside / "elsewhere.mlpackage"
        variants = [
            ("no Manifest.json", lambda: package((path / MANIFEST).unlink)),
            ("Manifest.json a folder", lambda: package(lambda: replace(path / MANIFEST, True))),
            ("the spec a folder", lambda: package(lambda: replace(spec, True))),
            ("no Data folder", lambda: package(lambda: shutil.rmtree(path / "Data"))),
            ("Data a file", lambda: package(lambda: replace(path / "Data", False))),
            ("the weights folder a file", lambda: package(lambda: replace(weights_dir, False))),
            ("an empty folder", path.mkdir),
            ("the package a file", lambda: path.write_bytes((self.seed / MANIFEST).read_bytes())),
            ("the package a FIFO", lambda: os.mkfifo(path)),
            ("the package a link to a package outside",
             lambda: link(str(elsewhere), lambda: shutil.copytree(self.seed, elsewhere))),
            ("the package a dangling link", lambda: link(str(outside / "none.mlpackage"))),
            ("the package a link to /dev/zero", lambda: link("/dev/zero")),
            ("the package a link to /etc/passwd", lambda: link("/etc/passwd")),
            ("the package a link to itself", lambda: link(path.name)),
            ("the weights a hard link to a file outside", lambda: package(
                lambda: (path / self.weights).unlink() or os.link(outside / "secret.txt",
                                                                   path / self.weights))),
        ]
        what, make = variants[turn % len(variants)]
        make()
        return what

