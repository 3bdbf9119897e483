"""``--serve``'s HTTP server, bounded in everything a client can grow.

A scrape is one short request. So the server takes at most
``MAX_CONNECTIONS`` clients at once (more are closed at once, with no
thread), gives each connection ``CONNECTION_TIMEOUT_S`` in all (TLS
handshake, request and answer: a client that drips one byte at a time is
cut at the deadline, not kept alive by it), and reads at most
``MAX_HEADER_BYTES`` of request line and headers (a longer request line is
answered 414, longer headers 431). With a web config (``webconfig``), the
TLS handshake happens in the connection's own thread, under the same
deadline, and the app is behind basic auth.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import socket
import socketserver
import threading
import time
from typing import Callable
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

MAX_CONNECTIONS = 16
CONNECTION_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 8192
REALM = "procnetmon"


class _HeaderBudget:
    """The connection's input while headers are read: at most ``left`` bytes
    more, then ``LineTooLong`` (which http.server answers 431)."""

    def __init__(self, rfile, left: int):
        self._rfile = rfile
        self.left = left

    def readline(self, limit: int = -1) -> bytes:
        room = self.left + 1
        if limit is not None and limit >= 0:
            room = min(room, limit)
        line = self._rfile.readline(room)
        self.left -= len(line)
        if self.left < 0:
            raise http.client.LineTooLong(f"request headers over {MAX_HEADER_BYTES} bytes")
        return line


class BoundedHandler(WSGIRequestHandler):
    """wsgiref's handler with the request line and headers read within
    ``MAX_HEADER_BYTES`` (wsgiref allows 64 KiB per line and 100 lines)."""

    def log_message(self, format, *args) -> None:
        pass  # a scrape is not worth a line on stderr

    def handle(self) -> None:
        self.raw_requestline = self.rfile.readline(MAX_HEADER_BYTES + 1)
        if len(self.raw_requestline) > MAX_HEADER_BYTES:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        rfile = self.rfile
        self.rfile = _HeaderBudget(rfile, MAX_HEADER_BYTES - len(self.raw_requestline))
        try:
            if not self.parse_request():  # the error is answered already
                return
        finally:
            self.rfile = rfile
        handler = ServerHandler(self.rfile, self.wfile, self.get_stderr(), self.get_environ(),
                                multithread=False)
        handler.request_handler = self
        handler.run(self.server.get_app())


class _Deadlines:
    """When each open connection must be over; ``reap`` cuts the late ones.

    Keyed by file descriptor, which a TLS socket keeps from the plain one it
    wraps. A connection leaves before its socket is closed, under the lock,
    so a late ``reap`` never shuts down a descriptor reused by another one.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._lock = threading.Lock()
        self._open: dict[int, tuple[float, socket.socket]] = {}

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._open[sock.fileno()] = (time.monotonic() + self.seconds, sock)

    def update(self, sock: socket.socket) -> None:
        with self._lock:
            deadline, _ = self._open.get(sock.fileno(), (time.monotonic() + self.seconds, sock))
            self._open[sock.fileno()] = (deadline, sock)

    def remove(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.pop(sock.fileno(), None)

    def reap(self) -> None:
        now = time.monotonic()
        with self._lock:
            for fd, (deadline, sock) in list(self._open.items()):
                if deadline <= now:
                    del self._open[fd]
                    try:
                        # The plain socket's shutdown, also for a TLS one: it
                        # wakes the thread blocked on it, which then closes it.
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)
                    except OSError:
                        pass


class BoundedServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    tls = None  # an ssl.SSLContext for HTTPS

    def server_activate(self) -> None:
        super().server_activate()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.deadlines = _Deadlines(CONNECTION_TIMEOUT_S)

    def verify_request(self, request, client_address) -> bool:
        if not self.slots.acquire(blocking=False):
            return False  # closed at once: no thread, no buffer
        # Each read and write waits at most this long, and the whole
        # connection is cut at its deadline by service_actions.
        request.settimeout(CONNECTION_TIMEOUT_S)
        self.deadlines.add(request)
        return True

    def service_actions(self) -> None:
        self.deadlines.reap()  # serve_forever calls it every poll interval

    def process_request_thread(self, request, client_address) -> None:
        try:
            if self.tls is not None:
                request = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
                self.deadlines.update(request)
                request.do_handshake()
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.slots.release()

    def shutdown_request(self, request) -> None:
        self.deadlines.remove(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out, failed its handshake or went away is not worth a traceback


def with_basic_auth(app: Callable, check: Callable[[str, str], bool]) -> Callable:
    """The WSGI ``app`` answering only requests whose basic-auth user and
    password ``check`` accepts; others get 401 and a challenge."""

    def guarded(environ, start_response):
        if _credentials_pass(environ.get("HTTP_AUTHORIZATION", ""), check):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("WWW-Authenticate", f'Basic realm="{REALM}"'),
                                             ("Content-Type", "text/plain; charset=utf-8")])
        return [b"Unauthorized\n"]

    return guarded


def _credentials_pass(header: str, check: Callable[[str, str], bool]) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return bool(sep) and check(user, password)


def make_server(app: Callable, addr: str, port: int, tls=None) -> BoundedServer:
    """A server listening on ``addr``:``port`` (OSError if it cannot), not yet answering."""

    class Server(BoundedServer):
        address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

    Server.tls = tls
    httpd = Server((addr, port), BoundedHandler)
    httpd.set_app(app)
    return httpd


class Endpoint:
    """The metrics' HTTP server: listening from the start (a busy port is an
    error before anything is attached), answering only once ``start`` is
    called after the probes are attached. A scraper that got an answer could
    otherwise take the daemon for ready while the first processes' bytes
    were not yet being counted; until then connections wait in the backlog."""

    def __init__(self, httpd: BoundedServer) -> None:
        self.httpd = httpd

    @property
    def scheme(self) -> str:
        return "https" if self.httpd.tls is not None else "http"

    def start(self) -> None:
        threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True).start()

