"""Records from what the sampler tracks: rows, connections and the aggregate.

``Tracked`` is everything the sampler keeps about one process the probe
counts, in one place, so that a process that is gone is dropped with one
``pop`` (``Sampler._retire``) and nothing of it is left behind in a
``--serve`` that runs for months. ``record`` assembles one ``model.Record``
from a sampler's state; it reads that state and never formats.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Optional

from procnetmon import cgroups, grouping, healthtally, procinfo, sockettable
from procnetmon.model import RECORD_SUMMARY, Aggregate, Bytes, Connection, ExitOver, ProcessStats, Record
from procnetmon.probes import SocketBytes
from procnetmon.tally import NO_WHO, Counted, Usage, WhoFields, rate

if TYPE_CHECKING:  # the engine calls in here; only its type is needed
    from procnetmon.engine import Sampler


@dataclass(eq=False)
class Tracked(Counted):
    """One process the probe counts (or a PID given with -p): its counts and who it is."""

    identity: Optional[procinfo.Identity] = None
    identified: bool = False  # looked up; a None identity then means it was already gone
    kernel_name: Optional[str] = None  # its name at exit, once a read collected its exit
    exited_cgroup_id: Optional[int] = None  # its cgroup at exit, noted by the kernel
    cgroup: Optional[str] = None  # where it was last seen alive
    group: Optional[str] = None  # --group-by: its group, fixed when first seen
    # --details: sock_id -> (in, out) at the last record; made when first needed (most runs never do).
    socket_totals: Optional[dict[int, tuple[int, int]]] = None
    # --serve: the sockets last counted (None: unreadable), when sockets_counted.
    sockets: Optional[list[procinfo.Socket]] = None
    sockets_counted: bool = False
    # --exclude-name, --exclude-self: looked at since it was last identified;
    # left out (for good: its bytes are never shown, whatever it execs next).
    screened: bool = False
    excluded: bool = False


def set_who(row: ProcessStats, who: WhoFields) -> None:
    """Put who a process is (procinfo.Who) on its row."""
    ppid, uid, user, exe, create_time = who
    row.ppid, row.uid, row.user, row.exe = ppid, uid, user, exe
    row.start_time = datetime.fromtimestamp(create_time, timezone.utc) if create_time else None


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


def record(s: Sampler, kind: str, begin: float, end: float) -> Record:
    """The record of ``kind`` for the window from ``begin`` to ``end`` (monotonic seconds)."""
    seconds = end - begin
    opts = s.options
    tracked = s.tracked
    kernel_sockets: dict[int, list[SocketBytes]] = {}
    if opts.details:
        for sock in s.probe.sockets():
            kernel_sockets.setdefault(sock.pid, []).append(sock)
    rows = []
    agg = Aggregate()
    pids = s.pids_for(kind)
    if opts.forget_exited:
        # The kernel notes every counted process's exit before its PID
        # can be reused: no look at /proc per process per second.
        alive = {pid for pid in pids
                 if (t := tracked.get(pid)) is not None and t.identity is not None and t.kernel_name is None}
    else:
        alive = {pid for pid in pids
                 if (t := tracked.get(pid)) is not None and t.identity is not None
                 and s.processes.still_alive(t.identity)}
    # One look at the socket tables for the whole record, not one per process.
    live_sockets = s.live_sockets(alive)
    for pid in pids:
        row = _process_row(s, kind, pid, seconds, pid in alive, live_sockets.get(pid, []),
                           kernel_sockets.get(pid, []))
        row.cgroup = s.cgroup_of(pid, pid in alive, tracked.get(pid))
        workload = cgroups.parse_path(row.cgroup)
        row.container, row.pod = workload.container, workload.pod
        rows.append(row)
    group_of: dict[int, str] = {}
    if opts.group_by != "pid":
        for pid in pids:
            s.group_key(pid)
        group_of = {pid: t.group for pid, t in tracked.items() if t.group is not None}
    if kind == RECORD_SUMMARY and len(s.archive):
        rows = _with_archive(s, rows, seconds, kernel_sockets, group_of)
    if opts.group_by != "pid":
        rows = grouping.fold(rows, group_of, opts.group_by, seconds, s.group_tally)
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
    agg.protocols = grouping.sum_protocols(rows)
    agg.rate_in = rate(agg.bytes_in, seconds)
    agg.rate_out = rate(agg.bytes_out, seconds)
    agg.peak_rate_in = s.tally.aggregate_peaks.rate_in
    agg.peak_rate_out = s.tally.aggregate_peaks.rate_out
    unowned = None
    if s.health is not None:
        unowned = s.health.unowned_total if kind == RECORD_SUMMARY else s.health.unowned_window
    return Record(type=kind, mode=s.probe.mode, start=s.wall(begin), end=s.wall(end),
                  duration_s=seconds, interfaces=opts.interfaces, processes=rows,
                  aggregated=agg, include_loopback=opts.include_loopback,
                  lost_updates=s.lost_updates, exit_over=_exit_over(s), tcp_health=unowned)


def _exit_over(s: Sampler) -> Optional[ExitOver]:
    crossing = s.crossing
    if crossing is None:
        return None
    return ExitOver(crossing.threshold.text, crossing.value, crossing.pid)


def _with_archive(s: Sampler, rows: list[ProcessStats], seconds: float,
                  kernel_sockets: dict[int, list[SocketBytes]], group_of: dict[int, str]) -> list[ProcessStats]:
    """The summary's rows with the processes of the archive, each a row of
    its own (its group added to ``group_of``), or added to the row of a PID
    that was used again (PIDs are reused: both processes share one row,
    named after the first)."""
    by_pid = {row.pid: row for row in rows}
    added = []
    for pid, usage, peaks, name, cmdline, cgroup, group, who in s.archive.rows():
        row = by_pid.get(pid)
        if row is None:
            workload = cgroups.parse_path(cgroup)
            row = ProcessStats(pid=pid, name=name, cmdline=cmdline, alive=False, tcp_connections=0,
                               udp_connections=0, tcp_listening=0, cgroup=cgroup,
                               container=workload.container, pod=workload.pod)
            set_who(row, who)
            if s.options.details:
                row.connections = connections(RECORD_SUMMARY, pid, [], kernel_sockets.get(pid, []), {},
                                              _health_sockets(s, pid))
            if s.health is not None:
                row.tcp_health = healthtally.row_health(s.health.counts(pid, True), s.health.rtt_sockets(pid, True))
            by_pid[pid] = row
            group_of[pid] = group
            added.append(row)
        elif (t := s.tracked.get(pid)) is None or t.total is None or t.identity is None:
            row.name, row.cmdline = name, cmdline
            set_who(row, who)
        both = usage_of(row).plus(usage)
        row.tcp, row.udp, row.protocols = _protocol_bytes(both)
        row.bytes_in, row.bytes_out = both.bytes_in, both.bytes_out
        row.total_bytes_in, row.total_bytes_out = row.bytes_in, row.bytes_out
        row.rate_in, row.rate_out = rate(row.bytes_in, seconds), rate(row.bytes_out, seconds)
        row.peak_rate_in = max(row.peak_rate_in, peaks.rate_in)
        row.peak_rate_out = max(row.peak_rate_out, peaks.rate_out)
    if not added:
        return rows
    # The given PIDs first (followed descendants, archived or not, after them).
    head = [row for row in rows if row.pid in s.given]
    rest = sorted([row for row in rows if row.pid not in s.given] + added, key=lambda row: row.pid or 0)
    return head + rest


def _protocol_bytes(usage: Usage) -> tuple[Bytes, Bytes, dict[str, Bytes]]:
    """TCP's bytes, UDP's, and every class's that moved any."""
    return (Bytes(usage.tcp_in, usage.tcp_out), Bytes(usage.udp_in, usage.udp_out),
            {p: Bytes(i, o) for p, (i, o) in usage.by_protocol().items()})


