"""A small web page for a headless Raspberry Pi: the annotated MJPEG stream, and the current
label, decision, FPS and latency from a JSON endpoint. Standard library only.

    GET /             the page
    GET /stream.mjpg  multipart JPEG stream of annotated frames
    GET /state.json   the latest LiveState

Exposure: read-only, no input is acted on. Bound to localhost by default, where the Host
header must name this machine (so a web page elsewhere cannot reach it by DNS rebinding).
Stalled clients time out, and connections and streams are capped, so viewers cannot exhaust
the threads of a small device.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from edgepilot.errors import EdgepilotError, InputError
from edgepilot.runtime.newest import Newest

__all__ = ["LiveServer", "parse_address"]

STYLE = """
 body { font-family: system-ui, sans-serif; background: #111; color: #eee; margin: 1rem; }
 #decision { font-size: 3rem; font-weight: bold; }
 .GO { color: #3c3; } .STOP { color: #e33; }
 img { max-width: 100%; border: 1px solid #444; }
 td { padding: 0 1rem 0 0; }
"""

SCRIPT = """
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
"""

PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgepilot live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style></head>
<body>
<div id="decision">…</div>
<table><tr><td>label</td><td id="label">-</td></tr>
<tr><td>score</td><td id="score">-</td></tr>
<tr><td>FPS</td><td id="fps">-</td></tr>
<tr><td>inference</td><td id="inference">-</td></tr>
<tr><td>capture → overlay</td><td id="latency">-</td></tr>
<tr><td>labels seen</td><td id="history"></td></tr></table>
<img id="stream" src="/stream.mjpg" alt="live stream">
<script>{SCRIPT}</script></body></html>
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# The page's own inline script and style, by hash: nothing injected could run.
PAGE_CSP = ("default-src 'none'; img-src 'self'; connect-src 'self'; "
            f"script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send a request or accept a frame
MAX_CONNECTIONS = 32  # concurrent connections (each one a thread)
MAX_STREAMS = 8  # concurrent MJPEG viewers (each encodes and sends every frame)
LOOPBACK_NAMES = {"localhost", "localhost.", "127.0.0.1", "::1"}


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``PORT`` (localhost). Binding to all interfaces is
    opt-in: 0.0.0.0 or [::]. Port 0 picks a free port (the server reports which)."""
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InputError(f"--serve: write an IPv6 address in brackets, e.g. [::1]:8080; got "
                         f"'{text}'")
    try:
        number = int(port)
    except ValueError:
        raise InputError(f"--serve takes HOST:PORT or PORT, e.g. 127.0.0.1:8080; got '{text}'") \
            from None
    if not 0 <= number < 65536:
        raise InputError(f"Port {number} is out of range 0-65535 (0: any free port)")
    return host or "127.0.0.1", number


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name in a Host header, without the port (and the brackets of an IPv6 address)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::\d+)?|([^:\[\]]+)(?::\d+)?", header.strip())
    if not match:
        return ""
    return (match.group(1) or match.group(2)).lower()


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with IPv6, a connection cap and quiet client disconnects."""

    daemon_threads = True

    def __init__(self, address, handler):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):  # full: drop it rather than queue threads
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return  # a client that left or stalled is not the demo's problem
        print(f"web: {type(error).__name__}: {error} (from {client_address[0]})",
              file=sys.stderr)


class LiveServer:
    """Serves the latest annotated frame and state; `publish` is called by the live loop."""

    def __init__(self, host: str, port: int, quality: int = 80):
        self._frames = Newest()  # (annotated RGB frame, state dict) from the live loop
        self._jpeg_lock = threading.Lock()
        self._jpeg: tuple[int, bytes] = (0, b"")  # (serial, JPEG) most recently encoded
        self._streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.quality = quality
        self.check_host = _is_loopback(host)
        try:
            self.httpd = _Server((host, port), self._handler())
        except (OSError, OverflowError) as err:
            reason = getattr(err, "strerror", None) or err
            raise EdgepilotError(f"Cannot serve on {host}:{port}: {reason}. Is the port in "
                                 "use, or the address not this machine's? Choose another with "
                                 "--serve HOST:PORT") from err
        self.address = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="edgepilot-web")

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def start(self) -> LiveServer:
        self._thread.start()
        return self

    @property
    def closed(self) -> bool:
        return self._frames.closed is not None

    def close(self) -> None:
        self._frames.close()
        if self._thread.is_alive():
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

    def allowed_host(self, header: str | None) -> bool:
        """Bound to localhost, only requests addressed to a loopback name or this server's
        own address are answered: DNS rebinding gives a foreign name in Host."""
        if not self.check_host:
            return True
        name = _host_name(header or "")
        return _is_loopback(name) or name == str(self.address[0]).lower()

    def _next_jpeg(self, after: int, timeout: float = 1.0) -> tuple[int, bytes | None]:
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
            timeout = REQUEST_TIMEOUT  # socket timeout: a stalled client frees its thread
            server_version = "edgepilot"

            def version_string(self) -> str:
                return self.server_version  # no Python version for fingerprinting

            def log_message(self, *args):  # keep the terminal for the demo's own output
                pass

            def end_headers(self) -> None:
                for name, value in SECURITY_HEADERS.items():
                    self.send_header(name, value)
                super().end_headers()

            def handle(self) -> None:
                try:
                    super().handle()
                except (ConnectionError, TimeoutError):
                    self.close_connection = True  # the client left or stalled

            def _send(self, body: bytes, kind: str, extra: dict | None = None) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if not server.allowed_host(self.headers.get("Host")):
                    self.send_error(421, "Misdirected request: this server answers only to "
                                         "localhost")
                    return
                path = self.path.split("?")[0]
                if path == "/":
                    self._send(PAGE.encode(), "text/html; charset=utf-8",
                               {"Content-Security-Policy": PAGE_CSP})
                elif path == "/state.json":
                    self._send(json.dumps(server.state()).encode(), "application/json")
                elif path == "/stream.mjpg":
                    if not server._streams.acquire(blocking=False):
                        self.send_error(503, f"Too many viewers (at most {MAX_STREAMS})")
                        return
                    try:
                        self._stream()
                    finally:
                        server._streams.release()
                else:
                    self.send_error(404)

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                serial = 0
                while not server.closed:
                    serial, jpeg = server._next_jpeg(serial)
                    if jpeg is None:
                        continue
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                     + f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                                     + jpeg + b"\r\n")

        return Handler
