"""Records for the live view's tests, as the engine makes them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Optional

from procnetmon.model import Aggregate, Bytes, Connection, ProcessStats, Record

START = datetime(2026, 12, 3, 12, 0, 0, tzinfo=timezone.utc)


def proc(pid: Optional[int], name: str, bytes_in: int = 0, bytes_out: int = 0, *, total_in: Optional[int] = None,
         total_out: Optional[int] = None, seconds: float = 1.0, alive: bool = True, peak_in: float = 0.0,
         peak_out: float = 0.0, udp: bool = False, connections: Optional[list[Connection]] = None,
         tcp_connections: Optional[int] = 1, **extra) -> ProcessStats:
    """A process row of an interval record: this window's bytes, and its totals (default: the window's)."""
    split = Bytes(bytes_in, bytes_out)
    return ProcessStats(pid=pid, name=name, alive=alive, bytes_in=bytes_in, bytes_out=bytes_out,
                        rate_in=bytes_in / seconds, rate_out=bytes_out / seconds,
                        peak_rate_in=max(peak_in, bytes_in / seconds), peak_rate_out=max(peak_out, bytes_out / seconds),
                        tcp=Bytes() if udp else split, udp=split if udp else Bytes(),
                        tcp_connections=tcp_connections, udp_connections=0,
                        total_bytes_in=bytes_in if total_in is None else total_in,
                        total_bytes_out=bytes_out if total_out is None else total_out,
                        connections=connections, **extra)


def interval(*processes: ProcessStats, seconds: float = 1.0, index: int = 0, mode: str = "payload") -> Record:
    agg = Aggregate(bytes_in=sum(p.bytes_in for p in processes), bytes_out=sum(p.bytes_out for p in processes))
    agg.rate_in, agg.rate_out = agg.bytes_in / seconds, agg.bytes_out / seconds
    begin = START + timedelta(seconds=index * seconds)
    return Record("interval", mode, begin, begin + timedelta(seconds=seconds), seconds, None, list(processes), agg)


def summary(*processes: ProcessStats, seconds: float = 1.0) -> Record:
    record = interval(*processes, seconds=seconds)
    record.type = "summary"
    return record


def conn(local: str, remote: str, bytes_in: int = 0, bytes_out: int = 0, state: str = "ESTABLISHED",
         protocol: str = "tcp", family: str = "ipv4") -> Connection:
    return Connection(protocol, family, local, remote, state, bytes_in, bytes_out)
