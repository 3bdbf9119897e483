"""Plain data passed from the sampling engine to the output writers.

Nothing here measures, formats or calls psutil: records are built by
``procnetmon.engine`` and turned into text by ``procnetmon.output``.
The JSON shape of a record is ``record_to_dict``; its key order is the
output contract (add fields, never rename).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

SCHEMA = "procnetmon/1"

RECORD_INTERVAL = "interval"
RECORD_SUMMARY = "summary"

MODE_PAYLOAD = "payload"
MODE_WIRE = "wire"


@dataclass
class Bytes:
    """Bytes one way and the other for one protocol."""

    bytes_in: int = 0
    bytes_out: int = 0

    def to_dict(self) -> dict:
        return {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out}


@dataclass
class TcpHealth:
    """A process's TCP health in one record's window (--tcp-health), each
    event credited to the socket's owner. Times are microseconds."""

    retrans_segs: int = 0  # segments sent again (as TcpRetransSegs counts them)
    retrans_bytes: int = 0  # their payload bytes
    drops: dict = field(default_factory=dict)  # the kernel's drop reason -> packets dropped
    connect_attempts: int = 0  # connect()s that sent a SYN
    connect_ok: int = 0
    connect_refused: int = 0  # answered by a reset
    connect_timed_out: int = 0  # no answer to the SYN and its retries
    connect_unreachable: int = 0  # an ICMP host or network unreachable
    connect_other: int = 0  # given up otherwise (closed while connecting)
    latency_count: int = 0  # successful connects whose latency was measured
    latency_mean_us: Optional[float] = None
    latency_max_us: Optional[float] = None
    latency_log2_us: list = field(default_factory=list)  # [i]: connects of 2^i to 2^(i+1) us
    resets_in: int = 0
    resets_out: int = 0
    rtt_connections: int = 0  # connections whose RTT was read in the window
    srtt_min_us: Optional[int] = None
    srtt_mean_us: Optional[float] = None
    srtt_max_us: Optional[int] = None

    def to_dict(self) -> dict:
        return {
            "retrans_segs": self.retrans_segs,
            "retrans_bytes": self.retrans_bytes,
            "drops": sum(self.drops.values()),
            "drop_reasons": dict(sorted(self.drops.items())),
            "connects": {"attempts": self.connect_attempts, "ok": self.connect_ok,
                         "refused": self.connect_refused, "timed_out": self.connect_timed_out,
                         "unreachable": self.connect_unreachable, "other": self.connect_other},
            "connect_latency": {"count": self.latency_count, "mean_us": _round_us(self.latency_mean_us),
                                "max_us": _round_us(self.latency_max_us), "log2_us": list(self.latency_log2_us)},
            "resets_in": self.resets_in,
            "resets_out": self.resets_out,
            "rtt": {"connections": self.rtt_connections, "srtt_min_us": self.srtt_min_us,
                    "srtt_mean_us": _round_us(self.srtt_mean_us), "srtt_max_us": self.srtt_max_us},
        }


@dataclass
class ConnectionHealth:
    """One TCP connection's health since it was first seen (--tcp-health -d)."""

    retrans_segs: int = 0
    retrans_bytes: int = 0
    drops: int = 0
    resets_in: int = 0
    resets_out: int = 0
    srtt_us: Optional[int] = None  # at the connection's last event; None: no RTT sample
    rttvar_us: Optional[int] = None
    connect_latency_us: Optional[float] = None  # None: not connected by this process, or not measured

    def to_dict(self) -> dict:
        return {"retrans_segs": self.retrans_segs, "retrans_bytes": self.retrans_bytes, "drops": self.drops,
                "resets_in": self.resets_in, "resets_out": self.resets_out, "srtt_us": self.srtt_us,
                "rttvar_us": self.rttvar_us, "connect_latency_us": _round_us(self.connect_latency_us)}


@dataclass
class UnownedDrops:
    """Drops no process is credited with (--tcp-health), by the kernel's reason."""

    no_socket: dict = field(default_factory=dict)  # packets of no socket (a netfilter drop before demux)
    unknown_owner: dict = field(default_factory=dict)  # a socket whose owner is not known

    def to_dict(self) -> dict:
        return {"drops_no_socket": dict(sorted(self.no_socket.items())),
                "drops_unknown_owner": dict(sorted(self.unknown_owner.items()))}


