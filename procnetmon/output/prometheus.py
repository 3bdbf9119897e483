"""Prometheus metrics of procnetmon's records, for ``--serve`` and ``--format prometheus``.

``Metrics`` folds the records of a run into counters per label set (process
name, cgroup, container; the PID only when asked for), so that a counter
only ever grows, also when its processes exit: their bytes stay in their
label set. It is a prometheus_client collector; ``--serve`` exposes it over
HTTP and ``TextfileWriter`` writes it in the text exposition format,
atomically, for node_exporter's textfile collector.

Names follow Prometheus' conventions as node_exporter and process-exporter
use them: base units, ``_total`` for counters, HELP for every family.
"""

from __future__ import annotations

import socket

import os
import sys
import threading
from typing import IO, Optional

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from procnetmon import __version__, safeopen
from procnetmon.model import RECORD_INTERVAL, RECORD_SUMMARY, Record
from procnetmon.output.writer import OutputError

PREFIX = "procnetmon"
LABELS = ("name", "cgroup", "container")

# name -> HELP, documented in README.md (Metrics) and the man page.
HELP = {
    "payload_bytes_total": "Bytes that processes' socket calls sent (direction=out) or received "
                           "(direction=in), by protocol (payload mode).",
    "wire_bytes_total": "Bytes of the IP packets of processes' sockets, IP and TCP/UDP headers "
                        "included, by direction and protocol (wire mode).",
    "connections": "TCP or UDP sockets the processes of the label set held at the last sample.",
    "lost_updates_total": "Counter updates the kernel could not store because a BPF map was full.",
    "last_sample_timestamp_seconds": "Unix time of the end of the last sampled interval.",
    "build_info": "procnetmon's version and counting mode; always 1.",
}


class Metrics:
    """Running totals per label set, fed with records, read by prometheus_client."""

    def __init__(self, mode: str, with_pid: bool = False):
        self.mode = mode
        self.with_pid = with_pid
        self.labels = LABELS + (("pid",) if with_pid else ())
        self._lock = threading.Lock()
        self._bytes: dict[tuple, float] = {}  # labels + (direction, protocol) -> bytes
        self._connections: dict[tuple, int] = {}  # labels + (protocol,) -> sockets
        self._lost = 0
        self._last_end: Optional[float] = None
        self._intervals_seen = False

    def _label_values(self, row) -> tuple:
        values = (row.name, row.cgroup or "", row.container or "")
        if self.with_pid:
            values += ("" if row.pid is None else str(row.pid),)
        return values

    def add(self, record: Record) -> None:
        """Take one record: an interval's bytes add to the counters; a summary
        adds only when no interval came before it (its bytes are theirs)."""
        counts = record.type == RECORD_INTERVAL or not self._intervals_seen
        connections: dict[tuple, int] = {}
        # A label set holding a process whose sockets could not be read (no
        # CAP_SYS_PTRACE, as under contrib/procnetmon.service) has no
        # connections sample: absent says "unknown", a sum would undercount.
        unknown: set[tuple] = set()
        with self._lock:
            for row in record.processes:
                labels = self._label_values(row)
                if counts:
                    for protocol, pair in (("tcp", row.tcp), ("udp", row.udp)):
                        for direction, value in (("in", pair.bytes_in), ("out", pair.bytes_out)):
                            key = labels + (direction, protocol)
                            self._bytes[key] = self._bytes.get(key, 0) + value
                for protocol, value in (("tcp", row.tcp_connections), ("udp", row.udp_connections)):
                    key = labels + (protocol,)
                    if value is None:
                        unknown.add(key)
                    else:
                        connections[key] = connections.get(key, 0) + value
            if record.type == RECORD_INTERVAL:
                self._intervals_seen = True
            # Label sets that moved nothing this interval keep their last count
            # of sockets only if they are in the record; others fall to 0.
            self._connections = {key: 0 for key in self._connections if key not in unknown}
            self._connections.update((key, n) for key, n in connections.items() if key not in unknown)
            self._lost = max(self._lost, record.lost_updates)
            self._last_end = record.end.timestamp()

    def collect(self):
        with self._lock:
            family = f"{self.mode}_bytes_total"
            counter = CounterMetricFamily(f"{PREFIX}_{family[:-len('_total')]}", HELP[family],
                                          labels=self.labels + ("direction", "protocol"))
            for key, value in sorted(self._bytes.items()):
                counter.add_metric(list(key), value)
            yield counter
            gauge = GaugeMetricFamily(f"{PREFIX}_connections", HELP["connections"],
                                      labels=self.labels + ("protocol",))
            for key, value in sorted(self._connections.items()):
                gauge.add_metric(list(key), value)
            yield gauge
            lost = CounterMetricFamily(f"{PREFIX}_lost_updates", HELP["lost_updates_total"])
            lost.add_metric([], self._lost)
            yield lost
            if self._last_end is not None:
                yield GaugeMetricFamily(f"{PREFIX}_last_sample_timestamp_seconds",
                                        HELP["last_sample_timestamp_seconds"], value=self._last_end)
            info = GaugeMetricFamily(f"{PREFIX}_build_info", HELP["build_info"], labels=["version", "mode"])
            info.add_metric([__version__, self.mode], 1)
            yield info


