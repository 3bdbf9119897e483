"""TCP health between reads (--tcp-health): owners found for drops, windows, RTT per process.

``HealthTally`` takes each ``probes.health.HealthSnapshot``: drops the
kernel kept under a socket's inode go to the process that holds that
socket (looked up once per inode through ``find_owners``), the rest stays
unowned; it keeps per-process cumulative figures and each read's window,
and the sockets' RTT readings. ``row_health`` and ``connection_health``
turn them into the records' plain data. Nothing here reads the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Optional

from procnetmon.model import ConnectionHealth, TcpHealth, UnownedDrops
from procnetmon.probes.health import HealthCounts, HealthSnapshot, SocketHealth

# The owners of these socket inodes (inode -> pid), among the processes in the second argument
# (None: every process).
FindOwners = Callable[[set, Optional[list]], dict]

# An inode looked up in vain is looked up again only this many reads later.
RETRY_READS = 10


def _add(into: dict, drops: dict) -> None:
    for reason, n in drops.items():
        into[reason] = into.get(reason, 0) + n


def _minus(now: dict, before: dict) -> dict:
    return {r: n - before.get(r, 0) for r, n in now.items() if n > before.get(r, 0)}


@dataclass
class HealthTally:
    """Per-process health since the start and in the last window."""

    find_owners: FindOwners
    targets: Optional[list] = None  # -p: only these are looked through for socket owners
    totals: dict = field(default_factory=dict)  # pid -> HealthCounts since the start
    windows: dict = field(default_factory=dict)  # pid -> HealthCounts of the last read's window
    sockets: list = field(default_factory=list)  # SocketHealth at the last read
    read_ns: int = 0  # CLOCK_MONOTONIC of the last read
    previous_read_ns: int = 0
    unowned_total: UnownedDrops = field(default_factory=UnownedDrops)
    unowned_window: UnownedDrops = field(default_factory=UnownedDrops)
    _inode_owner: dict = field(default_factory=dict)  # inode -> pid, or -reads left before a retry
    _archive: dict = field(default_factory=dict)  # pid -> HealthCounts of retired processes
    _retired_inodes: set = field(default_factory=set)  # sockets of retired processes: already credited

    def take(self, snap: HealthSnapshot, now_ns: int) -> None:
        """One read's snapshot, taken at ``now_ns``."""
        self.previous_read_ns, self.read_ns = self.read_ns, now_ns
        cumulative = {pid: replace(c, drops=dict(c.drops)) for pid, c in snap.by_pid.items()}
        unknown = dict(snap.unknown_owner)
        self._look_up(set(snap.by_inode))
        for inode, drops in snap.by_inode.items():
            if inode in self._retired_inodes:
                continue
            owner = self._inode_owner.get(inode)
            if owner is not None and owner > 0:
                _add(cumulative.setdefault(owner, HealthCounts()).drops, drops)
            else:
                _add(unknown, drops)
        self.windows = {}
        for pid, now in cumulative.items():
            before = self.totals.get(pid)
            window = now.minus(before) if before is not None else now
            window.latency_max_ns = now.latency_max_ns  # the kernel's since the last read
            now.latency_max_ns = max(now.latency_max_ns, before.latency_max_ns if before else 0)
            self.windows[pid] = window
            self.totals[pid] = now
        unowned = UnownedDrops(dict(snap.no_socket), unknown)
        self.unowned_window = UnownedDrops(_minus(unowned.no_socket, self.unowned_total.no_socket),
                                           _minus(unowned.unknown_owner, self.unowned_total.unknown_owner))
        self.unowned_total = unowned
        self.sockets = list(snap.sockets)

    def _look_up(self, inodes: set) -> None:
        for inode in list(self._inode_owner):
            if inode not in inodes:
                del self._inode_owner[inode]  # gone from the kernel's map
        self._retired_inodes &= inodes
        for inode, state in list(self._inode_owner.items()):
            if state <= 0:
                self._inode_owner[inode] = state + 1  # counting down to another look
        wanted = {i for i in inodes if self._inode_owner.get(i, 0) == 0}
        if not wanted:
            return
        found = self.find_owners(wanted, self.targets)
        for inode in wanted:
            self._inode_owner[inode] = found.get(inode, -RETRY_READS)

    def active(self, summary: bool) -> Iterable[int]:
        """Processes with health figures in the window (or, for a summary, ever)."""
        if not summary:
            return [pid for pid, c in self.windows.items() if c.any()]
        return [pid for pid, c in self.totals.items() if c.any()] + self.archived()

    def retire(self, pid: int) -> None:
        """A process that exited leaves the per-process state; the summary keeps its figures."""
        total = self.totals.pop(pid, None)
        self.windows.pop(pid, None)
        for inode, owner in list(self._inode_owner.items()):
            if owner == pid:
                self._retired_inodes.add(inode)
                del self._inode_owner[inode]
        if total is not None:
            kept = self._archive.get(pid)
            self._archive[pid] = total if kept is None else kept.plus(total)

    def forget(self, pid: int) -> None:
        """A daemon keeps no history."""
        self.totals.pop(pid, None)
        self.windows.pop(pid, None)
        self._archive.pop(pid, None)

    def counts(self, pid: int, summary: bool) -> HealthCounts:
        if not summary:
            return self.windows.get(pid) or HealthCounts()
        total = self.totals.get(pid) or HealthCounts()
        kept = self._archive.get(pid)
        return total if kept is None else kept.plus(total)

    def archived(self) -> list:
        """PIDs of retired processes with figures (summary rows of their own)."""
        return [pid for pid, c in self._archive.items() if c.any()]

    def rtt_sockets(self, pid: int, summary: bool) -> list:
        """The process's sockets whose RTT was read in the window (any, for a summary)."""
        return [s for s in self.sockets if s.pid == pid and s.srtt_us
                and (summary or s.rtt_ns > self.previous_read_ns)]


