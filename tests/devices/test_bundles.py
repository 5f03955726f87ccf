"""Deploy bundles run on their own, here: a fresh venv made from the bundle's requirements.txt
alone (pip, from PyPI), then its run.py as a board runs it: classify images (plain and
--json), serve the live page, for the rpi5 bundle (int8 LiteRT) and the jetson bundle (ONNX,
whose TensorRT/CUDA providers do not exist here: it must say it ran on the CPU).
Issue 36, item 2."""

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

import edgepilot
from edgepilot.deploy import WHEEL_PYTHONS

DEADLINE = 900  # seconds: pip downloads wheels on a busy machine


def _venv(bundle: Path) -> Path:
    """A venv with nothing but the bundle's requirements; its python."""
    venv = bundle.parent / f"{bundle.name}-venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=DEADLINE)
    python = venv / "bin" / "python"
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "-r", bundle / "requirements.txt"], capture_output=True, text=True,
                          timeout=DEADLINE)
    assert done.returncode == 0, done.stderr[-2000:]
    return python


@pytest.fixture(scope="module")
def rpi5(rpi5_bundle):
    return rpi5_bundle, _venv(rpi5_bundle)


@pytest.fixture(scope="module")
def jetson(tmp_path_factory):
    pytest.importorskip("torch")
    from edgepilot.assets import shipped_model
    from edgepilot.deploy import deploy

    bundle = deploy(shipped_model("stoplight", ".pt"), "jetson",
                    tmp_path_factory.mktemp("jetson") / "bundle", val_size=200,
                    log=lambda message: None)
    return bundle, _venv(bundle)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Stoplight scenes the exporter never saw, as PNG files."""
    from edgepilot.train.datasets import load_dataset

    images, _ = load_dataset("stoplight", "val", 8, (96, 96), seed=9090)
    folder = tmp_path_factory.mktemp("scenes")
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"scene{i}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return paths


def _run_py(python: Path, bundle: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-I", bundle / "run.py", *map(str, args)],
                          capture_output=True, text=True, timeout=DEADLINE, cwd=bundle.parent)


def _model(bundle: Path) -> Path:
    return bundle / json.loads((bundle / "bundle.json").read_text())["models"][0]


@pytest.mark.slow
@pytest.mark.parametrize("board", ["rpi5", "jetson"])
def test_a_bundle_classifies_in_a_venv_of_its_requirements_alone(board, request, scenes):
    bundle, python = request.getfixturevalue(board)
    freeze = subprocess.run([python, "-m", "pip", "freeze"], capture_output=True, text=True,
                            check=True, timeout=120).stdout.lower()
    assert "torch" not in freeze  # the runtime only
    here = edgepilot.load(_model(bundle))
    expected = [here.predict(str(p)) for p in scenes]
    plain = _run_py(python, bundle, *scenes)
    assert plain.returncode == 0, plain.stderr
    rows = [line.split("\t") for line in plain.stdout.strip().splitlines()]
    assert [(Path(r[0]).name, r[1]) for r in rows] == [(p.name, e.label)
                                                       for p, e in zip(scenes, expected)]
    report = json.loads(_run_py(python, bundle, "--json", *scenes).stdout)
    scores = [p["score"] for p in report["predictions"]]
    np.testing.assert_allclose(scores, [e.score for e in expected], atol=1e-5)
    if board == "jetson":  # no TensorRT or CUDA here: it says so, and what ran
        assert "CPUExecutionProvider" in report["backend"]
        assert "not available: TensorrtExecutionProvider, CUDAExecutionProvider" in \
            report["backend"]
    else:
        assert report["backend"].startswith("ai-edge-litert")


def _line_with(process, needle: str, deadline: float) -> str:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in iter(process.stderr.readline, "")]
                     + [lines.put("")], daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no line with {needle!r} in time")
        if needle in line:
            return line
        assert line, f"run.py ended without printing {needle!r}"


@pytest.mark.slow
def test_a_bundle_serves_the_live_page_from_a_video(rpi5, tmp_path):
    bundle, python = rpi5
    from edgepilot.train.datasets import load_dataset

    images, _ = load_dataset("stoplight", "val", 30, (240, 240), seed=5)  # (30, 240, 240, 3)
    video = tmp_path / "street.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (240, 240))
    for image in list(images) * 40:  # 40 s at 30 FPS: it is still playing when we look
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    process = subprocess.Popen([python, "-I", bundle / "run.py", "--serve", "127.0.0.1:0",
                                "--source", video], stderr=subprocess.PIPE, text=True,
                               stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        line = _line_with(process, "serving the live page on", deadline)
        url = re.search(r"(http://127\.0\.0\.1:\d+/)", line).group(1)
        with urllib.request.urlopen(url, timeout=60) as page:
            assert b"edgepilot live" in page.read()
        while True:  # until the first frame has been classified
            with urllib.request.urlopen(url + "state.json", timeout=60) as reply:
                state = json.loads(reply.read())
            if state.get("label"):
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.1)
        assert state["label"] in ("red", "yellow", "green", "none")
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=120)
    assert process.returncode == 130


@pytest.mark.slow
def test_a_bundle_runs_the_live_loop_on_the_synthetic_street(rpi5):
    # Issue 34: the synthetic camera draws with edgepilot.draw, which the bundle ships; it
    # used to need edgepilot.train, which a bundle leaves behind (ModuleNotFoundError).
    bundle, python = rpi5
    assert not (bundle / "edgepilot" / "train").exists()
    done = _run_py(python, bundle, "--source", "synthetic", "--frames", "30", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads(done.stdout)
    assert state["source"] == "synthetic" and state["processed"] >= 1
    assert state["label"] in ("red", "yellow", "green", "none")
    assert "processed" in done.stderr  # the live loop's own closing line


AARCH64 = [f"manylinux_2_{glibc}_aarch64" for glibc in (17, 27, 28, 31, 34, 35, 36)]
X86_64 = [f"manylinux_2_{glibc}_x86_64" for glibc in (17, 27, 28, 31, 34, 35, 36)]


@pytest.mark.slow
@pytest.mark.parametrize("python", WHEEL_PYTHONS)
@pytest.mark.parametrize("platforms", [AARCH64, X86_64], ids=["aarch64", "x86_64"])
def test_every_pin_has_a_wheel_for_the_pythons_the_bundle_readme_names(python, platforms,
                                                                       tmp_path):
    # pip resolves the rpi5 and jetson bundles' pins (LiteRT and onnxruntime) as a board with
    # that Python (glibc up to Debian bookworm's 2.36) would, wheels only, downloading nothing.
    from edgepilot.deploy import requirements_for

    pins = requirements_for(["tflite", "onnx"])
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps",
               "--only-binary=:all:", "--python-version", python, "--target", tmp_path / "t",
               "--disable-pip-version-check", *[a for p in platforms for a in ("--platform", p)],
               *pins]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]
    assert all(pin.split("==")[0] in done.stdout for pin in pins), done.stdout
