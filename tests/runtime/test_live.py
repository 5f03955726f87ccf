"""The live demo: synthetic source, newest-frame capture, smoothing, decisions, recording,
the web page in headless Chromium, and clean failures."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

import edgepilot
from edgepilot.assets import shipped_model
from edgepilot.errors import EdgepilotError, InputError
from edgepilot.runtime.camera import FrameGrabber, SourceError, SyntheticSource, open_source
from edgepilot.runtime.live import Smoother, decide, parse_roi, run_live
from edgepilot.runtime.web import LiveServer, parse_address

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_synthetic_source_cycles_red_green_yellow_deterministically():
    a, b = SyntheticSource(fps=10, period=1.0), SyntheticSource(fps=10, period=1.0)
    assert [a.truth(i) for i in (0, 9, 10, 20, 30)] == ["red", "red", "green", "yellow", "red"]
    np.testing.assert_array_equal(a.read(), b.read())
    assert a.read().shape == (480, 640, 3)


def test_grabber_keeps_only_the_newest_frame():
    source = SyntheticSource(fps=1000, frames=50)
    with FrameGrabber(source, pace=False) as grabber:
        time.sleep(0.5)  # a slow consumer: the grabber has raced ahead
        frame_id, _, _ = grabber.latest()
        assert frame_id == 50  # the newest, not the first
        assert grabber.latest(after=frame_id) is None and grabber.finished_normally


def test_smoothing_needs_k_frames_to_flip():
    smooth = Smoother(3)
    red, green = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert smooth(red).argmax() == 0
    assert smooth(green).argmax() == 0  # one odd frame does not flip it
    assert smooth(green).argmax() == 1
    with pytest.raises(InputError):
        Smoother(0)
    assert decide("green") == "GO" and decide("yellow") == decide("red") == "STOP"


def test_smoothed_decision_is_right_after_each_change_settles():
    model = edgepilot.load(shipped_model(), threads=1)
    source = SyntheticSource(fps=10, period=2.0, frames=120)  # 6 cycles of 3 states
    k = 5
    decisions = {}
    # Delivered at 100 frames/s, faster than the scene's 10: quick, yet slow enough that
    # every frame is processed, so the truth of each frame id is known.
    with FrameGrabber(source, pace=True, rate=100) as grabber:
        state = run_live(model, grabber, smooth=k,
                         on_frame=lambda f, s: decisions.__setitem__(s.frame_id, s.decision))
    truth = SyntheticSource(fps=10, period=2.0)
    settled = [i for i in decisions if all(truth.truth(i - 1 - j) == truth.truth(i - 1)
                                           for j in range(k))]
    correct = np.mean([decisions[i] == decide(truth.truth(i - 1)) for i in settled])
    assert len(settled) > 60 and correct >= 0.98, f"{correct:.3f} over {len(settled)} frames"
    assert state.processed == len(decisions)


def test_roi_and_address_parsing():
    assert parse_roi("10,20,100,200", 640, 480) == (10, 20, 100, 200)
    for bad in ("10,20,100", "a,b,c,d", "600,0,100,100"):
        with pytest.raises(InputError):
            parse_roi(bad, 640, 480)
    assert parse_address("8080") == ("127.0.0.1", 8080)  # localhost unless asked
    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    with pytest.raises(InputError):
        parse_address("host:http")


def test_bad_sources(tmp_path):
    with pytest.raises(SourceError, match="No camera at index 7"):
        open_source("7")
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(SourceError):
        open_source(str(tmp_path / "notes.mp4"))
    with pytest.raises(InputError, match="not a file, a camera index"):
        open_source(str(tmp_path / "missing.mp4"))


def test_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(EdgepilotError, match="port in use"):
            LiveServer("127.0.0.1", port)


def webcam(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "edgepilot.cli", "webcam", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_headless_recording_is_a_playable_video(tmp_path):
    result = webcam("--headless", "--frames", 45, "--save", tmp_path / "out.mp4")
    _, err = result.communicate(timeout=120)
    assert result.returncode == 0, err
    video = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 45
    assert video.read()[1].shape == (480, 640, 3)


def test_a_stream_that_stops_midway_saves_what_was_recorded(tmp_path):
    # A video file that ends is a normal end; a stream that stops is retried, then fails.
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30, (320, 240))
    source = SyntheticSource(width=320, height=240, frames=20)
    for _ in range(20):
        writer.write(cv2.cvtColor(source.read(), cv2.COLOR_RGB2BGR))
    writer.release()
    stream = open_source(str(clip))
    stream.is_file = False  # behave like a network stream
    stream.reopen = lambda: (_ for _ in ()).throw(SourceError("gone"))
    model = edgepilot.load(shipped_model(), threads=1)
    with FrameGrabber(stream, pace=False, retries=2, retry_delay=0.01) as grabber:
        state = run_live(model, grabber)
    assert grabber.ended.startswith("the stream stopped delivering frames (2 retries")
    assert not grabber.finished_normally and state.processed >= 1


def test_ctrl_c_stops_threads_and_finalises_the_file(tmp_path):
    process = webcam("--headless", "--save", tmp_path / "out.mp4")
    time.sleep(6)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert "stopped (Ctrl-C)" in err and "Traceback" not in err
    video = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) > 10  # finalised: readable


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package chromium)")
def test_browser_page_shows_the_stream_and_the_label_changes():
    playwright = pytest.importorskip("playwright.sync_api")
    port = free_port()
    process = webcam("--serve", f"127.0.0.1:{port}", "--frames", 600)
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(100):  # wait for the server
            try:
                urllib.request.urlopen(url + "state.json", timeout=1).read()
                break
            except OSError:
                time.sleep(0.2)
        # The MJPEG endpoint streams several distinct JPEG frames.
        with urllib.request.urlopen(url + "stream.mjpg", timeout=5) as stream:
            chunk = b""
            while chunk.count(b"--frame") < 4:
                chunk += stream.read(4096)
        assert chunk.count(b"\xff\xd8") >= 3
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync"])
            page = browser.new_page(viewport={"width": 900, "height": 900})
            page.goto(url)
            page.wait_for_function(
                "document.getElementById('stream').naturalWidth === 640", timeout=15_000)
            # red -> green -> yellow: the page saw the light cycle.
            page.wait_for_function(
                "document.getElementById('history').textContent.split(' → ').length >= 3",
                timeout=20_000)
            history = page.inner_text("#history").split(" → ")
            assert {"red", "green", "yellow"} <= set(history)
            decision = page.inner_text("#decision")
            assert decision in ("GO", "STOP")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "webcam_page.png"))
            browser.close()
        state = json.loads(urllib.request.urlopen(url + "state.json").read())
        assert state["fps"] > 5 and state["processed"] > 30
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
