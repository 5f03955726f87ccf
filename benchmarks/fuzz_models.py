"""Fuzz the runtime with mutated model files: every file through `load` and `predict` in a
child process under a memory cap and a timeout, counting crashes, hangs, exceptions that are
not edgepilot's, and peak memory.

    python benchmarks/fuzz_models.py                   # 1,000 files per format (~2 min on 2 cores)
    python benchmarks/fuzz_models.py --per-format 100 --json fuzz.json

The seeds are small real models: the shipped stoplight .onnx, and the shipped checkpoint
exported here to .tflite (fp32 and int8; needs the export extra). Mutations: byte flips,
truncation and splices anywhere; metadata rewrites (huge or non-integer input sizes, JSON that
is not an object or nests deeply, bad UTF-8, 4-channel mean, 1e300, labels that do not fit);
corrupt TFLite metadata flatbuffers; zip bombs and corrupt zips in a .tflite; ONNX external
data that points outside the model's folder. tests/runtime/test_fuzz.py runs a small share in
CI with the same code.

Workers are long-lived children (loading onnxruntime and LiteRT once, not per file), each
capped with RLIMIT_AS; a worker that dies or stops answering is recorded as a crash or a hang
for the file it held, and replaced.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import selectors
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

#: Address-space cap of each worker. onnxruntime and LiteRT loaded take ~0.75 GiB of it.
MEMORY_CAP = 2 << 30
#: Seconds one file may take in load + predict before it counts as a hang (a busy machine).
TIMEOUT_S = 60.0

# The worker: reads file paths on stdin, answers one JSON line per file.
WORKER = r"""
import json, os, resource, sys, traceback
# Answers go to a private copy of stdout; what native code prints lands in the log (fd 2).
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
cap = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
import numpy as np
import edgepilot
from edgepilot.errors import EdgepilotError
image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)

def peak_rss_kib():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent process.
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))

def chain(err):
    seen = []
    while err is not None and len(seen) < 10:
        seen.append(type(err).__name__)
        err = err.__cause__ or err.__context__
    return seen

print(json.dumps({"ready": True}), file=answers, flush=True)
for line in sys.stdin:
    path = line.rstrip("\n")
    result = {"path": path}
    try:  # reset the peak (VmHWM) so that it is this file's own
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    try:
        model = edgepilot.load(path)
        meta = model.meta
        if meta is not None and meta.is_image:
            model.predict(image)
        elif meta is not None:
            model.predict_inputs(np.zeros(meta.input_size[0] * meta.input_size[1]))
        else:
            model(*[np.zeros([d or 1 for d in t.shape], t.dtype) for t in model.inputs])
        result["outcome"] = "ok"
    except EdgepilotError as err:
        result.update(outcome="edgepilot", error=type(err).__name__, message=str(err)[:300],
                      memory="MemoryError" in chain(err))
    except BaseException as err:
        result.update(outcome="other", error=type(err).__name__, message=str(err)[:300],
                      where=traceback.format_exc().splitlines()[-3:])
    result["peak_rss_kib"] = peak_rss_kib()
    print(json.dumps(result), file=answers, flush=True)
