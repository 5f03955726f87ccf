"""Fuzz edgepilot with mutated model files: every file through the entry points its format
has, in a child process under a memory cap and a timeout, counting crashes, hangs, exceptions
that are not edgepilot's (or edgepilot messages of more than one line), and peak memory.

    python benchmarks/fuzz_models.py                   # 1,000 files per format
    python benchmarks/fuzz_models.py --formats pte mlpackage --per-format 1000 --json fuzz.json
    python benchmarks/fuzz_models.py --formats onnx --per-format 100

The seeds are small real models: the shipped stoplight .onnx, and the shipped checkpoint
exported here to .tflite (fp32 and int8), .pte (ExecuTorch, XNNPACK) and .mlpackage (Core ML,
a folder; made byte-identical from run to run). Exports need the export extra.

Entry points (the worker's SURFACES): .onnx and .tflite `load` + `predict`; .pte
`inspect_model`, then `load` (which runs the program in a vetting child first) + `predict`;
.mlpackage `inspect_model`, `deploy.write_bundle` and `load`, which off macOS must refuse in
one line. Outcomes: ok, edgepilot (a one-line EdgepilotError), other (any other exception, or
an edgepilot message that is not one line), crash (the worker died), hang (no answer within
the timeout), memory (the case's peak RSS over the format's bound in RSS_BOUND_MIB).

Mutations:
- .onnx, .tflite: byte flips, truncation and splices anywhere; metadata rewrites (huge or
  non-integer input sizes, JSON that is not an object or nests deeply, bad UTF-8, 4-channel
  mean, 1e300, labels that do not fit); corrupt TFLite metadata flatbuffers; zip bombs and
  corrupt zips in a .tflite; ONNX external data that points outside the model's folder.
- .pte: bit flips, byte overwrites, truncation, insertion and chunk duplication, half inside
  the program flatbuffer and a quarter inside XNNPACK's delegate blob; the extended header's
  sizes and offsets; the flatbuffer's offsets, vtables, vector lengths and fields, found by
  walking it with its schema; segments swapped, overlapping or out of range; XNNPACK's header
  and graph; metadata rewrites and program edits written by ExecuTorch's own serializer (huge
  or negative tensor sizes, 2^62 bytes of planned memory, an instruction that jumps to itself,
  named data swapped...); the file made sparse to 3 GiB .. 1 TiB.
- .mlpackage: byte mutations of Manifest.json, the model spec and the weights; Manifest edits
  (root paths with ../ or absolute, no root id, wrong types, deep nesting, huge strings,
  20,000 entries); spec edits (metadata rewrites, no input, huge images, nesting past protobuf's
  limit); symlinks (out of the package, to /dev/zero and /etc/passwd, dangling, loops); FIFOs,
  sockets and device nodes (a FIFO instead where mknod is not permitted: the kind says so);
  sparse files of 512 MiB .. 1 TiB; 10,000+ entries and paths past PATH_MAX; names holding new
  lines or bytes that are not UTF-8; the package itself a file, a FIFO or a link.
The mutations live beside this file: fuzz_mutations.py (bytes, metadata, .onnx/.tflite),
fuzz_pte.py and fuzz_mlpackage.py. Each .pte and .mlpackage mutant's folder holds
mutation.txt, saying what was done to it (--keep keeps them, to replay a finding).

Workers are long-lived children, one pool per format (loading each runtime once, not per
file), started isolated (python -I) in their own process group, capped with RLIMIT_AS and
RLIMIT_FSIZE; a worker that dies or stops answering is recorded as a crash or a hang for the
file it held, and replaced, with whatever it had started. tests/runtime/test_fuzz.py runs a
small share in CI with the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from edgepilot.runtime.executorch import VET_TIMEOUT

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the mutators beside this file
from fuzz_mlpackage import MANIFEST, PackageMutator  # noqa: E402
from fuzz_mutations import Mutator  # noqa: E402
from fuzz_pte import PteMutator  # noqa: E402

#: Every format the fuzzer knows, by suffix.
FORMATS = ("onnx", "tflite", "pte", "mlpackage")
#: Address-space cap of each worker (RLIMIT_AS; children such as the .pte vetting child
#: inherit it). onnxruntime and LiteRT loaded take ~0.75 GiB of it; torch with ExecuTorch or
#: coremltools ~1.4 GiB.
MEMORY_CAP = 2 << 30
MEMORY_CAPS = {"pte": 4 << 30, "mlpackage": 4 << 30}
#: Bound on a case's peak RSS (its worker's, or its vetting child's): a case above it that
#: ended ok or in an edgepilot error counts as "memory". A .pte or .mlpackage worker holds
#: torch (~0.5 GiB); a package may hold a 256 MiB spec, which `inspect_model` reads whole.
RSS_BOUND_MIB = {"onnx": 512, "tflite": 512, "pte": 1536, "mlpackage": 1536}
#: The largest file a worker may write (RLIMIT_FSIZE): a package that is a link to /dev/zero
#: would otherwise be copied into the bundle until the disk is full. The largest legitimate
#: write, a package's 512 MiB weights copied into a bundle, fits.
FILE_CAP = 1 << 30
#: Seconds one file may take in its entry points before it counts as a hang (a busy machine).
#: A .pte gets VET_TIMEOUT more: a program the vetting child gives up on is a clean refusal.
TIMEOUT_S = 60.0
EXTRA_TIMEOUT_S = {"pte": VET_TIMEOUT}

# The worker: reads file paths on stdin, answers one JSON line per file.
WORKER = r"""
import json, os, resource, shutil, signal, sys, tempfile, traceback
# Answers go to a private copy of stdout; what native code prints lands in the log (fd 2).
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
fmt, cap, file_cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
# Writing past file_cap fails (EFBIG) rather than killing the worker (SIGXFSZ).
resource.setrlimit(resource.RLIMIT_FSIZE, (file_cap, file_cap))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
import numpy as np
import edgepilot
from edgepilot.errors import EdgepilotError
image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)

