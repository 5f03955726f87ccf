"""Deploy bundles and `bench --on` against a real sshd started here (the OS's openssh-server on
a free localhost port, throwaway host and user keys): host `good` answers, host `bad` is a
port nobody listens on, as a board that is switched off."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

import edgepilot
from edgepilot import remote
from edgepilot.errors import InputError


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Stoplight scenes as PNG files, with their labels."""
    from edgepilot.train.datasets import load_dataset

    arrays, labels = load_dataset("stoplight", "val", 6, (64, 64), seed=77)
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, image in enumerate(arrays):
        paths.append(folder / f"{i}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return paths, labels


@pytest.fixture(scope="module")
def deployed(rpi5_bundle, ssh_config, tmp_path_factory):
    """`edgepilot deploy MODEL --device rpi5 --to good:DIR`: copied and installed over ssh into
    a fresh venv from the bundle's requirements file alone."""
    [model] = rpi5_bundle.glob("*.tflite")
    target = tmp_path_factory.mktemp("remote") / "pi"
    env = {**os.environ, "EDGEPILOT_SSH_CONFIG": str(ssh_config)}
    out = subprocess.run([sys.executable, "-m", "edgepilot.cli", "deploy", str(model),
                          "--device", "rpi5", "--out", str(target.with_name("local")),
                          "--to", f"good:{target}"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr
    return model, target, out.stderr


def _venv_size_mb(venv: Path) -> float:
    return sum(p.stat().st_size for p in venv.rglob("*") if p.is_file()
               and not p.is_symlink()) / 2**20


@pytest.mark.slow
def test_rpi5_bundle_installs_from_its_requirements_alone_and_predicts(deployed, ssh_env,
                                                                      images):
    model, target, log = deployed
    assert "installed the runtime" in log and "copied with rsync" in log
    pins = [line for line in (target / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert {p.split("==")[0] for p in pins} == {"ai-edge-litert", "flatbuffers", "numpy",
                                                "opencv-python-headless"}  # no torch, no ORT
    venv = target / ".venv"
    freeze = subprocess.run([venv / "bin/python", "-m", "pip", "freeze"], capture_output=True,
                            text=True, check=True).stdout.lower()
    assert "torch" not in freeze and "onnxruntime" not in freeze
    for pin in pins:
        assert pin.lower() in freeze, pin
    print(f"\nrpi5 bundle venv: {_venv_size_mb(venv):.0f} MB")  # for the report
    # The run script, run there over ssh, agrees with edgepilot here on every image.
    paths, _ = images
    out = remote.ssh(remote.Remote("good", str(target)),
                     f"cd {target} && .venv/bin/python run.py --json "
                     + " ".join(str(p) for p in paths), "predicting")
    report = json.loads(out)
    assert report["backend"].startswith("ai-edge-litert")
    here = edgepilot.load(model)
    assert [p["label"] for p in report["predictions"]] == [here.predict(str(p)).label
                                                           for p in paths]


@pytest.mark.slow
def test_bench_on_two_hosts_one_failing(deployed, ssh_env, tmp_path):
    model, target, _ = deployed
    out = subprocess.run(
        [sys.executable, "-m", "edgepilot.cli", "bench", str(model), "--runs", "30",
         "--threads", "1", "--on", f"good:{target}", "--on", "bad",
         "--json-out", str(tmp_path / "bench.json"), "--plot", str(tmp_path / "bench.png")],
        capture_output=True, text=True, timeout=900, env=ssh_env)
    # Every row is kept, and a board that failed makes the run an error naming it.
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(
        "error: 1 of 3 runs could not be benchmarked") and out.stderr.rstrip().endswith(": bad")
    assert "reused the runtime" in out.stderr  # the deployed venv, requirements unchanged
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    local = [r for r in rows if not r["host"]]
    good = [r for r in rows if r["host"] == "good"]
    [bad] = [r for r in rows if r["host"] == "bad"]
    assert len(local) == len(good) == 1 and not local[0]["error"] and not good[0]["error"]
    assert good[0]["runs"] == 30 and good[0]["latency_ms"]["p50"] > 0
    assert good[0]["backend"].startswith("ai-edge-litert") and "1 threads" in good[0]["backend"]
    assert f"{os.cpu_count()} cores" in good[0]["host_description"]
    assert "Connection refused" in bad["error"] and "ssh" in bad["error"]
    # One table with both hosts' rows, and each host described.
    models = " ".join(" ".join(line.split("│")[1] for line in out.stdout.splitlines()
                               if line.count("│") > 2).split())  # the model column, unfolded
    assert f"{model.name} @ good" in models and f"{model.name} @ bad" in models
    assert "failed: bad:" in " ".join(out.stdout.split())  # the failing host's row says why
    described = {line.split(": ", 1)[0]: line for line in out.stderr.splitlines()}
    assert f"{os.cpu_count()} cores" in described["good"]
    assert "Connection refused" in described["bad"]
    assert (tmp_path / "bench.png").stat().st_size > 10_000


def test_scp_copies_where_rsync_is_missing(ssh_env, monkeypatch, tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "edgepilot").mkdir(parents=True)
    (bundle / "run.py").write_text("print('hi')\n")
    (bundle / "edgepilot" / "x.py").write_text("")
    which = shutil.which
    monkeypatch.setattr(remote.shutil, "which",
                        lambda name, *a, **k: None if name == "rsync" else which(name, *a, **k))
    target = remote.Remote("good", str(tmp_path / "there"))
    assert remote.copy_bundle(bundle, target, log=lambda message: None) == "scp"
    assert (tmp_path / "there" / "run.py").read_text() == "print('hi')\n"
    assert (tmp_path / "there" / "edgepilot" / "x.py").exists()


def test_a_host_that_is_off_fails_with_ssh_s_reason(ssh_env):
    with pytest.raises(remote.RemoteError, match="bad: checking the folder failed: ssh.*refused"):
        remote.copy_bundle(Path("."), remote.Remote("bad", "x"), log=lambda message: None)


def test_host_specs():
    assert remote.parse_remote("pi@pi5") == remote.Remote("pi@pi5", remote.DEFAULT_FOLDER)
    assert remote.parse_remote("pi@pi5:b/") == remote.Remote("pi@pi5", "b")
    for bad in ("", ":x", "-oProxyCommand=x", "pi@pi 5"):
        with pytest.raises(InputError):
            remote.parse_remote(bad)
    with pytest.raises(InputError, match="names no folder"):
        remote.parse_remote("pi@pi5", default_folder=None)
