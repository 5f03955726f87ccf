"""The live page's server as an attacker or a careless network would use it: stalled and
vanishing clients, Slowloris, too many viewers, a foreign Host header (DNS rebinding), a
missing token, and the headers a browser relies on. Every wait is bounded; nothing depends on
the machine's speed beyond the one ceiling the issue sets (a page answered within 2 s while
under attack)."""

import base64
import hashlib
import http.client
import json
import re
import select
import shutil
import socket
import struct
import threading
import time

import numpy as np
import pytest

from edgepilot.errors import InputError
from edgepilot.live import web
from edgepilot.live.web import LiveServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

DEADLINE = 60  # seconds a client waits before the test fails (instead of hanging)
ANSWER_WITHIN = 2.0  # seconds: the page must still be answered this fast under Slowloris


@pytest.fixture
def server():
    live = LiveServer("127.0.0.1", 0).start()
    live.publish(np.zeros((48, 64, 3), np.uint8), {"label": "green", "decision": "GO"})
    yield live
    live.close()


def get(server, path, host=None, headers=None, timeout=DEADLINE):
    """(status, headers, body) of a GET with the given Host header (and other headers)."""
    connection = http.client.HTTPConnection(*server.address[:2], timeout=timeout)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host or f"127.0.0.1:{server.address[1]}")
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        endless = path.split("?")[0] == "/stream.mjpg" and response.status == 200
        body = b"" if endless else response.read()
        return response.status, response.headers, body
    finally:
        connection.close()


def connect(server) -> socket.socket:
    client = socket.create_connection(server.address[:2], timeout=DEADLINE)
    return client


class Slowloris:
    """`count` connections that each send a request line, then a header line every `interval`
    seconds, and never the blank line that ends the head. Dribbling starts with the first
    connection, so those accepted early are kept busy while the rest connect; each socket has
    a timeout, and all are closed on exit."""

    def __init__(self, server, count: int, interval: float = 0.5):
        self.address, self.count, self.interval = server.address[:2], count, interval
        self.clients: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._dribble, daemon=True)

    def _dribble(self) -> None:
        while not self.stop.wait(self.interval):  # the attacker's pace, not a synchronisation
            for client in list(self.clients):
                try:
                    client.send(b"X-a: b\r\n")
                except OSError:
                    pass  # the server hung up on this one

    def __enter__(self) -> "Slowloris":
        self.thread.start()
        try:
            for _ in range(self.count):
                client = socket.create_connection(self.address, timeout=DEADLINE)
                self.clients.append(client)
                client.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        for client in self.clients:
            client.close()


def test_slow_clients_do_not_starve_the_page(server):
    # Slowloris: 200 connections that never finish their request head must not keep the
    # page (or its state) from anyone else.
    with Slowloris(server, 200):
        for path in ("/", "/state.json"):
            start = time.monotonic()
            status, _, body = get(server, path, timeout=ANSWER_WITHIN)
            took = time.monotonic() - start
            assert status == 200 and body, path
            assert took < ANSWER_WITHIN, f"{path} took {took:.2f} s under attack"


def test_waiting_connections_are_capped_oldest_first(monkeypatch):
    monkeypatch.setattr(web, "MAX_WAITING", 4)
    server = LiveServer("127.0.0.1", 0).start()
    try:
        with Slowloris(server, 10) as attack:
            assert get(server, "/state.json", timeout=ANSWER_WITHIN)[0] == 200
            # Each connection past the cap (the GET's too) dropped the oldest still waiting.
            dropped = [bool(select.select([client], [], [], 0)[0]) for client in attack.clients]
            assert dropped == [True] * 7 + [False] * 3
    finally:
        server.close()


@pytest.mark.parametrize("dribble", [b"", b"X-a: b\r\n"], ids=["stalled", "dribbling"])
def test_a_request_head_slower_than_the_deadline_is_disconnected(monkeypatch, dribble):
    # A header line every 0.05 s never trips a per-read timeout; the deadline on the whole
    # head (request line and headers) does.
    monkeypatch.setattr(web, "HEAD_TIMEOUT", 0.5)
    server = LiveServer("127.0.0.1", 0).start()
    try:
        with connect(server) as client:
            client.send(b"GET /state.json HTTP/1.1\r\n")
            give_up = time.monotonic() + DEADLINE
            while time.monotonic() < give_up:
                try:
                    client.send(dribble)
                except OSError:  # reset by the server: disconnected
                    break
                if select.select([client], [], [], 0.05)[0]:
                    assert client.recv(1024) == b""  # hung up, no answer to half a request
                    break
            else:
                pytest.fail(f"a client still sending its head after {DEADLINE} s was kept")
        assert get(server, "/state.json")[0] == 200  # and the server serves others
    finally:
        server.close()


