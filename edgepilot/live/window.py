"""The live demo's window (OpenCV HighGUI), and the start-up check that exactly one OpenCV
package provides `cv2`.

OpenCV ships four wheels that all install the same `cv2` folder: opencv-python and
opencv-contrib-python (with windows), and their -headless builds (no windows, no GUI libraries;
what `pip install edgepilot` brings). With two of them installed, which one runs depends on the
install order, and uninstalling either deletes files the other needs. pip cannot swap one for
the other through an extra, so `edgepilot webcam --window-setup` prints the exact commands, and
`check_opencv()` names a conflict and its fix before anything imports `cv2`.

Keys in the window: q or Esc quits, space pauses (freezes the picture; the model keeps
running and a recording keeps recording), s saves the picture on screen as a PNG in the
current folder, never over an existing file. Closing the window quits too.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import sys
from collections.abc import Callable
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError

__all__ = ["OpenCVConflictError", "Window", "check_opencv", "open_page", "open_window",
           "opencv_conflict", "opencv_packages", "window_setup", "window_setup_commands"]

GUI_PACKAGES = ("opencv-python", "opencv-contrib-python")
HEADLESS_PACKAGES = ("opencv-python-headless", "opencv-contrib-python-headless")
TITLE = "edgepilot"
KEY_QUIT = {ord("q"), ord("Q"), 27}  # 27: Esc
KEY_PAUSE = {ord(" ")}
KEY_SNAPSHOT = {ord("s"), ord("S")}


class OpenCVConflictError(EdgepilotError):
    """Two OpenCV packages share `cv2`, or one of them lost its files: the message says the fix."""


def opencv_packages() -> dict[str, str]:
    """The OpenCV wheels installed in this environment: name -> version."""
    found = {}
    for name in GUI_PACKAGES + HEADLESS_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _pip(*args: str) -> str:
    """A pip command for this interpreter, ready to paste into a shell."""
    if os.name == "nt":  # cmd.exe and PowerShell: double quotes around a path with spaces
        python = f'"{sys.executable}"' if " " in sys.executable else sys.executable
    else:
        python = shlex.quote(sys.executable)
    return " ".join([python, "-m", "pip", *args])


def window_setup_commands(packages: dict[str, str] | None = None) -> list[str]:
    """The commands that leave exactly one OpenCV, the one with windows, at the same version.

    Everything OpenCV is uninstalled first, then the GUI build installed on its own, so no
    file of the headless build is left behind in `cv2`."""
    packages = opencv_packages() if packages is None else packages
    keep = "opencv-contrib-python" if any("contrib" in n for n in packages) else "opencv-python"
    version = packages.get(keep) or packages.get(keep + "-headless") or \
        next(iter(packages.values()), None)
    commands = []
    if packages:
        commands.append(_pip("uninstall", "-y", *sorted(packages)))
    commands.append(_pip("install", f"{keep}=={version}" if version else keep))
    return commands


def opencv_conflict(packages: dict[str, str] | None = None) -> str | None:
    """What is wrong with the installed OpenCV packages, with the fix; None when all is well."""
    packages = opencv_packages() if packages is None else packages
    if len(packages) > 1:
        listed = " and ".join(f"{name} {version}" for name, version in sorted(packages.items()))
        return (f"two OpenCV packages are installed ({listed}): both provide cv2, so which one "
                "runs depends on the install order. Keep one. For a window: "
                f"{' && '.join(window_setup_commands(packages))}  -  without windows: "
                f"{' && '.join(_headless_commands(packages))}")
    spec = find_spec("cv2")
    if packages and (spec is None or spec.origin is None):  # gone, or a folder of leftovers
        [(name, version)] = packages.items()
        return (f"cv2 is missing although {name} {version} is installed (uninstalling one "
                "of two OpenCV packages deletes the files they share). Reinstall it: "
                + _pip("install", "--force-reinstall", "--no-deps", f"{name}=={version}"))
    return None


def check_opencv(log: Callable[[str], None] = print) -> None:
    """Before anything imports cv2: warn (via `log`) when two OpenCV packages are installed,
    and raise `OpenCVConflictError` when cv2 is broken. Reads package metadata only, so it
    works even where `import cv2` would fail."""
    packages = opencv_packages()
    problem = opencv_conflict(packages)
    if problem and len(packages) > 1:
        log(f"warning: {problem}")
    elif problem:
        raise OpenCVConflictError(problem)


def window_setup() -> str:
    """What `edgepilot webcam --window-setup` prints: the OpenCV installed, and the commands
    that swap it for the build with windows (or that nothing needs doing)."""
    packages = opencv_packages()
    problem = opencv_conflict(packages)
    if not problem and len(packages) == 1 and next(iter(packages)) in GUI_PACKAGES:
        [(name, version)] = packages.items()
        return f"{name} {version} can open windows: nothing to do"
    found = ", ".join(f"{n} {v}" for n, v in packages.items()) or "no OpenCV"
    lines = [f"installed: {found}. For a window, run:", *window_setup_commands(packages),
             "(pip check will then say edgepilot wants opencv-python-headless: that is "
             "expected; after upgrading edgepilot, run this again)"]
    return "\n".join(lines)


def _headless_commands(packages: dict[str, str]) -> list[str]:
    keep = ("opencv-contrib-python-headless" if any("contrib" in n for n in packages)
            else "opencv-python-headless")
    version = packages.get(keep) or next(iter(packages.values()))
    return [_pip("uninstall", "-y", *sorted(packages)), _pip("install", f"{keep}=={version}")]


def has_gui() -> bool:
    """Whether the installed OpenCV can open windows (no window is opened to find out)."""
    import cv2

    ui = getattr(cv2, "currentUIFramework", None)  # OpenCV >= 4.6: '' when built without
    if ui is not None:
        return bool(ui()) and ui().upper() != "NONE"
    return not re.search(r"^\s*GUI:\s*NONE\s*$", cv2.getBuildInformation(), re.MULTILINE)


def open_window(log: Callable[[str], None] = print) -> Window | None:
    """A window on this machine's screen, or None when the installed OpenCV cannot open one
    (the headless build): the caller shows the page instead (`open_page`). Raises when
    there is no screen, or the X display cannot be reached (Qt would abort the process)."""
    x11 = os.name != "nt" and sys.platform != "darwin"  # elsewhere OpenCV draws natively
    display = os.environ.get("DISPLAY", "")
    if x11 and not display and not os.environ.get("WAYLAND_DISPLAY"):
        raise EdgepilotError("No display here (DISPLAY is not set): use serve=HOST:PORT for "
                             "a web page, or headless=True with frames=N and record=out.mp4")
    if not has_gui():
        return None
    if x11 and not display:
        raise EdgepilotError("OpenCV's windows need X11, and DISPLAY is not set (Wayland "
                             "without XWayland?): use serve=HOST:PORT for a web page")
    match = re.fullmatch(r"(?P<host>[^:]*):(?P<number>\d+)(?:\.\d+)?", display)
    if x11 and match and not _x_server_answers(match["host"], int(match["number"])):
        raise EdgepilotError(f"Cannot reach the display DISPLAY={display} (is the X server "
                             "running, the ssh X forwarding still open?): use "
                             "serve=HOST:PORT for a web page instead")
    return Window(log=log)


def open_page(url: str, log: Callable[[str], None] = print) -> bool:
    """Open the live page in the user's browser (the fallback when OpenCV has no windows)
    and say so in one line. Returns whether a browser took it."""
    import webbrowser

    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    where = "opened in your browser" if opened else "open it in a browser"
    log(f"this OpenCV has no windows (the headless build), so the live page is at {url}: "
        f"{where} (Ctrl-C to stop; for a window: edgepilot webcam --window-setup)")
    return opened


def _x_server_answers(host: str, number: int) -> bool:
    if host in ("", "unix"):
        path = f"/tmp/.X11-unix/X{number}"
        addresses = [path, "\0" + path] if sys.platform.startswith("linux") else [path]
        for address in addresses:  # the socket file, then Linux's abstract namespace
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                try:
                    sock.connect(address)
                    return True
                except OSError:
                    continue
        if host == "unix":
            return False
        host = "localhost"
    try:
        socket.create_connection((host, 6000 + number), timeout=2).close()
        return True
    except OSError:
        return False


def _quiet_qt_fonts() -> None:
    """The opencv-python wheels bundle Qt without fonts, and Qt warns about it on every
    start: point it at the system fonts when they are there."""
    fonts = Path("/usr/share/fonts/truetype/dejavu")
    if "QT_QPA_FONTDIR" not in os.environ and fonts.is_dir():
        os.environ["QT_QPA_FONTDIR"] = str(fonts)


class Window:
    """A resizable window showing the annotated frames, with keyboard controls.

    Call it with each annotated RGB frame; it returns True when the user asked to quit.
    `snapshots` is the folder snapshots are saved in (default: the current folder).

    Example:
        window = Window(log=print)
        quit_now = window(frame_rgb, state)
        window.close()
    """

    def __init__(self, log: Callable[[str], None] = print, snapshots: str | Path = "."):
        import cv2

        self.cv2, self.log, self.snapshots = cv2, log, Path(snapshots)
        self.paused = False
        self.closed = False
        self._shown: np.ndarray | None = None  # (H, W, 3) uint8 BGR: what is on screen
        _quiet_qt_fonts()
        try:
            cv2.namedWindow(TITLE, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO
                            | cv2.WINDOW_GUI_NORMAL)
        except cv2.error as err:
            raise EdgepilotError(f"OpenCV could not open a window: {err.err}. Use "
                                 "serve=HOST:PORT for a web page instead") from err

    def __call__(self, frame_rgb: np.ndarray, state=None) -> bool:
        cv2 = self.cv2
        if not self.paused or self._shown is None:
            if self._shown is None:  # start at the frame's size: a screen pixel per pixel
                cv2.resizeWindow(TITLE, frame_rgb.shape[1], frame_rgb.shape[0])
            self._shown = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
            cv2.imshow(TITLE, self._shown)
        key = cv2.waitKey(1)
        if key != -1:
            key &= 0xFF
            if key in KEY_QUIT:
                return True
            if key in KEY_PAUSE:
                self.paused = not self.paused
                self.log("paused: space resumes, s saves this picture" if self.paused
                         else "resumed")
            elif key in KEY_SNAPSHOT:
                self.snapshot()
        # The window's close button: the window is gone, so is the demo. (Qt raises once its
        # last window closed; other back-ends report the property as below 1.)
        try:
            return cv2.getWindowProperty(TITLE, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:
            return True

    def snapshot(self) -> Path | None:
        """Save the picture on screen as the next free snapshot-NNN.png; never overwrites."""
        ok, png = self.cv2.imencode(".png", self._shown)
        if not ok:
            self.log("snapshot not saved: PNG encoding failed")
            return None
        for number in range(1, 100_000):
            path = (self.snapshots / f"edgepilot-snapshot-{number:03d}.png").absolute()
            try:
                with open(path, "xb") as file:  # x: fails if the file exists, atomically
                    file.write(png.tobytes())
            except FileExistsError:
                continue
            except OSError as err:
                self.log(f"snapshot not saved: cannot write {path}: {err.strerror}")
                return None
            self.log(f"snapshot saved to {path}")
            return path
        self.log(f"snapshot not saved: {self.snapshots.absolute()} is full of snapshots")
        return None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.cv2.destroyAllWindows()
            self.cv2.waitKey(1)  # lets the GUI library really take the window down
