"""A small web page for a headless Raspberry Pi: the annotated MJPEG stream, and the current
label, decision, FPS and latency from a JSON endpoint. Standard library only.

    GET /             the page
    GET /stream.mjpg  multipart JPEG stream of annotated frames
    GET /state.json   the latest LiveState

Exposure: read-only, no input is acted on. Bound to localhost by default, where the Host
header must name this machine (so a web page elsewhere cannot reach it by DNS rebinding).
Bound to another address, it says so (the page is reachable from the network) and can require
a token: ``?token=...`` in the page's address, which the page passes on to its own requests,
or an ``Authorization: Bearer`` header.

Slow clients cannot starve the others (Slowloris): one loop reads every request head without
a thread, with one deadline for the whole head however slowly its bytes arrive; only a
complete request gets a thread, and threads, streams and waiting connections are capped.

    server = LiveServer("0.0.0.0", 8080, token="a long random string").start()
    server.publish(frame_rgb, {"label": "green"})   # from the live loop, every frame
    print(server.page_url)                           # http://0.0.0.0:8080/?token=...
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import ipaddress
import json
import re
import selectors
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

import cv2
import numpy as np

from edgepilot.errors import EdgepilotError, InputError
from edgepilot.live.newest import Newest

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
    const s = await (await fetch('/state.json' + location.search, {cache: 'no-store'})).json();
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
// The page's own address carries the token, if the server needs one: pass it on.
document.getElementById('stream').src = '/stream.mjpg' + location.search;
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
<img id="stream" alt="live stream">
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
HEAD_TIMEOUT = 5.0  # seconds a client has for its whole request head (line and headers)
MAX_HEAD = 32 * 1024  # bytes of request line and headers
MAX_WAITING = 256  # connections still sending their head (no thread each); the oldest goes
REQUEST_TIMEOUT = 10.0  # seconds a viewer may take to accept a frame
MAX_CONNECTIONS = 32  # requests answered at once (each one a thread)
MAX_STREAMS = 8  # concurrent MJPEG viewers (each encodes and sends every frame)
_HEAD_END = re.compile(rb"\n\r?\n")  # the blank line after the headers
LOOPBACK_NAMES = {"localhost", "localhost.", "127.0.0.1", "::1"}


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``PORT`` (localhost). Binding to all interfaces is
    opt-in: 0.0.0.0 or [::]. Port 0 picks a free port (the server reports which)."""
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InputError(f"serve=: write an IPv6 address in brackets, e.g. [::1]:8080; got "
                         f"'{text}'")
    try:
        number = int(port)
    except ValueError:
        raise InputError(f"serve= takes HOST:PORT or PORT, e.g. 127.0.0.1:8080; got '{text}'") \
            from None
    if not 0 <= number < 65536:
        raise InputError(f"Port {number} is out of range 0-65535 (0: any free port)")
    return host or "127.0.0.1", number


def _print_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


@dataclass(slots=True)
class _Waiting:
    """A connection still sending its request head."""

    client_address: tuple
    deadline: float  # time.monotonic() by which the whole head must have arrived
    head: bytearray


