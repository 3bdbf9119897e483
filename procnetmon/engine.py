"""The sampling loop: reads the probes once per interval and builds records.

The engine turns cumulative kernel counters into per-process windows, rates
and peaks, asks ``procinfo`` who the processes are, and hands finished
``model.Record`` objects to a callback. It never formats and never writes.
Stopping is cooperative: a ``threading.Event`` (set by the CLI's signal
handlers) ends the current interval early, and the summary still covers
everything counted up to that moment.
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional, Protocol, runtime_checkable

from procnetmon import cgroups, grouping, procinfo
from procnetmon.model import RECORD_INTERVAL, RECORD_SUMMARY, Aggregate, Bytes, Connection, ProcessStats, Record
from procnetmon.probes import CounterKey, SampledProbe, SocketBytes


@runtime_checkable
class ProcessTable(Protocol):
    """What the engine asks about processes: ``procinfo`` itself, or a test's table."""

    def identify(self, pid: int) -> Optional[procinfo.Identity]: ...

    def still_alive(self, identity: procinfo.Identity) -> bool: ...

    def sockets_of(self, pids: list[int]) -> dict[int, list[procinfo.Socket]]: ...

    def cgroup_of(self, pid: int) -> Optional[str]: ...


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

    def plus(self, other: "Usage") -> "Usage":
        return Usage(self.tcp_in + other.tcp_in, self.tcp_out + other.tcp_out,
                     self.udp_in + other.udp_in, self.udp_out + other.udp_out)

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

    def advance(self, cumulative: dict[Any, Usage], seconds: float) -> None:  # by pid, or by group
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


class Archive:
    """Final totals of processes that are gone, for the summary only.

    A long ``-c`` run sees tens of thousands of processes come and go; what
    the summary needs of each (PID, bytes by protocol and direction, peaks,
    name, command line, cgroup, group) is packed here in flat arrays, about
    70 bytes a process, each text stored once however often it recurs.
    Nothing here is looked at again until the summary.
    """

    TEXTS = 4  # name, cmdline, cgroup ("" for none), group key

    def __init__(self) -> None:
        self.pids = array("q")
        self.usage = array("Q")  # tcp_in, tcp_out, udp_in, udp_out per process
        self.peaks = array("d")  # rate_in, rate_out per process
        self.text = array("L")  # TEXTS indexes into _texts per process
        self._texts: list[str] = []
        self._text_index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.pids)

    def _intern(self, text: str) -> int:
        index = self._text_index.get(text)
        if index is None:
            index = self._text_index[text] = len(self._texts)
            self._texts.append(text)
        return index

    def add(self, pid: int, usage: Usage, peaks: Peaks, name: str, cmdline: str,
            cgroup: Optional[str] = None, group: str = "") -> None:
        self.pids.append(pid)
        self.usage.extend((usage.tcp_in, usage.tcp_out, usage.udp_in, usage.udp_out))
        self.peaks.extend((peaks.rate_in, peaks.rate_out))
        self.text.extend(self._intern(t) for t in (name, cmdline, cgroup or "", group))

    def rows(self):
        """(pid, Usage, Peaks, name, cmdline, cgroup, group) of each process, oldest first."""
        n = self.TEXTS
        for i, pid in enumerate(self.pids):
            name, cmdline, cgroup, group = (self._texts[j] for j in self.text[n * i:n * i + n])
            yield (pid, Usage(*self.usage[4 * i:4 * i + 4]), Peaks(*self.peaks[2 * i:2 * i + 2]),
                   name, cmdline, cgroup or None, group)


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
    # -p --children and -- COMMAND: the kernel adds descendants of the pids
    # to its filter; those that moved bytes are rows too.
    follow_children: bool = False
    command: Optional[list[str]] = None  # -- COMMAND: pids holds its PID alone
    # A daemon (--serve), which must stay cheap however long it runs and
    # however many processes there are: once an interval record has carried
    # an exited process's last bytes, it is forgotten (the summary will not
    # list it); liveness comes from the kernel's exit notes rather than
    # /proc; a process's cgroup is read when it is first seen; sockets are
    # counted every DAEMON_SOCKETS_EVERY intervals.
    forget_exited: bool = False


