"""Byte-level mutations any model file can take, the metadata an attacker could write, and the
.onnx/.tflite mutator of benchmarks/fuzz_models.py (which see)."""

import io
import json
import random
import zipfile
from pathlib import Path


# Metadata entries an attacker or a careless tool could write (as JSON text).
def _meta_attacks(base: dict) -> list[str]:
    def with_(**changes) -> str:
        return json.dumps({**base, **changes})

    deep_extra = json.loads("[" * 600 + "]" * 600)
    return [
        with_(input_size=[20000, 20000]), with_(input_size=[1e300, 64]),
        with_(input_size=[64, -1]), with_(input_size=[0, 0]), with_(input_size=[64.5, 64]),
        with_(input_size=[128, 128]), with_(input_size="64"), with_(input_size=[64, 64, 64]),
        with_(layout="NHWC" if base["layout"] == "NCHW" else "NCHW"), with_(layout=[1]),
        with_(color="GRAY"), with_(mean=[0.5] * 4, std=[0.5] * 4), with_(mean=[1e300] * 3),
        with_(mean=[0.1] * 1000, std=[1.0] * 1000), with_(std=[0, 0, 0]),
        with_(std=[1e-300] * 3), with_(labels=["a", "b"]), with_(labels=[]),
        with_(labels=[str(i) for i in range(200_000)]), with_(labels=["x" * 100_000] * 4),
        with_(labels=[[1], {}, None, 3]), with_(labels="abcd"), with_(name=["n"]),
        with_(extra=deep_extra), with_(extra=[1, 2]), with_(output="softmax"),
        with_(preprocess="none", layout="NC"), with_(output="sigmoid"),
        json.dumps(base).replace("0.5", "NaN", 1), json.dumps(base).replace("0.5", "1e999", 1),
        "[1, 2, 3]", "42", "null", '"text"', "true", "{", "", "{}", " { } ",
        "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000,
        '{"name": "m"}', json.dumps({**base, "labels": None}),
    ]


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 32)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _splice(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data))
    if rng.random() < 0.5:
        return data[:at] + data[at + rng.randint(1, 4096):]
    return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 256))) + data[at:]


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))]


def _bad_utf8(data: bytes, rng: random.Random, words: list[bytes]) -> bytes:
    word = rng.choice([w for w in words if w in data] or [data[:8]])
    return data.replace(word, b"\xff" + word[1:-1] + b"\xfe" if len(word) > 1 else b"\xff")


_ZIP_CACHE: dict[str, bytes] = {}


def _zip(kind: str) -> bytes:
    """A standalone zip to append after a .tflite's flatbuffer (cached: bombs take time)."""
    if kind not in _ZIP_CACHE:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
            if kind == "bomb_labels":  # 64 MiB of one label line, ~64 KB deflated
                z.writestr("labels.txt", b"a" * (64 << 20))
            elif kind == "bomb_unreferenced":  # 512 MiB nobody needs
                z.writestr("labels.txt", b"red\nyellow\ngreen\nnone\n")
                z.writestr("weights.bin", b"\0" * (512 << 20))
            elif kind == "many_members":
                for i in range(5000):
                    z.writestr(f"f{i}.txt", b"")
                z.writestr("labels.txt", b"a\nb\nc\nd\n")
            elif kind == "bad_utf8_labels":
                z.writestr("labels.txt", b"red\n\xff\xfe\n\xc3\x28\nnone\n")
            elif kind == "many_labels":
                z.writestr("labels.txt", b"x\n" * 1_000_000)
            else:  # "lying": the directory says 10 bytes, the member inflates to 64 MiB
                z.writestr("labels.txt", b"b" * (64 << 20))
        data = out.getvalue()
        if kind == "lying":
            at = data.rindex(b"PK\x01\x02")  # central directory entry: sizes at +20, +24
            data = data[:at + 24] + (10).to_bytes(4, "little") + data[at + 28:]
        _ZIP_CACHE[kind] = data
    return _ZIP_CACHE[kind]


