"""`edgepilot.benchmark`: latency numbers users can trust.

Honest timing: a monotonic clock; inputs prepared outside the timed region; warm-up runs not
counted; every model in one process on the same input; rounds interleaved (each round runs
every model, in a rotated order) so drift in machine load hits all alike; the backend that
really ran and the machine (cores, CPU model) recorded with the figures.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError, InputError
from edgepilot.runtime.mlpackage import model_size
from edgepilot.runtime.model import split_delegate

__all__ = ["BenchResult", "benchmark", "latency_stats", "machine_info", "verdict"]


@dataclass
class BenchResult:
    """One model at one thread count. Latencies in milliseconds."""

    model: str
    format: str
    threads: int | str | None  # as asked: a count, "auto" or None (the backend's default)
    backend: str = ""
    size_bytes: int = 0
    runs: int = 0
    latency_ms: dict = field(default_factory=dict)  # min p50 p90 p99 mean std
    throughput: float = 0.0  # inferences per second, 1 / mean
    cpu_ms: float | None = None  # process CPU time per inference over the timed runs
    auto_threads: int | None = None  # the count threads="auto" chose
    thread_sweep_ms: dict = field(default_factory=dict)  # {threads: p50 ms} auto chose from
    load_ms: float = 0.0
    first_ms: float = 0.0
    peak_rss_mb: float = 0.0  # peak resident memory of the process after this model ran
    memory_mb: float | None = None  # resident memory this model added (load + first runs)
    fallback_ops: list = field(default_factory=list)  # TFLite ops left outside the delegate
    accuracy: float | None = None  # top-1 accuracy, or mAP@0.5 for a detector (see metric)
    metric: str = "top-1"  # or "mAP@0.5"
    map50_95: float | None = None  # detectors: COCO's mAP@0.5:0.95
    n_data: int = 0
    skipped_data: int = 0
    pipeline_ms: dict | None = None  # stage -> p50 ms
    error: str | None = None
    host: str = ""  # an ssh host for `bench --on` results; "" is this machine
    host_description: str = ""  # that host's board/CPU, cores, memory, OS
    samples_ms: list = field(default_factory=list, repr=False)  # every timed run, for plots

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["samples_ms"]
        return data

    @property
    def cores_busy(self) -> float | None:
        """CPU time over wall time while timed: 1.0 is one core kept busy."""
        if self.cpu_ms is None or not self.latency_ms:
            return None
        return self.cpu_ms / self.latency_ms["mean"]

    @property
    def threads_shown(self) -> str:
        """The thread count as a table shows it: ``auto→2``, ``1``, ``default``."""
        if self.threads == "auto":
            return f"auto→{self.auto_threads}" if self.auto_threads else "auto"
        return str(self.threads or "default")


def latency_stats(seconds: Sequence[float]) -> dict:
    """min / p50 / p90 / p99 / mean / std of latencies given in seconds, in milliseconds."""
    ms = np.asarray(seconds, np.float64) * 1000
    if not ms.size:
        raise ValueError("no latencies to summarise")
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"min": float(ms.min()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "mean": float(ms.mean()), "std": float(ms.std())}


def machine_info() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "platform": platform.platform(),
            "python": platform.python_version()}


def _rss_mb() -> float | None:
    """Resident memory of this process now (Linux), else None."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def verdict(rows: Sequence[BenchResult]) -> list[str]:
    """One line per machine that ran two or more files: the fastest by p50, how many times
    faster than the slowest, and whether it gave up accuracy (when --data measured it).
    Machines are never compared with each other: each line is one machine's run."""
    lines = []
    for host in dict.fromkeys(r.host for r in rows):
        ok = [r for r in rows if r.host == host and not r.error and r.latency_ms]
        if len(ok) < 2:
            continue
        several = len({r.model for r in ok}) < len(ok)  # one file at several thread counts
        name = {id(r): f"{r.model} at {r.threads_shown} threads" if several else r.model
                for r in ok}
        fast = min(ok, key=lambda r: r.latency_ms["p50"])
        slow = max(ok, key=lambda r: r.latency_ms["p50"])
        ratio = slow.latency_ms["p50"] / fast.latency_ms["p50"]
        line = (f"fastest{f' on {host}' if host else ''}: {name[id(fast)]}, p50 "
                f"{fast.latency_ms['p50']:.3f} ms, {ratio:.1f}x the speed of {name[id(slow)]}")
        scored = [r for r in ok if r.accuracy is not None]
        if fast.accuracy is None:
            line += "; accuracy not measured (--data)" if not scored else \
                "; its accuracy was not measured"
        elif len(scored) > 1:
            best = max(scored, key=lambda r: r.accuracy)
            gap = 100 * (best.accuracy - fast.accuracy)
            line += (f"; {fast.metric} {100 * fast.accuracy:.2f}%, " +
                     ("the best measured" if best is fast else
                      f"within {gap:.2f} points of the best ({name[id(best)]})" if gap <= 0.5 else
                      f"{gap:.2f} points below {name[id(best)]}'s {100 * best.accuracy:.2f}%"))
        lines.append(line)
    return lines


