"""Shared fixtures of the unit tests: hand-built records, and a fixed time
zone so the text output's local times are predictable."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from procnetmon.grouping import sum_protocols
from procnetmon.model import (
    RECORD_INTERVAL,
    RECORD_SUMMARY,
    Aggregate,
    Bytes,
    Connection,
    ProcessStats,
    Record,
)

START = datetime(2026, 11, 22, 10, 0, 0, tzinfo=timezone.utc)
END = datetime(2026, 11, 22, 10, 1, 0, tzinfo=timezone.utc)
STARTED = datetime(2026, 11, 22, 9, 30, 0, 250000, tzinfo=timezone.utc)  # nginx's start_time


@pytest.fixture(autouse=True)
def utc_local_time(monkeypatch):
    """Text output shows local time; make local time UTC for every test."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def nginx(**overrides) -> ProcessStats:
    values = dict(
        pid=1234, name="nginx", cmdline="nginx: worker process", alive=True,
        bytes_in=1500, bytes_out=200, rate_in=25.0, rate_out=3.333,
        peak_rate_in=1_000_000.0, peak_rate_out=125.0,
        tcp=Bytes(1000, 200), udp=Bytes(500, 0),
        tcp_connections=2, udp_connections=1, tcp_listening=1,
        ppid=1, user="www-data", uid=33, exe="/usr/sbin/nginx", start_time=STARTED,
    )
    values.update(overrides)
    return _with_protocols(ProcessStats(**values), overrides)


def _with_protocols(row: ProcessStats, overrides: dict) -> ProcessStats:
    """The per-class bytes a probe would give with these TCP and UDP bytes."""
    if "protocols" not in overrides:
        row.protocols = {p: b for p, b in (("tcp", row.tcp), ("udp", row.udp)) if b.bytes_in or b.bytes_out}
    return row


def curl(**overrides) -> ProcessStats:
    """A process that exited during the sample."""
    values = dict(
        pid=99, name="curl", cmdline="curl -O http://x/big", alive=False,
        bytes_in=5_000_000, bytes_out=10, rate_in=83333.333, rate_out=0.167,
        peak_rate_in=2_500_000.0, peak_rate_out=10.0,
        tcp=Bytes(5_000_000, 10), udp=Bytes(0, 0),
        tcp_connections=0, udp_connections=0,
    )
    values.update(overrides)
    return _with_protocols(ProcessStats(**values), overrides)


def connections() -> list[Connection]:
    return [
        Connection("tcp", "ipv4", "10.0.0.1:443", "10.0.0.2:55555", "ESTABLISHED", 1000, 200),
        Connection("udp", "ipv6", "[::1]:53", "", "NONE", 500, 0),
    ]


def aggregate_of(processes, **extra) -> Aggregate:
    return Aggregate(
        bytes_in=sum(p.bytes_in for p in processes),
        bytes_out=sum(p.bytes_out for p in processes),
        rate_in=sum(p.rate_in for p in processes),
        rate_out=sum(p.rate_out for p in processes),
        peak_rate_in=max((p.peak_rate_in for p in processes), default=0.0),
        peak_rate_out=max((p.peak_rate_out for p in processes), default=0.0),
        tcp_connections=sum(p.tcp_connections for p in processes),
        udp_connections=sum(p.udp_connections for p in processes),
        tcp_listening=sum(p.tcp_listening for p in processes),
        protocols=sum_protocols(processes),
        **extra,
    )


def summary(processes=None, **overrides) -> Record:
    processes = [nginx(), curl()] if processes is None else processes
    values = dict(
        type=RECORD_SUMMARY, mode="payload", start=START, end=END, duration_s=60.0,
        interfaces=None, processes=processes, aggregated=aggregate_of(processes),
    )
    values.update(overrides)
    return Record(**values)


def interval(processes=None, **overrides) -> Record:
    if processes is None:
        processes = [
            nginx(total_bytes_in=15_000, total_bytes_out=2_000),
            curl(total_bytes_in=5_000_000, total_bytes_out=10),
        ]
    values = dict(
        type=RECORD_INTERVAL, mode="payload",
        start=datetime(2026, 11, 22, 10, 0, 59, tzinfo=timezone.utc), end=END,
        duration_s=1.0, interfaces=["eth0"], processes=processes,
        aggregated=aggregate_of(processes, total_bytes_in=5_015_000, total_bytes_out=2_010),
    )
    values.update(overrides)
    return Record(**values)


@pytest.fixture
def records():
    """Builders of hand-made records, as a namespace for the tests."""

    return SimpleNamespace(
        nginx=nginx, curl=curl, connections=connections,
        summary=summary, interval=interval, aggregate_of=aggregate_of, Bytes=Bytes,
    )