def usage_of(row: ProcessStats) -> Usage:
    """The bytes of a row by class, as a Usage."""
    named: dict[str, int] = {}
    for p, b in row.protocols.items():
        named[f"{p}_in"], named[f"{p}_out"] = b.bytes_in, b.bytes_out
    return Usage(**named)


def _process_row(s: Sampler, kind: str, pid: int, seconds: float, alive: bool,
                 live_sockets: Optional[list[procinfo.Socket]], kernel_sockets: list[SocketBytes]) -> ProcessStats:
    t = s.track(pid)  # every PID of a record is tracked: given, or counted
    total = t.total if t.total is not None else Usage()
    if pid in s.carried:
        total = total.plus(s.carried[pid])
    usage = total if kind == RECORD_SUMMARY else t.window
    peaks = t.peaks
    identity = t.identity
    command = s.options.command
    if identity is not None:
        name, cmdline = identity.name, identity.cmdline
    elif command and s.options.pids and pid == s.options.pids[0]:
        # COMMAND ended before a look at /proc: its name as the kernel
        # knew it at exit, or as exec(2) sets it, and its arguments.
        name, cmdline = t.kernel_name or os.path.basename(command[0]), " ".join(command)
    else:
        name, cmdline = t.kernel_name or s.exit_note(pid)[0] or "?", ""
    row = ProcessStats(
        pid=pid, name=name, cmdline=cmdline, alive=alive,
        bytes_in=usage.bytes_in, bytes_out=usage.bytes_out,
        rate_in=rate(usage.bytes_in, seconds), rate_out=rate(usage.bytes_out, seconds),
        peak_rate_in=peaks.rate_in, peak_rate_out=peaks.rate_out,
        tcp=Bytes(usage.tcp_in, usage.tcp_out), udp=Bytes(usage.udp_in, usage.udp_out),
        protocols={p: Bytes(i, o) for p, (i, o) in usage.by_protocol().items()},
        tcp_connections=_count(live_sockets, "tcp"),
        udp_connections=_count(live_sockets, "udp"),
        total_bytes_in=total.bytes_in, total_bytes_out=total.bytes_out,
        tcp_listening=_count(live_sockets, "tcp", state="LISTEN"))
    set_who(row, identity.who if identity is not None else NO_WHO)
    summary = kind == RECORD_SUMMARY
    if s.health is not None:
        row.tcp_health = healthtally.row_health(s.health.counts(pid, summary), s.health.rtt_sockets(pid, summary))
    if s.options.details:
        if t.socket_totals is None:
            t.socket_totals = {}
        row.connections = connections(kind, pid, live_sockets or [], kernel_sockets, t.socket_totals,
                                      _health_sockets(s, pid))
    return row