def _endpoint(addr: str, port: int) -> str:
    if not addr:
        return ""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _count(sockets: Optional[list], protocol: str, state: Optional[str] = None) -> Optional[int]:
    """Sockets of ``protocol`` (in ``state``); None when the process's sockets could not be read."""
    if sockets is None:
        return None
    return sum(1 for s in sockets if s.protocol == protocol and (state is None or s.state == state))


def _add_known(total: Optional[int], value: Optional[int]) -> Optional[int]:
    return None if total is None or value is None else total + value


def _unspecified(addr: str) -> bool:
    return addr in ("", "0.0.0.0", "::")


class Sampler:
    """Runs one sampling session over an attached probe."""

    def __init__(self, probe: SampledProbe, options: Options, *, stop: Optional[threading.Event] = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 processes: ProcessTable = procinfo):
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
        # Everything per process here is about processes the probe still
        # counts; one that has exited moves to the archive (see _retire).
        self.identities: dict[int, Optional[procinfo.Identity]] = {}
        self.kernel_names: dict[int, str] = {}  # names of exited processes, from the kernel
        self.exited_cgroup_ids: dict[int, int] = {}  # their cgroup at exit
        self.socket_totals: dict[int, dict[int, tuple[int, int]]] = {}  # pid -> sock_id -> (in, out)
        self.archive = Archive()
        self.exiting: list[int] = []  # exits the last read collected
        # A PID given with -p (at most a few thousand) keeps its row in every
        # record after it exits: its totals are carried here, not archived.
        self.carried: dict[int, Usage] = {}
        self.given = frozenset(options.pids or ())
        self.group_carried: dict[str, Usage] = {}  # --group-by: totals of retired members
        self.lost_updates = 0
        # Where each process was last seen alive, and cgroup ids (noted by
        # the kernel at exit) back to paths.
        self.cgroup_seen: dict[int, str] = {}
        self.cgroup_names = cgroups.CgroupNames(cgroups.cgroup2_mount())
        self._remembered: set[str] = set()
        self._socket_cache: dict = {}  # --serve: the sockets last counted
        self._records_since_sockets = 0
        if options.command is None:
            for pid in options.pids or []:
                self._identify(pid)
        # COMMAND's PID is looked up at the first sample, not now: before its
        # exec completes /proc still shows procnetmon's name.

    def _identify(self, pid: int) -> Optional[procinfo.Identity]:
        """Who ``pid`` was when first seen. None (kept, so not asked again, and
        never lent the name of a later process reusing the PID): already gone."""
        if pid not in self.identities:
            self.identities[pid] = self.processes.identify(pid)
            if self.identities[pid] is not None:
                self._live_cgroup(pid)
        return self.identities[pid]

    def _live_cgroup(self, pid: int) -> Optional[str]:
        path = self.processes.cgroup_of(pid)
        if path:
            self.cgroup_seen[pid] = path
            if path not in self._remembered:
                self._remembered.add(path)
                self.cgroup_names.remember(path)
        return path or self.cgroup_seen.get(pid)

    def _exit_note(self, pid: int) -> tuple[Optional[str], Optional[int]]:
        """Name and cgroup id the kernel noted at the exit of a process that
        moved bytes and exited after the last read collected exits (gone, or
        a zombie, when first looked at)."""
        note = self.probe.exit_info(pid)
        return note if note else (None, None)

    def _cgroup(self, pid: int, alive: bool, exited_cgroups: dict[int, int]) -> Optional[str]:
        """A live process's cgroup now; an exited one's where it exited."""
        if alive:
            if self.options.forget_exited and pid in self.cgroup_seen:
                return self.cgroup_seen[pid]  # a daemon reads it once
            return self._live_cgroup(pid)
        cgroup_id = exited_cgroups.get(pid) or self._exit_note(pid)[1]
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
                if opts.forget_exited:
                    self._forget_exited(record)
            last = now
            if stopped or self.stop.is_set():
                break
            if deadline is not None and now >= deadline:
                break
            if opts.count is not None and records >= opts.count:
                break
            # Processes whose exit this read collected have been counted to
            # the end and shown in this interval: their totals go to the
            # archive, the rest of them is dropped.
            for pid in self.exiting:
                self._retire(pid)
        return self._record(RECORD_SUMMARY, self.start, last)

    def _sample(self, seconds: float) -> None:
        snap = self.probe.read()
        self.lost_updates = snap.lost_updates
        cumulative = usage_by_pid(snap.counters)
        self.exiting = []
        exited_ids = self.probe.exited_cgroups()
        for pid, name in self.probe.exited().items():
            if pid in cumulative:
                self.kernel_names[pid] = name
                if pid in exited_ids:
                    self.exited_cgroup_ids[pid] = exited_ids[pid]
                self.exiting.append(pid)
        # Counters the probe no longer reports without an exit (a full exit
        # map) are final too; their last bytes were in the previous record.
        for pid in [pid for pid in self.tally.totals if pid not in cumulative]:
            self._retire(pid)
        self.tally.advance(cumulative, seconds)
        self._forget_execed()
        for pid in self.options.pids or []:
            self._identify(pid)
        for pid in self.tally.window:
            self._identify(pid)
        if self.options.group_by != "pid":
            folded: dict[str, Usage] = {key: Usage().plus(u) for key, u in self.group_carried.items()}
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
                key = identity.name if identity is not None else \
                    (self.kernel_names.get(pid) or self._exit_note(pid)[0] or "?")
            else:
                exited_ids = self.exited_cgroup_ids
                key = self._cgroup(pid, identity is not None and pid not in exited_ids, exited_ids) or ""
            self.group_of[pid] = key
        return self.group_of[pid]

    def _forget_execed(self) -> None:
        """A process that exec'd is named by what it runs now. One already gone
        again is named by the kernel's name at exit, not by the old program's."""
        for pid in self.probe.execed():
            if pid in self.identities:
                self.identities[pid] = self.processes.identify(pid)

    def _retire(self, pid: int) -> None:
        """Move an exited process's final totals out of the per-process state."""
        total = self.tally.totals.pop(pid)
        if self.options.group_by != "pid":
            key = self._group_key(pid)
            self.group_carried[key] = self.group_carried.get(key, Usage()).plus(total)
        if pid in self.given:
            self.carried[pid] = self.carried.get(pid, Usage()).plus(total)
            return
        peaks = self.tally.peaks.pop(pid, Peaks())
        identity = self.identities.pop(pid, None)
        kernel_name = self.kernel_names.pop(pid, "?")
        cgroup = self._cgroup(pid, False, self.exited_cgroup_ids)
        self.exited_cgroup_ids.pop(pid, None)
        self.cgroup_seen.pop(pid, None)
        self.socket_totals.pop(pid, None)
        self._socket_cache.pop(pid, None)
        group = self.group_of.pop(pid, "")
        if self.options.forget_exited:
            return  # a daemon keeps no history: its metrics already carry the bytes
        if identity is not None:
            name, cmdline = identity.name, identity.cmdline
        else:
            name, cmdline = kernel_name, ""
        self.archive.add(pid, total, peaks, name, cmdline, cgroup, group)

    def _live_sockets(self, alive: set) -> dict:
        if not self.options.forget_exited:
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
        gone = [pid for pid in self.exiting if pid not in (self.options.pids or ())]
        if gone:
            self.probe.forget(gone)  # the engine's own state goes in _retire, without an archive

    def _wall(self, mono: float) -> datetime:
        return self.start_wall + timedelta(seconds=mono - self.start)

    def _pids_for(self, kind: str) -> list[int]:
        """The given PIDs, always; and every other process that moved bytes in
        the record's window, when there are none or their children are followed."""
        given = list(self.options.pids) if self.options.pids is not None else []
        if self.options.pids is not None and not self.options.follow_children:
            return given
        usage = self.tally.totals if kind == RECORD_SUMMARY else self.tally.window
        moved = sorted(pid for pid, u in usage.items() if u.bytes_in or u.bytes_out)
        return given + [pid for pid in moved if pid not in given]

    def _record(self, kind: str, begin: float, end: float) -> Record:
        seconds = end - begin
        exited = self.kernel_names
        exited_cgroups = self.exited_cgroup_ids
        kernel_sockets: dict[int, list[SocketBytes]] = {}
        if self.options.details:
            for s in self.probe.sockets():
                kernel_sockets.setdefault(s.pid, []).append(s)
        rows = []
        agg = Aggregate()
        pids = self._pids_for(kind)
        if self.options.forget_exited:
            # The kernel notes every counted process's exit before its PID
            # can be reused: no look at /proc per process per second.
            alive = {pid for pid in pids if self.identities.get(pid) is not None and pid not in exited}
        else:
            alive = {pid for pid in pids
                     if (identity := self.identities.get(pid)) is not None and self.processes.still_alive(identity)}
        # One look at the socket tables for the whole record, not one per process.
        live_sockets = self._live_sockets(alive)
        for pid in pids:
            rows.append(self._process_row(kind, pid, seconds, pid in alive, live_sockets.get(pid, []),
                                          exited, kernel_sockets.get(pid, [])))
            rows[-1].cgroup = self._cgroup(pid, pid in alive, exited_cgroups)
            workload = cgroups.parse_path(rows[-1].cgroup)
            rows[-1].container, rows[-1].pod = workload.container, workload.pod
        group_of = self.group_of
        if self.options.group_by != "pid":
            for pid in pids:
                self._group_key(pid)
        if kind == RECORD_SUMMARY and len(self.archive):
            rows, group_of = self._with_archive(rows, seconds, kernel_sockets)
        if self.options.group_by != "pid":
            rows = grouping.fold(rows, group_of, self.options.group_by, seconds, self.group_tally)
        for row in rows:
            agg.bytes_in += row.bytes_in
            agg.bytes_out += row.bytes_out
            agg.total_bytes_in += row.total_bytes_in
            agg.total_bytes_out += row.total_bytes_out
            # One unknown count makes the sum unknown: never a low number
            # that looks exact.
            agg.tcp_connections = _add_known(agg.tcp_connections, row.tcp_connections)
            agg.udp_connections = _add_known(agg.udp_connections, row.udp_connections)
            agg.tcp_listening = _add_known(agg.tcp_listening, row.tcp_listening)
        agg.rate_in = _rate(agg.bytes_in, seconds)
        agg.rate_out = _rate(agg.bytes_out, seconds)
        agg.peak_rate_in = self.tally.aggregate_peaks.rate_in
        agg.peak_rate_out = self.tally.aggregate_peaks.rate_out
        return Record(type=kind, mode=self.probe.mode, start=self._wall(begin), end=self._wall(end),
                      duration_s=seconds, interfaces=self.options.interfaces, processes=rows,
                      aggregated=agg, include_loopback=self.options.include_loopback,
                      lost_updates=self.lost_updates)

    def _with_archive(self, rows: list[ProcessStats], seconds: float,
                      kernel_sockets: dict[int, list[SocketBytes]]) -> tuple[list[ProcessStats], dict[int, str]]:
        """The summary's rows with the processes of the archive, and the
        group of every row: a row of their own, or added to the row of a
        PID that was used again (PIDs are reused: both processes share one
        row, named after the first)."""
        by_pid = {row.pid: row for row in rows}
        group_of = dict(self.group_of)
        added = []
        for pid, usage, peaks, name, cmdline, cgroup, group in self.archive.rows():
            row = by_pid.get(pid)
            if row is None:
                workload = cgroups.parse_path(cgroup)
                row = ProcessStats(pid=pid, name=name, cmdline=cmdline, alive=False, tcp_connections=0,
                                   udp_connections=0, tcp_listening=0, cgroup=cgroup,
                                   container=workload.container, pod=workload.pod)
                if self.options.details:
                    row.connections = self._connections(RECORD_SUMMARY, pid, [], kernel_sockets.get(pid, []))
                by_pid[pid] = row
                group_of[pid] = group
                added.append(row)
            elif pid not in self.tally.totals or self.identities.get(pid) is None:
                row.name, row.cmdline = name, cmdline
            row.tcp = Bytes(row.tcp.bytes_in + usage.tcp_in, row.tcp.bytes_out + usage.tcp_out)
            row.udp = Bytes(row.udp.bytes_in + usage.udp_in, row.udp.bytes_out + usage.udp_out)
            row.bytes_in += usage.bytes_in
            row.bytes_out += usage.bytes_out
            row.total_bytes_in, row.total_bytes_out = row.bytes_in, row.bytes_out
            row.rate_in, row.rate_out = _rate(row.bytes_in, seconds), _rate(row.bytes_out, seconds)
            row.peak_rate_in = max(row.peak_rate_in, peaks.rate_in)
            row.peak_rate_out = max(row.peak_rate_out, peaks.rate_out)
        if not added:
            return rows, group_of
        # The given PIDs first (followed descendants, archived or not, after them).
        head = [row for row in rows if row.pid in self.given]
        rest = sorted([row for row in rows if row.pid not in self.given] + added, key=lambda row: row.pid or 0)
        return head + rest, group_of

    def _process_row(self, kind: str, pid: int, seconds: float, alive: bool,
                     live_sockets: Optional[list[procinfo.Socket]], exited: dict[int, str],
                     kernel_sockets: list[SocketBytes]) -> ProcessStats:
        total = self.tally.totals.get(pid, Usage())
        if pid in self.carried:
            total = total.plus(self.carried[pid])
        usage = total if kind == RECORD_SUMMARY else self.tally.window.get(pid, Usage())
        peaks = self.tally.peaks.get(pid, Peaks())
        identity = self.identities.get(pid)
        if identity is not None:
            name, cmdline = identity.name, identity.cmdline
        elif self.options.command and self.options.pids and pid == self.options.pids[0]:
            # COMMAND ended before a look at /proc: its name as the kernel
            # knew it at exit, or as exec(2) sets it, and its arguments.
            command = self.options.command
            name, cmdline = exited.get(pid) or os.path.basename(command[0]), " ".join(command)
        else:
            name, cmdline = exited.get(pid) or self._exit_note(pid)[0] or "?", ""
        row = ProcessStats(
            pid=pid, name=name, cmdline=cmdline, alive=alive,
            bytes_in=usage.bytes_in, bytes_out=usage.bytes_out,
            rate_in=_rate(usage.bytes_in, seconds), rate_out=_rate(usage.bytes_out, seconds),
            peak_rate_in=peaks.rate_in, peak_rate_out=peaks.rate_out,
            tcp=Bytes(usage.tcp_in, usage.tcp_out), udp=Bytes(usage.udp_in, usage.udp_out),
            tcp_connections=_count(live_sockets, "tcp"),
            udp_connections=_count(live_sockets, "udp"),
            total_bytes_in=total.bytes_in, total_bytes_out=total.bytes_out,
            tcp_listening=_count(live_sockets, "tcp", state="LISTEN"))
        if self.options.details:
            row.connections = self._connections(kind, pid, live_sockets or [], kernel_sockets)
        return row

    def _connections(self, kind: str, pid: int, live: list[procinfo.Socket],
                     kernel: list[SocketBytes]) -> list[Connection]:
        """The process's live sockets with the bytes the kernel attributed to each, plus closed ones.

        Sockets are told apart by identity, never by their addresses: one
        local port may serve two sockets in a record, and each keeps its row.
        A live socket is the kernel's socket with the same inode number.
        """
        mine = [s for s in kernel if s.pid == pid]
        by_inode = {s.inode: s for s in mine if s.inode}
        shown: set[int] = set()
        out = []
        for s in live:
            found = by_inode.get(s.inode) if s.inode else None
            if found is not None:
                shown.add(found.sock_id)
            b_in, b_out = self._socket_window(kind, pid, found)
            out.append(Connection(s.protocol, s.family, _endpoint(s.local_addr, s.local_port),
                                  _endpoint(s.remote_addr, s.remote_port), s.state, b_in, b_out))
        closed = sorted((s for s in mine if s.sock_id not in shown),
                        key=lambda s: (s.protocol, s.family, s.local_addr, s.local_port,
                                       s.remote_addr, s.remote_port, s.sock_id))
        for gone in closed:
            b_in, b_out = self._socket_window(kind, pid, gone)
            if b_in or b_out:
                remote = "" if _unspecified(gone.remote_addr) else _endpoint(gone.remote_addr, gone.remote_port)
                out.append(Connection(gone.protocol, gone.family, _endpoint(gone.local_addr, gone.local_port),
                                      remote, "CLOSED", b_in, b_out))
        return out

    def _socket_window(self, kind: str, pid: int, s: Optional[SocketBytes]) -> tuple[int, int]:
        """Bytes of one socket in this record's window (cumulative for a summary)."""
        if s is None:
            return 0, 0
        if kind == RECORD_SUMMARY:
            return s.bytes_in, s.bytes_out
        mine = self.socket_totals.setdefault(pid, {})
        prev_in, prev_out = mine.get(s.sock_id, (0, 0))
        mine[s.sock_id] = (s.bytes_in, s.bytes_out)
        return max(0, s.bytes_in - prev_in), max(0, s.bytes_out - prev_out)
