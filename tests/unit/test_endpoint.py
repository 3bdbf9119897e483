"""--serve's HTTP server in-process, as a client meets it: the request edge
cases (414, 431, 405, paths that serve only the metrics), a connection cut
at its deadline however it drips, and HTTPS with basic auth from a web
config in node_exporter's format, over a real TLS handshake."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import warnings

import pytest

from procnetmon.output import endpoint, webconfig
from procnetmon.output.prometheus import Metrics, serve


@pytest.fixture
def server():
    started = []

    def start(web=None):
        ep = serve(Metrics("payload"), "127.0.0.1", 0, web)
        ep.start()
        started.append(ep)
        return ep.httpd.server_address[1]

    yield start
    for ep in started:
        ep.httpd.shutdown()
        ep.httpd.server_close()


def exchange(port: int, data: bytes, tls: ssl.SSLContext = None, timeout: float = 15) -> bytes:
    """Send ``data`` and read the answer until the server closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="localhost")
    answer = b""
    with sock:
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # answered, then reset because the rest of the request was not read
    return answer


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def test_a_request_line_over_the_cap_is_414(server):
    port = server()
    assert status(exchange(port, b"GET /" + b"a" * endpoint.MAX_HEADER_BYTES + b" HTTP/1.1\r\n\r\n")) == 414


def test_headers_over_the_cap_are_431_whatever_their_shape(server):
    port = server()
    one_long = b"GET /metrics HTTP/1.1\r\nX-A: " + b"b" * endpoint.MAX_HEADER_BYTES + b"\r\n\r\n"
    # 90 lines of 100 bytes: under wsgiref's own limits (64 KiB a line, 100 lines), over ours.
    many = b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%02d: %s\r\n" % (n, b"c" * 93) for n in range(90)) + b"\r\n"
    assert status(exchange(port, one_long)) == 431
    assert status(exchange(port, many)) == 431
    fits = b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%02d: %s\r\n" % (n, b"c" * 93) for n in range(70)) + b"\r\n"
    assert status(exchange(port, fits)) == 200


def test_only_get_is_answered(server):
    port = server()
    for method in (b"POST", b"PUT", b"DELETE"):
        answer = exchange(port, method + b" /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert status(answer) == 405, answer
        assert b"procnetmon_" not in answer


def test_every_path_serves_the_metrics_and_nothing_else(server):
    port = server()
    for path in ("/metrics", "/", "/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/shadow", "//etc/passwd"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            body = r.read().decode()
        assert body.startswith("# HELP procnetmon_"), path
        assert "root:" not in body
    answer = exchange(port, b"GET /../../etc/passwd HTTP/1.0\r\n\r\n")
    assert status(answer) == 200 and b"root:" not in answer


def test_a_client_that_drips_bytes_is_cut_at_the_deadline(server, monkeypatch):
    monkeypatch.setattr(endpoint, "CONNECTION_TIMEOUT_S", 2.0)
    port = server()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    started = time.monotonic()
    cut = None
    with sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        # One byte every 0.5 s: each read waits less than the per-read timeout.
        for _ in range(40):
            try:
                sock.sendall(b"X")
                time.sleep(0.5)
            except (BrokenPipeError, ConnectionResetError):
                cut = time.monotonic() - started
                break
    assert cut is not None and cut < 5, cut


def openssl_cert(directory) -> tuple[str, str]:
    cert, key = os.path.join(directory, "server.crt"), os.path.join(directory, "server.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    os.chmod(key, 0o600)
    return cert, key


def bcrypt_hash(password: str) -> str:
    try:
        import bcrypt

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt", reason="no bcrypt module and no crypt(3)")
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)).replace("$2b$", "$2y$")


@pytest.fixture
def https(tmp_path, server):
    pytest.importorskip("yaml", reason="--web-config needs PyYAML (python3-yaml)")
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make the test's certificate")
    cert, key = openssl_cert(str(tmp_path))
    config = tmp_path / "web.yml"
    config.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                      f"basic_auth_users:\n  prometheus: '{bcrypt_hash('s3cret')}'\n")
    port = server(webconfig.load(str(config)))
    client = ssl.create_default_context(cafile=cert)
    return port, client


def get(port, client, auth=None):
    request = urllib.request.Request(f"https://127.0.0.1:{port}/metrics")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, context=client, timeout=10) as r:
            return r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers


def test_https_with_basic_auth(https):
    port, client = https
    code, body, headers = get(port, client)
    assert code == 401 and 'Basic realm="procnetmon"' in headers["WWW-Authenticate"]
    assert "procnetmon_" not in body
    assert get(port, client, "prometheus:wrong")[0] == 401
    assert get(port, client, "nosuchuser:s3cret")[0] == 401
    assert get(port, client, "prometheus")[0] == 401  # no colon: no password
    code, body, _ = get(port, client, "prometheus:s3cret")
    assert code == 200 and "procnetmon_build_info" in body
    # Cached after the first success, still refused with the wrong password.
    assert get(port, client, "prometheus:s3cret")[0] == 200
    assert get(port, client, "prometheus:s3cre")[0] == 401


def test_https_refuses_plain_http_and_a_client_that_never_handshakes(https, monkeypatch):
    port, client = https
    assert status(exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")) != 200
    # A client that connects and says nothing holds one connection until
    # its deadline, never the server: others still get their answer.
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        assert get(port, client, "prometheus:s3cret")[0] == 200
    finally:
        for s in idle:
            s.close()