def peak_rss_kib():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent process.
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))

def children_rss_kib():
    # The largest peak of the children waited for so far (the .pte vetting child). It only
    # grows, and a child's includes this process's peak at its start (carried over exec), so
    # a case counts it only when it grew during the case: at most the case's true peak.
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss

def chain(err):
    seen = []
    while err is not None and len(seen) < 10:
        seen.append(type(err).__name__)
        err = err.__cause__ or err.__context__
    return seen

def load(path):
    model = edgepilot.load(path)
    meta = model.meta
    if meta is not None and meta.is_image:
        model.predict(image)
    elif meta is not None:
        model.predict_inputs(np.zeros(meta.input_size[0] * meta.input_size[1]))
    else:
        model(*[np.zeros([d or 1 for d in t.shape], t.dtype) for t in model.inputs])

def info(path):
    from edgepilot.info import inspect_model
    inspect_model(path)

def bundle(path):
    from edgepilot.deploy import write_bundle
    work = tempfile.mkdtemp(prefix="fuzz-bundle-")
    try:
        write_bundle([path], os.path.join(work, "bundle"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

# The entry points each format goes through, in this order.
SURFACES = {"pte": [info, load], "mlpackage": [info, bundle, load]}.get(fmt, [load])
RANK = {"ok": 0, "edgepilot": 1, "other": 2}

def attempt(call, path):
    try:
        call(path)
        return {"outcome": "ok"}
    except EdgepilotError as err:
        text = str(err)
        if text.splitlines() == [text]:
            return {"outcome": "edgepilot", "error": type(err).__name__, "message": text[:300],
                    "memory": "MemoryError" in chain(err)}
        # The CLI shows an error as one line: a message of several (or none) is a finding.
        return {"outcome": "other", "error": type(err).__name__ + " (not one line)",
                "message": text[:300], "where": traceback.format_exc()[-3000:]}
    except BaseException as err:
        return {"outcome": "other", "error": type(err).__name__, "message": str(err)[:300],
                "where": traceback.format_exc()[-3000:]}

# Import what the entry points need before the first file, so that a case's time is its own.
try:
    if fmt == "pte":
        from edgepilot.runtime.executorch import runtime
        runtime()
        import executorch.exir._serialize._program
    elif fmt == "mlpackage":
        import coremltools
except (ImportError, EdgepilotError):
    pass  # each file then ends in the MissingDependencyError that names the extra

print(json.dumps({"ready": True}), file=answers, flush=True)
for line in sys.stdin:
    path = line.rstrip("\n")
    result = {"path": path}
    try:  # reset the peak (VmHWM) so that it is this file's own
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    children = children_rss_kib()
    surfaces, worst, memory = {}, {"outcome": "ok"}, False
    for call in SURFACES:
        got = attempt(call, path)
        surfaces[call.__name__] = [got["outcome"], got.get("error", ""),
                                   got.get("message", "")[:200]]
        if RANK[got["outcome"]] > RANK[worst["outcome"]]:
            worst = got
        memory = memory or got.get("memory", False)
    result.update(worst, surfaces=surfaces, memory=memory, peak_rss_kib=peak_rss_kib())
    grown = children_rss_kib()
    result["child_rss_kib"] = grown if grown > children else 0
    print(json.dumps(result), file=answers, flush=True)
"""


@dataclass
class Result:
    path: str
    format: str
    kind: str
    outcome: str  # ok | edgepilot | other | crash | hang | memory
    error: str = ""
    message: str = ""
    memory: bool = False  # an edgepilot error caused by hitting the memory cap
    peak_rss_kib: int = 0  # the worker's during the case, or its child's when that is larger
    seconds: float = 0.0
    where: str = ""  # the end of the traceback, for "other"
    surfaces: dict = field(default_factory=dict)  # entry point -> [outcome, error, message]




def write_mutants(fmt: str, seed: bytes | Path, meta: dict, n: int, out: Path,
                  seed_value: int = 0) -> list[tuple[str, Path]]:
    """n mutants of `seed` (a file's bytes, or a package folder) under out/, each in its own
    folder: (kind, path)."""
    make = {"pte": PteMutator, "mlpackage": PackageMutator}.get(fmt, partial(Mutator, fmt))
    mutator = make(seed, meta, seed_value)
    made = []
    for i in range(n):
        folder = out / f"{fmt}{seed_value}_{i:05d}" / "model"
        folder.mkdir(parents=True)
        made.append(mutator.write(i, folder))
    return made


# --------------------------------------------------------------------------- running


class _Worker:
    def __init__(self, stderr_dir: Path, fmt: str):
        self.log = tempfile.NamedTemporaryFile(dir=stderr_dir, suffix=".log", delete=False)
        cap = MEMORY_CAPS.get(fmt, MEMORY_CAP)
        # Its own process group: a hang is ended with whatever the worker started.
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", WORKER, fmt, str(cap), str(FILE_CAP)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            bufsize=1, start_new_session=True)
        ready = self._line(300)  # torch and ExecuTorch load slowly on a busy machine
        if not ready or "ready" not in ready:
            self.kill()
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
        """The worker and its process group (a vetting child it was waiting on)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def run_files(files: list[tuple[str, str, Path]], *, workers: int = 2,
              timeout: float = TIMEOUT_S, log_dir: Path | None = None,
              progress: bool = False) -> list[Result]:
    """Run (format, kind, path) files through their format's entry points in capped worker
    processes, one pool per format. A .pte gets EXTRA_TIMEOUT_S more than `timeout`.
    `progress`: say every 100 files how many are done (on stderr)."""
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="fuzz-logs-"))
    results: list[Result] = []
    for fmt in dict.fromkeys(f for f, _, _ in files):
        results += _run_pool(fmt, [f for f in files if f[0] == fmt], workers,
                             timeout + EXTRA_TIMEOUT_S.get(fmt, 0), log_dir, progress)
    return results


def _run_pool(fmt: str, files: list[tuple[str, str, Path]], workers: int, timeout: float,
              log_dir: Path, progress: bool) -> list[Result]:
    todo = list(reversed(files))
    pool = [_Worker(log_dir, fmt) for _ in range(min(workers, len(files)))]
    results: list[Result] = []
    sel = selectors.DefaultSelector()

    def replace(i: int) -> _Worker:
        sel.unregister(pool[i].proc.stdout)
        pool[i].kill()
        pool[i] = _Worker(log_dir, fmt)
        sel.register(pool[i].proc.stdout, selectors.EVENT_READ, pool[i])
        return pool[i]

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
            fmt_, kind, path, start = w.job
            if line:
                data = json.loads(line)
                results.append(_result(data, fmt_, kind, path, now - start))
                w.job = None
            else:  # the worker died on this file: a crash (signal) or an abrupt exit
                code = w.proc.wait()
                results.append(Result(str(path), fmt_, kind, "crash", f"exit {code}",
                                      _tail(w.log.name), seconds=now - start))
                w.job = None
                w = replace(pool.index(w))
            if todo:
                w.send(*todo.pop())
            if progress and len(results) % 100 == 0:
                print(f"{fmt}: {len(results)}/{len(files)} files", file=sys.stderr, flush=True)
        for i, w in enumerate(pool):
            if w.job and now - w.job[3] > timeout:
                fmt_, kind, path, start = w.job
                results.append(Result(str(path), fmt_, kind, "hang", seconds=now - start))
                w = replace(i)
                if todo:
                    w.send(*todo.pop())
    for w in pool:
        w.proc.stdin.close()
        w.proc.wait(timeout=30)
    return results


def _result(data: dict, fmt: str, kind: str, path: Path, seconds: float) -> Result:
    """A worker's answer as a Result; a case over its format's RSS bound is "memory"."""
    peak = max(data["peak_rss_kib"], data.get("child_rss_kib", 0))
    outcome = data["outcome"]
    if outcome in ("ok", "edgepilot") and peak > RSS_BOUND_MIB.get(fmt, 1 << 30) << 10:
        outcome = "memory"
    return Result(str(path), fmt, kind, outcome, data.get("error", ""), data.get("message", ""),
                  data.get("memory", False), peak, seconds, data.get("where", ""),
                  data.get("surfaces", {}))


def _tail(log: str) -> str:
    return Path(log).read_text(errors="replace")[-300:]


def _mutation(path: str) -> str:
    """What was done to a mutant (.pte and .mlpackage mutants say, beside them)."""
    note = Path(path).parent / "mutation.txt"
    return note.read_text(errors="replace").strip() if note.is_file() else ""


def summarise(results: list[Result]) -> dict:
    """Counts per format and outcome, the worst peak RSS and slowest case, what each entry
    point answered, and every finding (an outcome other than ok and edgepilot, or an
    edgepilot error caused by the memory cap)."""
    by_format = {}
    for fmt in sorted({r.format for r in results}):
        rs = [r for r in results if r.format == fmt]
        slowest = max(rs, key=lambda r: r.seconds)
        surfaces: dict[str, dict] = {}
        for r in rs:
            for name, (outcome, _, message) in r.surfaces.items():
                entry = surfaces.setdefault(name, {"outcomes": Counter(), "refusals": Counter()})
                entry["outcomes"][outcome] += 1
                if outcome == "edgepilot":  # how refusals open, the file's path left out
                    entry["refusals"][message.replace(r.path, "FILE")[:60]] += 1
        by_format[fmt] = {
            "files": len(rs), **Counter(r.outcome for r in rs),
            "kinds": dict(Counter(r.kind for r in rs)),
            "rss_bound_mib": RSS_BOUND_MIB.get(fmt),
            "peak_rss_mib": round(max(r.peak_rss_kib for r in rs) / 1024, 1),
            "slowest_s": round(slowest.seconds, 2),
            "slowest": f"{slowest.kind}: {_mutation(slowest.path) or slowest.path}"[:200],
            "case_s": round(sum(r.seconds for r in rs), 1),
            "surfaces": {name: {"outcomes": dict(entry["outcomes"]),
                                "refusals": dict(entry["refusals"].most_common(6))}
                         for name, entry in surfaces.items()},
            # A few distinct refusals per mutation kind, to see that each is refused for
            # its own reason (file paths cut off).
            "examples": {kind: sorted({r.message.replace(r.path, "FILE")[:140] for r in rs
                                       if r.kind == kind and r.outcome == "edgepilot"})[:8]
                         for kind in sorted({r.kind for r in rs})},
        }
    findings = [{**asdict(r), "mutation": _mutation(r.path)} for r in results
                if r.outcome not in ("ok", "edgepilot") or r.memory]
    for fmt, rs in ((f, [r for r in results if r.format == f]) for f in by_format):
        heavy = sorted(rs, key=lambda r: r.peak_rss_kib, reverse=True)[:5]
        by_format[fmt]["heaviest"] = [
            {"kind": r.kind, "peak_rss_mib": round(r.peak_rss_kib / 1024, 1),
             "seconds": round(r.seconds, 2), "outcome": r.outcome, "path": r.path,
             "mutation": _mutation(r.path)[:120],
             "message": r.message.replace(r.path, "FILE")[:120]} for r in heavy]
    return {"memory_cap_mib": {f: MEMORY_CAPS.get(f, MEMORY_CAP) >> 20 for f in by_format},
            "file_cap_mib": FILE_CAP >> 20, "timeout_s": TIMEOUT_S,
            "extra_timeout_s": EXTRA_TIMEOUT_S, "formats": by_format, "findings": findings}


# --------------------------------------------------------------------------- seeds


def seed_models(out: Path, formats: tuple[str, ...] = FORMATS) -> dict[str, list[Path]]:
    """The seed files: the shipped .onnx, and the shipped checkpoint as .tflite fp32/int8,
    .pte and .mlpackage (those of `formats`)."""
    from edgepilot.assets import shipped_model

    seeds = {"onnx": [shipped_model("stoplight")]} if "onnx" in formats else {}
    if not set(formats) - {"onnx"}:
        return seeds
    try:
        import torch

        import edgepilot
        from edgepilot.draw import stoplight
        from edgepilot.errors import EdgepilotError
        from edgepilot.train.checkpoint import load_checkpoint
    except ImportError as err:
        print(f"no exported seeds ({err}): install the export extra", file=sys.stderr)
        return seeds
    net, meta, _ = load_checkpoint(shipped_model("stoplight", ".pt"))
    if "tflite" in formats:
        val = stoplight.generate(200, seed=7)
        reports = edgepilot.export(net, torch.zeros(1, 3, *meta.input_size), formats="tflite",
                                   precision=["fp32", "int8"], out=out / "stoplight",
                                   meta=meta, data=val, quiet=True)
        seeds["tflite"] = [Path(r.path) for r in reports if r.path]
    for fmt in ("pte", "mlpackage"):
        if fmt in formats:
            try:
                seeds.update(export_seeds(net, meta, out, (fmt,)))
            except EdgepilotError as err:  # the format's exporter is not installed
                print(f"no .{fmt} seed: {err}", file=sys.stderr)
    return seeds


def export_seeds(net, meta, out: Path,
                 formats: tuple[str, ...] = ("pte", "mlpackage")) -> dict[str, list[Path]]:
    """`net` exported to .pte (fp32, XNNPACK) and .mlpackage, the same bytes on every run."""
    import torch

    import edgepilot

    exporters = {"pte": "executorch", "mlpackage": "coreml"}
    seeds = {}
    for fmt in formats:
        [report] = edgepilot.export(net, torch.zeros(1, 3, *meta.input_size),
                                    formats=exporters[fmt], precision="fp32",
                                    out=out / meta.name, meta=meta, quiet=True)
        seeds[fmt] = [Path(report.path)]
        if fmt == "mlpackage":
            _canonical_package(seeds[fmt][0])
    return seeds


def _canonical_package(package: Path) -> None:
    """Make an exported package the same bytes on every run: coremltools names the Manifest's
    entries with random UUIDs, writes the day's date into the spec, and serializes the spec's
    maps in no fixed order."""
    from coremltools.proto import Model_pb2

    manifest = json.loads((package / MANIFEST).read_text())
    names = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, entry["path"]))
             for old, entry in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {names[old]: entry
                                   for old, entry in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = names[manifest["rootModelIdentifier"]]
    (package / MANIFEST).write_text(json.dumps(manifest, indent=4, sort_keys=True))
    spec_path = package / "Data" / manifest["itemInfoEntries"][
        manifest["rootModelIdentifier"]]["path"]
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    user = spec.description.metadata.userDefined
    if "com.github.apple.coremltools.conversion_date" in user:
        user["com.github.apple.coremltools.conversion_date"] = "2000-01-01"
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def _seed_meta(fmt: str, path: Path) -> dict:
    """A seed's metadata as a dict, the base of the metadata rewrites."""
    if fmt in ("pte", "mlpackage"):  # read without running the file (a package cannot here)
        from edgepilot.info import inspect_model

        return inspect_model(path).meta
    from edgepilot.runtime.model import load

    return json.loads(load(path).meta.to_json())


def fuzz(seeds: dict[str, list[Path]], per_format: int, work: Path, *, workers: int = 2,
         timeout: float = TIMEOUT_S, seed: int = 0, progress: bool = False) -> dict:
    """Mutate each format's seeds into `per_format` files, run them, summarise."""
    results, walls = [], {}
    for fmt, paths in seeds.items():
        start = time.monotonic()
        files = []
        for s, path in enumerate(paths):
            share = per_format // len(paths) + (s < per_format % len(paths))
            source = path if path.is_dir() else path.read_bytes()
            for kind, mutant in write_mutants(fmt, source, _seed_meta(fmt, path), share, work,
                                              seed_value=seed * 100 + s):
                files.append((fmt, kind, mutant))
        written = time.monotonic()
        results += run_files(files, workers=workers, timeout=timeout, log_dir=work,
                             progress=progress)
        walls[fmt] = (round(written - start, 1), round(time.monotonic() - written, 1))
    summary = summarise(results)
    for fmt, (writing, running) in walls.items():
        summary["formats"][fmt].update(write_s=writing, run_s=running)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
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
        seeds = seed_models(work / "seeds", tuple(args.formats))
        summary = fuzz(seeds, args.per_format, work / "mutants", workers=args.workers,
                       timeout=args.timeout, seed=args.seed, progress=True)
    summary["wall_s"] = round(time.monotonic() - start, 1)
    text = json.dumps(summary, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    print(json.dumps({k: v for k, v in summary.items() if k != "findings"}, indent=2))
    print(f"{len(summary['findings'])} findings")
    for finding in summary["findings"][:30]:
        print(f"  {finding['format']} {finding['kind']} {finding['outcome']} "
              f"{finding['error']}: {finding['message'][:160]} [{finding['mutation'][:100]}]")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
