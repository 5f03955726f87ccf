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
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._state: dict = {}
        self._serial = 0
        self.quality = quality
        self.closed = False
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

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def publish(self, frame_rgb: np.ndarray, state: dict) -> None:
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        with self._cond:
            self._jpeg, self._state = jpeg.tobytes(), dict(state)
            self._serial += 1
            self._cond.notify_all()

    def _next(self, after: int, timeout: float = 5.0):
        with self._cond:
            self._cond.wait_for(lambda: self._serial > after or self.closed, timeout)
            return self._serial, self._jpeg

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
                    with server._cond:
                        body = json.dumps(server._state).encode()
                    self._send(body, "application/json")
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
                        serial, jpeg = server._next(serial)
                        if jpeg is None:
                            continue
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         + f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                                         + jpeg + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the browser went away

        return Handler
