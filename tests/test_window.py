"""The live demo's window, for real: OpenCV with windows (its own virtualenv, `make gui-env`)
on a virtual X screen (Xvfb, `make gui-tools`), read back from the screen's framebuffer and
driven by key presses (xdotool). Then the first run of a plain `pip install edgepilot`
(headless OpenCV, a display present): the page, opened in the browser. And the check that
names two OpenCV packages installed side by side.

Every wait is on a state (a window that appeared, a line printed, a picture on screen) with a
generous deadline; no test depends on how many frames a busy machine gets through."""

import ctypes
import ctypes.util
import json
import os
import queue
import re
import select
import shutil
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

from edgepilot.errors import EdgepilotError
from edgepilot.live import window as window_module

ROOT = Path(__file__).resolve().parents[1]
GUI_PYTHON = Path(os.environ.get("EDGEPILOT_GUI_PYTHON", ROOT / ".venv-gui" / "bin" / "python"))
DEADLINE = 60  # seconds
STOP, GO, GREY = (220, 40, 40), (40, 200, 60), (230, 230, 230)  # edgepilot/live/loop.py's overlay


class Child:
    """`edgepilot webcam` in a subprocess; its stderr lines are collected as they come."""

    def __init__(self, python, *args, env=None, cwd=None):
        self.process = subprocess.Popen(
            [str(python), "-m", "edgepilot.cli", "webcam", *args], cwd=cwd, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str) -> re.Match:
        """The first line from now on that matches `pattern`."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.process.poll() is None, f"exited early:\n{self.log()}"
                continue
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r} in {DEADLINE} s:\n{self.log()}")

    def log(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "\n".join(self.seen)

    def finish(self) -> int:
        try:
            return self.process.wait(timeout=DEADLINE)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def poll(condition, what: str):
    """Call `condition()` until it returns something true; that value."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {DEADLINE} s")


# --- a virtual screen ---------------------------------------------------------------------

class _XClientMessageEvent(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
                ("display", ctypes.c_void_p), ("window", ctypes.c_ulong),
                ("message_type", ctypes.c_ulong), ("format", ctypes.c_int),
                ("data", ctypes.c_long * 5)]


class _XEvent(ctypes.Union):
    _fields_ = [("xclient", _XClientMessageEvent), ("pad", ctypes.c_long * 24)]


