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
from edgepilot.errors import EdgepilotError, InputError, ModelFileError
from edgepilot.runtime.camera import FrameGrabber, SourceError, SyntheticSource, open_source
from edgepilot.runtime.image import preprocess
from edgepilot.runtime.live import Smoother, decide, model_input, parse_roi, run_live
from edgepilot.runtime.newest import Newest
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
        frame_id = grabber.latest().frame_id
        assert frame_id == 50  # the newest, not the first
        assert grabber.latest(after=frame_id) is None and grabber.finished_normally


def test_newest_mailbox_hands_over_only_the_newest_item():
    box = Newest()
    with pytest.raises(TimeoutError):
        box.get(timeout=0.01)
    box.put("a")
    box.put("b")
    assert box.get() == (2, "b")  # "a" was replaced, not queued
    with pytest.raises(TimeoutError):
        box.get(after=2, timeout=0.01)
    box.close("done")
    assert box.get(after=2) is None and box.closed == "done"


def test_the_capture_thread_prepares_the_model_input():
    model = edgepilot.load(shipped_model(), threads=1)
    prepare = model_input(model.meta, roi=(100, 50, 200, 300))
    source = SyntheticSource(frames=5)
    with FrameGrabber(source, pace=False, prepare=prepare) as grabber:
        got = grabber.latest()
        assert got.input.shape == model.meta.input_shape and got.prepare_s > 0
        crop = got.frame[50:350, 100:300]
        np.testing.assert_array_equal(got.input, preprocess(crop, model.meta))


def test_a_failing_prepare_is_raised_to_the_consumer():
    def prepare(frame):
        raise InputError("this frame cannot be prepared")

    with FrameGrabber(SyntheticSource(frames=5), pace=False, prepare=prepare) as grabber:
        with pytest.raises(InputError, match="cannot be prepared"):
            grabber.latest()
        assert grabber.ended.startswith("preparing a frame failed")


def test_a_slow_display_does_not_slow_inference():
    # The output stage takes 50 ms a frame; the model keeps up with a 100 frames/s source.
    model = edgepilot.load(shipped_model(), threads=1)
    with FrameGrabber(SyntheticSource(frames=100), pace=True, rate=100) as grabber:
        state = run_live(model, grabber, on_frame=lambda f, s: time.sleep(0.05))
    assert state.processed >= 90, state.processed
    assert state.shown <= state.processed / 2  # it showed the newest, it did not queue
    assert len(state.timings["inference"]) == state.processed


def test_smoothing_needs_k_frames_to_flip():
    smooth = Smoother(3)
    red, green = [1.0, 0.0], [0.0, 1.0]
    assert smooth(red) == [1.0, 0.0]
    assert smooth(green) == [0.5, 0.5]  # one odd frame does not flip it
    assert smooth(green) == [1 / 3, 2 / 3]
    assert smooth(green) == [0.0, 1.0]  # the window holds the last 3 only
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
    assert state.shown == len(decisions) and len(decisions) >= 0.9 * state.processed


def test_an_error_in_the_inference_thread_is_raised_to_the_caller():
    shipped = edgepilot.load(shipped_model(), threads=1)

    class Broken:  # a model whose every run fails
        meta = shipped.meta

        def __call__(self, x):
            raise ModelFileError("the model file is damaged")

    with FrameGrabber(SyntheticSource(frames=50), pace=False) as grabber:
        with pytest.raises(ModelFileError, match="damaged"):
            run_live(Broken(), grabber)


def test_the_server_streams_the_newest_published_frame_as_jpeg():
    server = LiveServer("127.0.0.1", 0).start()
    try:
        blue = np.zeros((48, 64, 3), np.uint8)
        blue[..., 2] = 200
        server.publish(np.zeros_like(blue), {"label": "red"})
        server.publish(blue, {"label": "green"})  # replaces the first: viewers get this one
        state = json.loads(urllib.request.urlopen(server.url + "state.json").read())
        assert state == {"label": "green"}
        with urllib.request.urlopen(server.url + "stream.mjpg", timeout=5) as stream:
            chunk = b""
            while b"\xff\xd9" not in chunk:
                chunk += stream.read1(1024)
        jpeg = chunk[chunk.index(b"\xff\xd8"):chunk.index(b"\xff\xd9") + 2]
        frame = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR),
                             cv2.COLOR_BGR2RGB)
        assert frame.shape == blue.shape and np.abs(frame.astype(int) - blue).max() < 8
    finally:
        server.close()


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
