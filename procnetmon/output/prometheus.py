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

import os
import sys
import threading
from typing import IO, TYPE_CHECKING, Callable, Optional

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from procnetmon import __version__, safeopen
from procnetmon.cli import DEFAULT_MAX_SETS
from procnetmon.model import RECORD_INTERVAL, RECORD_SUMMARY, Record
from procnetmon.output.writer import OutputError

if TYPE_CHECKING:
    from procnetmon.output.endpoint import Endpoint

PREFIX = "procnetmon"
LABELS = ("name", "cgroup", "container")

# name -> HELP, documented in README.md (Metrics) and the man page.
HELP = {
    "payload_bytes_total": "Bytes that processes' socket calls sent (direction=out) or received "
                           "(direction=in), by protocol class (payload mode).",
    "wire_bytes_total": "Bytes of the IP packets of processes' sockets, IP and transport headers "
                        "included (AF_PACKET: the frames), by direction and protocol class (wire mode).",
    "connections": "TCP or UDP sockets the processes of the label set held at the last sample.",
    "lost_updates_total": "Counter updates the kernel could not store because a BPF map was full.",
    "last_sample_timestamp_seconds": "Unix time of the end of the last sampled interval.",
    "build_info": "procnetmon's version and counting mode; always 1.",
    # --tcp-health only:
    "tcp_retransmitted_segments_total": "TCP segments the processes' sockets sent again (as TcpRetransSegs).",
    "tcp_retransmitted_bytes_total": "Payload bytes of the TCP segments the processes' sockets sent again.",
    "tcp_drops_total": "Packets of the processes' sockets the kernel dropped, by the kernel's drop reason.",
    "tcp_connect_attempts_total": "TCP connects the processes started (a SYN sent).",
    "tcp_connects_total": "TCP connects that ended, by result: ok, refused, timed_out, unreachable, other.",
    "tcp_connect_latency_seconds": "Time from a TCP connect's SYN to the connection being established.",
    "tcp_resets_total": "TCP resets the processes' sockets received (direction=in) or sent (out).",
    "tcp_srtt_seconds": "Smoothed RTT of the processes' TCP connections read in the last record: "
                        "stat min, mean or max over them.",
    "tcp_unowned_drops_total": "Dropped packets credited to no process: owner=no_socket (a packet of no "
                               "socket) or unknown (a socket whose owner is not known), by reason.",
}

CONNECT_RESULTS = ("ok", "refused", "timed_out", "unreachable", "other")
# The connect latency histogram's buckets: the kernel's log2 slots of microseconds.
LATENCY_BOUNDS = tuple(2 ** (i + 1) / 1e6 for i in range(32))


# What a user's processes can make of the label sets is bounded: a name is
# cut to MAX_NAME_CHARS, a cgroup path or container to MAX_PATH_CHARS (a
# container ID alone is 64 hex digits, a Kubernetes pod's cgroup path some
# 170 characters: cut shorter, distinct containers would merge); past
# max_sets label sets, new ones add to the OTHER set; a set without bytes or
# sockets for idle_intervals is dropped.
MAX_NAME_CHARS = 64
MAX_PATH_CHARS = 256
IDLE_SECONDS = 900.0
OTHER_NAME = "other"
DIRECTIONS = ("in", "out")
# Always exposed (at 0 too); the other classes from the first byte a label set moves.
PROTOCOLS = ("tcp", "udp")


class _Health:
    """One label set's TCP health counters (--tcp-health)."""

    __slots__ = ("retrans_segs", "retrans_bytes", "drops", "attempts", "results", "latency_sum", "latency_buckets",
                 "resets", "srtt")

    def __init__(self) -> None:
        self.retrans_segs = 0
        self.retrans_bytes = 0
        self.drops: dict[str, int] = {}
        self.attempts = 0
        self.results = dict.fromkeys(CONNECT_RESULTS, 0)
        self.latency_sum = 0.0
        self.latency_buckets = [0] * len(LATENCY_BOUNDS)
        self.resets = {"in": 0, "out": 0}
        self.srtt: Optional[tuple] = None  # (min, mean, max) seconds of the last record

    def add(self, h) -> None:
        self.retrans_segs += h.retrans_segs
        self.retrans_bytes += h.retrans_bytes
        for reason, n in h.drops.items():
            self.drops[reason] = self.drops.get(reason, 0) + n
        self.attempts += h.connect_attempts
        for result, n in zip(CONNECT_RESULTS, (h.connect_ok, h.connect_refused, h.connect_timed_out,
                                                h.connect_unreachable, h.connect_other)):
            self.results[result] += n
        if h.latency_mean_us is not None:
            self.latency_sum += h.latency_mean_us * h.latency_count / 1e6
        for i, n in enumerate(h.latency_log2_us[:len(LATENCY_BOUNDS)]):
            self.latency_buckets[i] += n
        self.resets["in"] += h.resets_in
        self.resets["out"] += h.resets_out

    def active(self, h) -> bool:
        return bool(h.retrans_segs or h.drops or h.connect_attempts or h.resets_in or h.resets_out)


