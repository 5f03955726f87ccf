"""threads="auto": the choice on fake timings, the sweep's budget and core limit, the cache
(keyed by content and host, robust to corruption), and what load() does with it."""

import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

import edgepilot
from edgepilot.errors import InputError
from edgepilot.live.loop import LiveState
from edgepilot.runtime import threads
from edgepilot.runtime.threads import auto_threads, candidate_counts, choose, sweep


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """Every test gets its own empty cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


class FakeModel:
    """A model whose inference 'takes' `seconds(n)` on a fake clock at n threads."""

    def __init__(self, seconds):
        self.seconds, self.now, self.built, self.runs = seconds, 0.0, [], {}

    def clock(self):
        return self.now

    def build(self, n):
        self.built.append(n)
        self.runs[n] = 0

        def run():
            self.now += self.seconds(n)
            self.runs[n] += 1
        return run


def test_counts_double_up_to_the_cores_and_never_past_them():
    assert candidate_counts(16) == [1, 2, 4, 8, 16]
    assert candidate_counts(6) == [1, 2, 4, 6]
    assert candidate_counts(2) == [1, 2]
    assert candidate_counts(1) == [1]


def test_flat_timings_on_16_cores_choose_one_thread():
    model = FakeModel(lambda n: 0.0002)  # a tiny model: threads change nothing
    timings = sweep(model.build, candidate_counts(16), clock=model.clock)
    assert choose(timings) == 1
    # Two counts that do not beat one thread are enough to stop: no 4, 8 or 16 built.
    assert model.built == [1, 2]


def test_a_model_that_scales_gets_more_threads():
    model = FakeModel(lambda n: 0.020 / n)  # scales perfectly
    timings = sweep(model.build, candidate_counts(16), budget=10.0, clock=model.clock)
    assert set(timings) == {1, 2, 4, 8, 16} and choose(timings) == 16
    # Scales to 4, then gains less than 10%: the fewest within 10% of the fastest.
    curve = {1: 0.020, 2: 0.011, 4: 0.0062, 8: 0.0058, 16: 0.0060}
    model = FakeModel(curve.__getitem__)
    assert choose(sweep(model.build, candidate_counts(16), budget=10.0,
                        clock=model.clock)) == 4


def test_choose_keeps_the_smallest_count_within_the_tolerance():
    assert choose({1: 1.09, 2: 1.0}) == 1
    assert choose({1: 1.11, 2: 1.0}) == 2
    assert choose({4: 1.0, 2: 1.05, 1: 2.0}) == 2
    with pytest.raises(ValueError):
        choose({})


def test_the_sweep_keeps_to_its_budget():
    model = FakeModel(lambda n: 0.2 / n)  # slow: one run is 40% of the budget
    timings = sweep(model.build, candidate_counts(16), budget=0.5, clock=model.clock)
    # The first two counts are always measured (warm-up + 3 runs each); then the budget is
    # spent and 4, 8, 16 are never built.
    assert model.built == [1, 2] and set(timings) == {1, 2}
    assert model.runs == {1: 4, 2: 4}
    fast = FakeModel(lambda n: 0.0001)
    sweep(fast.build, [1, 2], budget=0.5, clock=fast.clock)
    assert fast.runs == {1: 1 + threads.MAX_RUNS, 2: 1 + threads.MAX_RUNS}


class FakeBackend:
    """What auto_threads needs of a backend: inputs to feed and run()."""

    def __init__(self, model, n):
        from edgepilot.runtime.backend import TensorInfo

        self.n, self._run = n, model.build(n)
        self.inputs = [TensorInfo("x", (None, 3), np.dtype(np.uint8))]
        self.fed = []

    def run(self, feeds):
        self.fed.append(feeds)
        self._run()


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"model bytes")
    return path


def test_auto_threads_sweeps_once_then_reads_the_cache(monkeypatch, model_file, cache_home):
    model = FakeModel({1: 0.010, 2: 0.006, 4: 0.004, 8: 0.0041}.__getitem__)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    choice, backend = auto_threads(model_file, lambda n: FakeBackend(model, n), runtime="rt 1",
                                   clock=model.clock)
    assert choice.threads == 4 and not choice.cached and backend.n == 4
    assert choice.timings_ms == pytest.approx({1: 10.0, 2: 6.0, 4: 4.0, 8: 4.1})
    # The sweep fed inputs of the file's shape (dynamic dims as 1) and dtype.
    [x] = backend.fed[0]
    assert x.shape == (1, 3) and x.dtype == np.uint8
    model.built.clear()
    again, backend = auto_threads(model_file, lambda n: FakeBackend(model, n), runtime="rt 1",
                                   clock=model.clock)
    assert again.cached and again.threads == 4 and model.built == [4]  # no sweep
    assert again.timings_ms == pytest.approx(choice.timings_ms)
    assert (cache_home / "edgepilot" / "threads.json").is_file()


def test_the_cache_is_per_content_host_and_runtime(monkeypatch, model_file, tmp_path):
    model = FakeModel(lambda n: 0.001)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)

    def chosen(path, runtime="rt 1"):
        model.built.clear()
        auto_threads(path, lambda n: FakeBackend(model, n), runtime=runtime, clock=model.clock)
        return list(model.built)

    assert chosen(model_file) == [1, 2]  # swept; the 1-thread model it built is kept
    assert chosen(model_file) == [1]  # cached: built once, at the cached count
    copy = tmp_path / "copy.onnx"
    shutil.copy(model_file, copy)
    assert chosen(copy) == [1]  # same content elsewhere: same entry
    model_file.write_bytes(b"other model bytes")
    assert len(chosen(model_file)) > 1  # new content: swept again
    assert len(chosen(copy, runtime="rt 2")) > 1  # another runtime version
    monkeypatch.setattr(threads, "available_cores", lambda: 4)  # another host
    assert len(chosen(copy)) > 1


OTHER = b"0" * 64 + b"|" + b"0" * 16  # a well-formed key of another file


@pytest.mark.parametrize("garbage", [
    b"{not json", b"[1, 2]", b"\xff\xfe", b"KEY: []", b'{"KEY": {"threads": "x"}}',
    b'{"KEY": {"threads": 1, "timings_ms": {"one": 1}}}',
    b'{"KEY": {"threads": 1, "timings_ms": [[1, 2]]}}',
    # Hostile: json's own RecursionError, int(inf)'s OverflowError, NaN and inf timings.
    pytest.param(b"[" * 100_000, id="nested-lists"),
    pytest.param(b'{"KEY": ' + b"[" * 100_000, id="nested-lists-in-entry"),
    pytest.param(b'{"KEY": {"threads": Infinity}}', id="infinite-threads"),
    pytest.param(b'{"KEY": {"threads": 1e999}}', id="overflowing-threads"),
    pytest.param(b'{"KEY": {"threads": NaN}}', id="nan-threads"),
    pytest.param(b'{"KEY": {"threads": 1, "timings_ms": {"1": NaN}}}', id="nan-timing"),
    pytest.param(b'{"KEY": {"threads": 1, "timings_ms": {"1": -Infinity}}}', id="inf-timing"),
    pytest.param(b'{"' + OTHER + b'": {"threads": 1, "timings_ms": {"1": NaN}}}',
                 id="nan-in-another-entry"),
    # Wrong types that int() and float() would have let through.
    pytest.param(b'{"KEY": {"threads": true}}', id="bool-threads"),
    pytest.param(b'{"KEY": {"threads": "1"}}', id="str-threads"),
    pytest.param(b'{"KEY": {"threads": 1.5}}', id="float-threads"),
    pytest.param(b'{"KEY": {"threads": 1, "timings_ms": {"1": "2"}}}', id="str-timing"),
    pytest.param(b'{"KEY": {"threads": 1, "measured": [1]}}', id="list-measured"),
    # Past the size cap, even around a valid entry: never parsed at all.
    pytest.param(b'{"' + OTHER + b'": {"threads": 1, "measured": "' + b"x" * (2 << 20)
                 + b'"}, "KEY": {"threads": 1}}', id="huge-file"),
])
def test_a_corrupt_cache_is_ignored_and_rewritten(monkeypatch, model_file, cache_home,
                                                  garbage):
    model = FakeModel(lambda n: 0.001)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    file = cache_home / "edgepilot" / "threads.json"
    file.parent.mkdir(parents=True)
    key = threads.cache_key(model_file, "rt")
    file.write_bytes(garbage.replace(b"KEY", key.encode()))
    choice, _ = auto_threads(model_file, lambda n: FakeBackend(model, n), runtime="rt",
                                   clock=model.clock)
    assert choice.threads == 1 and not choice.cached
    assert [entry["threads"] for entry in json.loads(file.read_text()).values()] == [1]


def test_a_cached_count_above_the_cores_now_available_is_not_trusted(monkeypatch, model_file,
                                                                     cache_home):
    model = FakeModel(lambda n: 0.010 / n)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    choice, _ = auto_threads(model_file, lambda n: FakeBackend(model, n), runtime="rt",
                                   clock=model.clock)
    assert choice.threads == 2
    file = cache_home / "edgepilot" / "threads.json"
    entries = json.loads(file.read_text())
    for entry in entries.values():
        entry["threads"] = 64  # edited by hand, or a stale host key collision
    file.write_text(json.dumps(entries))
    choice, _ = auto_threads(model_file, lambda n: FakeBackend(model, n), runtime="rt",
                                   clock=model.clock)
    assert choice.threads == 2 and not choice.cached


def test_an_unwritable_cache_only_costs_a_sweep(monkeypatch, model_file, cache_home):
    cache_home.mkdir()
    (cache_home / "edgepilot").write_text("a file where the folder should be")
    model = FakeModel(lambda n: 0.001)
    choice, backend = auto_threads(model_file, lambda n: FakeBackend(model, n), runtime="rt",
                                   clock=model.clock)
    assert choice.threads == 1 and backend.n == 1


def _load_twice(model_file) -> list[bool]:
    """Two auto loads of a file: whether each was a cache hit."""
    model, hits = FakeModel(lambda n: 0.001), []
    for _ in range(2):
        choice, backend = auto_threads(model_file, lambda n: FakeBackend(model, n),
                                       runtime="rt", clock=model.clock)
        assert choice.threads == 1 and backend.n == 1
        hits.append(choice.cached)
    return hits


def test_a_cache_path_that_is_a_folder_is_left_alone(monkeypatch, model_file, cache_home):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    folder = cache_home / "edgepilot"
    (folder / "threads.json").mkdir(parents=True)
    assert _load_twice(model_file) == [False, False]  # two sweeps: nothing was written
    assert (folder / "threads.json").is_dir() and not any((folder / "threads.json").iterdir())
    assert {p.name for p in folder.iterdir()} <= {"threads.json", "threads.json.lock"}


def test_a_cache_path_that_is_a_fifo_is_neither_read_nor_replaced(monkeypatch, model_file,
                                                                  cache_home):
    if not hasattr(os, "mkfifo"):
        pytest.skip("os: no named pipes here")
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    file = cache_home / "edgepilot" / "threads.json"
    file.parent.mkdir(parents=True)
    os.mkfifo(file)  # opened plainly for reading, this blocks until a writer comes
    assert _load_twice(model_file) == [False, False]
    assert stat.S_ISFIFO(os.lstat(file).st_mode)
    assert {p.name for p in file.parent.iterdir()} <= {"threads.json", "threads.json.lock"}


def test_a_failed_write_leaves_no_temporary_file(monkeypatch, model_file, cache_home):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)

    def full_disk(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(threads.os, "replace", full_disk)
    assert _load_twice(model_file) == [False, False]
    folder = cache_home / "edgepilot"
    assert {p.name for p in folder.iterdir()} <= {"threads.json.lock"}


@pytest.mark.parametrize("planted", ["temporary", "lock"])
def test_a_planted_symlink_is_never_followed(monkeypatch, model_file, cache_home, tmp_path,
                                             planted):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    folder = cache_home / "edgepilot"
    folder.mkdir(parents=True)
    victim, elsewhere = tmp_path / "victim", tmp_path / "created-elsewhere"
    victim.write_text("precious")
    if planted == "temporary":  # where the cache used to put its temporary file
        (folder / f"threads.json.{os.getpid()}.tmp").symlink_to(victim)
    else:
        (folder / "threads.json.lock").symlink_to(elsewhere)  # dangling: O_CREAT would make it
    _load_twice(model_file)
    assert victim.read_text() == "precious" and not elsewhere.exists()
    file = folder / "threads.json"
    assert not file.is_symlink()
    if planted == "temporary":
        assert [entry["threads"] for entry in json.loads(file.read_text()).values()] == [1]


WRITER = """
import sys
from edgepilot.runtime import threads

