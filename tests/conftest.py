"""Shared fixtures (tiny models built and trained here, never committed) and the strict mode.

Strict mode (``EDGEPILOT_STRICT=1``, which `make test` and CI set): a skipped test is a failure,
so a missing or broken dependency (torch, litert-torch, onnxruntime, MediaPipe's virtualenv...)
cannot leave the run green. Only skips for something this machine cannot have stay skips: a
skip reason starting ``hardware:`` (an Edge TPU, a camera) or ``os:`` (macOS for Core ML). A
missing package or program (sshd, rsync, Chromium, Xvfb, a venv) is never an OS limit: its
skip says what to install, and fails the strict run.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from edgepilot.meta import ModelMeta

# Tests stop child processes with SIGINT, as a terminal's Ctrl-C does. A harness that starts
# pytest in the background from a script (`cmd &` without job control) leaves SIGINT ignored,
# and children inherit that, so they would never see it: give this process Python's handler,
# which exec resets to the default in every child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

LABELS = ("red", "yellow", "green", "none")
STRICT = os.environ.get("EDGEPILOT_STRICT") == "1"
ALLOWED_SKIP_PREFIXES = ("hardware:", "os:")


def _skip_reason(longrepr) -> str:
    """The reason of a skip report (pytest stores (file, line, reason) for skips)."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _allowed_skip(reason: str) -> bool:
    return reason.removeprefix("Skipped: ").strip().startswith(ALLOWED_SKIP_PREFIXES)


def _strict_failure(report, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = (f"EDGEPILOT_STRICT=1: skipped for a reason that is not hardware or OS, "
                       f"so this is a failure (a dependency is missing or broken?): {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report.longrepr)
        if not _allowed_skip(reason):
            _strict_failure(report, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module-level skip (``pytest.importorskip`` at import) skips a whole file at collection."""
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped:
        reason = _skip_reason(report.longrepr)
        if not _allowed_skip(reason):
            _strict_failure(report, reason)


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory):
    """`threads="auto"` caches its choices under $XDG_CACHE_HOME: the suite (and the commands
    it starts) keep theirs in a folder of the run, never in the user's ~/.cache."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def threads_after_loading():
    """count(path, threads): the OS threads of a fresh process after it loaded `path` with
    `threads` and ran it once: what a thread setting really started, not what it echoes."""
    import subprocess
    import sys

    code = ("import os, sys, numpy as np, edgepilot\n"
            "m = edgepilot.load(sys.argv[1], threads=int(sys.argv[2]))\n"
            "m(np.zeros([d or 1 for d in m.inputs[0].shape], np.float32))\n"
            "print(len(os.listdir('/proc/self/task')))")

    def count(path, threads: int) -> int:
        out = subprocess.run([sys.executable, "-c", code, str(path), str(threads)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.split()[-1])

    return count


@pytest.fixture(scope="session")
def tiny_meta() -> ModelMeta:
    return ModelMeta(name="tiny", labels=LABELS, input_size=(32, 32), layout="NCHW",
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def colour_images(n: int, seed: int):
    """A learnable toy task: the label is which of R, G, B (or none) dominates a blob.

    Returns (images (N, 32, 32, 3) uint8 RGB, labels (N,)).
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = rng.integers(0, 60, size=(n, 32, 32, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        if label < 3:
            y, x = rng.integers(4, 20, size=2)
            images[i, y:y + 10, x:x + 10, (0, 1, 2)[label]] = 230
    return images, labels


@pytest.fixture(scope="session")
def colour_data():
    """The images the tiny model trains on and the exporter validates and calibrates with."""
    return colour_images(512, seed=0)


@pytest.fixture(scope="session")
def fresh_colour_data(colour_data):
    """Images of the same task that neither training nor any exporter ever saw."""
    images, labels = colour_images(400, seed=2024)
    seen = {img.tobytes() for img in colour_data[0]}
    assert not any(img.tobytes() in seen for img in images)
    return images, labels


@pytest.fixture(scope="session")
def trained_tiny(tiny_meta, colour_data):
    """A stoplight_cnn at width 8 trained for a few steps on `colour_data`."""
    pytest.importorskip("torch")
    import torch

    from edgepilot.train.models import create_model
    from edgepilot.train.trainer import TrainConfig, fit

    torch.manual_seed(0)
    net = create_model("stoplight_cnn", num_classes=4, width=8)
    history = fit(net, colour_data, colour_data, tiny_meta,
                  TrainConfig(steps=150, batch_size=64, lr=1e-2, progress=False))
    return net.eval(), history


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, trained_tiny, tiny_meta, colour_data):
    """`trained_tiny` exported to ONNX with its report."""
    import torch

    import edgepilot

    net, _ = trained_tiny
    out = tmp_path_factory.mktemp("export") / "tiny"
    [report] = edgepilot.export(net, torch.zeros(1, 3, 32, 32), formats="onnx", out=out,
                                meta=tiny_meta, data=colour_data, quiet=True)
    return report


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory, trained_tiny, tiny_meta, colour_data):
    """`trained_tiny` as .tflite, fp32 and int8: precision -> path. Building the files needs
    torch and litert-torch; the tests that use them need only the runtime."""
    pytest.importorskip("litert_torch")
    import torch

    import edgepilot

    out = tmp_path_factory.mktemp("tflite") / "tiny"
    reports = edgepilot.export(trained_tiny[0], torch.zeros(1, 3, 32, 32), formats="tflite",
                               precision=["fp32", "int8"], out=out, meta=tiny_meta,
                               data=colour_data, quiet=True)
    return {r.precision: r.path for r in reports}


@pytest.fixture(scope="session")
def torch_top1():
    """PyTorch's top-1 class per image, preprocessed as the runtime does: the oracle exported
    files are checked against, never the exporter's own report."""
    def top1(net, images: np.ndarray, meta: ModelMeta) -> np.ndarray:
        import torch

        from edgepilot.runtime import preprocess

        x = torch.from_numpy(np.concatenate([preprocess(img, meta) for img in images]))
        with torch.no_grad():
            return net.eval()(x).numpy().argmax(1)
    return top1


def runtime_top1(model, images: np.ndarray) -> np.ndarray:
    """The runtime's top-1 class per image, through `Model.predict` (resize included)."""
    return np.array([model.predict(img).index for img in images])


@pytest.fixture(scope="session")
def model_top1():
    return runtime_top1