def slower_quantized(rows: Sequence[BenchResult]) -> list[str]:
    """Warnings for quantized files slower than the float file of the same model and format
    at the same threads (``net_int8.tflite`` against ``net.tflite``), and for TFLite files
    whose delegate is split into several partitions."""
    quantized = ("fp16", "dynamic", "int8")
    warnings = []
    float_p50 = {}
    for r in rows:
        stem = _stem(r.model)
        if not r.error and r.latency_ms and stem.rpartition("_")[2] not in quantized:
            float_p50[(stem, r.format, r.threads, r.host)] = r.latency_ms["p50"]
    for r in rows:
        if r.error or not r.latency_ms:
            continue
        stem, _, precision = _stem(r.model).rpartition("_")
        base = float_p50.get((stem, r.format, r.threads, r.host))
        if stem and precision in quantized and base and \
                r.latency_ms["p50"] > 1.05 * base:
            warnings.append(f"{r.model} is {r.latency_ms['p50'] / base:.2f}x slower than its "
                            f"float file ({r.latency_ms['p50']:.3f} ms vs {base:.3f} ms p50) "
                            "on this machine: the float file serves better here")
        split = split_delegate(r.backend, r.fallback_ops)
        if split:
            warnings.append(f"{r.model}: {split}")
    return warnings


def _stem(name: str) -> str:
    """``net_int8.tflite`` -> ``net_int8``; ``net.mlpackage/`` and ``x.tar.gz`` alike."""
    return Path(name).name.split(".", 1)[0]


def _peak_rss_mb() -> float:
    try:
        import resource  # POSIX only
    except ImportError:
        return 0.0
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024


class _Candidate:
    """A model file, or a PyTorch checkpoint run eagerly as the baseline."""

    def __init__(self, spec, threads: int | str | None, accelerator: str | None = None):
        self.spec, self.threads, self.accelerator = spec, threads, accelerator
        self.name = Path(str(getattr(spec, "path", spec))).name
        self.path = Path(str(getattr(spec, "path", spec)))

    def load(self):
        if not isinstance(self.spec, (str, Path)):
            return self.spec  # an already loaded Model (tests, Python users)
        if self.path.suffix.lower() in (".pt", ".pth"):
            return _TorchModel(self.path, self.threads)
        import edgepilot
        from edgepilot.formats import format_for_path

        # --accelerator picks the Coral for Edge TPU files; the other files run as before.
        picks = self.accelerator is not None and \
            "accelerator" in format_for_path(self.path).load_options
        return edgepilot.load(self.path, threads=self.threads,
                              **({"accelerator": self.accelerator} if picks else {}))


class _TorchModel:
    """A checkpoint as a Model-like callable: numpy in, numpy out, eager PyTorch."""

    def __init__(self, path: Path, threads: int | str | None):
        from edgepilot.errors import require
        from edgepilot.train.checkpoint import load_checkpoint

        torch = require("torch", "export", "Benchmarking a PyTorch checkpoint")

        if threads and threads != "auto":  # auto: torch's own default for the baseline
            torch.set_num_threads(threads)
        self._torch = torch
        self.module, self.meta, _ = load_checkpoint(path)
        self.path = path
        self.backend = f"torch {torch.__version__} eager ({torch.get_num_threads()} threads)"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            return self.module(self._torch.from_numpy(x)).numpy()

    def predict(self, image):
        from edgepilot.runtime import preprocess
        from edgepilot.runtime.model import to_prediction

        return to_prediction(self(preprocess(image, self.meta)), self.meta)