def _refuse(connection: socket.socket, status: HTTPStatus, message: str) -> None:
    """A one-line answer from the loop thread, sent only if the socket takes it at once (it
    must never block the loop), then the connection is closed."""
    body = f"{message}\n".encode()
    lines = [f"HTTP/1.0 {status.value} {status.phrase}", "Server: edgepilot",
             "Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}",
             "Connection: close", *(f"{name}: {value}" for name, value in
                                    SECURITY_HEADERS.items())]
    with contextlib.suppress(OSError):
        connection.send("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        connection.shutdown(socket.SHUT_WR)
    connection.close()


class _Server:
    """Reads request heads in one selector loop, then answers each request in its own thread.

    A thread per connection is what Slowloris exhausts: clients that send their head a line at
    a time, each line before a per-read timeout, hold every thread. Here a connection that is
    still sending its head costs a socket and a buffer, has HEAD_TIMEOUT seconds for the whole
    head, and the oldest is dropped when MAX_WAITING wait; only a complete head takes one of
    MAX_CONNECTIONS threads (more at once are refused with 503)."""

    def __init__(self, address: tuple[str, int], handler):
        self.handler = handler
        self.socket = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(128)  # socketserver's 5 drops a burst of connects (1 s retries)
        except BaseException:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        # Deadlines are accept time + HEAD_TIMEOUT, so insertion order is deadline order.
        self._waiting: dict[socket.socket, _Waiting] = {}
        self._selector = selectors.DefaultSelector()
        self._wake, self._waker = socket.socketpair()  # close() writes a byte to stop the loop
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, daemon=True, name="edgepilot-web")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._waker.send(b"x")
        if self._thread.is_alive():
            self._thread.join()
        for connection in list(self._waiting):
            self._drop(connection)
        self._selector.close()
        for sock in (self.socket, self._wake, self._waker):
            sock.close()

    def _serve(self) -> None:
        self._selector.register(self.socket, selectors.EVENT_READ)
        self._selector.register(self._wake, selectors.EVENT_READ)
        while not self._stopping:
            for key, _ in self._selector.select(self._expire()):
                if key.fileobj is self.socket:
                    self._accept()
                elif key.fileobj is not self._wake and key.fileobj in self._waiting:
                    self._read(key.fileobj)

    def _expire(self) -> float | None:
        """Drops the connections whose head is overdue (no answer: they are not listening);
        the seconds until the next deadline, None when no connection is waiting."""
        now = time.monotonic()
        while self._waiting:
            connection, waiting = next(iter(self._waiting.items()))
            if waiting.deadline > now:
                return waiting.deadline - now
            self._drop(connection)
        return None

    def _accept(self) -> None:
        while True:
            try:
                connection, client_address = self.socket.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            connection.setblocking(False)
            if len(self._waiting) >= MAX_WAITING:
                self._drop(next(iter(self._waiting)))
            self._waiting[connection] = _Waiting(client_address,
                                                 time.monotonic() + HEAD_TIMEOUT, bytearray())
            self._selector.register(connection, selectors.EVENT_READ)

    def _read(self, connection: socket.socket) -> None:
        waiting = self._waiting[connection]
        try:
            data = connection.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client left
            self._drop(connection)
            return
        seen = len(waiting.head)
        waiting.head += data
        end = _HEAD_END.search(waiting.head, max(0, seen - 2))
        if end is None:
            if len(waiting.head) > MAX_HEAD:
                self._drop(connection, (HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                        f"Request head over {MAX_HEAD} bytes: send fewer or "
                                        "smaller headers (cookies?)"))
            return
        if not self._slots.acquire(blocking=False):
            self._drop(connection, (HTTPStatus.SERVICE_UNAVAILABLE,
                                    f"Server busy (at most {MAX_CONNECTIONS} requests at once): "
                                    "try again"))
            return
        self._selector.unregister(connection)
        del self._waiting[connection]
        try:
            threading.Thread(target=self._answer, daemon=True, args=(
                connection, waiting.client_address, bytes(waiting.head[:end.end()]))).start()
        except BaseException:
            self._slots.release()
            connection.close()
            raise

    def _drop(self, connection: socket.socket,
              answer: tuple[HTTPStatus, str] | None = None) -> None:
        self._selector.unregister(connection)
        del self._waiting[connection]
        if answer:
            _refuse(connection, *answer)
        else:
            connection.close()

    def _answer(self, connection: socket.socket, client_address: tuple, head: bytes) -> None:
        try:
            self.handler((connection, head), client_address, self)
        except Exception:
            self.handle_error(client_address)
        finally:
            self._slots.release()  # first: a client that saw the connection end can get it
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_WR)
            connection.close()

    def handle_error(self, client_address: tuple) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return  # a client that left or stalled is not the demo's problem
        print(f"web: {type(error).__name__}: {error} (from {client_address[0]})",
              file=sys.stderr)