@dataclass
class Connection:
    """One socket of a process at the time of the record (``--details``)."""

    protocol: str  # a protocol class: "tcp", "udp", "icmp", "raw", "packet"...
    family: str  # "ipv4", "ipv6", or "packet" (AF_PACKET: local is the interface, remote "")
    local: str  # "addr:port", IPv6 in brackets
    remote: str  # "" for unconnected sockets
    state: str  # psutil's state name, "NONE" for UDP
    bytes_in: int = 0  # bytes attributed to this socket during the window
    bytes_out: int = 0
    tcp_health: Optional[ConnectionHealth] = None  # --tcp-health, TCP connections only

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "protocol": self.protocol,
            "family": self.family,
            "local": self.local,
            "remote": self.remote,
            "state": self.state,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }
        if self.tcp_health is not None:
            d["tcp_health"] = self.tcp_health.to_dict()
        return d


@dataclass
class ProcessStats:
    """One process (thread group) in one record.

    ``bytes_in``/``bytes_out`` and the per-protocol split cover the record's
    window: one interval for an interval record, the whole run for a summary.
    ``total_bytes_*`` are the running totals since the start (interval records).
    Rates are bytes per second of the window; peaks are the highest
    one-interval rate seen so far.
    """

    pid: Optional[int]  # None in a row folded by --group-by name or cgroup
    name: str
    cmdline: str = ""
    alive: bool = True
    bytes_in: int = 0
    bytes_out: int = 0
    rate_in: float = 0.0
    rate_out: float = 0.0
    peak_rate_in: float = 0.0
    peak_rate_out: float = 0.0
    tcp: Bytes = field(default_factory=Bytes)
    udp: Bytes = field(default_factory=Bytes)
    # None: unknown, the process's sockets could not be read (JSON null).
    tcp_connections: Optional[int] = 0  # every TCP socket held, listening ones included (as ss -a)
    udp_connections: Optional[int] = 0
    total_bytes_in: int = 0
    total_bytes_out: int = 0
    connections: Optional[list[Connection]] = None  # only with --details
    tcp_listening: Optional[int] = 0  # the listening TCP sockets among tcp_connections
    cgroup: Optional[str] = None  # cgroup v2 path ("/system.slice/nginx.service"); at exit for exited ones
    container: Optional[str] = None  # "docker://<id>", "lxc://name", or a systemd unit the path names
    pod: Optional[str] = None  # Kubernetes pod UID the path names
    pids: Optional[list[int]] = None  # a row folded by --group-by: its processes (pid is None)
    # Bytes of each protocol class (probes.PROTOCOL_CLASSES) that moved any in
    # the window, TCP and UDP included; their sum is bytes_in/bytes_out.
    protocols: dict[str, Bytes] = field(default_factory=dict)
    # Who the process is, read when it was first identified and kept after it
    # exits; None when unknown (exited before a look at /proc, unreadable,
    # a folded row).
    ppid: Optional[int] = None
    user: Optional[str] = None  # name of the effective user
    uid: Optional[int] = None  # effective user ID
    exe: Optional[str] = None  # path of the program (/proc/PID/exe)
    start_time: Optional[datetime] = None  # when the process started (timezone-aware)
    tcp_health: Optional[TcpHealth] = None  # only with --tcp-health


@dataclass
class Aggregate:
    """Sums over the processes of a record (and its peak rates)."""

    bytes_in: int = 0
    bytes_out: int = 0
    rate_in: float = 0.0
    rate_out: float = 0.0
    peak_rate_in: float = 0.0
    peak_rate_out: float = 0.0
    tcp_connections: Optional[int] = 0  # None when any process's count is unknown
    udp_connections: Optional[int] = 0
    total_bytes_in: int = 0
    total_bytes_out: int = 0
    tcp_listening: Optional[int] = 0
    protocols: dict[str, Bytes] = field(default_factory=dict)  # summed over the processes


@dataclass(frozen=True)
class ExitOver:
    """The --exit-over threshold a run's numbers crossed, on the records that show it."""

    threshold: str  # the SPEC, as written (spaces dropped)
    value: float  # bytes, or bytes per second for a rate
    pid: Optional[int] = None  # the process, for a proc: threshold

    def to_dict(self) -> dict:
        return {"threshold": clean_text(self.threshold), "value": round(self.value, 3), "pid": self.pid}