def test_streams_are_capped(monkeypatch):
    monkeypatch.setattr(web, "MAX_STREAMS", 1)
    server = LiveServer("127.0.0.1", 0).start()
    try:
        server.publish(np.zeros((48, 64, 3), np.uint8), {})
        viewer = connect(server)  # one MJPEG viewer: the stream slot is taken
        viewer.send(b"GET /stream.mjpg HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert viewer.recv(64).startswith(b"HTTP/1.0 200")
        status, _, body = get(server, "/stream.mjpg")
        assert status == 503 and b"Too many viewers" in body
        assert get(server, "/state.json")[0] == 200  # other requests are still answered
        viewer.close()
    finally:
        server.close()


def read_all(client: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (and frees its slot)."""
    reply = b""
    while data := client.recv(4096):
        reply += data
    return reply


def test_connections_are_capped(monkeypatch):
    monkeypatch.setattr(web, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(web, "HEAD_TIMEOUT", DEADLINE)  # this test is not about the deadline
    server = LiveServer("127.0.0.1", 0).start()
    clients = []
    try:
        server.publish(np.zeros((48, 64, 3), np.uint8), {})
        # Two half-sent requests (a thread each would take both slots: that was Slowloris)...
        held = [connect(server), connect(server)]
        clients += held
        for client in held:
            client.send(b"GET /state.json HTTP/1.1\r\n")
        full = connect(server)  # ...hold none: a whole request is answered
        clients.append(full)
        full.send(b"GET /state.json HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_all(full).startswith(b"HTTP/1.0 200")
        for client in held:  # and the held ones are still served
            client.send(b"Host: localhost\r\n\r\n")
            assert read_all(client).startswith(b"HTTP/1.0 200")
        viewers = [connect(server), connect(server)]  # two MJPEG viewers take both threads...
        clients += viewers
        for viewer in viewers:
            viewer.send(b"GET /stream.mjpg HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert viewer.recv(64).startswith(b"HTTP/1.0 200")
        status, _, body = get(server, "/state.json")  # ...so a third request is refused at once
        assert status == 503 and b"busy" in body
    finally:
        for client in clients:
            client.close()
        server.close()


def test_clients_that_leave_early_print_no_traceback(server, capfd):
    for path in ("/", "/state.json", "/stream.mjpg"):
        for _ in range(10):
            client = connect(server)
            # Reset on close (no FIN handshake): the server's reply hits a dead socket.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.send(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            client.close()
    assert get(server, "/state.json")[0] == 200  # still serving
    server.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err


@pytest.mark.parametrize("host,status", [
    ("evil.example", 421), ("evil.example:{port}", 421), ("127.0.0.1.evil.example", 421),
    ("", 421), ("localhost:{port}", 200), ("127.0.0.1:{port}", 200), ("[::1]:{port}", 200),
])
def test_bound_to_localhost_it_answers_only_to_local_names(server, host, status):
    # DNS rebinding: a page on evil.example re-points its name at 127.0.0.1 and reads the
    # state; its requests carry Host: evil.example.
    port = server.address[1]
    for path in ("/", "/state.json", "/stream.mjpg"):
        assert get(server, path, host=host.format(port=port) or " ")[0] == status, path


def test_security_headers_and_no_python_version(server):
    status, headers, body = get(server, "/")
    assert status == 200
    assert headers["Server"] == "edgepilot" and "Python" not in str(headers)
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    csp = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    # The page's own inline script and style are allowed by hash, nothing else inline.
    page = body.decode()
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        inline = re.search(f"<{tag}>(.*?)</{tag}>", page, re.S).group(1)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert re.search(f"{directive} 'sha256-{re.escape(digest)}';", csp), directive
    assert "unsafe-inline" not in csp
    for path in ("/state.json", "/missing"):
        headers = get(server, path)[1]
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Server"] == \
            "edgepilot"


def test_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("os: no IPv6 loopback on this machine")
    server = LiveServer("::1", 0).start()
    try:
        server.publish(np.zeros((8, 8, 3), np.uint8), {"label": "red"})
        assert server.url == f"http://[::1]:{server.address[1]}/"
        connection = http.client.HTTPConnection("::1", server.address[1], timeout=DEADLINE)
        connection.request("GET", "/state.json")
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read()) == {"label": "red"}
        connection.close()
    finally:
        server.close()


TOKEN = "correct-horse-battery"


def test_a_token_is_required_when_given():
    with pytest.raises(InputError, match="token is empty"):
        LiveServer("127.0.0.1", 0, token="")
    server = LiveServer("127.0.0.1", 0, token=TOKEN).start()
    try:
        server.publish(np.zeros((8, 8, 3), np.uint8), {"label": "red"})
        assert server.page_url == server.url + f"?token={TOKEN}"
        for path in ("/", "/state.json", "/stream.mjpg"):
            status, headers, body = get(server, path)
            assert status == 401 and b"token" in body, path
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert get(server, path + "?token=wrong")[0] == 401, path
            assert get(server, path + f"?token={TOKEN}")[0] == 200, path
            assert get(server, path, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
            assert get(server, path, headers={"Authorization": "Bearer wrong"})[0] == 401
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package chromium)")
def test_the_page_passes_its_token_on_to_its_own_requests():
    playwright = pytest.importorskip("playwright.sync_api")
    server = LiveServer("127.0.0.1", 0, token=TOKEN).start()
    publishing = threading.Event()

    def publish():  # frames keep coming, as from the live loop
        while not publishing.wait(0.05):
            server.publish(np.zeros((48, 64, 3), np.uint8), {"label": "green", "score": 1.0,
                           "decision": "GO", "fps": 1.0, "inference_ms": 1.0,
                           "latency_ms": 1.0})

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync"])
            try:
                page = browser.new_page()
                page.goto(server.page_url)
                # Polled from here: the page's CSP rightly forbids evaluating strings in it.
                give_up = time.monotonic() + DEADLINE
                while (page.inner_text("#label") != "green" or page.evaluate(
                        "document.getElementById('stream').naturalWidth") != 64):
                    assert time.monotonic() < give_up, "the page got no state or no stream"
                    page.wait_for_timeout(100)
            finally:
                browser.close()
    finally:
        publishing.set()
        thread.join(DEADLINE)
        server.close()


@pytest.mark.parametrize("token", [None, TOKEN])
@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_a_network_address_is_announced(host, token):
    said: list[str] = []
    LiveServer(host, 0, token=token, log=said.append).close()
    if host == "127.0.0.1":
        assert said == []
    else:
        assert len(said) == 1 and "\n" not in said[0], said
        assert "reachable from the network" in said[0] and "token" in said[0]  # and the fix