def benchmark(models: Sequence, *, threads: Sequence[int | str | None] = ("auto",),
              runs: int = 100, duration: float | None = None, warmup: int = 10,
              rounds: int = 10, data: tuple[list, np.ndarray] | None = None,
              pipeline: bool = False, accelerator: str | None = None,
              clock: Callable[[], float] = time.perf_counter,
              cpu_clock: Callable[[], float] = time.process_time) -> list[BenchResult]:
    """Benchmark model files (any format `edgepilot.load` reads, or a .pt checkpoint).

    Args:
        models: paths (or loaded `Model` objects).
        threads: thread counts to sweep; "auto" (the default) lets each file choose by
            measurement (see `edgepilot.load`), None is the backend's own default.
        runs: timed inferences per model (ignored when `duration` is set).
        duration: seconds of timed inferences per model instead of a run count.
        warmup: untimed inferences before timing.
        rounds: the timed runs are split into this many interleaved rounds.
        data: ``(images, labels)`` for an accuracy column; images are arrays or paths.
        pipeline: also time the full image path by stage (decode, preprocess, inference,
            postprocess), on the first data image or a generated one.
        accelerator: the Coral Edge TPU that runs the _edgetpu.tflite files (see
            `edgepilot.load`); other files are not affected.
        clock: the monotonic clock (injectable for tests).
        cpu_clock: the process's CPU time, all threads (injectable for tests): the timed runs'
            CPU time per inference is reported beside their latency.

    Example:
        >>> results = edgepilot.benchmark(["m.onnx", "m_int8.tflite"], threads=[1, 2])
    """
    if runs < 1 or rounds < 1 or warmup < 0:
        raise InputError("runs and rounds must be 1 or more, warmup 0 or more")
    if duration is not None and not 0 < duration < float("inf"):  # NaN fails both
        raise InputError(f"duration must be a number of seconds more than 0, got {duration}")
    for count in threads:
        if count != "auto" and count is not None and (not isinstance(count, int) or count < 1):
            raise InputError(f"threads must be 1 or more, 'auto' or None, got {count!r}")
    results = []
    for count in threads:
        results += _bench_threads(models, count, runs, duration, warmup, rounds, data,
                                  pipeline, clock, cpu_clock, accelerator)
    return results


def _bench_threads(models, threads, runs, duration, warmup, rounds, data, pipeline,
                   clock, cpu_clock, accelerator=None) -> list[BenchResult]:
    loaded, rows = [], []
    for spec in models:
        candidate = _Candidate(spec, threads, accelerator)
        row = BenchResult(model=candidate.name, format=_format_name(candidate.path),
                          threads=threads)
        rows.append(row)
        try:
            if isinstance(spec, (str, Path)) and not candidate.path.exists():
                raise EdgepilotError(f"Model file not found: '{candidate.path}'")
            row.size_bytes = _size(candidate.path)  # a .mlpackage is a folder
            before = _rss_mb()
            started = clock()
            model = candidate.load()
            row.load_ms = (clock() - started) * 1000
            x = _sample_input(model)  # prepared outside every timed region
            started = clock()
            model(x)
            row.first_ms = (clock() - started) * 1000
            for _ in range(warmup):
                model(x)
            after = _rss_mb()
            if before is not None and after is not None:
                row.memory_mb = round(max(after - before, 0.0), 1)
            row.backend = model.backend
            choice = getattr(model, "thread_choice", None)  # a checkpoint's has none
            if choice is not None:
                row.auto_threads, row.thread_sweep_ms = choice.threads, dict(choice.timings_ms)
            row.fallback_ops = list(getattr(model, "fallback_ops", None) or [])
            loaded.append((row, model, x))
        except Exception as err:  # one bad file is reported in its row, not fatal
            row.error = str(err).splitlines()[0] if str(err) else type(err).__name__
    _time_interleaved(loaded, runs, duration, rounds, clock, cpu_clock)
    for row, model, _ in loaded:
        if data is not None:
            try:
                _accuracy(row, model, data)
            except EdgepilotError as err:  # data that does not fit this model: its row says so
                row.error = str(err).splitlines()[0]
        if pipeline:
            row.pipeline_ms = _pipeline(model, data, clock)
        row.peak_rss_mb = round(_peak_rss_mb(), 1)
    return rows


