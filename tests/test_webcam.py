"""`edgepilot webcam` as users and service managers run it: recordings that hold what was
written (--frames, Ctrl-C, SIGTERM, SIGKILL, a full disk, a stream that stops), --roi,
--smooth, the thread default and --serve on IPv6.

Every wait is on a state (a file that grew, a line printed) with a generous deadline; no test
depends on how many frames a busy machine gets through."""

import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

import edgepilot
from edgepilot import webcam as webcam_module
from edgepilot.runtime.camera import SyntheticSource
from edgepilot.runtime.web import LiveServer

DEADLINE = 120  # seconds


def webcam(*args, preexec_fn=None):
    return subprocess.Popen([sys.executable, "-m", "edgepilot.cli", "webcam", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec_fn)


def finish(process) -> tuple[int, list[str]]:
    _, err = process.communicate(timeout=DEADLINE)
    return process.returncode, err.strip().splitlines()


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
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the recording never started"
        time.sleep(0.05)


def line_with(process, needle: str) -> str:
    """The first line of the process's stderr holding `needle`, read in a thread so a child
    that hangs or stays silent fails the test at DEADLINE instead of stalling it."""
    import queue

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in iter(process.stderr.readline, "")]
                     + [lines.put("")], daemon=True).start()
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no line with {needle!r} within {DEADLINE} s")
        if needle in line:
            return line
        assert line, f"the process ended without printing {needle!r}"


def recorded(line: str) -> int:
    return int(re.search(r"(\d+) frames recorded in", line).group(1))


def test_frames_n_records_exactly_n_frames(tmp_path):
    # --frames counts frames written, not frames inferred: the file holds exactly N.
    out = tmp_path / "out.mp4"
    code, lines = finish(webcam("--headless", "--frames", 45, "--save", out))
    assert code == 0, lines
    assert decoded_frames(out) == 45 and recorded(lines[-1]) == 45
    video = cv2.VideoCapture(str(out))
    assert video.read()[1].shape == (480, 640, 3)


@pytest.mark.parametrize("sig,code,name", [(signal.SIGINT, 130, "Ctrl-C"),
                                           (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_stops_promptly_and_finalises_the_recording(tmp_path, sig, code, name):
    out = tmp_path / "out.mp4"
    process = webcam("--headless", "--save", out)  # endless until stopped
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
    process = webcam("--headless", "--save", out)
    wait_until_recording(process, out, min_bytes=300_000)  # several frames on disk
    process.kill()
    process.communicate(timeout=DEADLINE)
    assert decoded_frames(out) > 0


def _file_size_limit(limit: int):
    def apply():  # in the child: a "disk" that is full after `limit` bytes of one file
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_is_an_error_not_a_silent_empty_video(tmp_path):
    out = tmp_path / "out.mp4"
    process = webcam("--headless", "--frames", 300, "--save", out,
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
        process = webcam("--source", camera.url + "stream.mjpg", "--headless", "--save", out)
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
                                "--save", out))
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
        (["--save", tmp_path / "x.txt"], "use a .mp4 name"),
        (["--save", tmp_path], "is a folder"),
        (["--save", tmp_path / "missing" / "x.mp4"], "Folder does not exist"),
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
