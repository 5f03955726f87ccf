"""A small web page for a headless Raspberry Pi: the annotated MJPEG stream, and the current
label, decision, FPS and latency from a JSON endpoint. Standard library only.

    GET /             the page
    GET /stream.mjpg  multipart JPEG stream of annotated frames
    GET /state.json   the latest LiveState
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from edgepilot.errors import EdgepilotError, InputError
from edgepilot.runtime.newest import Newest

__all__ = ["LiveServer", "parse_address"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgepilot live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font-family: system-ui, sans-serif; background: #111; color: #eee; margin: 1rem; }
 #decision { font-size: 3rem; font-weight: bold; }
 .GO { color: #3c3; } .STOP { color: #e33; }
 img { max-width: 100%; border: 1px solid #444; }
 td { padding: 0 1rem 0 0; }
</style></head>
<body>
<div id="decision">…</div>
<table><tr><td>label</td><td id="label">-</td></tr>
<tr><td>score</td><td id="score">-</td></tr>
<tr><td>FPS</td><td id="fps">-</td></tr>
<tr><td>inference</td><td id="inference">-</td></tr>
<tr><td>capture → overlay</td><td id="latency">-</td></tr>
<tr><td>labels seen</td><td id="history"></td></tr></table>
<img id="stream" src="/stream.mjpg" alt="live stream">
<script>
const seen = [];
async function poll() {
  try {
    const s = await (await fetch('/state.json', {cache: 'no-store'})).json();
    const d = document.getElementById('decision');
    d.textContent = s.decision; d.className = s.decision;
    document.getElementById('label').textContent = s.label;
    document.getElementById('score').textContent = s.score.toFixed(2);
    document.getElementById('fps').textContent = s.fps.toFixed(1);
    document.getElementById('inference').textContent = s.inference_ms.toFixed(2) + ' ms';
    document.getElementById('latency').textContent = s.latency_ms.toFixed(1) + ' ms';
    if (s.label && seen[seen.length - 1] !== s.label) { seen.push(s.label); }
    document.getElementById('history').textContent = seen.join(' → ');
  } catch (e) { /* the demo may be restarting; keep polling */ }
  setTimeout(poll, 200);
}
poll();
</script></body></html>
"""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` (localhost). Binding to all interfaces is opt-in: 0.0.0.0."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise InputError(f"--serve takes HOST:PORT or PORT, e.g. 127.0.0.1:8080; got '{text}'") \
            from None
    if not 0 < number < 65536:
        raise InputError(f"Port {number} is out of range 1-65535")
    return host or "127.0.0.1", number


class LiveServer:
    """Serves the latest annotated frame and state; `publish` is called by the live loop."""

    def __init__(self, host: str, port: int, quality: int = 80):
        self._frames = Newest()  # (annotated RGB frame, state dict) from the live loop
        self._jpeg_lock = threading.Lock()
        self._jpeg: tuple[int, bytes] = (0, b"")  # (serial, JPEG) most recently encoded
        self.quality = quality
        try:
            self.httpd = ThreadingHTTPServer((host, port), self._handler())
        except OSError as err:
            raise EdgepilotError(f"Cannot serve on {host}:{port}: {err.strerror or err}. "
                                 "Is the port in use? Choose another with --serve HOST:PORT") \
                from err
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="edgepilot-web")

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}/"

    def start(self) -> LiveServer:
        self._thread.start()
        return self

    @property
    def closed(self) -> bool:
        return self._frames.closed is not None

    def close(self) -> None:
        self._frames.close()
        self.httpd.shutdown()
        self.httpd.server_close()

    def publish(self, frame_rgb: np.ndarray, state: dict) -> None:
        """Hand over an annotated frame (not copied: the caller must not draw on it again)."""
        self._frames.put((frame_rgb, dict(state)))

    def state(self) -> dict:
        """The state published with the newest frame ({} before the first)."""
        try:
            got = self._frames.get(timeout=0)
        except TimeoutError:
            return {}
        return got[1][1] if got else {}

    def _next_jpeg(self, after: int, timeout: float = 5.0) -> tuple[int, bytes | None]:
        """The newest frame as JPEG, encoded here, in the viewer's thread, and only once per
        frame however many viewers there are: the live loop never waits for an encoder."""
        try:
            got = self._frames.get(after, timeout)
        except TimeoutError:
            return after, None
        if got is None:
            return after, None
        serial, (frame, _) = got
        with self._jpeg_lock:
            if self._jpeg[0] < serial:  # a viewer may already have encoded a newer one
                ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                                        [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                self._jpeg = (serial, jpeg.tobytes())
            return self._jpeg

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the terminal for the demo's own output
                pass

            def _send(self, body: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?")[0]
                if path == "/":
                    self._send(PAGE.encode(), "text/html; charset=utf-8")
                elif path == "/state.json":
                    self._send(json.dumps(server.state()).encode(), "application/json")
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self.send_error(404)

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                serial = 0
                try:
                    while not server.closed:
                        serial, jpeg = server._next_jpeg(serial)
                        if jpeg is None:
                            continue
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         + f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                                         + jpeg + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the browser went away

        return Handler
