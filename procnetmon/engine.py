"""The sampling loop: reads the probes once per interval and builds records.

The engine turns cumulative kernel counters into per-process windows, rates
and peaks (``tally``), asks ``procinfo`` who the processes are, keeps all it
knows of a process in one ``records.Tracked``, and hands finished
``model.Record`` objects (assembled by ``records``) to a callback. It never
formats and never writes.
Stopping is cooperative: a ``threading.Event`` (set by the CLI's signal
handlers) ends the current interval early, and the summary still covers
everything counted up to that moment.
"""

from __future__ import annotations

import fnmatch
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Mapping, Optional, Protocol, runtime_checkable

from procnetmon import cgroups, healthtally, procinfo, records, thresholds
from procnetmon.model import RECORD_INTERVAL, RECORD_SUMMARY, Record
from procnetmon.probes import SampledProbe
from procnetmon.records import Tracked
from procnetmon.tally import NO_WHO, Archive, Counted, Tally, Usage, usage_by_pid


@runtime_checkable
class ProcessTable(Protocol):
    """What the engine asks about processes: ``procinfo`` itself, or a test's table."""

    def identify(self, pid: int) -> Optional[procinfo.Identity]: ...

    def still_alive(self, identity: procinfo.Identity) -> bool: ...

    def sockets_of(self, pids: list[int]) -> dict[int, list[procinfo.Socket]]: ...

    def cgroup_of(self, pid: int) -> Optional[str]: ...


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
    # --exit-over: the run stops at the first sample that crosses one.
    exit_over: tuple[thresholds.Threshold, ...] = ()
    # --exclude-name: processes whose name or executable's file name matches
    # a glob are left out here, in user space (the kernel sees only a
    # 15-byte comm, and a name changes at exec).
    exclude_names: tuple[str, ...] = ()
    # --exclude-self: procnetmon's PID, whose children (other than COMMAND)
    # are left out here; procnetmon's own bytes are left out in the kernel.
    exclude_children_of: Optional[int] = None
    tcp_health: bool = False  # the probe's snapshots carry TCP health (--tcp-health)


