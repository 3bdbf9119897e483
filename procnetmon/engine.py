"""The sampling loop: reads the probes once per interval and builds records.

The engine turns cumulative kernel counters into per-process windows, rates
and peaks, asks ``procinfo`` who the processes are, and hands finished
``model.Record`` objects to a callback. It never formats and never writes.
Stopping is cooperative: a ``threading.Event`` (set by the CLI's signal
handlers) ends the current interval early, and the summary still covers
everything counted up to that moment.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Optional

from procnetmon import cgroups, grouping, procinfo
from procnetmon.model import (RECORD_INTERVAL, RECORD_SUMMARY, Aggregate, Bytes, Connection,
                              ProcessStats, Record)
from procnetmon.probes import CounterKey, SocketBytes


@dataclass
class Usage:
    """Bytes of one process by protocol and direction."""

    tcp_in: int = 0
    tcp_out: int = 0
    udp_in: int = 0
    udp_out: int = 0

    @property
    def bytes_in(self) -> int:
        return self.tcp_in + self.udp_in

    @property
    def bytes_out(self) -> int:
        return self.tcp_out + self.udp_out

    def minus(self, other: "Usage") -> "Usage":
        return Usage(self.tcp_in - other.tcp_in, self.tcp_out - other.tcp_out,
                     self.udp_in - other.udp_in, self.udp_out - other.udp_out)


def usage_by_pid(counters: dict[CounterKey, int]) -> dict[int, Usage]:
    """Fold (pid, protocol, direction) counters into one Usage per process."""
    out: dict[int, Usage] = {}
    for key, value in counters.items():
        u = out.setdefault(key.pid, Usage())
        attr = f"{key.protocol}_{key.direction}"
        setattr(u, attr, getattr(u, attr) + value)
    return out


def _rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds if seconds > 0 else 0.0


@dataclass
class Peaks:
    rate_in: float = 0.0
    rate_out: float = 0.0

    def see(self, rate_in: float, rate_out: float) -> None:
        self.rate_in = max(self.rate_in, rate_in)
        self.rate_out = max(self.rate_out, rate_out)


@dataclass
class Tally:
    """Running totals, the last interval and peak rates, from cumulative snapshots.

    A peak is the highest one-interval rate. A final interval cut short (by
    Ctrl-C, or -t not being a multiple of --interval) shorter than half an
    interval does not set peaks, because a few milliseconds of burst would
    read as an absurd rate; it still counts in every total.
    """

    interval: float
    totals: dict = field(default_factory=dict)  # pid -> Usage since start
    window: dict = field(default_factory=dict)  # pid -> Usage of the last interval
    peaks: dict = field(default_factory=dict)  # pid -> Peaks
    aggregate_peaks: Peaks = field(default_factory=Peaks)
    intervals: int = 0

    def advance(self, cumulative: dict[int, Usage], seconds: float) -> None:
        """Take the counters at the end of an interval that lasted ``seconds``."""
        self.window = {pid: u.minus(self.totals.get(pid, Usage())) for pid, u in cumulative.items()}
        self.totals = dict(cumulative)
        self.intervals += 1
        if seconds < self.interval / 2 and self.intervals > 1:
            return
        agg_in = agg_out = 0
        for pid, w in self.window.items():
            self.peaks.setdefault(pid, Peaks()).see(_rate(w.bytes_in, seconds), _rate(w.bytes_out, seconds))
            agg_in += w.bytes_in
            agg_out += w.bytes_out
        self.aggregate_peaks.see(_rate(agg_in, seconds), _rate(agg_out, seconds))


# --serve counts the sockets of its processes every this many intervals.
DAEMON_SOCKETS_EVERY = 10


@dataclass
class Options:
    """What to sample and for how long; built by the CLI from its arguments."""

    pids: Optional[list[int]] = None  # None: every process
    interfaces: Optional[list[str]] = None  # names, for the records only
    include_loopback: bool = False
    interval: float = 1.0
    duration: Optional[float] = None  # -t: stop after this many seconds
    count: Optional[int] = None  # -n: stop after this many intervals
    emit_intervals: bool = False  # print a record per interval
    details: bool = False
    group_by: str = "pid"  # or "name", "cgroup": rows folded per group
    # A daemon (--serve), which must stay cheap however long it runs and
    # however many processes there are: once an interval record has carried
    # an exited process's last bytes, it is forgotten (the summary will not
    # list it); liveness comes from the kernel's exit notes rather than
    # /proc; a process's cgroup is read when it is first seen; sockets are
    # counted every DAEMON_SOCKETS_EVERY intervals.
    daemon: bool = False


def _endpoint(addr: str, port: int) -> str:
    if not addr:
        return ""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _unspecified(addr: str) -> bool:
    return addr in ("", "0.0.0.0", "::")


class Sampler:
    """Runs one sampling session over an attached probe."""

    def __init__(self, probe, options: Options, *, stop: Optional[threading.Event] = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 processes=procinfo):
        self.probe = probe
        self.options = options
        self.stop = stop or threading.Event()
        self.monotonic = monotonic
        self.wallclock = wallclock
        self.processes = processes
        self.tally = Tally(options.interval)
        # --group-by: the same tally over folded counters, for the groups' peaks.
        self.group_tally = Tally(options.interval)
        self.group_of: dict[int, str] = {}
        self._socket_cache: dict = {}
        self._records_since_sockets = 0
        self.identities: dict[int, Optional[procinfo.Identity]] = {}
        self.socket_totals: dict[tuple, tuple[int, int]] = {}
        self.lost_updates = 0
        # Where each process was last seen alive, and cgroup ids (noted by
        # the kernel at exit) back to paths.
        self.cgroup_seen: dict[int, str] = {}
        self.cgroup_names = cgroups.CgroupNames(cgroups.cgroup2_mount())
        self._remembered: set[str] = set()
        for pid in options.pids or []:
            self._identify(pid)

    def _identify(self, pid: int) -> Optional[procinfo.Identity]:
        """Who ``pid`` was when first seen. None (kept, so not asked again, and
        never lent the name of a later process reusing the PID): already gone."""
        if pid not in self.identities:
            self.identities[pid] = self.processes.identify(pid)
            if self.identities[pid] is not None:
                self._live_cgroup(pid)
        return self.identities[pid]

    def _live_cgroup(self, pid: int) -> Optional[str]:
        reader = getattr(self.processes, "cgroup_of", None)
        path = reader(pid) if reader else None
        if path:
            self.cgroup_seen[pid] = path
            if path not in self._remembered:
                self._remembered.add(path)
                self.cgroup_names.remember(path)
        return path or self.cgroup_seen.get(pid)

    def _cgroup(self, pid: int, alive: bool, exited_cgroups: dict[int, int]) -> Optional[str]:
        """A live process's cgroup now; an exited one's where it exited."""
        if alive:
            if self.options.daemon and pid in self.cgroup_seen:
                return self.cgroup_seen[pid]
            return self._live_cgroup(pid)
        cgroup_id = exited_cgroups.get(pid)
        path = self.cgroup_names.path_of(cgroup_id) if cgroup_id else None
        return path or self.cgroup_seen.get(pid)

    def run(self, on_interval: Callable[[Record], bool]) -> Record:
        """Sample until -t, -n or a stop; return the summary.

        ``on_interval`` gets each interval record when intervals are wanted,
        and returns False when nobody reads any more (closed stdout), which
        ends the run like a stop does.
        """
        opts = self.options
        self.start_wall = self.wallclock()
        self.start = self.monotonic()
        last = self.start
        deadline = self.start + opts.duration if opts.duration else None
        tick_index = records = 0
        while True:
            records += 1
            # Ticks stay on the start + k * interval grid; after a stall
            # (Ctrl-Z, suspend) the missed ones are skipped, not fired at once.
            behind = int((self.monotonic() - self.start) / opts.interval)
            tick_index = max(tick_index + 1, behind + 1)
            tick = self.start + tick_index * opts.interval
            if deadline is not None:
                tick = min(tick, deadline)
            stopped = self.stop.wait(max(0.0, tick - self.monotonic()))
            now = self.monotonic()
            self._sample(now - last)
            if opts.emit_intervals:
                record = self._record(RECORD_INTERVAL, last, now)
                if not on_interval(record):
                    stopped = True
                if opts.daemon:
                    self._forget_exited(record)
            last = now
            if stopped or self.stop.is_set():
                break
            if deadline is not None and now >= deadline:
                break
            if opts.count is not None and records >= opts.count:
                break
        return self._record(RECORD_SUMMARY, self.start, last)

    def _sample(self, seconds: float) -> None:
        snap = self.probe.read()
        self.lost_updates = snap.lost_updates
        cumulative = usage_by_pid(snap.counters)
        self.tally.advance(cumulative, seconds)
        for pid in self.tally.window:
            self._identify(pid)
        if self.options.group_by != "pid":
            folded: dict[str, Usage] = {}
            for pid, u in cumulative.items():
                g = folded.setdefault(self._group_key(pid), Usage())
                g.tcp_in, g.tcp_out = g.tcp_in + u.tcp_in, g.tcp_out + u.tcp_out
                g.udp_in, g.udp_out = g.udp_in + u.udp_in, g.udp_out + u.udp_out
            self.group_tally.advance(folded, seconds)

    def _group_key(self, pid: int) -> str:
        """The group of a process, fixed when first seen so that folded
        counters only grow."""
        if pid not in self.group_of:
            identity = self.identities.get(pid)
            if self.options.group_by == "name":
                key = identity.name if identity is not None else self.probe.exited().get(pid, "?")
            else:
                exited_ids = getattr(self.probe, "exited_cgroups", dict)()
                key = self._cgroup(pid, identity is not None and pid not in exited_ids, exited_ids) or ""
            self.group_of[pid] = key
        return self.group_of[pid]

    def _live_sockets(self, alive: set) -> dict:
        if not self.options.daemon:
            return self.processes.sockets_of(sorted(alive)) if alive else {}
        self._records_since_sockets += 1
        if self._records_since_sockets >= DAEMON_SOCKETS_EVERY or not self._socket_cache:
            self._records_since_sockets = 0
            self._socket_cache = self.processes.sockets_of(sorted(alive)) if alive else {}
        return self._socket_cache

    def _forget_exited(self, record: Record) -> None:
        """Forget processes whose exit the kernel reported: their counters have
        left the kernel's map, so any later byte (a wire packet still in
        flight) starts from zero and is counted once."""
        forget = getattr(self.probe, "forget", None)
        if forget is None:
            return
        exited = self.probe.exited()
        gone = [pid for pid in exited if pid not in (self.options.pids or ())]
        if not gone:
            return
        for pid in gone:
            for store in (self.identities, self.tally.totals, self.tally.window, self.tally.peaks,
                          self.cgroup_seen, self.group_of, self._socket_cache):
                store.pop(pid, None)
        forget(gone)

    def _wall(self, mono: float) -> datetime:
        return self.start_wall + timedelta(seconds=mono - self.start)

    def _pids_for(self, kind: str) -> list[int]:
        if self.options.pids is not None:
            return list(self.options.pids)
        usage = self.tally.totals if kind == RECORD_SUMMARY else self.tally.window
        return sorted(pid for pid, u in usage.items() if u.bytes_in or u.bytes_out)

    def _record(self, kind: str, begin: float, end: float) -> Record:
        seconds = end - begin
        exited = self.probe.exited()
        exited_cgroups = getattr(self.probe, "exited_cgroups", dict)()
        kernel_sockets = self.probe.sockets() if self.options.details else []
        rows = []
        agg = Aggregate()
        pids = self._pids_for(kind)
        if self.options.daemon:
            # The kernel notes every counted process's exit (and takes it out
            # of `exited` only once it is forgotten), before its PID is reused.
            alive = {pid for pid in pids if self.identities.get(pid) is not None and pid not in exited}
        else:
            alive = {pid for pid in pids
                     if self.identities.get(pid) is not None and self.processes.still_alive(self.identities[pid])}
        # One look at the socket tables for the whole record, not one per process.
        live_sockets = self._live_sockets(alive)
        for pid in pids:
            rows.append(self._process_row(kind, pid, seconds, pid in alive, live_sockets.get(pid, []),
                                          exited, kernel_sockets))
            rows[-1].cgroup = self._cgroup(pid, pid in alive, exited_cgroups)
            workload = cgroups.parse_path(rows[-1].cgroup)
            rows[-1].container, rows[-1].pod = workload.container, workload.pod
        if self.options.group_by != "pid":
            for pid in pids:
                self._group_key(pid)
            rows = grouping.fold(rows, self.group_of, self.options.group_by, seconds, self.group_tally)
        for row in rows:
            agg.bytes_in += row.bytes_in
            agg.bytes_out += row.bytes_out
            agg.total_bytes_in += row.total_bytes_in
            agg.total_bytes_out += row.total_bytes_out
            agg.tcp_connections += row.tcp_connections
            agg.udp_connections += row.udp_connections
        agg.rate_in = _rate(agg.bytes_in, seconds)
        agg.rate_out = _rate(agg.bytes_out, seconds)
        agg.peak_rate_in = self.tally.aggregate_peaks.rate_in
        agg.peak_rate_out = self.tally.aggregate_peaks.rate_out
        return Record(type=kind, mode=self.probe.mode, start=self._wall(begin), end=self._wall(end),
                      duration_s=seconds, interfaces=self.options.interfaces, processes=rows,
                      aggregated=agg, include_loopback=self.options.include_loopback,
                      lost_updates=self.lost_updates)

    def _process_row(self, kind: str, pid: int, seconds: float, alive: bool,
                     live_sockets: list[procinfo.Socket], exited: dict[int, str],
                     kernel_sockets: list[SocketBytes]) -> ProcessStats:
        total = self.tally.totals.get(pid, Usage())
        usage = total if kind == RECORD_SUMMARY else self.tally.window.get(pid, Usage())
        peaks = self.tally.peaks.get(pid, Peaks())
        identity = self.identities.get(pid)
        if identity is not None:
            name, cmdline = identity.name, identity.cmdline
        else:
            name, cmdline = exited.get(pid, "?"), ""
        row = ProcessStats(
            pid=pid, name=name, cmdline=cmdline, alive=alive,
            bytes_in=usage.bytes_in, bytes_out=usage.bytes_out,
            rate_in=_rate(usage.bytes_in, seconds), rate_out=_rate(usage.bytes_out, seconds),
            peak_rate_in=peaks.rate_in, peak_rate_out=peaks.rate_out,
            tcp=Bytes(usage.tcp_in, usage.tcp_out), udp=Bytes(usage.udp_in, usage.udp_out),
            tcp_connections=sum(1 for s in live_sockets if s.protocol == "tcp"),
            udp_connections=sum(1 for s in live_sockets if s.protocol == "udp"),
            total_bytes_in=total.bytes_in, total_bytes_out=total.bytes_out)
        if self.options.details:
            row.connections = self._connections(kind, pid, live_sockets, kernel_sockets)
        return row

    def _connections(self, kind: str, pid: int, live: list[procinfo.Socket],
                     kernel: list[SocketBytes]) -> list[Connection]:
        """The process's live sockets with the bytes the kernel attributed to each, plus closed ones."""
        def key(protocol, family, lport, raddr, rport):
            return (protocol, family, lport, "" if _unspecified(raddr) else raddr, rport if not _unspecified(raddr) else 0)

        counted: dict[tuple, SocketBytes] = {}
        for s in kernel:
            if s.pid == pid:
                counted[key(s.protocol, s.family, s.local_port, s.remote_addr, s.remote_port)] = s
        out = []
        for s in live:
            k = key(s.protocol, s.family, s.local_port, s.remote_addr, s.remote_port)
            b_in, b_out = self._socket_window(kind, pid, k, counted.pop(k, None))
            out.append(Connection(s.protocol, s.family, _endpoint(s.local_addr, s.local_port),
                                  _endpoint(s.remote_addr, s.remote_port), s.state, b_in, b_out))
        for k, s in sorted(counted.items()):
            b_in, b_out = self._socket_window(kind, pid, k, s)
            if b_in or b_out:
                remote = "" if _unspecified(s.remote_addr) else _endpoint(s.remote_addr, s.remote_port)
                out.append(Connection(s.protocol, s.family, _endpoint(s.local_addr, s.local_port),
                                      remote, "CLOSED", b_in, b_out))
        return out

    def _socket_window(self, kind: str, pid: int, k: tuple, s: Optional[SocketBytes]) -> tuple[int, int]:
        """Bytes of one socket in this record's window (cumulative for a summary)."""
        if s is None:
            return 0, 0
        if kind == RECORD_SUMMARY:
            return s.bytes_in, s.bytes_out
        prev_in, prev_out = self.socket_totals.get((pid,) + k, (0, 0))
        self.socket_totals[(pid,) + k] = (s.bytes_in, s.bytes_out)
        return max(0, s.bytes_in - prev_in), max(0, s.bytes_out - prev_out)
