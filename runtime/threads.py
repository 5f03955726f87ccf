"""`threads="auto"`: the thread count a model runs best at on this machine, by measurement.

More threads are not free: each worker a runtime starts takes a core, and onnxruntime's
workers spin between calls. A tiny model gains nothing from them; a MobileNet gains from a few.
So `auto` times the model briefly at 1, 2, 4 ... threads up to the cores this process may use
(about half a second in all) and keeps the *smallest* count within 10% of the fastest. The
choice is cached per file content and host (`$XDG_CACHE_HOME/edgepilot/threads.json`), so only
the first load of a file on a machine pays for the sweep.

    sweep(build, counts)  ->  {threads: seconds per inference}  ->  choose(timings)  ->  n
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import stat
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepilot.runtime.mlpackage import check_package

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["AUTO", "ThreadChoice", "available_cores", "candidate_counts", "choose", "sweep",
           "auto_threads", "cache_file"]

AUTO = "auto"
#: A count within this fraction of the fastest counts as fast as it.
TOLERANCE = 0.10
#: Seconds the whole sweep may take (model builds included) before it stops trying counts.
BUDGET_S = 0.5
#: Timed runs per count: at least MIN_RUNS (after one untimed warm-up run), at most MAX_RUNS
#: (a tiny model's median is settled long before its share of the budget is spent).
MIN_RUNS = 3
MAX_RUNS = 50
#: Entries kept in the cache file (the most recent).
CACHE_ENTRIES = 256
#: A cache file larger than this is ignored unparsed (256 entries at their bounds take a fifth).
CACHE_BYTES = 1 << 20
#: Bounds on a cached entry: thread counts, and timings per entry (a sweep up to MAX_THREADS
#: cores times 13 counts).
MAX_THREADS = 4096
MAX_TIMINGS = 16
#: Seconds a cache write waits for another process's write before giving up on its own.
LOCK_WAIT_S = 5.0
_KEY = re.compile(r"[0-9a-f]{64}\|[0-9a-f]{16}")  # cache_key's form
_COUNT = re.compile(r"[1-9][0-9]{0,3}")  # a thread count as a JSON key: ASCII digits only


@dataclass(frozen=True)
class ThreadChoice:
    """What `auto` chose, and the sweep it chose from (milliseconds per inference)."""

    threads: int
    timings_ms: dict = field(default_factory=dict)  # {threads: p50 ms}
    cached: bool = False

    def describe(self) -> str:
        sweep = ", ".join(f"{n}: {ms:.3f} ms" for n, ms in sorted(self.timings_ms.items()))
        return f"auto chose {self.threads} ({sweep}{'; cached' if self.cached else ''})"


def available_cores() -> int:
    """The cores this process may run on (what a container, cgroup cpuset or taskset allows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def candidate_counts(cores: int) -> list[int]:
    """1, 2, 4 ... below `cores`, then `cores` itself: never more threads than cores."""
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return counts + [max(1, cores)]


def choose(timings: Mapping[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest thread count whose time is within `tolerance` of the fastest.

    >>> choose({1: 0.20, 2: 0.19, 4: 0.19})   # flat: extra threads buy nothing
    1
    >>> choose({1: 20.0, 2: 11.0, 4: 10.5})   # scales to 2, then flattens
    2
    """
    if not timings:
        raise ValueError("no timings to choose from")
    fastest = min(timings.values())
    return min(n for n, t in timings.items() if t <= fastest * (1 + tolerance))


def sweep(build: Callable[[int], Callable[[], object]], counts: Sequence[int], *,
          budget: float = BUDGET_S, clock: Callable[[], float] = time.perf_counter
          ) -> dict[int, float]:
    """Median seconds per inference at each thread count, within about `budget` seconds.

    `build(n)` makes the model at n threads and returns a call that runs one inference. Each
    count gets an equal share of the budget (one warm-up run, then MIN_RUNS to MAX_RUNS timed
    runs). The first two counts are always measured; later ones only while budget remains,
    and the sweep stops at a count that is slower than the best so far: past the point where
    threads stop paying, more of them only contend.
    """
    started = clock()
    share = budget / max(1, len(counts))
    timings: dict[int, float] = {}
    for i, n in enumerate(counts):
        if i >= 2 and clock() - started > budget:
            break
        begin = clock()
        run = build(n)
        run()  # warm-up: first-run allocations and kernel selection are not the model's speed
        samples: list[float] = []
        while len(samples) < MIN_RUNS or (clock() - begin < share and len(samples) < MAX_RUNS):
            t0 = clock()
            run()
            samples.append(clock() - t0)
        timings[n] = statistics.median(samples)
        if i >= 1 and timings[n] > min(timings.values()):
            break
    return timings


# --------------------------------------------------------------------------- cache
def cache_file() -> Path:
    """Where choices are kept: $XDG_CACHE_HOME/edgepilot/threads.json (~/.cache by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "edgepilot" / "threads.json"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(path: Path, runtime: str) -> str:
    """The file's content, this host (CPU model, cores available) and the runtime's version:
    a choice is reused only where all three are the same."""
    digest = hashlib.sha256()
    files = [path / rel for rel in sorted(check_package(path).files)] if path.is_dir() \
        else [path]
    for file in files:
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    host = f"{_cpu_model()}|{platform.machine()}|{available_cores()} cores|{runtime}"
    return f"{digest.hexdigest()}|{hashlib.sha256(host.encode()).hexdigest()[:16]}"


def _read_cache(file: Path) -> dict:
    """The cache's valid entries; a missing, unreadable, oversized or corrupt file is an empty
    cache, and an entry that is not exactly what _write_cache writes is dropped.

    A cache is only a cache: nothing in it may fail a load, and it is replaced on the next
    write. So it is read only if it is a regular file (a FIFO would block the open, a device
    never ends) and at most CACHE_BYTES of it, and parsed only below that size.
    """
    try:
        # O_NONBLOCK: opening a FIFO returns at once, for fstat to turn it away.
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return {}
            text = handle.read(CACHE_BYTES + 1)
        data = json.loads(text) if len(text) <= CACHE_BYTES else None
    except (OSError, ValueError, RecursionError):  # RecursionError: deeply nested lists
        return {}
    if not isinstance(data, dict):
        return {}
    entries = {key: _valid(entry) for key, entry in data.items() if _KEY.fullmatch(key)}
    return {key: entry for key, entry in entries.items() if entry is not None}


def _number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # not bool, NaN or inf


def _valid(entry) -> dict | None:
    """`entry` rebuilt from its expected fields, or None if any of them is off. The bounds
    keep a full cache far below CACHE_BYTES (under 1 KB an entry), so what is written is
    always read back."""
    if not isinstance(entry, dict):
        return None
    threads, timings, measured = (entry.get("threads"), entry.get("timings_ms", {}),
                                  entry.get("measured", ""))
    if not (type(threads) is int and 1 <= threads <= MAX_THREADS):
        return None
    if not isinstance(timings, dict) or len(timings) > MAX_TIMINGS or not all(
            _COUNT.fullmatch(n) and int(n) <= MAX_THREADS and _number(ms) and ms >= 0
            for n, ms in timings.items()):
        return None
    if not (isinstance(measured, str) and len(measured) <= 32):
        return None
    return {"threads": threads, "timings_ms": dict(timings), "measured": measured}


def _cached(entry: dict | None) -> ThreadChoice | None:
    if entry is None or entry["threads"] > available_cores():
        return None
    timings = {int(n): float(ms) for n, ms in entry["timings_ms"].items()}
    return ThreadChoice(entry["threads"], timings, cached=True)


@contextmanager
def _locked(file: Path):
    """Hold an exclusive lock on a file beside `file` across the read-modify-write, so that
    two processes writing at once do not drop each other's entries. Where fcntl is missing
    (Windows) there is no lock: a race then loses an entry (a sweep later), never the file.

    A lock not had within LOCK_WAIT_S raises TimeoutError (an OSError): a stopped or
    hostile holder costs the next load a sweep, never a hung load."""
    if fcntl is None:
        yield
        return
    # O_NOFOLLOW: a symlink planted at the lock's name is an error, not a file made elsewhere.
    fd = os.open(file.with_name(f"{file.name}.lock"),
                 os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{file}.lock is held") from None
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_cache(file: Path, key: str, choice: ThreadChoice) -> None:
    """Record a choice. A cache that cannot be written only costs the next load a sweep, so
    every failure here is silent; a cache path that is not a regular file is left alone."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with _locked(file):
            try:
                if not stat.S_ISREG(os.stat(file).st_mode):
                    return
            except FileNotFoundError:
                pass
            entries = _read_cache(file)
            entries.pop(key, None)
            entries[key] = {"threads": choice.threads,
                            "timings_ms": {str(n): round(ms, 4)
                                           for n, ms in choice.timings_ms.items()},
                            "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
            entries = dict(list(entries.items())[-CACHE_ENTRIES:])
            _replace(file, json.dumps(entries, indent=1))
    except OSError:
        pass


def _replace(file: Path, text: str) -> None:
    """Write `text` to `file` atomically: readers, who take no lock, see the old file or the
    new one, never half of one. mkstemp makes a new file of a random name (O_EXCL), so a
    symlink planted beside the cache is never written through. No fsync: after a crash, a
    torn cache is only an ignored one."""
    fd, temporary = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temporary, file)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise


# --------------------------------------------------------------------------- load's hook
def _zeros(backend) -> list[np.ndarray]:
    """One input of batch one per model input, in the file's own dtypes."""
    return [np.zeros([1 if d is None else d for d in info.shape], info.dtype)
            for info in backend.inputs]


def auto_threads(path: Path, build: Callable[[int], object], *, runtime: str,
                 budget: float = BUDGET_S, clock: Callable[[], float] = time.perf_counter
                 ) -> tuple[ThreadChoice, object]:
    """Choose threads for the model file at `path`; returns the choice and its backend.

    `build(n)` makes the backend at n threads; `runtime` names the library and version (part
    of the cache key). On a cache hit the backend is built once at the cached count.
    """
    path = Path(path)
    file, key = cache_file(), cache_key(path, runtime)
    choice = _cached(_read_cache(file).get(key))
    if choice is not None:
        return choice, build(choice.threads)
    built: dict[int, object] = {}

    def runner(n: int) -> Callable[[], object]:
        backend = built[n] = build(n)
        feeds = _zeros(backend)
        return lambda: backend.run(feeds)

    timings = sweep(runner, candidate_counts(available_cores()), budget=budget, clock=clock)
    n = choose(timings)
    choice = ThreadChoice(n, {k: v * 1000 for k, v in timings.items()})
    _write_cache(file, key, choice)
    return choice, built[n]
