"""`edgepilot webcam` as users and service managers run it: recordings that hold what was
written (--frames, Ctrl-C, SIGTERM, SIGHUP, a second signal, SIGKILL, a full disk, a stream
that stops), --roi, --smooth, the thread default, --serve on IPv6 and the detector's state.

Every wait is on a state (a file that grew, a line printed) with a generous deadline; no test
depends on how many frames a busy machine gets through. One thread per child reads its stderr
from the start, so no wait blocks past its deadline and no line goes to a second reader; a
child still running when its test ends is killed."""

import json
import os
import queue
import re
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

import edgepilot
from edgepilot.live import webcam as webcam_module
from edgepilot.live.camera import SyntheticSource
from edgepilot.live.loop import decide
from edgepilot.live.web import LiveServer

DEADLINE = 120  # seconds
_children: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_child_left_running():
    """A test that fails half way must not leave an endless `webcam` loading the machine."""
    yield
    while _children:
        process = _children.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=DEADLINE)


def webcam(*args, preexec_fn=None) -> subprocess.Popen:
    """`python -m edgepilot.cli webcam ARGS`; its stderr lines go to `process.lines` (a queue,
    "" at the end) and `process.seen` (all of them), read by one thread from the start."""
    process = subprocess.Popen([sys.executable, "-m", "edgepilot.cli", "webcam",
                                *map(str, args)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    _children.append(process)
    process.lines, process.seen = queue.Queue(), []

    def read() -> None:
        for line in iter(process.stderr.readline, ""):
            process.seen.append(line)
            process.lines.put(line)
        process.lines.put("")

    process.reader = threading.Thread(target=read, daemon=True)
    process.reader.start()
    return process


def stderr_lines(process) -> list[str]:
    """What the child printed, once it has ended (its stderr read to the end)."""
    process.reader.join(timeout=DEADLINE)
    assert not process.reader.is_alive(), "the child's stderr stayed open after it ended"
    return "".join(process.seen).strip().splitlines()


def finish(process) -> tuple[int, list[str]]:
    """Exit code and stderr lines of a child that is ending; one still running after
    DEADLINE is killed and fails the test."""
    try:
        process.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=DEADLINE)
        pytest.fail(f"the process did not end within {DEADLINE} s: {stderr_lines(process)}")
    return process.returncode, stderr_lines(process)


def decoded_frames(path) -> int:
    """Frames a player gets out of the file, by decoding them all (not the header's claim)."""
    video = cv2.VideoCapture(str(path))
    count = 0
    while video.read()[0]:
        count += 1
    video.release()
    return count


def wait_until_recording(process, path, min_bytes=100_000) -> None:
    """Until frames are on disk (more than the container's header, which comes first): the
    live loop, and its signal handling, is running."""
    deadline = time.monotonic() + DEADLINE
    while not (path.is_file() and path.stat().st_size >= min_bytes):
        if process.poll() is not None:
            pytest.fail(f"the process ended before recording: {stderr_lines(process)}")
        assert time.monotonic() < deadline, "the recording never started"
        time.sleep(0.05)


def line_with(process, needle: str) -> str:
    """The next line of the process's stderr holding `needle`; a child that hangs or stays
    silent fails the test at DEADLINE instead of stalling it."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            line = process.lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no line with {needle!r} within {DEADLINE} s")
        if needle in line:
            return line
        assert line, f"the process ended without printing {needle!r}: {process.seen}"


def recorded(line: str) -> int:
    return int(re.search(r"(\d+) frames recorded in", line).group(1))


def test_frames_n_records_exactly_n_frames(tmp_path):
    # --frames counts frames written, not frames inferred: the file holds exactly N.
    out = tmp_path / "out.mp4"
    code, lines = finish(webcam("--headless", "--frames", 45, "--record", out))
    assert code == 0, lines
    assert decoded_frames(out) == 45 and recorded(lines[-1]) == 45
    video = cv2.VideoCapture(str(out))
    assert video.read()[1].shape == (480, 640, 3)
    # The summary counts what --frames counts (issue 35: it said 'processed 46'), and its
    # decisions add up to the frames shown; latencies and CPU are named.
    summary = lines[-1]
    assert summary.startswith("processed 45 frames (") and "run through the model" in summary
    decisions = re.search(r"decisions: (.*?)(;|$)", summary).group(1)
    assert sum(int(part.split()[-1]) for part in decisions.split(", ")) == 45
    assert "inference p50" in summary and "cores busy" in summary


@pytest.mark.parametrize("sig,code,name", [(signal.SIGINT, 130, "Ctrl-C"),
                                           (signal.SIGTERM, 143, "SIGTERM"),
                                           (signal.SIGHUP, 129, "SIGHUP")])
def test_a_signal_stops_promptly_and_finalises_the_recording(tmp_path, sig, code, name):
    out = tmp_path / "out.mp4"
    process = webcam("--headless", "--record", out)  # endless until stopped
    wait_until_recording(process, out)
    process.send_signal(sig)
    returncode, lines = finish(process)
    assert returncode == code, lines
    assert lines[-1].startswith(f"stopped ({name}) after ") and "Traceback" not in lines
    frames = recorded(lines[-1])
    assert frames > 0 and decoded_frames(out) == frames  # finalised: every frame plays


def test_a_killed_process_leaves_a_playable_mkv(tmp_path):
    # SIGKILL (the OOM killer, a power cut) cannot be caught: Matroska needs no finalising.
    out = tmp_path / "out.mkv"
    process = webcam("--headless", "--record", out)
    wait_until_recording(process, out, min_bytes=300_000)  # several frames on disk
    process.kill()
    finish(process)
    assert decoded_frames(out) > 0


def test_a_second_signal_stops_at_once(tmp_path):
    # The first signal asks the loop to stop at the next frame and report; a second one,
    # arriving before that stop is done, ends the run there: "interrupted", no report. The
    # child is paused while both are sent, so both are pending when it resumes, long before
    # the first one's orderly stop (threads joined, file finalised) can be over.
    out = tmp_path / "out.mkv"
    process = webcam("--headless", "--record", out)
    wait_until_recording(process, out)
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGCONT)
    returncode, lines = finish(process)
    names = {130: "Ctrl-C", 143: "SIGTERM"}
    assert returncode in names and lines[-1] == f"interrupted ({names[returncode]})", lines
    assert not any(line.startswith("stopped (") for line in lines), lines
    assert "Traceback" not in "\n".join(lines)


def complete_avi_frames(path) -> int:
    """Video chunks wholly on disk in an AVI's `movi` list, read from the file's own chunk
    headers (a killed writer leaves the RIFF sizes unset and may cut the last chunk)."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"AVI " and b"movi" in data, data[:16]
    pos, count = data.index(b"movi") + 4, 0
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if tag == b"LIST":  # a list's header only; its chunks follow
            pos += 12
            continue
        if pos + 8 + size > len(data):
            break
        count += tag[2:] in (b"dc", b"db")  # compressed or uncompressed video
        pos += 8 + size + (size & 1)
    return count


def test_a_killed_process_leaves_an_avi_playable_up_to_its_last_frame(tmp_path):
    # Like Matroska, AVI needs no finalising: every frame wholly on disk plays.
    out = tmp_path / "out.avi"
    process = webcam("--headless", "--record", out)
    wait_until_recording(process, out, min_bytes=300_000)
    process.kill()
    finish(process)
    played = decoded_frames(out)
    assert played > 0
    on_disk = complete_avi_frames(out)
    assert played >= on_disk > 0, (played, on_disk)


def _file_size_limit(limit: int):
    def apply():  # in the child: a "disk" that is full after `limit` bytes of one file
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_is_an_error_not_a_silent_empty_video(tmp_path):
    out = tmp_path / "out.mp4"
    process = webcam("--headless", "--frames", 300, "--record", out,
                     preexec_fn=_file_size_limit(300_000))
    code, lines = finish(process)
    assert code == 1, lines
    assert re.fullmatch(r"error: (Writing the video '.*out\.mp4' failed after \d+ frames|The "
                        r"video '.*out\.mp4' is damaged after \d+ frames were written): is the "
                        r"disk full\?", lines[-1]), lines
    assert not any(line.startswith("processed") for line in lines)


def test_a_stream_that_stops_ends_with_a_message_and_keeps_the_recording(tmp_path):
    # A real network stream (MJPEG over HTTP) that goes away mid-recording.
    camera = LiveServer("127.0.0.1", 0).start()
    source = SyntheticSource(width=320, height=240)
    publishing = threading.Event()
    publishing.set()

    def publish():
        while publishing.is_set():
            camera.publish(source.read(), {})
            time.sleep(1 / 30)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    out = tmp_path / "out.mp4"
    try:
        process = webcam("--source", camera.url + "stream.mjpg", "--headless", "--record", out)
        wait_until_recording(process, out)
    finally:
        publishing.clear()
        camera.close()  # the camera goes away
    code, lines = finish(process)
    assert code == 1, lines
    assert re.fullmatch(r"error: http://.*: the stream stopped delivering frames \(3 retries "
                        r"failed\); \d+ frames recorded in .*out\.mp4", lines[-1]), lines
    frames = recorded(lines[-1])
    assert frames > 0 and decoded_frames(out) == frames


def test_roi_is_drawn_and_bad_options_and_sources_are_one_line_errors(tmp_path):
    out = tmp_path / "roi.mp4"
    code, lines = finish(webcam("--headless", "--frames", 3, "--roi", "200,40,160,320",
                                "--record", out))
    assert code == 0, lines
    frame = cv2.cvtColor(cv2.VideoCapture(str(out)).read()[1], cv2.COLOR_BGR2RGB)
    edge = frame[100:340, 199:202].reshape(-1, 3).mean(axis=0)  # the box's left side
    assert np.abs(edge - (255, 255, 0)).max() < 40, edge  # drawn cyan, where the ROI is
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    for args, needle in (
        (["--roi", "600,0,100,100"], "does not fit in the 640x480 frame"),
        (["--roi", "1,2,3"], "--roi takes x,y,w,h"),
        (["--smooth", "0"], "must be 1 or more"),
        (["--record", tmp_path / "x.txt"], "use a .mp4 name"),
        (["--record", tmp_path], "is a folder"),
        (["--record", tmp_path / "missing" / "x.mp4"], "Folder does not exist"),
        (["--serve", "::1:8080"], "IPv6 address in brackets"),
        (["--source", "7"], "No camera at index 7"),  # and no OpenCV/FFmpeg probe notes
        (["--source", notes], "Cannot open"),
    ):
        code, lines = finish(webcam("--headless", "--frames", 1, *args))
        assert code == 1 and len(lines) == 1 and needle in lines[0], (args, lines)


@pytest.mark.parametrize("cores", [{0, 1, 2, 3}, {0}])
def test_the_model_threads_are_measured_and_do_not_spin_by_default(monkeypatch, cores):
    """Frames come at the camera's pace: threads by measurement (`auto`), no spinning
    workers; the start-up line says what `auto` chose, never more than the cores allowed."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores, raising=False)
    asked, real_load = [], edgepilot.load

    def load(path, **options):
        asked.append((options["threads"], options.get("spin")))
        return real_load(path, **options)

    monkeypatch.setattr(edgepilot, "load", load)
    lines = []
    webcam_module.run_webcam(headless=True, frames=1, log=lines.append)
    assert asked == [("auto", False)]
    chosen = re.search(r"(\d+) model threads? \(auto\)", lines[0])
    assert chosen and 1 <= int(chosen.group(1)) <= len(cores), lines[0]


def test_serve_on_ipv6_loopback():
    try:
        import socket

        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("os: no IPv6 loopback on this machine")
    process = webcam("--serve", "[::1]:0")
    try:
        line = line_with(process, "serving the live page on")
        url = re.search(r"(http://\[::1\]:\d+/)", line).group(1)
        with urllib.request.urlopen(url, timeout=DEADLINE) as page:
            assert page.status == 200 and b"edgepilot live" in page.read()
    finally:
        process.send_signal(signal.SIGINT)
        code, lines = finish(process)
    assert code == 130 and lines[-1].startswith("stopped (Ctrl-C)"), lines


def test_serve_with_a_token_answers_only_requests_that_carry_it():
    import urllib.error

    process = webcam("--serve", "127.0.0.1:0", "--token", "s3cret-token")
    try:
        line = line_with(process, "serving the live page on")
        url = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=s3cret-token", line).group(1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "state.json", timeout=DEADLINE)
        assert refused.value.code == 401
        with urllib.request.urlopen(url + "state.json?token=s3cret-token",
                                    timeout=DEADLINE) as state:
            assert state.status == 200
    finally:
        process.send_signal(signal.SIGINT)
        finish(process)


def street_lights() -> list[tuple[float, float]]:
    """Where the lights of the detector's synthetic street are: its frames in the three
    states differ only in the lamps, so each group of changing pixels is one light (centre
    x, y). From the scene itself, not from any model."""
    base = SyntheticSource(scene="street").base
    red, green, yellow = (base[name].astype(np.int16) for name in ("red", "green", "yellow"))
    changed = np.zeros(red.shape[:2], np.uint8)
    for a, b in ((red, green), (green, yellow), (yellow, red)):
        changed |= (np.abs(a - b).max(axis=2) > 30).astype(np.uint8)
    # A light's lamps lie a few pixels apart; different lights do not touch.
    changed = cv2.dilate(changed, np.ones((15, 15), np.uint8))
    count, _, _, centres = cv2.connectedComponentsWithStats(changed)
    return [tuple(c) for c in centres[1:count]]


def check_lights(state: dict) -> None:
    """The state's `lights`: each a box in the 640x480 frame, a state and a score; the one
    that decides is the one the label, score and decision come from."""
    lights = state["lights"]
    assert isinstance(lights, list), state
    for light in lights:
        x1, y1, x2, y2 = light["box"]
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480, light
        assert light["state"] in ("red", "yellow", "green") and 0 < light["score"] <= 1, light
    if not lights:
        assert state["label"] == "none", state
        return
    deciding = [light for light in lights if light["decides"]]
    assert len(deciding) == 1, lights
    assert state["label"] == deciding[0]["state"], state
    assert abs(state["score"] - deciding[0]["score"]) <= 1e-3, state
    assert state["decision"] == decide(state["label"]), state


def test_the_detectors_page_state_lists_every_light():
    # The shipped detector on the generated street, which has two or more lights: the page's
    # JSON lists them all (a box around each light of the scene), not just the deciding one.
    truth = street_lights()
    assert len(truth) >= 2, truth
    process = webcam("stoplight-detector", "--source", "synthetic", "--serve", "127.0.0.1:0")
    try:
        line = line_with(process, "serving the live page on")
        url = re.search(r"(http://127\.0\.0\.1:\d+/)", line).group(1) + "state.json"

        def covered(state) -> bool:
            boxes = [light["box"] for light in state["lights"]]
            return all(any(x1 <= x <= x2 and y1 <= y <= y2 for x1, y1, x2, y2 in boxes)
                       for x, y in truth)

        deadline, state = time.monotonic() + DEADLINE, {}
        while not (state and covered(state)):
            assert process.poll() is None, stderr_lines(process)
            assert time.monotonic() < deadline, f"never listed every light: {state}, {truth}"
            time.sleep(0.2)
            try:
                with urllib.request.urlopen(url, timeout=DEADLINE) as answer:
                    state = json.loads(answer.read())
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"the demo ended: {stderr_lines(process)}")
                raise
            if state:  # {} until the first frame is out
                check_lights(state)
        assert len(state["lights"]) >= len(truth)
    finally:
        process.send_signal(signal.SIGINT)
        code, lines = finish(process)
    assert code == 130 and lines[-1].startswith("stopped (Ctrl-C)"), lines