def registry_for(metrics: Metrics, with_process: bool = False) -> CollectorRegistry:
    """A registry with procnetmon's metrics (and, for --serve, the process_*
    metrics of procnetmon's own process, as every exporter has them)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(metrics)
    if with_process:
        from prometheus_client import PlatformCollector, ProcessCollector

        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry


def exposition(metrics: Metrics) -> str:
    return generate_latest(registry_for(metrics)).decode("utf-8")


class TextfileWriter:
    """``--format prometheus``: the metrics rewritten whole after every record.

    To a file, through a temporary file renamed over it (safeopen's: a
    random name, the file's mode and owner kept, the directory checked, as
    the invoking user under sudo), so that node_exporter's textfile
    collector never reads half a file; to standard output, one exposition
    per record.
    """

    fmt = "prometheus"

    def __init__(self, target, mode: str, *, with_pid: bool = False):
        self.metrics = Metrics(mode, with_pid)
        self.path = None if target in (None, "-") or not isinstance(target, (str, os.PathLike)) else str(target)
        self._stream: Optional[IO[str]] = None if self.path else (target if target not in (None, "-") else sys.stdout)
        self.closed = False
        # Checked here, before anything is attached; under sudo this forks
        # the helper that writes as the invoking user.
        self._replacer = safeopen.Replacer(self.path) if self.path else None

    def write(self, record: Record) -> bool:
        if self.closed:
            return False
        self.metrics.add(record)
        if self.path:
            try:
                self._replacer.replace(generate_latest(registry_for(self.metrics)))
            except OSError as e:
                raise OutputError(e.errno, e.strerror) from None
        elif record.type == RECORD_SUMMARY:  # standard output: the final exposition only
            try:
                self._stream.write(exposition(self.metrics))
                self._stream.flush()
            except BrokenPipeError:
                self.closed = True
        return not self.closed

    def close(self, quiet: bool = False) -> None:
        self.closed = True
        if self._replacer is not None:
            self._replacer.close()


class MetricsSink:
    """``--serve``: records only feed the metrics that the HTTP endpoint reads."""

    fmt = "serve"

    def __init__(self, metrics: Metrics, endpoint: Optional["Endpoint"] = None):
        self.metrics = metrics
        self.endpoint = endpoint
        self.closed = False

    def write(self, record: Record) -> bool:
        self.metrics.add(record)
        return True

    def close(self, quiet: bool = False) -> None:
        self.closed = True


# A scrape is one short request: more clients at once than this, or one that
# takes longer, is not Prometheus and gets closed instead of a thread.
MAX_CONNECTIONS = 16
CONNECTION_TIMEOUT_S = 10.0


def serve(metrics: Metrics, addr: str, port: int):
    """Start the HTTP endpoint (/metrics) in a daemon thread; OSError if it cannot listen."""
    import socketserver
    import threading
    from wsgiref.simple_server import WSGIServer, make_server

    from prometheus_client import exposition, make_wsgi_app

    class BoundedServer(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

        def verify_request(self, request, client_address) -> bool:
            if not self.slots.acquire(blocking=False):
                return False  # closed at once: no thread, no buffer
            request.settimeout(CONNECTION_TIMEOUT_S)
            return True

        def process_request_thread(self, request, client_address) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

        def handle_error(self, request, client_address) -> None:
            pass  # a client that timed out or went away is not worth a traceback

    app = make_wsgi_app(registry_for(metrics, with_process=True))
    httpd = make_server(addr, port, app, BoundedServer, handler_class=exposition._SilentHandler)
    return Endpoint(httpd)


class Endpoint:
    """The metrics' HTTP server: listening from the start (a busy port is an
    error before anything is attached), answering only once ``start`` is
    called after the probes are attached. A scraper that got an answer could
    otherwise take the daemon for ready while the first processes' bytes
    were not yet being counted; until then connections wait in the backlog."""

    def __init__(self, httpd) -> None:
        self.httpd = httpd

    def start(self) -> None:
        import threading

        threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True).start()