class Screen:
    """An Xvfb display whose framebuffer is an XWD file (-fbdir), read with numpy."""

    def __init__(self, folder: Path):
        read, write = os.pipe()
        # -displayfd: Xvfb picks a free display number and writes it once it accepts clients.
        # -noreset: no server reset (refusing connections meanwhile) when a client leaves.
        self.process = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24", "-fbdir",
             str(folder), "-nolisten", "tcp", "-noreset"], pass_fds=(write,),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(write)
        # Read up to the newline, and keep the pipe open while Xvfb runs: it may write the
        # number and the newline separately, and a closed pipe is fatal to it.
        self._displayfd, number = read, b""
        while not number.endswith(b"\n"):
            if not select.select([read], [], [], DEADLINE)[0] or not (got := os.read(read, 64)):
                break
            number += got
        number = number.decode().strip()
        if not number:
            self.close()
            raise AssertionError("Xvfb did not start")
        self.display = f":{number}"
        self.framebuffer = folder / "Xvfb_screen0"
        self.env = {**os.environ, "DISPLAY": self.display}
        self.env.pop("QT_QPA_PLATFORM", None)  # a CI's "offscreen" would hide the window

    def close(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._displayfd)

    def grab(self) -> np.ndarray:
        """The whole screen, (H, W, 3) uint8 RGB, from the XWD framebuffer file."""
        data = self.framebuffer.read_bytes()
        header = np.frombuffer(data[:100], ">u4")  # XWDFileHeader: 25 big-endian CARD32s
        size, width, height, byte_order, bpp, stride, ncolors = (
            int(header[i]) for i in (0, 4, 5, 7, 11, 12, 19))
        assert bpp == 32 and tuple(header[14:17]) == (0xFF0000, 0xFF00, 0xFF), header
        offset = size + 12 * ncolors  # then one XWDColor (12 bytes) per colormap entry
        pixels = np.frombuffer(data, "<u4" if byte_order == 0 else ">u4", height * stride // 4,
                               offset).reshape(height, stride // 4)[:, :width]
        return np.stack([(pixels >> 16) & 255, (pixels >> 8) & 255, pixels & 255],
                        axis=-1).astype(np.uint8)

    def xdotool(self, *args) -> str:
        out = subprocess.run(["xdotool", *args], env=self.env, capture_output=True, text=True,
                             timeout=DEADLINE)
        return out.stdout if out.returncode == 0 else ""

    def find_window(self, child: Child, title="^edgepilot$") -> str:
        def found():
            assert child.process.poll() is None, f"exited early:\n{child.log()}"
            return self.xdotool("search", "--onlyvisible", "--name", title).split()
        window = poll(found, "the window did not appear")[0]
        self.xdotool("windowfocus", "--sync", window)
        self.xdotool("mousemove", "1023", "767")  # the X cursor is drawn into the framebuffer
        return window

    def wait_for_overlay(self, window: str) -> None:
        """Until the window shows the overlay. Without a window manager, Qt's
        first paint is now and then lost (the window stays black until its next Expose
        event; measured: 3 runs in 25), so after 3 s of black the window is unmapped and
        mapped again, as a window manager would when it takes the window over."""
        nudged = time.monotonic()

        def overlay():
            nonlocal nudged
            picture = self.window_picture(window)
            if has_overlay(picture):
                return True
            if time.monotonic() - nudged > 3 and not picture.any():
                self.xdotool("windowunmap", "--sync", window)
                self.xdotool("windowmap", "--sync", window)
                nudged = time.monotonic()
            return False
        poll(overlay, "no overlay on screen")

    def window_picture(self, window: str) -> np.ndarray:
        geometry = dict(line.split("=") for line in
                        self.xdotool("getwindowgeometry", "--shell", window).split())
        x, y, w, h = (int(geometry[k]) for k in ("X", "Y", "WIDTH", "HEIGHT"))
        return self.grab()[y:y + h, x:x + w]

    def close_window(self, window: str):
        """What a window manager's close button does: a WM_DELETE_WINDOW message (Xlib
        through ctypes; this xdotool release has no command for it)."""
        x11 = ctypes.CDLL(ctypes.util.find_library("X11"))
        x11.XOpenDisplay.restype = ctypes.c_void_p
        x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
        x11.XInternAtom.restype = ctypes.c_ulong
        x11.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        x11.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long,
                                   ctypes.POINTER(_XEvent)]
        x11.XFlush.argtypes = x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
        connection = x11.XOpenDisplay(self.display.encode())
        assert connection, f"cannot open {self.display}"
        event = _XEvent()
        message = event.xclient
        message.type, message.window, message.format = 33, int(window), 32  # 33: ClientMessage
        message.message_type = x11.XInternAtom(connection, b"WM_PROTOCOLS", 0)
        message.data[0] = x11.XInternAtom(connection, b"WM_DELETE_WINDOW", 0)
        x11.XSendEvent(connection, int(window), 0, 0, ctypes.byref(event))
        x11.XFlush(connection)
        x11.XCloseDisplay(connection)

    def key(self, window: str, name: str):
        self.xdotool("windowfocus", "--sync", window)
        self.xdotool("key", name)


def has_overlay(picture: np.ndarray) -> bool:
    """edgepilot/live/loop.py's overlay: a black band 64 px high over the top, holding the decision
    in its colour and the timings in light grey, with the camera picture below it."""
    if picture.shape[0] < 128 or picture.shape[1] < 320:
        return False
    band, below = picture[:64], picture[64:]
    black = np.all(band == 0, axis=-1).mean()
    decision = max(np.all(band == colour, axis=-1).sum() for colour in (STOP, GO))
    grey = np.all(band == GREY, axis=-1).sum()
    return black > 0.8 and decision >= 100 and grey >= 50 and np.all(below == 0, -1).mean() < 0.5


