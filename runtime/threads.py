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
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    host = f"{_cpu_model()}|{platform.machine()}|{available_cores()} cores|{runtime}"
    return f"{digest.hexdigest()}|{hashlib.sha256(host.encode()).hexdigest()[:16]}"


def _read_cache(file: Path) -> dict:
    """The cache's entries; a missing, unreadable or corrupt file is an empty cache."""
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached(entry) -> ThreadChoice | None:
    try:
        threads = int(entry["threads"])
        timings = {int(n): float(ms) for n, ms in entry.get("timings_ms", {}).items()}
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
    if not 1 <= threads <= available_cores():
        return None
    return ThreadChoice(threads, timings, cached=True)


def _write_cache(file: Path, key: str, choice: ThreadChoice) -> None:
    """Record a choice (atomically: a crash mid-write leaves the old file). A cache that cannot
    be written only costs the next load a sweep."""
    entries = _read_cache(file)
    entries.pop(key, None)
    entries[key] = {"threads": choice.threads,
                    "timings_ms": {str(n): round(ms, 4) for n, ms in choice.timings_ms.items()},
                    "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    entries = dict(list(entries.items())[-CACHE_ENTRIES:])
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        temporary = file.with_name(f"{file.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries, indent=1))
        os.replace(temporary, file)
    except OSError:
        pass


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