def row_health(counts: HealthCounts, rtt: list) -> TcpHealth:
    """A record's TcpHealth from a window's counts and the sockets whose RTT it read."""
    hist = list(counts.latency_log2_us)
    while hist and not hist[-1]:
        hist.pop()
    srtts = [s.srtt_us for s in rtt]
    return TcpHealth(
        retrans_segs=counts.retrans_segs, retrans_bytes=counts.retrans_bytes, drops=dict(counts.drops),
        connect_attempts=counts.connect_attempts, connect_ok=counts.connect_ok,
        connect_refused=counts.connect_refused, connect_timed_out=counts.connect_timed_out,
        connect_unreachable=counts.connect_unreachable, connect_other=counts.connect_other,
        latency_count=counts.latency_count,
        latency_mean_us=counts.latency_sum_ns / counts.latency_count / 1000 if counts.latency_count else None,
        latency_max_us=counts.latency_max_ns / 1000 if counts.latency_count and counts.latency_max_ns else None,
        latency_log2_us=hist, resets_in=counts.resets_in, resets_out=counts.resets_out,
        rtt_connections=len(srtts), srtt_min_us=min(srtts) if srtts else None,
        srtt_mean_us=sum(srtts) / len(srtts) if srtts else None, srtt_max_us=max(srtts) if srtts else None)


def folded(healths: list) -> Optional[TcpHealth]:
    """The TcpHealth of rows folded together (--group-by): sums, and RTT over every connection."""
    if not healths:
        return None
    out = TcpHealth()
    srtt_sum = 0.0
    latency_sum = 0.0
    for h in healths:
        for name in ("retrans_segs", "retrans_bytes", "connect_attempts", "connect_ok", "connect_refused",
                     "connect_timed_out", "connect_unreachable", "connect_other", "latency_count",
                     "resets_in", "resets_out", "rtt_connections"):
            setattr(out, name, getattr(out, name) + getattr(h, name))
        _add(out.drops, h.drops)
        if h.latency_mean_us is not None:
            latency_sum += h.latency_mean_us * h.latency_count
        if h.latency_max_us is not None:
            out.latency_max_us = max(out.latency_max_us or 0.0, h.latency_max_us)
        width = max(len(out.latency_log2_us), len(h.latency_log2_us))
        out.latency_log2_us = [(out.latency_log2_us[i] if i < len(out.latency_log2_us) else 0)
                               + (h.latency_log2_us[i] if i < len(h.latency_log2_us) else 0) for i in range(width)]
        if h.srtt_mean_us is not None:
            srtt_sum += h.srtt_mean_us * h.rtt_connections
            out.srtt_min_us = h.srtt_min_us if out.srtt_min_us is None else min(out.srtt_min_us, h.srtt_min_us or 0)
            out.srtt_max_us = h.srtt_max_us if out.srtt_max_us is None else max(out.srtt_max_us, h.srtt_max_us or 0)
    out.latency_mean_us = latency_sum / out.latency_count if out.latency_count else None
    out.srtt_mean_us = srtt_sum / out.rtt_connections if out.rtt_connections else None
    return out


def connection_health(s: SocketHealth) -> ConnectionHealth:
    return ConnectionHealth(retrans_segs=s.retrans_segs, retrans_bytes=s.retrans_bytes, drops=s.drops,
                            resets_in=s.resets_in, resets_out=s.resets_out, srtt_us=s.srtt_us or None,
                            rttvar_us=s.rttvar_us if s.srtt_us else None,
                            connect_latency_us=s.connect_latency_ns / 1000 if s.connect_latency_ns else None)


def retrans_pct(health: Optional[TcpHealth], tcp_bytes_out: int) -> Optional[float]:
    """Retransmitted bytes as a share of the TCP bytes sent, in percent (None: nothing sent)."""
    if health is None or tcp_bytes_out <= 0:
        return None
    return 100.0 * health.retrans_bytes / tcp_bytes_out