class Mutator:
    """Deterministic mutants of one seed file: `make(i)` -> (kind, bytes, extra files)."""

    def __init__(self, fmt: str, seed: bytes, meta: dict, seed_value: int):
        self.fmt, self.seed, self.meta = fmt, seed, meta
        self.attacks = _meta_attacks(meta)
        self.seed_value = seed_value
        self.words = [w.encode() for w in ("input", "output", "edgepilot", "stoplight", "red",
                                           "labels", "serving_default", "TFLITE_METADATA",
                                           "image", "scores")]
        if fmt == "onnx":
            self.kinds = ["flip", "truncate", "splice", "meta", "meta+flip", "utf8", "external"]
        else:
            self.kinds = ["flip", "truncate", "splice", "meta", "meta+flip", "utf8", "zip",
                          "standard", "standard_flip"]

    def make(self, i: int) -> tuple[str, bytes, dict[str, bytes | str]]:
        rng = random.Random(self.seed_value * 1_000_003 + i)
        kind = self.kinds[i % len(self.kinds)]
        turn = i // len(self.kinds)
        files: dict[str, bytes | str] = {}
        if kind == "flip":
            data = _flip(self.seed, rng)
        elif kind == "truncate":
            data = _truncate(self.seed, rng)
        elif kind == "splice":
            data = _splice(self.seed, rng)
        elif kind in ("meta", "meta+flip"):
            data = self._with_meta(self.attacks[turn % len(self.attacks)])
            if kind == "meta+flip":
                data = _flip(data, rng)
        elif kind == "utf8":
            data = _bad_utf8(self.seed, rng, self.words)
        elif kind == "external":
            data, files = self._external(turn)
        elif kind == "zip":
            kinds = ["bomb_labels", "bomb_unreferenced", "many_members", "bad_utf8_labels",
                     "many_labels", "lying", "corrupt"]
            choice = kinds[turn % len(kinds)]
            from edgepilot.runtime.tflite_metadata import _strip_zip

            body = _strip_zip(self.seed)
            if choice == "corrupt":
                tail = bytearray(self.seed[len(body):])
                for _ in range(rng.randint(1, 8)):
                    tail[rng.randrange(len(tail))] = rng.randrange(256)
                data = body + bytes(tail)
            else:
                data = body + _zip(choice)
        else:  # "standard" / "standard_flip": the standard metadata rewritten or corrupted
            data = self._standard(turn, rng, flip=kind == "standard_flip")
        return kind, data, files

    # ONNX metadata via the onnx package; TFLite via edgepilot's own writer.
    def _with_meta(self, entry: str) -> bytes:
        if self.fmt == "onnx":
            import onnx

            model = onnx.load_from_string(self.seed)
            for prop in model.metadata_props:
                if prop.key == "edgepilot":
                    prop.value = entry
            return model.SerializeToString()
        from edgepilot.runtime.tflite_metadata import (
            STANDARD_NAME,
            _named_buffers,
            read_metadata,
            write_metadata,
        )

        standard = _named_buffers(self.seed, (STANDARD_NAME,)).get(STANDARD_NAME)
        files = read_metadata(self.seed).files
        return write_metadata(self.seed, standard=standard, edgepilot_json=entry, files=files)

    def _standard(self, turn: int, rng: random.Random, flip: bool) -> bytes:
        from edgepilot.runtime.tflite_metadata import (
            STANDARD_NAME,
            _named_buffers,
            build_metadata,
            write_metadata,
        )

        if flip:  # flip bytes inside the standard metadata flatbuffer only
            standard = _named_buffers(self.seed, (STANDARD_NAME,))[STANDARD_NAME]
            at = self.seed.index(standard)
            return self.seed[:at] + _flip(standard, rng) + self.seed[at + len(standard):]
        variants = [dict(width=20000, height=20000), dict(width=0, height=0),
                    dict(mean=[0.0] * 4, std=[1.0] * 4), dict(mean=[0.0] * 4000),
                    dict(std=[1e-30]), dict(mean=[float("nan")]), dict(mean=[1e30], std=[1e-6]),
                    dict(labels=b"\xff\xfe\n"), dict(labels=b""), dict(labels=b"a\n" * 300_000)]
        v = variants[turn % len(variants)]
        args = dict(name="x", description="", version="1", width=64, height=64, mean=[0.0],
                    std=[1.0], num_classes=4)
        args.update({k: v[k] for k in v if k != "labels"})
        labels = v.get("labels", b"a\nb\nc\nd\n")
        # "{}": no edgepilot entry, so the loader builds its metadata from the standard one.
        return write_metadata(self.seed, standard=build_metadata(**args), edgepilot_json="{}",
                              files={"labels.txt": labels})

    def _external(self, turn: int) -> tuple[bytes, dict[str, bytes | str]]:
        import onnx

        model = onnx.load_from_string(self.seed)
        target = ["../secret.bin", "/etc/passwd", "link.bin", "sub/../../secret.bin",
                  "C:\\secret.bin", "", "data.bin", "dir_link/data.bin", "data.bin\0x"][turn % 9]
        big = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        raw = big.raw_data
        big.ClearField("raw_data")
        big.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", target), ("offset", "0"), ("length", str(len(raw)))):
            entry = big.external_data.add()
            entry.key, entry.value = key, value
        # data.bin holds the real weights inside the folder; the rest point outside it.
        files = {"data.bin": raw, "../secret.bin": raw, "link.bin": "@../secret.bin",
                 "dir_link": "@.."}
        return model.SerializeToString(), files


    def write(self, i: int, folder: Path) -> tuple[str, Path]:
        """Mutant `i` as folder/m.<format>, with the files beside it it names."""
        kind, data, files = self.make(i)
        path = folder / f"m.{self.fmt}"
        path.write_bytes(data)
        for name, content in files.items():
            target = folder / name
            if isinstance(content, str):  # "@target": a symlink
                target.symlink_to(content[1:])
            else:
                target.write_bytes(content)
        return kind, path