class Sampler:
    """Runs one sampling session over an attached probe."""

    def __init__(self, probe: SampledProbe, options: Options, *, stop: Optional[threading.Event] = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 processes: ProcessTable = procinfo,
                 socket_owners: healthtally.FindOwners = procinfo.socket_owners):
        self.probe = probe
        self.options = options
        self.stop = stop or threading.Event()
        self.monotonic = monotonic
        self.wallclock = wallclock
        self.processes = processes
        # Everything kept per process is in its Tracked, here, for the
        # processes the probe still counts (and the PIDs given with -p); one
        # that has exited leaves with one pop, its totals to the archive
        # (see _retire). The tally counts into these same Tracked entries.
        self.tracked: dict[int, Tracked] = {}
        self.tally: Tally[Tracked] = Tally(options.interval, Tracked, self.tracked)
        # --group-by: the same tally over folded counters, for the groups' peaks.
        self.group_tally: Tally[Counted] = Tally(options.interval, Counted)
        self.archive = Archive()
        self.exiting: list[int] = []  # exits the last read collected
        self.health_exiting: list[int] = []
        # A PID given with -p (at most a few thousand) keeps its row in every
        # record after it exits: its totals are carried here, not archived.
        self.carried: dict[int, Usage] = {}
        self.given = frozenset(options.pids or ())
        self.group_carried: dict[str, Usage] = {}  # --group-by: totals of retired members
        self.lost_updates = 0
        # --exit-over: bytes in and out of every counted process since the
        # start, and the crossing that stopped the run, if one did.
        self.moved = (0, 0)
        self.crossing: Optional[thresholds.Crossing] = None
        # cgroup ids (noted by the kernel at exit) back to paths.
        self.cgroup_names = cgroups.CgroupNames(cgroups.cgroup2_mount())
        self._remembered: set[str] = set()
        self._records_since_sockets = 0
        # --tcp-health: its own tally; drops kept under a socket's inode go
        # to the process holding it, looked for among the -p processes only.
        self.health: Optional[healthtally.HealthTally] = (
            healthtally.HealthTally(socket_owners, list(options.pids) if options.pids and not options.follow_children
                                    else None) if options.tcp_health else None)
        if options.command is None:
            for pid in options.pids or []:
                self._identify(pid)
        # COMMAND's PID is looked up at the first sample, not now: before its
        # exec completes /proc still shows procnetmon's name.

    def track(self, pid: int) -> Tracked:
        """The Tracked of ``pid``, made on first use."""
        t = self.tracked.get(pid)
        if t is None:
            t = self.tracked[pid] = Tracked()
        return t

    def _identify(self, pid: int) -> Optional[procinfo.Identity]:
        """Who ``pid`` was when first seen. None (kept, so not asked again, and
        never lent the name of a later process reusing the PID): already gone."""
        t = self.track(pid)
        if not t.identified:
            t.identified = True
            t.identity = self.processes.identify(pid)
            if t.identity is not None:
                self._live_cgroup(pid)
        return t.identity

    def _live_cgroup(self, pid: int) -> Optional[str]:
        path = self.processes.cgroup_of(pid)
        t = self.track(pid)
        if path:
            t.cgroup = path
            if path not in self._remembered:
                self._remembered.add(path)
                self.cgroup_names.remember(path)
        return path or t.cgroup

    def exit_note(self, pid: int) -> tuple[Optional[str], Optional[int]]:
        """Name and cgroup id the kernel noted at the exit of a process that
        moved bytes and exited after the last read collected exits (gone, or
        a zombie, when first looked at)."""
        note = self.probe.exit_info(pid)
        return note if note else (None, None)

    def cgroup_of(self, pid: int, alive: bool, t: Optional[Tracked]) -> Optional[str]:
        """A live process's cgroup now; an exited one's where it exited (``t``: its Tracked, if any)."""
        if alive:
            if self.options.forget_exited and t is not None and t.cgroup is not None:
                return t.cgroup  # a daemon reads it once
            return self._live_cgroup(pid)
        cgroup_id = (t.exited_cgroup_id if t is not None else None) or self.exit_note(pid)[1]
        path = self.cgroup_names.path_of(cgroup_id) if cgroup_id else None
        return path or (t.cgroup if t is not None else None)

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
        tick_index = taken = 0
        while True:
            taken += 1
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
            if opts.exit_over:
                self.crossing = self.crossing or self._crossing(now - last)
            if opts.emit_intervals:
                record = records.record(self, RECORD_INTERVAL, last, now)
                if not on_interval(record):
                    stopped = True
                if opts.forget_exited:
                    self._forget_exited(record)
            last = now
            if stopped or self.stop.is_set() or self.crossing is not None:
                break
            if deadline is not None and now >= deadline:
                break
            if opts.count is not None and taken >= opts.count:
                break
            # Processes whose exit this read collected have been counted to
            # the end and shown in this interval: their totals go to the
            # archive, the rest of them is dropped.
            for pid in self.exiting:
                self._retire(pid)
            for pid in self.health_exiting:
                self._retire_health(pid)
        return records.record(self, RECORD_SUMMARY, self.start, last)

    def _sample(self, seconds: float) -> None:
        snap = self.probe.read()
        self.lost_updates = snap.lost_updates
        if self.health is not None and snap.health is not None:
            # CLOCK_MONOTONIC, the kernel's bpf_ktime_get_ns(): which RTT readings are this window's.
            self.health.take(snap.health, time.monotonic_ns())
            for pid in self.health.windows:
                self._identify(pid)
        cumulative = usage_by_pid(snap.counters)
        self.exiting = []
        # Exits of processes with health figures and no bytes (their connects failed).
        self.health_exiting = [pid for pid in self.probe.exited()
                               if pid not in cumulative and pid in self.health.windows] \
            if self.health is not None else []
        exited_ids = self.probe.exited_cgroups()
        for pid, name in self.probe.exited().items():
            if pid in cumulative or pid in self.health_exiting:
                t = self.track(pid)
                t.kernel_name = name
                t.screened = t.screened and t.identity is not None  # a name to match at last
                if pid in exited_ids:
                    t.exited_cgroup_id = exited_ids[pid]
                if pid in cumulative:
                    self.exiting.append(pid)
        # Counters the probe no longer reports without an exit (a full exit
        # map) are final too; their last bytes were in the previous record.
        for pid in [pid for pid, t in self.tracked.items() if t.total is not None and pid not in cumulative]:
            self._retire(pid)
        self._forget_execed()
        for pid in self.options.pids or []:
            self._identify(pid)
        for pid in cumulative:
            self._identify(pid)
        if self.options.exclude_names or self.options.exclude_children_of is not None:
            cumulative = self._without_excluded(cumulative)
        self.tally.advance(cumulative, seconds)
        if self.options.group_by != "pid":
            folded: dict[str, Usage] = {key: Usage().plus(u) for key, u in self.group_carried.items()}
            for pid, u in cumulative.items():
                key = self.group_key(pid)
                folded[key] = folded.get(key, Usage()).plus(u)
            self.group_tally.advance(folded, seconds)

    def _without_excluded(self, cumulative: dict[int, Usage]) -> dict[int, Usage]:
        """The counters of the processes not left out by --exclude-name or
        --exclude-self. A process left out is never counted; once its exit
        is collected nothing of it is kept."""
        kept = {}
        gone = []
        for pid, usage in cumulative.items():
            if not self.excluded(pid):
                kept[pid] = usage
            elif pid in self.exiting:
                gone.append(pid)
        if gone:
            self.exiting = [pid for pid in self.exiting if pid not in gone]
        # Gone from the kernel's counters without an exit note (a full exit
        # map) is gone too; a given PID stays, so it is not asked about again.
        gone += [pid for pid, t in self.tracked.items()
                 if t.excluded and pid not in cumulative and pid not in self.given]
        if gone:
            for pid in gone:
                del self.tracked[pid]
            self.probe.forget(gone)
        return kept

    def excluded(self, pid: int) -> bool:
        """Whether --exclude-name or --exclude-self leaves ``pid`` out: decided
        when it is identified (again after an exec), and for good once it is."""
        t = self.tracked.get(pid)
        if t is None:
            return False
        if t.excluded or t.screened:
            return t.excluded
        t.screened = True
        identity = t.identity
        if identity is not None:
            names = [identity.name] + ([os.path.basename(identity.exe)] if identity.exe else [])
        else:
            names = [n for n in (t.kernel_name or self.exit_note(pid)[0],) if n]
        opts = self.options
        t.excluded = any(fnmatch.fnmatchcase(name, glob) for name in names for glob in opts.exclude_names)
        if opts.exclude_children_of is not None and identity is not None and \
                identity.ppid == opts.exclude_children_of and not (opts.command and pid in (opts.pids or ())):
            t.excluded = True  # started by procnetmon, and not the COMMAND it measures
        if t.excluded and t.total is not None:
            t.uncount()  # exec'd into an excluded program: its bytes so far go with it
        return t.excluded

    def _crossing(self, seconds: float) -> Optional[thresholds.Crossing]:
        """The first --exit-over threshold the last sample crossed, if any."""
        counted = [(pid, t) for pid, t in self.tracked.items() if t.total is not None]
        window_in = sum(t.window.bytes_in for _, t in counted)
        window_out = sum(t.window.bytes_out for _, t in counted)
        self.moved = (self.moved[0] + window_in, self.moved[1] + window_out)

        def processes():
            for pid, t in counted:
                total = t.total if t.total is not None else Usage()
                if pid in self.carried:
                    total = total.plus(self.carried[pid])
                yield pid, (total.bytes_in, total.bytes_out), (t.window.bytes_in, t.window.bytes_out)

        # A stretch too short for a peak is too short for a rate.
        rates_count = seconds >= self.options.interval / 2 or self.tally.intervals <= 1
        return thresholds.first_crossing(self.options.exit_over, moved=self.moved,
                                         window=(window_in, window_out), seconds=seconds,
                                         processes=processes(), rates_count=rates_count)

    def group_key(self, pid: int) -> str:
        """The group of a process, fixed when first seen so that folded
        counters only grow."""
        t = self.track(pid)
        if t.group is None:
            if self.options.group_by == "name":
                t.group = t.identity.name if t.identity is not None else \
                    (t.kernel_name or self.exit_note(pid)[0] or "?")
            else:
                t.group = self.cgroup_of(pid, t.identity is not None and t.exited_cgroup_id is None, t) or ""
        return t.group

    def _forget_execed(self) -> None:
        """A process that exec'd is named by what it runs now. One already gone
        again is named by the kernel's name at exit, not by the old program's."""
        for pid in self.probe.execed():
            t = self.tracked.get(pid)
            if t is not None and t.identified:
                t.identity = self.processes.identify(pid)
                t.screened = False

    def _retire_health(self, pid: int) -> None:
        """A process with health figures but no bytes exited: its figures go
        to the summary's archive (a daemon forgets it)."""
        assert self.health is not None
        if self.options.forget_exited:
            self.health.forget(pid)
            t = self.tracked.get(pid)
            if t is not None and t.total is None and pid not in self.given:
                del self.tracked[pid]
        else:
            self.health.retire(pid)

    def _retire(self, pid: int) -> None:
        """Move an exited process's final totals out of the per-process state."""
        t = self.tracked[pid]
        total = t.total
        assert total is not None, "only a counted process is retired"
        if self.options.group_by != "pid":
            key = self.group_key(pid)
            self.group_carried[key] = self.group_carried.get(key, Usage()).plus(total)
        if pid in self.given:
            self.carried[pid] = self.carried.get(pid, Usage()).plus(total)
            t.uncount()  # the rest of it stays: its row is in every record
            return
        del self.tracked[pid]
        cgroup = self.cgroup_of(pid, False, t)
        if self.health is not None:
            if self.options.forget_exited:
                self.health.forget(pid)
            else:
                self.health.retire(pid)
        if self.options.forget_exited:
            return  # a daemon keeps no history: its metrics already carry the bytes
        if t.identity is not None:
            name, cmdline = t.identity.name, t.identity.cmdline
        else:
            name, cmdline = t.kernel_name if t.kernel_name is not None else "?", ""
        self.archive.add(pid, total, t.peaks, name, cmdline, cgroup, t.group if t.group is not None else "",
                         t.identity.who if t.identity is not None else NO_WHO)

    def live_sockets(self, alive: set[int]) -> Mapping[int, Optional[list[procinfo.Socket]]]:
        """The sockets of the ``alive`` PIDs, by PID; a daemon's are counted
        every DAEMON_SOCKETS_EVERY records (and whenever none are kept)."""
        if not self.options.forget_exited:
            return self.processes.sockets_of(sorted(alive)) if alive else {}
        self._records_since_sockets += 1
        kept: Mapping[int, Optional[list[procinfo.Socket]]] = {
            pid: t.sockets for pid, t in self.tracked.items() if t.sockets_counted}
        if self._records_since_sockets >= DAEMON_SOCKETS_EVERY or not kept:
            self._records_since_sockets = 0
            kept = self.processes.sockets_of(sorted(alive)) if alive else {}
            for t in self.tracked.values():
                t.sockets, t.sockets_counted = None, False
            for pid, sockets in kept.items():
                t = self.track(pid)
                t.sockets, t.sockets_counted = sockets, True
        return kept

    def _forget_exited(self, record: Record) -> None:
        """Forget processes whose exit the kernel reported: their counters have
        left the kernel's map, so any later byte (a wire packet still in
        flight) starts from zero and is counted once."""
        gone = [pid for pid in self.exiting if pid not in (self.options.pids or ())]
        if gone:
            self.probe.forget(gone)  # the engine's own state goes in _retire, without an archive

    def wall(self, mono: float) -> datetime:
        return self.start_wall + timedelta(seconds=mono - self.start)

    def pids_for(self, kind: str) -> list[int]:
        """The given PIDs, always; and every other process that moved bytes in
        the record's window, when there are none or their children are followed."""
        given = list(self.options.pids) if self.options.pids is not None else []
        if self.options.exclude_names or self.options.exclude_children_of is not None:
            given = [pid for pid in given if not self.excluded(pid)]
        if self.options.pids is not None and not self.options.follow_children:
            return given
        if kind == RECORD_SUMMARY:
            moved = sorted(pid for pid, t in self.tracked.items()
                           if t.total is not None and (t.total.bytes_in or t.total.bytes_out))
        else:
            moved = sorted(pid for pid, t in self.tracked.items() if t.window.bytes_in or t.window.bytes_out)
        if self.health is not None:
            # A process whose connects all fail moves no byte, and is the one to show.
            moved = sorted(set(moved) | set(self.health.active(kind == RECORD_SUMMARY)))
        return given + [pid for pid in moved if pid not in given]