def _size(path: Path) -> int:
    return model_size(path) if path.exists() else 0


def _format_name(path: Path) -> str:
    if path.suffix.lower() in (".pt", ".pth"):
        return "pytorch"
    from edgepilot.formats import format_for_path

    try:
        return format_for_path(path).name
    except EdgepilotError:
        return "?"


def _sample_input(model) -> np.ndarray:
    meta = model.meta
    if meta is None:
        shape = tuple(1 if d is None else d for d in model.inputs[0].shape)
        return np.zeros(shape, np.float32)
    if not meta.is_image:
        return np.zeros(meta.input_shape, np.float32)
    from edgepilot.runtime import preprocess

    image = np.random.default_rng(0).integers(0, 256, (*meta.input_size, 3), np.uint8)
    return preprocess(image, meta)


def _time_interleaved(loaded, runs, duration, rounds, clock, cpu_clock) -> None:
    samples: dict[int, list[float]] = {i: [] for i in range(len(loaded))}
    cpu = [0.0] * len(loaded)  # process CPU seconds (every thread) during each model's runs
    per_round = max(1, runs // rounds)
    deadline_per_model = None if duration is None else duration / rounds
    for r in range(rounds):
        order = list(range(len(loaded)))
        order = order[r % len(order):] + order[:r % len(order)] if order else order
        for i in order:
            _, model, x = loaded[i]
            spent, done = 0.0, 0
            cpu_before = cpu_clock()
            while (done < per_round) if deadline_per_model is None else \
                    (spent < deadline_per_model - 1e-9 or done == 0):
                started = clock()
                model(x)
                elapsed = clock() - started
                samples[i].append(elapsed)
                spent += elapsed
                done += 1
            cpu[i] += cpu_clock() - cpu_before
    for i, (row, _, _) in enumerate(loaded):
        row.runs = len(samples[i])
        row.samples_ms = [1000 * t for t in samples[i]]
        row.latency_ms = latency_stats(samples[i])
        row.throughput = 1000 / row.latency_ms["mean"]
        row.cpu_ms = 1000 * cpu[i] / row.runs


@dataclass(frozen=True)
class BoxesData:
    """Detection data: image files and, per image, (boxes (n, 4) in pixels, class indices)."""

    files: list
    truths: list


def bench_data(folder: str | Path):
    """`--data`: one sub-folder of images per label (classifiers), or images with YOLO .txt
    labels beside them or under a sibling labels/ folder (detectors)."""
    from edgepilot.datafolders import labelled_folder, read_boxes_folder

    root = Path(folder)
    if root.is_dir() and next(root.rglob("*.txt"), None) is not None and \
            not any(p.is_dir() and p.name not in ("images", "labels") for p in root.iterdir()):
        return BoxesData(*read_boxes_folder(root))
    return labelled_folder(root)


def _detection_map(row: BenchResult, model, data: BoxesData) -> None:
    from edgepilot.runtime import read_image
    from edgepilot.runtime.detection_metrics import evaluate

    labels = model.meta.labels
    largest = max((int(c.max()) for _, c in data.truths if len(c)), default=-1)
    if largest >= len(labels):
        raise EdgepilotError(f"data= has class {largest}, but {row.model} has "
                             f"{len(labels)} labels ({', '.join(labels)})")
    found, truths = [], []
    for file, truth in zip(data.files, data.truths):
        try:  # every detection down to a low score: mAP ranks them all
            found.append(model.detect(read_image(file), score_threshold=0.05))
        except InputError:  # a broken image is counted, not fatal
            row.skipped_data += 1
            continue
        truths.append(truth)
    row.n_data, row.metric = len(found), "mAP@0.5"
    if found:
        result = evaluate(found, truths, labels)
        row.accuracy, row.map50_95 = result["map50"], result["map50_95"]


def _accuracy(row: BenchResult, model, data) -> None:
    from edgepilot.runtime import read_image

    detector = model.meta is not None and model.meta.is_detector
    if isinstance(data, BoxesData) or detector:
        if not (isinstance(data, BoxesData) and detector):
            raise EdgepilotError(
                f"data= holds {'boxes' if isinstance(data, BoxesData) else 'class folders'} "
                f"but {row.model} is a {'detector' if detector else 'classifier'}: give "
                "images with YOLO .txt labels to a detector, label sub-folders to a classifier")
        return _detection_map(row, model, data)
    images, labels = data
    correct = total = 0
    for image, label in zip(images, labels):
        try:
            array = read_image(image) if isinstance(image, (str, Path)) else image
            predicted = model.predict(array).label
        except InputError:  # a non-image in --data is counted, not fatal
            row.skipped_data += 1
            continue
        total += 1
        correct += predicted == label
    row.n_data = total
    row.accuracy = correct / total if total else None


def _pipeline(model, data, clock, repeats: int = 30) -> dict:
    """p50 per stage of the full image path: decode, then the model's own three stages
    (`Model.prepare`, `run`, `interpret`), as `predict` goes through them."""
    import cv2

    if model.meta is None or not model.meta.is_image:
        return {}
    image = None
    if data is not None:
        first = data.files[0] if isinstance(data, BoxesData) else data[0][0]
        image = first if not isinstance(first, (str, Path)) else None
    if image is None:
        image = np.random.default_rng(1).integers(0, 256, (480, 640, 3), np.uint8)
    encoded = cv2.imencode(".jpg", image)[1].tobytes()
    stages: dict[str, list[float]] = {"decode": [], "preprocess": [], "inference": [],
                                      "postprocess": []}
    for _ in range(repeats):
        t0 = clock()
        decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR),
                               cv2.COLOR_BGR2RGB)
        t1 = clock()
        prepared = model.prepare(decoded)
        t2 = clock()
        outputs = model.run(prepared.input)
        t3 = clock()
        model.interpret(outputs, prepared)
        t4 = clock()
        for stage, (a, b) in zip(stages, ((t0, t1), (t1, t2), (t2, t3), (t3, t4))):
            stages[stage].append(b - a)
    return {stage: latency_stats(values)["p50"] for stage, values in stages.items()}