class _LabelSet:
    __slots__ = ("bytes", "connections", "idle", "health")

    def __init__(self) -> None:
        self.bytes = {(d, p): 0.0 for d in DIRECTIONS for p in PROTOCOLS}
        # None: unknown (a process's sockets could not be read, as without
        # CAP_SYS_PTRACE under contrib/procnetmon.service): no sample, since
        # a sum would undercount.
        self.connections: dict[str, Optional[int]] = {p: 0 for p in PROTOCOLS}
        self.idle = 0  # records in a row without bytes or sockets
        self.health: Optional[_Health] = None  # --tcp-health


class Metrics:
    """Running totals per label set, fed with records, read by prometheus_client.

    A counter only grows while its label set lives, and the sum over every
    set, ``other`` included, is every byte counted since the start minus the
    sets dropped for being idle. A dropped set that comes back starts again
    at 0, which Prometheus reads as a counter reset: ``rate`` and
    ``increase`` never count its bytes twice (README, Metrics).
    """

    def __init__(self, mode: str, with_pid: bool = False, *, max_sets: int = DEFAULT_MAX_SETS,
                 idle_intervals: Optional[int] = None):
        self.mode = mode
        self.with_pid = with_pid
        self.labels = LABELS + (("pid",) if with_pid else ())
        self.max_sets = max_sets
        self.idle_intervals = idle_intervals  # None: never dropped
        self.other_labels = (OTHER_NAME,) + ("",) * (len(self.labels) - 1)
        self._lock = threading.Lock()
        self._sets: dict[tuple, _LabelSet] = {}
        self._other: Optional[_LabelSet] = None  # made when first needed
        self._lost = 0
        self._last_end: Optional[float] = None
        self._intervals_seen = False
        self._health = False  # records carry TCP health
        self._unowned: dict[tuple, int] = {}  # (owner, reason) -> drops credited to no process

    def _label_values(self, row) -> tuple:
        values = (str(row.name)[:MAX_NAME_CHARS], (row.cgroup or "")[:MAX_PATH_CHARS],
                  (row.container or "")[:MAX_PATH_CHARS])
        if self.with_pid:
            values += ("" if row.pid is None else str(row.pid),)
        return values

    def _set_for(self, labels: tuple) -> _LabelSet:
        found = self._sets.get(labels)
        if found is not None:
            return found
        # A set is made at 0 when its processes are first seen (with -p,
        # before they move a byte), so that increase() counts from there.
        if len(self._sets) < self.max_sets and labels != self.other_labels:
            found = self._sets[labels] = _LabelSet()
            return found
        if self._other is None:
            self._other = _LabelSet()
        return self._other

    def add(self, record: Record) -> None:
        """Take one record: an interval's bytes add to the counters; a summary
        adds only when no interval came before it (its bytes are theirs)."""
        counts = record.type == RECORD_INTERVAL or not self._intervals_seen
        with self._lock:
            touched: dict[int, tuple[_LabelSet, dict]] = {}  # id -> the set, its sockets in this record
            for row in record.processes:
                moved: dict[tuple[str, str], int] = {}
                if counts:
                    pairs = {**row.protocols, "tcp": row.tcp, "udp": row.udp}
                    for p, pair in pairs.items():
                        moved[("in", p)], moved[("out", p)] = pair.bytes_in, pair.bytes_out
                sockets = {"tcp": row.tcp_connections, "udp": row.udp_connections}
                target = self._set_for(self._label_values(row))
                entry = touched.setdefault(id(target), (target, {p: 0 for p in PROTOCOLS}))
                for key, value in moved.items():
                    target.bytes[key] = target.bytes.get(key, 0.0) + value
                    if value:
                        target.idle = -1  # active: 0 after this record
                for protocol, value in sockets.items():
                    held = entry[1][protocol]
                    entry[1][protocol] = None if held is None or value is None else held + value
                    if value:
                        target.idle = -1
                if row.tcp_health is not None:
                    if target.health is None:
                        target.health = _Health()
                    if counts:
                        target.health.add(row.tcp_health)
                        if target.health.active(row.tcp_health):
                            target.idle = -1
                    h = row.tcp_health
                    if h.srtt_mean_us is not None:
                        target.health.srtt = (h.srtt_min_us / 1e6, h.srtt_mean_us / 1e6, h.srtt_max_us / 1e6)
            if record.tcp_health is not None:
                self._health = True
                if counts:
                    for owner, drops in (("no_socket", record.tcp_health.no_socket),
                                         ("unknown", record.tcp_health.unknown_owner)):
                        for reason, n in drops.items():
                            self._unowned[(owner, reason)] = self._unowned.get((owner, reason), 0) + n
            if record.type == RECORD_INTERVAL:
                self._intervals_seen = True
            for labels, label_set in list(self._sets.items()):
                self._settle(label_set, touched)
                if self.idle_intervals is not None and label_set.idle >= self.idle_intervals:
                    del self._sets[labels]
            if self._other is not None:
                self._settle(self._other, touched)  # never dropped: one series, and it keeps growing
            self._lost = max(self._lost, record.lost_updates)
            self._last_end = record.end.timestamp()

    @staticmethod
    def _settle(label_set: _LabelSet, touched: dict) -> None:
        # Sockets are what the record's processes hold now; a set that is
        # not in the record holds none.
        label_set.connections = touched[id(label_set)][1] if id(label_set) in touched else dict.fromkeys(PROTOCOLS, 0)
        label_set.idle += 1

    def _health_families(self, sets: list):
        """--tcp-health's families, over the label sets that carry health."""
        def counter(name: str, extra: tuple = ()) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name[:-len('_total')]}", HELP[name], labels=self.labels + extra)

        segs, nbytes = counter("tcp_retransmitted_segments_total"), counter("tcp_retransmitted_bytes_total")
        drops, attempts = counter("tcp_drops_total", ("reason",)), counter("tcp_connect_attempts_total")
        results, resets = counter("tcp_connects_total", ("result",)), counter("tcp_resets_total", ("direction",))
        latency = HistogramMetricFamily(f"{PREFIX}_tcp_connect_latency_seconds", HELP["tcp_connect_latency_seconds"],
                                        labels=self.labels)
        srtt = GaugeMetricFamily(f"{PREFIX}_tcp_srtt_seconds", HELP["tcp_srtt_seconds"], labels=self.labels + ("stat",))
        for labels, label_set in sets:
            h = label_set.health
            if h is None:
                continue
            values = list(labels)
            segs.add_metric(values, h.retrans_segs)
            nbytes.add_metric(values, h.retrans_bytes)
            for reason, n in sorted(h.drops.items()):
                drops.add_metric(values + [reason], n)
            attempts.add_metric(values, h.attempts)
            for result, n in h.results.items():
                results.add_metric(values + [result], n)
            for direction, n in h.resets.items():
                resets.add_metric(values + [direction], n)
            cumulative, buckets = 0, []
            for bound, n in zip(LATENCY_BOUNDS, h.latency_buckets):
                cumulative += n
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", cumulative))
            latency.add_metric(values, buckets, h.latency_sum)
            if h.srtt is not None:
                for stat, value in zip(("min", "mean", "max"), h.srtt):
                    srtt.add_metric(values + [stat], value)
        unowned = CounterMetricFamily(f"{PREFIX}_tcp_unowned_drops", HELP["tcp_unowned_drops_total"],
                                      labels=("owner", "reason"))
        for (owner, reason), n in sorted(self._unowned.items()):
            unowned.add_metric([owner, reason], n)
        yield from (segs, nbytes, drops, attempts, results, latency, resets, srtt, unowned)

    def series(self) -> int:
        """How many label sets are exposed (``other`` included)."""
        with self._lock:
            return len(self._sets) + (self._other is not None)

    def collect(self):
        with self._lock:
            sets = sorted(self._sets.items())
            if self._other is not None:
                sets.append((self.other_labels, self._other))
            family = f"{self.mode}_bytes_total"
            counter = CounterMetricFamily(f"{PREFIX}_{family[:-len('_total')]}", HELP[family],
                                          labels=self.labels + ("direction", "protocol"))
            gauge = GaugeMetricFamily(f"{PREFIX}_connections", HELP["connections"],
                                      labels=self.labels + ("protocol",))
            for labels, label_set in sets:
                for (direction, protocol), value in label_set.bytes.items():
                    counter.add_metric(list(labels) + [direction, protocol], value)
                for protocol, value in label_set.connections.items():
                    if value is not None:
                        gauge.add_metric(list(labels) + [protocol], value)
            yield counter
            yield gauge
            if self._health:
                yield from self._health_families(sets)
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

    def __init__(self, target, mode: str, *, with_pid: bool = False, **bounds):
        self.metrics = Metrics(mode, with_pid, **bounds)
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

    def watch(self, on_gone: Callable[[], None]) -> None:
        """Nothing to watch: a file has no reader to lose, and standard output
        gets only the final exposition."""

    def close(self, quiet: bool = False) -> None:
        self.closed = True
        if self._replacer is not None:
            self._replacer.close()


class MetricsSink:
    """``--serve``: records only feed the metrics that the HTTP endpoint reads."""

    fmt = "serve"

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.closed = False

    def write(self, record: Record) -> bool:
        self.metrics.add(record)
        return True

    def watch(self, on_gone: Callable[[], None]) -> None:
        """Nothing to watch: scrapers come and go, the metrics stay."""

    def close(self, quiet: bool = False) -> None:
        self.closed = True


def serve(metrics: Metrics, addr: str, port: int, web=None) -> "Endpoint":
    """The HTTP endpoint of the metrics (``endpoint``: bounded connections,
    time and headers), HTTPS and basic auth as the web config ``web`` says;
    OSError if it cannot listen. It answers once ``start`` is called."""
    from prometheus_client import make_wsgi_app

    from procnetmon.output.endpoint import Endpoint, make_server, with_basic_auth

    app = make_wsgi_app(registry_for(metrics, with_process=True))
    if web is not None and web.users:
        app = with_basic_auth(app, web.check)
    return Endpoint(make_server(app, addr, port, tls=None if web is None else web.tls))