@dataclass
class Record:
    """One output record: an interval, or the summary of the whole run."""

    type: str  # RECORD_INTERVAL or RECORD_SUMMARY
    mode: str  # MODE_PAYLOAD or MODE_WIRE
    start: datetime  # timezone-aware
    end: datetime
    duration_s: float
    interfaces: Optional[list[str]]  # None: every interface but loopback
    processes: list[ProcessStats]
    aggregated: Aggregate
    include_loopback: bool = False
    lost_updates: int = 0  # counter updates the kernel could not store (map full)
    exit_over: Optional[ExitOver] = None  # the threshold crossed: this record, or the run's summary
    tcp_health: Optional[UnownedDrops] = None  # only with --tcp-health


def clean_text(text: str) -> str:
    """``text`` as valid Unicode: bytes of a name or command line that were
    not UTF-8 (which Python carries as lone surrogates) become ``\\xHH``,
    a backslash, ``x`` and two hex digits, as Python's ``backslashreplace``
    writes them. Everything else is kept as it is."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that did not come from a byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def timestamp(moment: datetime) -> str:
    """ISO 8601 to the millisecond: records a fraction of a second apart stay apart."""
    return moment.isoformat(timespec="milliseconds")


def _round_rate(value: float) -> float:
    return round(value, 3)


def _round_us(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 1)


def process_to_dict(p: ProcessStats, record_type: str) -> dict:
    d: dict[str, Any] = {
        "pid": p.pid,
        "name": clean_text(p.name),
        "cmdline": clean_text(p.cmdline),
        "alive": p.alive,
        "bytes_in": p.bytes_in,
        "bytes_out": p.bytes_out,
        "rate_in": _round_rate(p.rate_in),
        "rate_out": _round_rate(p.rate_out),
        "peak_rate_in": _round_rate(p.peak_rate_in),
        "peak_rate_out": _round_rate(p.peak_rate_out),
        "tcp": p.tcp.to_dict(),
        "udp": p.udp.to_dict(),
        "tcp_connections": p.tcp_connections,
        "udp_connections": p.udp_connections,
        "tcp_listening": p.tcp_listening,
    }
    if record_type == RECORD_INTERVAL:
        d["total_bytes_in"] = p.total_bytes_in
        d["total_bytes_out"] = p.total_bytes_out
    d["cgroup"] = p.cgroup
    d["container"] = p.container
    d["pod"] = p.pod
    if p.pids is not None:
        d["pids"] = list(p.pids)
    if p.connections is not None:
        d["connections"] = [c.to_dict() for c in p.connections]
    d["protocols"] = {name: b.to_dict() for name, b in p.protocols.items()}
    d["ppid"] = p.ppid
    d["user"] = None if p.user is None else clean_text(p.user)
    d["uid"] = p.uid
    d["exe"] = None if p.exe is None else clean_text(p.exe)
    d["start_time"] = None if p.start_time is None else timestamp(p.start_time)
    if p.tcp_health is not None:
        d["tcp_health"] = p.tcp_health.to_dict()
    return d


def aggregate_to_dict(a: Aggregate, record_type: str) -> dict:
    d: dict[str, Any] = {
        "bytes_in": a.bytes_in,
        "bytes_out": a.bytes_out,
        "rate_in": _round_rate(a.rate_in),
        "rate_out": _round_rate(a.rate_out),
        "peak_rate_in": _round_rate(a.peak_rate_in),
        "peak_rate_out": _round_rate(a.peak_rate_out),
        "tcp_connections": a.tcp_connections,
        "udp_connections": a.udp_connections,
        "tcp_listening": a.tcp_listening,
    }
    if record_type == RECORD_INTERVAL:
        d["total_bytes_in"] = a.total_bytes_in
        d["total_bytes_out"] = a.total_bytes_out
    d["protocols"] = {name: b.to_dict() for name, b in a.protocols.items()}
    return d


def record_to_dict(r: Record) -> dict:
    """The JSON form of a record, keys in contract order."""
    d = {
        "schema": SCHEMA,
        "type": r.type,
        "mode": r.mode,
        "start": timestamp(r.start),
        "end": timestamp(r.end),
        "duration_s": round(r.duration_s, 3),
        "interfaces": list(r.interfaces) if r.interfaces is not None else None,
        "include_loopback": r.include_loopback,
        "processes": [process_to_dict(p, r.type) for p in r.processes],
        "aggregated": aggregate_to_dict(r.aggregated, r.type),
    }
    if r.lost_updates:
        d["lost_updates"] = r.lost_updates
    if r.exit_over is not None:
        d["exit_over"] = r.exit_over.to_dict()
    if r.tcp_health is not None:
        d["tcp_health"] = r.tcp_health.to_dict()
    return d