def same_picture(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal but for a few stray pixels (screen and file are both exact copies here)."""
    return a.shape == b.shape and (np.abs(a.astype(int) - b).max(-1) > 8).mean() < 0.001


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    if not GUI_PYTHON.exists():
        pytest.skip(f"OpenCV with windows has its own virtualenv, which is missing "
                    f"({GUI_PYTHON}): make gui-env")
    missing = [tool for tool in ("Xvfb", "xdotool") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: make gui-tools (needs root)")
    display = Screen(tmp_path_factory.mktemp("xvfb"))
    yield display
    display.close()


# --- the window ---------------------------------------------------------------------------

def test_the_window_shows_the_overlay_and_obeys_its_keys(screen, tmp_path):
    mine = tmp_path / "edgepilot-snapshot-001.png"
    mine.write_bytes(b"the user's own file")
    child = Child(GUI_PYTHON, "--source", "synthetic", env=screen.env, cwd=tmp_path)
    try:
        window = screen.find_window(child)
        screen.wait_for_overlay(window)

        screen.key(window, "space")
        child.wait_for(r"^paused")
        screen.key(window, "s")
        first = Path(child.wait_for(r"^snapshot saved to (.+)$")[1])
        assert first == tmp_path / "edgepilot-snapshot-002.png"  # 001 was taken
        assert mine.read_bytes() == b"the user's own file"
        saved = cv2.cvtColor(cv2.imread(str(first)), cv2.COLOR_BGR2RGB)
        assert has_overlay(saved)
        # Paused: the window holds still on exactly the picture saved, overlay and all...
        poll(lambda: same_picture(screen.window_picture(window), saved),
             "the paused window does not show the snapshot")
        screen.key(window, "S")
        second = Path(child.wait_for(r"^snapshot saved to (.+)$")[1])
        assert second.name == "edgepilot-snapshot-003.png"
        assert np.array_equal(cv2.imread(str(second)), cv2.imread(str(first)))

        # ...and moves again once resumed.
        screen.key(window, "space")
        child.wait_for(r"^resumed")
        poll(lambda: not same_picture(screen.window_picture(window), saved),
             "the window did not move on after resuming")
        poll(lambda: has_overlay(screen.window_picture(window)), "no overlay after resuming")

        screen.key(window, "q")
        assert child.finish() == 0, child.log()
        assert re.search(r"processed \d+ frames", child.log())
    finally:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()
    assert not screen.xdotool("search", "--onlyvisible", "--name", "^edgepilot$").split()


def test_esc_quits_the_window(screen, tmp_path):
    child = Child(GUI_PYTHON, "--source", "synthetic", env=screen.env, cwd=tmp_path)
    window = screen.find_window(child)
    screen.wait_for_overlay(window)
    screen.key(window, "Escape")
    assert child.finish() == 0, child.log()
    assert not list(tmp_path.iterdir())  # nothing saved unasked


def test_closing_the_window_ends_the_demo(screen, tmp_path):
    child = Child(GUI_PYTHON, "--source", "synthetic", env=screen.env, cwd=tmp_path)
    window = screen.find_window(child)
    screen.wait_for_overlay(window)
    screen.close_window(window)
    assert child.finish() == 0, child.log()
    assert re.search(r"processed \d+ frames", child.log())


def test_an_unreachable_display_is_an_error_not_a_crash(screen, tmp_path):
    """Qt aborts the whole process on a DISPLAY it cannot reach (a closed ssh -X session)."""
    env = {**screen.env, "DISPLAY": ":1999"}  # no X server there
    child = Child(GUI_PYTHON, "--source", "synthetic", env=env, cwd=tmp_path)
    assert child.finish() == 1
    assert re.search(r"^error: Cannot reach the display DISPLAY=:1999 .*--serve",
                     child.log(), re.MULTILINE), child.log()


# --- the first run of `pip install edgepilot`: headless OpenCV, a display -------------------

def test_headless_opencv_with_a_display_opens_the_page_in_the_browser(tmp_path):
    assert not window_module.has_gui(), "the main virtualenv is meant to have headless OpenCV"
    browser = tmp_path / "browser"
    browser.write_text('#!/bin/sh\nprintf "%s\\n" "$1" > "$0.tmp" && mv "$0.tmp" "$0.url"\n')
    browser.chmod(0o755)
    env = {**os.environ, "DISPLAY": ":1999", "BROWSER": str(browser)}  # a display; no X needed
    child = Child(sys.executable, "--source", "synthetic", env=env, cwd=tmp_path)
    try:
        line = child.wait_for(r"live page is at (http://127\.0\.0\.1:\d+/): opened in your "
                              r"browser .*edgepilot webcam --window-setup")
        url_file = tmp_path / "browser.url"
        poll(url_file.exists, "the browser was not started")
        url = url_file.read_text().strip()
        assert url == line[1]
        with urllib.request.urlopen(url, timeout=DEADLINE) as page:
            assert "edgepilot live" in page.read().decode()

        def decision():
            with urllib.request.urlopen(url + "state.json", timeout=DEADLINE) as state:
                return json.load(state).get("decision")
        assert poll(decision, "the page never showed a decision") in ("GO", "STOP")
    finally:
        child.process.send_signal(signal.SIGINT)
        code = child.finish()
    assert code == 130, child.log()


def test_without_a_display_the_window_says_what_to_use_instead(monkeypatch):
    if os.name == "nt" or sys.platform == "darwin":
        pytest.skip("os: Windows and macOS always have a screen for OpenCV")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(EdgepilotError, match=r"No display here .*serve=HOST:PORT.*headless=True"):
        window_module.open_window()


# --- one OpenCV, not two -------------------------------------------------------------------

def fake_distribution(folder: Path, name: str, version: str) -> None:
    """What pip leaves in site-packages for an installed package, as metadata sees it."""
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_two_opencv_packages_are_named_with_the_fix(tmp_path):
    version = window_module.opencv_packages()["opencv-python-headless"]
    fake_distribution(tmp_path, "opencv-python", version)  # as if pip installed it too
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "edgepilot.cli", "webcam", "--headless"],
                         env=env, capture_output=True, text=True, timeout=DEADLINE)
    [warning, error] = run.stderr.strip().splitlines()
    assert warning.startswith(f"warning: two OpenCV packages are installed (opencv-python "
                              f"{version} and opencv-python-headless {version})")
    python = re.escape(sys.executable)
    assert re.search(rf"For a window: {python} -m pip uninstall -y opencv-python "
                     rf"opencv-python-headless && {python} -m pip install "
                     rf"opencv-python=={re.escape(version)}  -  without windows: ", warning)
    assert "--headless needs --frames" in error and run.returncode == 1  # the run went on

    setup = subprocess.run([sys.executable, "-m", "edgepilot.cli", "webcam", "--window-setup"],
                           env=env, capture_output=True, text=True, timeout=DEADLINE)
    assert setup.returncode == 0
    assert setup.stdout.splitlines()[1:3] == [
        f"{sys.executable} -m pip uninstall -y opencv-python opencv-python-headless",
        f"{sys.executable} -m pip install opencv-python=={version}"]


def test_window_setup_swaps_headless_for_the_same_version_with_windows():
    assert window_module.window_setup_commands({"opencv-python-headless": "4.10.0.84"}) == [
        f"{sys.executable} -m pip uninstall -y opencv-python-headless",
        f"{sys.executable} -m pip install opencv-python==4.10.0.84"]
    assert window_module.window_setup_commands(
        {"opencv-contrib-python-headless": "4.9.0.80"})[-1].endswith(
        "install opencv-contrib-python==4.9.0.80")
    assert window_module.opencv_conflict({"opencv-python-headless": "5.0.0.93"}) is None


def test_a_cv2_deleted_by_uninstalling_one_of_two_is_an_error_with_the_fix(monkeypatch):
    monkeypatch.setattr(window_module, "opencv_packages", lambda: {"opencv-python": "5.0.0.93"})
    monkeypatch.setattr(window_module, "find_spec", lambda name: None)
    with pytest.raises(window_module.OpenCVConflictError,
                       match=r"^cv2 is missing although opencv-python 5.0.0.93 is "
                             r"installed .* -m pip install --force-reinstall --no-deps "
                             r"opencv-python==5.0.0.93"):
        window_module.check_opencv()