def _health_sockets(s: Sampler, pid: int) -> Optional[dict]:
    """--tcp-health -d: the process's TCP sockets' health, by inode (None without the flag)."""
    if s.health is None:
        return None
    return {h.inode: h for h in s.health.sockets if h.pid == pid and h.inode}


def connections(kind: str, pid: int, live: list[procinfo.Socket], kernel: list[SocketBytes],
                socket_totals: dict[int, tuple[int, int]], health: Optional[dict] = None) -> list[Connection]:
    """The process's live sockets with the bytes the kernel attributed to each, plus closed ones.

    Sockets are told apart by identity, never by their addresses: one
    local port may serve two sockets in a record, and each keeps its row.
    A live socket is the kernel's socket with the same inode number.
    ``socket_totals`` is what the process's sockets had at the last record.
    ``health`` (--tcp-health) has the TCP sockets' health by inode: each
    joins its connection's row, and a socket closed without moving a byte
    (a connect that failed) has a row of its own when it has figures.
    """
    mine = [s for s in kernel if s.pid == pid]
    by_inode = {s.inode: s for s in mine if s.inode}
    shown: set[int] = set()
    out = []
    for s in live:
        found = by_inode.get(s.inode) if s.inode else None
        if found is not None:
            shown.add(found.sock_id)
        b_in, b_out = socket_window(kind, found, socket_totals)
        out.append(Connection(s.protocol, s.family, _endpoint(s.local_addr, s.local_port),
                              _endpoint(s.remote_addr, s.remote_port), s.state, b_in, b_out,
                              _connection_health(health, s.inode, s.protocol)))
    by_live_inode = {s.inode for s in live if s.inode}
    shown_inodes: set[int] = set()
    closed = sorted((s for s in mine if s.sock_id not in shown),
                    key=lambda s: (s.protocol, s.family, s.local_addr, s.local_port,
                                   s.remote_addr, s.remote_port, s.sock_id))
    # The socket tables list TCP and UDP only: a ping, raw or packet socket
    # still held is told from a closed one by the process's descriptors.
    held = _held_inodes(pid) if any(s.protocol not in ("tcp", "udp") for s in closed) else set()
    for gone in closed:
        b_in, b_out = socket_window(kind, gone, socket_totals)
        if b_in or b_out:
            remote = "" if _unspecified(gone.remote_addr) else _endpoint(gone.remote_addr, gone.remote_port)
            state = "OPEN" if gone.inode and gone.inode in held else "CLOSED"
            out.append(Connection(gone.protocol, gone.family, _local_of(gone), remote, state, b_in, b_out,
                                  _connection_health(health, gone.inode, gone.protocol)))
            shown_inodes.add(gone.inode)
    if kind == RECORD_SUMMARY:
        # Connections that ended without a byte (a refused connect): the summary's only.
        for h in sorted((health or {}).values(), key=lambda h: h.inode):
            if h.inode in shown_inodes or h.inode in by_live_inode or h.state != "CLOSE":
                continue
            remote = "" if _unspecified(h.remote_addr) else _endpoint(h.remote_addr, h.remote_port)
            out.append(Connection("tcp", h.family, _endpoint(h.local_addr, h.local_port), remote, "CLOSED",
                                  0, 0, healthtally.connection_health(h)))
    return out


def _held_inodes(pid: int) -> set[int]:
    """The socket inodes ``pid`` holds; none once it is gone (or unreadable)."""
    try:
        return sockettable.socket_inodes(pid)
    except OSError:  # exited since the read (no /proc/PID/fd), or not ours to read
        return set()


def _local_of(s: SocketBytes) -> str:
    """A socket's local end: address and port, or an AF_PACKET socket's interface index."""
    if s.family == "packet":
        return f"ifindex:{s.local_port}" if s.local_port else "*"
    return _endpoint(s.local_addr, s.local_port)


def _connection_health(health: Optional[dict], inode: int, protocol: str):
    if health is None or protocol != "tcp":
        return None
    found = health.get(inode)
    return healthtally.connection_health(found) if found is not None else None


def socket_window(kind: str, s: Optional[SocketBytes], socket_totals: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """Bytes of one socket in this record's window (cumulative for a summary)."""
    if s is None:
        return 0, 0
    if kind == RECORD_SUMMARY:
        return s.bytes_in, s.bytes_out
    prev_in, prev_out = socket_totals.get(s.sock_id, (0, 0))
    socket_totals[s.sock_id] = (s.bytes_in, s.bytes_out)
    return max(0, s.bytes_in - prev_in), max(0, s.bytes_out - prev_out)