threads.LOCK_WAIT_S = float("inf")  # wait as long as it takes: the parent's timeout bounds it
writer, count = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()  # start together, to overlap the writes as much as possible
for i in range(count):
    key = f"{writer * count + i:064x}|{writer:016x}"
    threads._write_cache(threads.cache_file(), key, threads.ThreadChoice(1, {1: 0.5}))
"""


def test_concurrent_writers_lose_no_entry(cache_home):
    writers, count = 8, 25  # 200 entries: within CACHE_ENTRIES, so all must be kept
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    procs = [subprocess.Popen([sys.executable, "-I", "-c", WRITER, str(w), str(count)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, text=True)
             for w in range(writers)]
    try:
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    entries = json.loads((cache_home / "edgepilot" / "threads.json").read_text())
    expected = {f"{w * count + i:064x}|{w:016x}" for w in range(writers) for i in range(count)}
    assert len(set(entries) & expected) == writers * count, f"{len(entries)} of 200 kept"


def test_the_sweep_never_asks_for_more_threads_than_the_affinity_allows(monkeypatch,
                                                                        model_file):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    model = FakeModel(lambda n: 0.010 / n)
    auto_threads(model_file, lambda n: FakeBackend(model, n), runtime="rt",
                                   clock=model.clock)
    assert max(model.built) == 3 and model.built[:3] == [1, 2, 3]


# --------------------------------------------------------------------------- through load()
def test_load_chooses_threads_for_an_onnx_file_and_remembers(tiny_onnx, cache_home):
    model = edgepilot.load(tiny_onnx.path)  # "auto" is the default
    choice = model._backend.thread_choice
    assert 1 <= choice.threads <= threads.available_cores() and not choice.cached
    assert set(choice.timings_ms) <= set(candidate_counts(threads.available_cores()))
    options = model._backend.session.get_session_options()
    assert options.intra_op_num_threads == choice.threads  # the session really got it
    assert f"{choice.threads} thread" in model.backend
    again = edgepilot.load(tiny_onnx.path)
    assert again._backend.thread_choice.cached
    assert again._backend.thread_choice.threads == choice.threads


def test_load_chooses_threads_for_a_tflite_file(tiny_tflite, monkeypatch):
    # The interpreter exposes no thread getter: record the count each one was built with.
    from edgepilot.runtime.litert import interpreter_module

    module, _ = interpreter_module()
    given = []

    class Recording(module.Interpreter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_threads_given = kwargs.get("num_threads")
            given.append(self.num_threads_given)

    monkeypatch.setattr(module, "Interpreter", Recording)
    model = edgepilot.load(tiny_tflite["fp32"], threads="auto")
    choice = model._backend.thread_choice
    assert 1 <= choice.threads <= threads.available_cores() and not choice.cached
    # Each count the sweep timed ran in an interpreter built with that count, and the one
    # that runs the model got the chosen count: what the interpreter was given, not what the
    # backend's description says.
    assert given == list(choice.timings_ms)  # (the sweep builds and times in turn)
    assert model._backend.interpreter.num_threads_given == choice.threads


def test_an_explicit_count_or_none_does_not_sweep(tiny_onnx, cache_home):
    model = edgepilot.load(tiny_onnx.path, threads=2)
    assert not hasattr(model._backend, "thread_choice")
    assert model._backend.session.get_session_options().intra_op_num_threads == 2
    default = edgepilot.load(tiny_onnx.path, threads=None)
    assert default._backend.session.get_session_options().intra_op_num_threads == 0
    assert not (cache_home / "edgepilot" / "threads.json").exists()


@pytest.mark.parametrize("bad", [0, -1, "many", 1.5, True])
def test_bad_thread_settings_are_refused(tiny_onnx, bad):
    with pytest.raises(InputError, match="threads must be 1 or more, 'auto' or None"):
        edgepilot.load(tiny_onnx.path, threads=bad)


def test_spin_false_reaches_onnxruntime(tiny_onnx):
    model = edgepilot.load(tiny_onnx.path, threads=2, spin=False)
    options = model._backend.session.get_session_options()
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert options.get_session_config_entry(key) == "0"
    assert "no spinning" in model.backend


def test_a_file_that_fails_while_timed_is_a_model_file_error(tiny_onnx, monkeypatch):
    from edgepilot.errors import ModelFileError
    from edgepilot.runtime.onnx import OnnxBackend

    def broken(self, inputs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(OnnxBackend, "run", broken)
    with pytest.raises(ModelFileError, match="Timing .* to choose its threads failed: "
                                             ".*kernel exploded"):
        edgepilot.load(tiny_onnx.path)


# --------------------------------------------------------------------------- live CPU use
def test_live_state_reports_cores_busy_over_the_last_second():
    wall, cpu = [100.0], [5.0]
    state = LiveState()
    state.measure_cpu = lambda real=state.measure_cpu: real(now=(wall[0], cpu[0]))
    state.measure_cpu()
    for _ in range(16):  # 2 s at 0.25 cores (steps of 1/8 s: exact in binary)
        wall[0] += 0.125
        cpu[0] += 0.25 * 0.125
        state.measure_cpu()
    assert state.cores_busy == pytest.approx(0.25)
    for _ in range(8):  # then 1 s at 1.5 cores: the last second only is reported
        wall[0] += 0.125
        cpu[0] += 1.5 * 0.125
        state.measure_cpu()
    assert state.cores_busy == pytest.approx(1.5)
    assert state.public()["cores_busy"] == pytest.approx(1.5)