class LiveServer:
    """Serves the latest annotated frame and state; `publish` is called by the live loop.

    `token`: when given, every request must carry it (``?token=...`` or ``Authorization:
    Bearer ...``); `page_url` is the page's address with it. `log` gets the one-line warning
    when the address is reachable from the network (default: standard error)."""

    def __init__(self, host: str, port: int, quality: int = 80, *, token: str | None = None,
                 log: Callable[[str], None] | None = None):
        if token is not None and not token:
            raise InputError("The web token is empty: give a long random string, or no token")
        self._token = None if token is None else token.encode()
        self._frames = Newest()  # (annotated RGB frame, state dict) from the live loop
        self._jpeg_lock = threading.Lock()
        self._jpeg: tuple[int, bytes] = (0, b"")  # (serial, JPEG) most recently encoded
        self._streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.quality = quality
        self.check_host = _is_loopback(host)
        try:
            self._server = _Server((host, port), self._handler())
        except (OSError, OverflowError) as err:
            reason = getattr(err, "strerror", None) or err
            raise EdgepilotError(f"Cannot serve on {host}:{port}: {reason}. Is the port in "
                                 "use, or the address not this machine's? Choose another with "
                                 "serve=HOST:PORT") from err
        self.address = self._server.server_address[:2]
        if not self.check_host:
            (log or _print_stderr)(
                f"warning: the live page on {self.url} is reachable from the network: "
                + ("every request needs the token (sent in clear: plain HTTP)" if token else
                   "anyone who can reach this port sees the camera (serve on 127.0.0.1, or "
                   "set a token)"))

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    @property
    def page_url(self) -> str:
        """The page's address, with the token when one is required."""
        if self._token is None:
            return self.url
        return f"{self.url}?token={urllib.parse.quote(self._token.decode(), safe='')}"

    def start(self) -> LiveServer:
        self._server.start()
        return self

    @property
    def closed(self) -> bool:
        return self._frames.closed is not None

    def close(self) -> None:
        self._frames.close()
        self._server.close()

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

    def authorized(self, path: str, authorization: str | None) -> bool:
        """Whether the request carries the token (always, when none is required), compared in
        constant time."""
        if self._token is None:
            return True
        given = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("token", [])
        scheme, _, credential = (authorization or "").strip().partition(" ")
        if scheme.lower() == "bearer":
            given.append(credential.strip())
        return any(hmac.compare_digest(value.encode(), self._token) for value in given)

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
            timeout = REQUEST_TIMEOUT  # socket timeout: a stalled viewer frees its thread
            server_version = "edgepilot"

            def version_string(self) -> str:
                return self.server_version  # no Python version for fingerprinting

            def log_message(self, *args):  # keep the terminal for the demo's own output
                pass

            def end_headers(self) -> None:
                for name, value in SECURITY_HEADERS.items():
                    self.send_header(name, value)
                super().end_headers()

            def setup(self) -> None:
                self.request, head = self.request  # the head was read by the server's loop
                super().setup()
                self.rfile.close()
                self.rfile = io.BytesIO(head)

            def handle(self) -> None:
                try:
                    super().handle()
                except (ConnectionError, TimeoutError):
                    self.close_connection = True  # the client left or stalled

            def _send(self, body: bytes, kind: str, extra: dict | None = None,
                      status: int = 200) -> None:
                self.send_response(status)
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
                if not server.authorized(self.path, self.headers.get("Authorization")):
                    self._send(b"This page needs its token: open the address the demo printed "
                               b"(it ends in ?token=...)\n", "text/plain; charset=utf-8",
                               {"WWW-Authenticate": 'Bearer realm="edgepilot"'}, status=401)
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
