"""--group-by: process rows folded into one row per process name or per cgroup.

Bytes and connection counts of a folded row are the sums of its processes';
its rates are over the record's window, and its peaks come from the
engine's per-group tally (the highest one-interval rate of the group as a
whole, which is not the sum of its processes' peaks: they need not peak in
the same interval).
"""

from __future__ import annotations

from typing import Optional

from procnetmon import cgroups, healthtally
from procnetmon.model import Bytes, ProcessStats
from procnetmon.probes import PROTOCOL_CLASSES


def fold(rows: list[ProcessStats], key_of: dict[int, str], by: str, seconds: float,
         tally) -> list[ProcessStats]:
    """One row per group key (``key_of`` maps each row's pid), in first-seen order.

    ``tally`` is the engine's Tally over folded counters: the peaks and
    running total of each group key (a group's total includes processes
    that moved nothing in this window, so are not among ``rows``).
    """
    groups: dict[str, list[ProcessStats]] = {}
    for row in rows:
        groups.setdefault(key_of.get(row.pid, ""), []).append(row)
    out = []
    for key, members in groups.items():
        counted = tally.entries.get(key)
        peaks, total = (counted.peaks, counted.total) if counted is not None else (None, None)
        out.append(_folded(key, members, by, seconds, peaks, total))
    return out


def _sum_known(values) -> Optional[int]:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def sum_protocols(rows) -> dict[str, Bytes]:
    """The per-class bytes of ``rows`` added up, classes in PROTOCOL_CLASSES order."""
    total: dict[str, list[int]] = {}
    for row in rows:
        for p, b in row.protocols.items():
            t = total.setdefault(p, [0, 0])
            t[0] += b.bytes_in
            t[1] += b.bytes_out
    return {p: Bytes(*total[p]) for p in PROTOCOL_CLASSES if p in total}


def _folded(key: str, members: list[ProcessStats], by: str, seconds: float, peak, total) -> ProcessStats:
    names = sorted({m.name for m in members})
    cgroup_paths = {m.cgroup for m in members}
    cgroup: Optional[str] = key if by == "cgroup" else (cgroup_paths.pop() if len(cgroup_paths) == 1 else None)
    workload = cgroups.parse_path(cgroup)
    row = ProcessStats(
        pid=None, name=key if by == "name" else ",".join(names),
        cmdline=members[0].cmdline if len(members) == 1 else "",
        alive=any(m.alive for m in members),
        bytes_in=sum(m.bytes_in for m in members), bytes_out=sum(m.bytes_out for m in members),
        tcp=Bytes(sum(m.tcp.bytes_in for m in members), sum(m.tcp.bytes_out for m in members)),
        udp=Bytes(sum(m.udp.bytes_in for m in members), sum(m.udp.bytes_out for m in members)),
        protocols=sum_protocols(members),
        # An unknown count (None: sockets not readable) makes the group's unknown.
        tcp_connections=_sum_known(m.tcp_connections for m in members),
        udp_connections=_sum_known(m.udp_connections for m in members),
        total_bytes_in=sum(m.total_bytes_in for m in members),
        total_bytes_out=sum(m.total_bytes_out for m in members),
        cgroup=cgroup or None, container=workload.container, pod=workload.pod,
        pids=sorted(m.pid for m in members))
    row.rate_in = row.bytes_in / seconds if seconds > 0 else 0.0
    row.rate_out = row.bytes_out / seconds if seconds > 0 else 0.0
    if total is not None:
        row.total_bytes_in, row.total_bytes_out = total.bytes_in, total.bytes_out
    if peak is not None:
        row.peak_rate_in, row.peak_rate_out = peak.rate_in, peak.rate_out
    if any(m.connections is not None for m in members):
        row.connections = [c for m in members for c in (m.connections or [])]
    row.tcp_health = healthtally.folded([m.tcp_health for m in members if m.tcp_health is not None])
    return row
