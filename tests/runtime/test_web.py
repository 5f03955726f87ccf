"""The live page's server as an attacker or a careless network would use it: stalled and
vanishing clients, too many viewers, a foreign Host header (DNS rebinding), and the headers
a browser relies on. Every wait is bounded; nothing depends on the machine's speed."""

import base64
import hashlib
import http.client
import json
import re
import socket
import struct

import numpy as np
import pytest

from edgepilot.runtime import web
from edgepilot.runtime.web import LiveServer

DEADLINE = 60  # seconds a client waits before the test fails (instead of hanging)


@pytest.fixture
def server():
    live = LiveServer("127.0.0.1", 0).start()
    live.publish(np.zeros((48, 64, 3), np.uint8), {"label": "green", "decision": "GO"})
    yield live
    live.close()


def get(server, path, host=None):
    """(status, headers, body) of a GET with the given Host header."""
    connection = http.client.HTTPConnection(*server.address[:2], timeout=DEADLINE)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host or f"127.0.0.1:{server.address[1]}")
        connection.endheaders()
        response = connection.getresponse()
        body = response.read() if path != "/stream.mjpg" or response.status != 200 else b""
        return response.status, response.headers, body
    finally:
        connection.close()


def connect(server) -> socket.socket:
    client = socket.create_connection(server.address[:2], timeout=DEADLINE)
    return client


def test_a_stalled_client_is_disconnected(monkeypatch):
    monkeypatch.setattr(web, "REQUEST_TIMEOUT", 0.3)
    server = LiveServer("127.0.0.1", 0).start()
    try:
        client = connect(server)
        client.send(b"GET /state.json HTTP/1.1\r\n")  # ...and never finishes the request
        assert client.recv(1024) == b""  # the server hung up instead of waiting forever
        client.close()
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


def test_connections_are_capped(monkeypatch):
    monkeypatch.setattr(web, "MAX_CONNECTIONS", 2)
    server = LiveServer("127.0.0.1", 0).start()
    try:
        # Two clients that send half a request hold the two slots (accepted in order)...
        first, second = connect(server), connect(server)
        for client in (first, second):
            client.send(b"GET /state.json HTTP/1.1\r\n")
        extra = connect(server)  # ...so a third is dropped at once: no thread for it
        assert extra.recv(1024) == b""
        first.send(b"Host: localhost\r\n\r\n")  # the held ones are still served
        assert first.recv(64).startswith(b"HTTP/1.0 200")
        for client in (first, second, extra):
            client.close()
    finally:
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