"""


@dataclass
class Result:
    path: str
    format: str
    kind: str
    outcome: str  # ok | edgepilot | other | crash | hang
    error: str = ""
    message: str = ""
    memory: bool = False  # an edgepilot error caused by hitting the memory cap
    peak_rss_kib: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------- mutations

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


def write_mutants(fmt: str, seed: bytes, meta: dict, n: int, out: Path,
                  seed_value: int = 0) -> list[tuple[str, Path]]:
    """n mutants of `seed` under out/, each in its own folder: (kind, path)."""
    mutator = Mutator(fmt, seed, meta, seed_value)
    made = []
    for i in range(n):
        kind, data, files = mutator.make(i)
        folder = out / f"{fmt}{seed_value}_{i:05d}" / "model"
        folder.mkdir(parents=True)
        path = folder / f"m.{fmt}"
        path.write_bytes(data)
        for name, content in files.items():
            target = folder / name
            if isinstance(content, str):  # "@target": a symlink
                target.symlink_to(content[1:])
            else:
                target.write_bytes(content)
        made.append((kind, path))
    return made


# --------------------------------------------------------------------------- running


class _Worker:
    def __init__(self, stderr_dir: Path):
        self.log = tempfile.NamedTemporaryFile(dir=stderr_dir, suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(MEMORY_CAP)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1)
        ready = self._line(120)
        if not ready or "ready" not in ready:
            raise RuntimeError(f"fuzz worker did not start: see {self.log.name}")
        self.job: tuple[str, str, Path, float] | None = None

    def _line(self, timeout: float) -> str | None:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
        sel.close()
        return self.proc.stdout.readline() if ready else None

    def send(self, fmt: str, kind: str, path: Path) -> None:
        self.job = (fmt, kind, path, time.monotonic())
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run_files(files: list[tuple[str, str, Path]], *, workers: int = 2,
              timeout: float = TIMEOUT_S, log_dir: Path | None = None) -> list[Result]:
    """Run (format, kind, path) files through load + predict in capped worker processes."""
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="fuzz-logs-"))
    todo = list(reversed(files))
    pool = [_Worker(log_dir) for _ in range(min(workers, len(files)))]
    results: list[Result] = []
    sel = selectors.DefaultSelector()
    for w in pool:
        sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        if todo:
            w.send(*todo.pop())
    while any(w.job for w in pool):
        events = sel.select(timeout=1.0)
        now = time.monotonic()
        for key, _ in events:
            w = key.data
            line = w.proc.stdout.readline()
            fmt, kind, path, start = w.job
            if line:
                data = json.loads(line)
                results.append(Result(str(path), fmt, kind, data["outcome"],
                                      data.get("error", ""), data.get("message", ""),
                                      data.get("memory", False), data["peak_rss_kib"],
                                      now - start))
                w.job = None
            else:  # the worker died on this file: a crash (signal) or an abrupt exit
                code = w.proc.wait()
                results.append(Result(str(path), fmt, kind, "crash", f"exit {code}",
                                      _tail(w.log.name), seconds=now - start))
                w.job = None
                sel.unregister(w.proc.stdout)
                pool[pool.index(w)] = w = _Worker(log_dir)
                sel.register(w.proc.stdout, selectors.EVENT_READ, w)
            if todo:
                w.send(*todo.pop())
        for i, w in enumerate(pool):
            if w.job and now - w.job[3] > timeout:
                fmt, kind, path, start = w.job
                results.append(Result(str(path), fmt, kind, "hang", seconds=now - start))
                sel.unregister(w.proc.stdout)
                w.kill()
                pool[i] = w = _Worker(log_dir)
                sel.register(w.proc.stdout, selectors.EVENT_READ, w)
                if todo:
                    w.send(*todo.pop())
    for w in pool:
        w.proc.stdin.close()
        w.proc.wait(timeout=30)
    return results


def _tail(log: str) -> str:
    return Path(log).read_text(errors="replace")[-300:]


def summarise(results: list[Result]) -> dict:
    """Counts per format and outcome, the worst peak RSS, and every finding (non-ok,
    non-edgepilot outcome, or an edgepilot error caused by the memory cap)."""
    by_format = {}
    for fmt in sorted({r.format for r in results}):
        rs = [r for r in results if r.format == fmt]
        by_format[fmt] = {
            "files": len(rs), **Counter(r.outcome for r in rs),
            "kinds": dict(Counter(r.kind for r in rs)),
            "peak_rss_mib": round(max(r.peak_rss_kib for r in rs) / 1024, 1),
            "slowest_s": round(max(r.seconds for r in rs), 2),
            # A few distinct refusals per mutation kind, to see that each is refused for
            # its own reason (file paths cut off).
            "examples": {kind: sorted({r.message.replace(r.path, "FILE")[:140] for r in rs
                                       if r.kind == kind and r.outcome == "edgepilot"})[:8]
                         for kind in sorted({r.kind for r in rs})},
        }
    findings = [asdict(r) for r in results
                if r.outcome not in ("ok", "edgepilot") or r.memory]
    for fmt, rs in ((f, [r for r in results if r.format == f]) for f in by_format):
        heavy = sorted(rs, key=lambda r: r.peak_rss_kib, reverse=True)[:5]
        by_format[fmt]["heaviest"] = [
            {"kind": r.kind, "peak_rss_mib": round(r.peak_rss_kib / 1024, 1),
             "seconds": round(r.seconds, 2), "outcome": r.outcome, "path": r.path,
             "message": r.message.replace(r.path, "FILE")[:120]} for r in heavy]
    return {"memory_cap_mib": MEMORY_CAP >> 20, "timeout_s": TIMEOUT_S,
            "formats": by_format, "findings": findings}


# --------------------------------------------------------------------------- seeds


def seed_models(out: Path) -> dict[str, list[Path]]:
    """The seed files: the shipped .onnx, and the shipped checkpoint as .tflite fp32/int8."""
    from edgepilot.assets import shipped_model

    seeds = {"onnx": [shipped_model("stoplight")]}
    try:
        import torch

        import edgepilot
        from edgepilot.train import stoplight
        from edgepilot.train.checkpoint import load_checkpoint
    except ImportError as err:
        print(f"no .tflite seeds ({err}): install the export extra", file=sys.stderr)
        return seeds
    net, meta, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    val = stoplight.generate(200, seed=7)
    reports = edgepilot.export(net, torch.zeros(1, 3, *meta.input_size), formats="tflite",
                               precision=["fp32", "int8"], out=out / "stoplight", meta=meta,
                               val_data=val, quiet=True)
    seeds["tflite"] = [Path(r.path) for r in reports if r.path]
    return seeds


def fuzz(seeds: dict[str, list[Path]], per_format: int, work: Path, *, workers: int = 2,
         timeout: float = TIMEOUT_S, seed: int = 0) -> dict:
    """Mutate each format's seeds into `per_format` files, run them, summarise."""
    from edgepilot.runtime.model import load

    files = []
    for fmt, paths in seeds.items():
        for s, path in enumerate(paths):
            meta = json.loads(load(path).meta.to_json())
            share = per_format // len(paths) + (s < per_format % len(paths))
            for kind, mutant in write_mutants(fmt, path.read_bytes(), meta, share, work,
                                              seed_value=seed * 100 + s):
                files.append((fmt, kind, mutant))
    return summarise(run_files(files, workers=workers, timeout=timeout, log_dir=work))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-format", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S)
    parser.add_argument("--seed", type=int, default=0, help="another seed, other mutants")
    parser.add_argument("--json", help="write the summary here")
    parser.add_argument("--keep", help="write seeds and mutants to this new folder and keep "
                        "them (to replay a finding)")
    args = parser.parse_args()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        work = Path(args.keep or tmp)
        seeds = seed_models(work / "seeds")
        summary = fuzz(seeds, args.per_format, work / "mutants", workers=args.workers,
                       timeout=args.timeout, seed=args.seed)
    summary["wall_s"] = round(time.monotonic() - start, 1)
    text = json.dumps(summary, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    print(json.dumps({k: v for k, v in summary.items() if k != "findings"}, indent=2))
    print(f"{len(summary['findings'])} findings")
    for finding in summary["findings"][:30]:
        print(f"  {finding['format']} {finding['kind']} {finding['outcome']} "
              f"{finding['error']}: {finding['message'][:160]}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