def export_matrix(checkpoint: str | Path, out: str | Path, *, validate: bool = True
                  ) -> tuple[list[Path], list[BenchResult], tuple | None]:
    """Export a checkpoint to every format and precision of the format table.

    Returns the files written, a failed row for each combination that could not be exported
    (with the reason), and the validation data used (images, label names) for accuracy.
    With `validate` False (a model whose accuracy means nothing, e.g. untrained, benchmarked
    for speed) the dataset's images only calibrate int8, and no accuracy is measured.
    """
    from edgepilot.errors import require
    from edgepilot.export import export
    from edgepilot.formats import FORMATS
    from edgepilot.train.checkpoint import load_checkpoint
    from edgepilot.train.datasets import validation_data

    torch = require("torch", "export", "Exporting models")
    net, meta, _ = load_checkpoint(checkpoint)
    val = validation_data(meta, 500)
    out = Path(out)
    stem = out / Path(checkpoint).stem
    files, failed = [], []
    for fmt in FORMATS:
        for precision in fmt.precisions:
            try:
                [report] = export(net, torch.zeros(meta.input_shape), formats=fmt.name,
                                  precision=precision, out=stem, meta=meta,
                                  data=val if validate else None,
                                  calib=None if val is None else val[0], quiet=True)
                files.append(Path(report.path))
            except Exception as err:  # a format that fails says why in its row
                name = stem.name + ("" if precision == "fp32" else f"_{precision}") + fmt.suffix
                failed.append(BenchResult(model=name, format=fmt.name, threads=None,
                                          error=f"export failed: {str(err).splitlines()[0]}"))
    data = None
    if val is not None and meta.is_image and validate:
        data = (list(val[0]), [meta.labels[i] for i in val[1]])
    return files, failed, data