# Byte-level mutations of a region data[lo:hi] of any file.
BYTE_KINDS = ("bitflip", "overwrite", "truncate", "insert", "duplicate")


def _mutate_bytes(kind: str, data: bytes, rng: random.Random, lo: int = 0,
                  hi: int | None = None) -> bytes:
    """Bit flips, overwritten runs, a truncation, inserted bytes or a duplicated chunk, all
    starting inside data[lo:hi]."""
    hi = len(data) if hi is None else hi
    at = rng.randrange(lo, hi)
    if kind == "bitflip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == "overwrite":
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            start = rng.randrange(lo, hi)
            run = (rng.choice([b"\0", b"\xff", b"\x7f", b"\x80"]) * rng.randint(1, 8)
                   if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 16)))
            out[start:start + len(run)] = run
        return bytes(out)
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        blob = rng.choice([bytes(rng.randint(1, 8)), b"\xff" * rng.randint(1, 8),
                           rng.randbytes(rng.randint(1, 256))])
        return data[:at] + blob + data[at:]
    chunk = data[at:at + rng.randint(1, min(4096, hi - at))]  # "duplicate"
    where = at + len(chunk) if rng.random() < 0.5 else rng.randrange(lo, hi)
    return data[:where] + chunk * rng.randint(1, 4) + data[where:]


def _interesting(old: int, size: int, rng: random.Random, length: int) -> int:
    """A value that tends to break a reader, for a field of `size` bytes that held `old` in a
    file of `length` bytes: 0, 1, powers of two and their neighbours, all ones, the file's
    length and its neighbours, the old value nudged or doubled, anything."""
    bits = 8 * size
    top = 1 << bits
    choices = [0, 1, 2, 4, 8, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF,
               0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1, 1 << 63, top - 1, top - 2,
               length, length - 1, length + 1, length // 2, old + 1, old - 1, old + 4,
               old - 4, old + 128, old * 2, old ^ (1 << rng.randrange(bits)),
               rng.randrange(top)]
    return rng.choice(choices) % top


def _get(data: bytes | bytearray, at: int, size: int) -> int:
    return int.from_bytes(data[at:at + size], "little")


def _put(data: bytearray, at: int, size: int, value: int) -> None:
    data[at:at + size] = value.to_bytes(size, "little")


