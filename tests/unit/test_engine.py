"""The sampling engine: counters folded per process, windows, rates and peaks,
and whole runs of ``Sampler`` over a scripted fake probe and a fake clock."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import pytest

from procnetmon import cgroups
from procnetmon.engine import Options, Sampler
from procnetmon.model import RECORD_INTERVAL, RECORD_SUMMARY
from procnetmon.probes import CounterKey, Snapshot, SocketBytes
from procnetmon.procinfo import Identity, Socket
from procnetmon.tally import Counted, Peaks, Tally, Usage, usage_by_pid

START = datetime(2026, 11, 22, 10, 0, 0, tzinfo=timezone.utc)


def counters(**per_pid) -> dict:
    """counters(p10=dict(tcp_in=5)) -> {CounterKey(10, "tcp", "in"): 5}."""
    out = {}
    for pid_name, usage in per_pid.items():
        pid = int(pid_name[1:])
        for attr, value in usage.items():
            protocol, direction = attr.split("_")
            out[CounterKey(pid, protocol, direction)] = value
    return out


# -- Usage and usage_by_pid ------------------------------------------------------


def test_usage_by_pid_folds_protocols_and_directions():
    got = usage_by_pid({
        CounterKey(10, "tcp", "in"): 100,
        CounterKey(10, "tcp", "out"): 20,
        CounterKey(10, "udp", "in"): 3,
        CounterKey(20, "udp", "out"): 7,
    })
    assert got == {10: Usage(100, 20, 3, 0), 20: Usage(0, 0, 0, 7)}
    assert (got[10].bytes_in, got[10].bytes_out) == (103, 20)
    assert usage_by_pid({}) == {}


def test_usage_by_pid_adds_keys_that_differ_only_in_other_fields():
    # A backend that also keys by interface hands over several counters for
    # the same (pid, protocol, direction): they add up.
    class WireKey(NamedTuple):
        pid: int
        protocol: str
        direction: str
        ifindex: int

    got = usage_by_pid({WireKey(10, "tcp", "in", 1): 5, WireKey(10, "tcp", "in", 2): 6,
                        WireKey(10, "udp", "out", 2): 1})
    assert got == {10: Usage(tcp_in=11, udp_out=1)}


def test_usage_minus():
    assert Usage(10, 20, 30, 40).minus(Usage(1, 2, 3, 4)) == Usage(9, 18, 27, 36)
    assert Usage(5, 5, 5, 5).minus(Usage()) == Usage(5, 5, 5, 5)


# -- Tally -----------------------------------------------------------------------


def windows(t):
    """The last interval's bytes of each key the last snapshot counted."""
    return {key: c.window for key, c in t.entries.items() if c.total is not None}


def totals(t):
    return {key: c.total for key, c in t.entries.items() if c.total is not None}


def peaks(t):
    return {key: c.peaks for key, c in t.entries.items()}



def test_tally_windows_totals_and_peaks():
    t = Tally(1.0, Counted)
    t.advance({1: Usage(tcp_in=100, udp_out=10)}, 1.0)
    assert windows(t) == {1: Usage(tcp_in=100, udp_out=10)}
    t.advance({1: Usage(tcp_in=400, udp_out=12), 2: Usage(udp_in=50)}, 1.0)
    assert windows(t) == {1: Usage(tcp_in=300, udp_out=2), 2: Usage(udp_in=50)}
    assert totals(t) == {1: Usage(tcp_in=400, udp_out=12), 2: Usage(udp_in=50)}
    t.advance({1: Usage(tcp_in=450, udp_out=12), 2: Usage(udp_in=50)}, 2.0)
    assert windows(t)[1] == Usage(tcp_in=50)
    assert t.intervals == 3
    assert peaks(t)[1] == Peaks(rate_in=300.0, rate_out=10.0)
    assert peaks(t)[2] == Peaks(rate_in=50.0, rate_out=0.0)
    # Aggregate: the best interval of the sum, not the sum of the bests.
    assert t.aggregate_peaks == Peaks(rate_in=350.0, rate_out=10.0)


def test_peak_is_a_rate_over_the_interval_length():
    t = Tally(2.0, Counted)
    t.advance({1: Usage(tcp_out=1000)}, 2.0)
    assert peaks(t)[1].rate_out == 500.0


def test_short_last_interval_counts_in_totals_but_sets_no_peak():
    t = Tally(1.0, Counted)
    t.advance({1: Usage(tcp_in=100)}, 1.0)
    t.advance({1: Usage(tcp_in=150)}, 0.1)  # 50 bytes in 0.1 s would read as 500 B/s
    assert totals(t)[1].tcp_in == 150
    assert windows(t)[1].tcp_in == 50
    assert peaks(t)[1].rate_in == 100.0
    assert t.aggregate_peaks.rate_in == 100.0


def test_half_an_interval_is_long_enough_for_a_peak():
    t = Tally(1.0, Counted)
    t.advance({1: Usage(tcp_in=100)}, 1.0)
    t.advance({1: Usage(tcp_in=400)}, 0.5)
    assert peaks(t)[1].rate_in == 600.0


def test_a_short_first_and_only_interval_still_sets_peaks():
    # -t shorter than --interval: the one window is all there is.
    t = Tally(1.0, Counted)
    t.advance({1: Usage(udp_out=30)}, 0.3)
    assert peaks(t)[1].rate_out == pytest.approx(100.0)


def test_zero_second_interval_rates_are_zero():
    t = Tally(1.0, Counted)
    t.advance({1: Usage(tcp_in=10)}, 0.0)
    assert peaks(t)[1] == Peaks()


def test_a_key_missing_from_a_snapshot_keeps_its_peaks_with_no_total_and_an_empty_window():
    t = Tally(1.0, Counted)
    t.advance({1: Usage(tcp_in=100), 2: Usage(udp_out=7)}, 1.0)
    t.advance({2: Usage(udp_out=9)}, 1.0)
    assert (t.entries[1].total, t.entries[1].window, t.entries[1].peaks) == (None, Usage(), Peaks(rate_in=100.0))
    assert windows(t) == {2: Usage(udp_out=2)}
    t.advance({1: Usage(tcp_in=5), 2: Usage(udp_out=9)}, 1.0)  # counted again (a PID reused): from zero
    assert windows(t) == {1: Usage(tcp_in=5), 2: Usage()}
    assert t.aggregate_peaks == Peaks(rate_in=100.0, rate_out=7.0)


# -- fakes for Sampler -------------------------------------------------------------


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeStop:
    """A stop event whose wait() moves the fake clock instead of sleeping.

    ``set_at``: the fake time at which a signal arrives (ends that wait early).
    """

    def __init__(self, clock: FakeClock, set_at: float | None = None):
        self.clock = clock
        self.set_at = set_at
        self._set = False
        self.waits: list[float] = []

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        if self._set:
            return True
        if self.set_at is not None and self.clock.t + timeout >= self.set_at:
            self.clock.t = max(self.clock.t, self.set_at)
            self._set = True
            return True
        self.clock.t += timeout
        return False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True


class QuietProbe:
    """The part of the probe contract a fake has nothing to say in: no
    cgroups or exit notes, no exec, no sockets. Fakes script the rest."""

    mode = "payload"

    def exited_cgroups(self) -> dict:
        return {}

    def exit_info(self, pid):
        return None  # no note of an exit the reads have not collected

    def execed(self) -> set:
        return set()

    def forget(self, pids) -> None:
        pass

    def sockets(self) -> list:
        return []


class FakeProbe(QuietProbe):
    """Scripted cumulative counters, one snapshot per read (the last repeats).

    ``exited`` names processes that exit; like BccProbe, the probe reports
    an exit once, at the read of the last scripted snapshot showing it.
    """

    def __init__(self, snapshots, exited=None, sockets=None, lost=0, execs=None):
        self.snapshots = list(snapshots)
        self.exec_script = list(execs or [])  # pids that exec'd, per read
        self.exited_names = exited or {}
        self.reported: set = set()
        self.socket_script = list(sockets or [[]])
        self.lost = lost
        self.reads = 0
        self.socket_reads = 0

    def read(self) -> Snapshot:
        snap = self.snapshots[min(self.reads, len(self.snapshots) - 1)]
        self.reads += 1
        return Snapshot(counters=dict(snap), lost_updates=self.lost)

    def exited(self) -> dict:
        now = self.snapshots[min(self.reads, len(self.snapshots)) - 1]
        later = self.snapshots[self.reads:]
        out = {}
        for pid, name in self.exited_names.items():
            shown = any(k.pid == pid for k in now)
            if shown and pid not in self.reported and not any(k.pid == pid for snap in later for k in snap):
                out[pid] = name
                self.reported.add(pid)
        return out

    def execed(self) -> set:
        return set(self.exec_script[self.reads - 1]) if self.reads <= len(self.exec_script) else set()

    def sockets(self) -> list:
        s = self.socket_script[min(self.socket_reads, len(self.socket_script) - 1)]
        self.socket_reads += 1
        return list(s)


class FakeProcesses:
    """Stands in for procnetmon.procinfo: who each pid is, who still runs, their sockets."""

    def __init__(self, identities=None, alive=None, sockets=None):
        self.identities = identities or {}
        self.alive = set(self.identities) if alive is None else set(alive)
        self.socks = sockets or {}
        self.identify_calls: list[int] = []

    def identify(self, pid):
        self.identify_calls.append(pid)
        return self.identities.get(pid)

    def still_alive(self, identity):
        return identity.pid in self.alive

    def sockets_of(self, pids):
        return {pid: list(self.socks.get(pid, [])) for pid in pids}

    def cgroup_of(self, pid):
        return None  # no cgroup v2 path known


def ident(pid: int, name: str) -> Identity:
    return Identity(pid, name, f"{name} --flag", 123.0)


def make(probe, processes=None, clock=None, stop=None, **options):
    clock = clock or FakeClock()
    stop = stop if stop is not None else FakeStop(clock)
    processes = processes or FakeProcesses({10: ident(10, "nginx"), 20: ident(20, "curl")})
    return Sampler(probe, Options(**options), stop=stop, monotonic=clock,
                   wallclock=lambda: START, processes=processes)


def collect(sampler):
    records = []

    def on_interval(record):
        records.append(record)
        return True

    return sampler.run(on_interval), records


def by_pid(record):
    return {p.pid: p for p in record.processes}


# -- Sampler: when to stop -----------------------------------------------------------


def test_duration_stops_and_cuts_the_last_interval():
    probe = FakeProbe([counters(p10=dict(tcp_in=100 * n)) for n in range(1, 10)])
    summary, records = collect(make(probe, interval=1.0, duration=2.5, emit_intervals=True))
    assert probe.reads == 3
    assert [r.duration_s for r in records] == [1.0, 1.0, 0.5]
    assert summary.type == RECORD_SUMMARY
    assert summary.duration_s == 2.5
    assert (summary.start, summary.end) == (START, START + timedelta(seconds=2.5))
    assert records[-1].start == START + timedelta(seconds=2)
    assert by_pid(summary)[10].bytes_in == 300


def test_duration_not_a_multiple_of_the_interval_sets_no_peak_from_the_tail():
    probe = FakeProbe([counters(p10=dict(tcp_in=100)), counters(p10=dict(tcp_in=200)),
                       counters(p10=dict(tcp_in=300))])
    summary, _ = collect(make(probe, interval=1.0, duration=2.25))
    row = by_pid(summary)[10]
    assert probe.reads == 3
    assert row.bytes_in == 300
    assert row.peak_rate_in == 100.0  # not 100 B / 0.25 s
    assert summary.aggregated.peak_rate_in == 100.0


def test_duration_shorter_than_the_interval():
    probe = FakeProbe([counters(p10=dict(udp_out=30))])
    summary, _ = collect(make(probe, interval=1.0, duration=0.3))
    assert probe.reads == 1
    assert summary.duration_s == pytest.approx(0.3)
    assert by_pid(summary)[10].rate_out == pytest.approx(100.0)


def test_count_stops_after_n_intervals():
    clock = FakeClock()
    probe = FakeProbe([counters(p10=dict(tcp_in=10 * n)) for n in range(1, 10)])
    summary, records = collect(make(probe, clock=clock, interval=0.5, count=4, emit_intervals=True))
    assert probe.reads == 4
    assert len(records) == 4
    assert all(r.type == RECORD_INTERVAL for r in records)
    assert summary.duration_s == 2.0
    assert by_pid(summary)[10].bytes_in == 40


def test_ticks_do_not_drift_with_slow_reads():
    """Each wait aims at start + n * interval, so time spent reading is absorbed."""
    clock = FakeClock(0.0)
    stop = FakeStop(clock)

    class SlowProbe(FakeProbe):
        def read(self):
            clock.t += 0.2  # reading takes 0.2 s
            return super().read()

    probe = SlowProbe([counters(p10=dict(tcp_in=1))])
    collect(make(probe, clock=clock, stop=stop, interval=1.0, count=3))
    assert stop.waits == [1.0, pytest.approx(0.8), pytest.approx(0.8)]


def test_a_stall_does_not_produce_a_burst_of_tiny_intervals():
    clock = FakeClock(0.0)

    class StallingProbe(FakeProbe):
        def read(self):
            if self.reads == 0:
                clock.t += 4.0  # the process was stopped for 4 s after the first read
            clock.t += 0.001
            return super().read()

    probe = StallingProbe([counters(p10=dict(tcp_in=100 * n)) for n in range(1, 10)])
    _, records = collect(make(probe, clock=clock, interval=1.0, count=5, emit_intervals=True))
    assert [r.duration_s for r in records if r.duration_s < 0.5] == []


def test_no_interval_records_unless_asked():
    probe = FakeProbe([counters(p10=dict(tcp_in=1))])
    summary, records = collect(make(probe, interval=1.0, count=3))
    assert records == []
    assert probe.reads == 3
    assert summary.duration_s == 3.0


def test_on_interval_returning_false_ends_the_run():
    probe = FakeProbe([counters(p10=dict(tcp_in=10 * n)) for n in range(1, 10)])
    seen = []
    summary = make(probe, interval=1.0, count=5, emit_intervals=True).run(
        lambda r: seen.append(r) or False)
    assert len(seen) == 1
    assert probe.reads == 1
    assert summary.type == RECORD_SUMMARY
    assert by_pid(summary)[10].bytes_in == 10


def test_stop_mid_interval_ends_the_run_and_keeps_what_was_counted():
    clock = FakeClock(0.0)
    stop = FakeStop(clock, set_at=2.3)
    probe = FakeProbe([counters(p10=dict(tcp_in=100)), counters(p10=dict(tcp_in=200)),
                       counters(p10=dict(tcp_in=260, udp_out=4))])
    summary, records = collect(make(probe, clock=clock, stop=stop, interval=1.0, emit_intervals=True))
    assert probe.reads == 3  # one more read at the moment of the stop
    assert summary.duration_s == pytest.approx(2.3)
    row = by_pid(summary)[10]
    assert (row.bytes_in, row.bytes_out) == (260, 4)
    # The 0.3 s tail counts but sets no peak.
    assert row.peak_rate_in == 100.0
    assert records[-1].duration_s == pytest.approx(0.3)
    assert by_pid(records[-1])[10].bytes_in == 60
    assert by_pid(records[-1])[10].rate_in == pytest.approx(200.0)  # its own window's rate


def test_real_stop_event_set_from_another_thread():
    stop = threading.Event()
    probe = FakeProbe([counters(p10=dict(tcp_in=5))])
    sampler = Sampler(probe, Options(interval=30.0), stop=stop,
                      processes=FakeProcesses({10: ident(10, "nginx")}))
    timer = threading.Timer(0.02, stop.set)
    began = time.monotonic()
    timer.start()
    try:
        summary = sampler.run(lambda r: True)
    finally:
        timer.cancel()
    assert time.monotonic() - began < 5.0  # not the 30 s interval
    assert probe.reads == 1
    assert by_pid(summary)[10].bytes_in == 5
    assert 0 < summary.duration_s < 5.0


def test_real_stop_event_already_set():
    stop = threading.Event()
    stop.set()
    probe = FakeProbe([counters(p10=dict(tcp_out=7))])
    summary = Sampler(probe, Options(interval=0.01, count=100), stop=stop,
                      processes=FakeProcesses({10: ident(10, "nginx")})).run(lambda r: True)
    assert probe.reads == 1
    assert by_pid(summary)[10].bytes_out == 7


def test_real_clock_tiny_interval_count():
    probe = FakeProbe([counters(p10=dict(tcp_in=n)) for n in range(1, 10)])
    summary = Sampler(probe, Options(interval=0.01, count=3),
                      processes=FakeProcesses({10: ident(10, "nginx")})).run(lambda r: True)
    assert probe.reads == 3
    assert by_pid(summary)[10].bytes_in == 3
    assert summary.duration_s >= 0.03 - 1e-3


# -- Sampler: what the records say ---------------------------------------------------


def test_interval_records_have_window_bytes_and_running_totals():
    probe = FakeProbe([
        counters(p10=dict(tcp_in=1000, tcp_out=100), p20=dict(udp_in=10)),
        counters(p10=dict(tcp_in=1500, tcp_out=100), p20=dict(udp_in=10, udp_out=40)),
        counters(p10=dict(tcp_in=1500, tcp_out=100), p20=dict(udp_in=10, udp_out=40)),
    ])
    summary, records = collect(make(probe, interval=2.0, count=3, emit_intervals=True))
    first, second, third = records
    assert [p.pid for p in first.processes] == [10, 20]

    nginx = by_pid(second)[10]
    assert (nginx.bytes_in, nginx.bytes_out) == (500, 0)
    assert (nginx.total_bytes_in, nginx.total_bytes_out) == (1500, 100)
    assert (nginx.rate_in, nginx.rate_out) == (250.0, 0.0)
    assert (nginx.tcp.bytes_in, nginx.udp.bytes_in) == (500, 0)
    assert nginx.peak_rate_in == 500.0  # the first interval's 1000 B / 2 s

    curl = by_pid(second)[20]
    assert (curl.bytes_in, curl.bytes_out, curl.udp.bytes_out) == (0, 40, 40)
    assert curl.total_bytes_in == 10

    agg = second.aggregated
    assert (agg.bytes_in, agg.bytes_out) == (500, 40)
    assert (agg.total_bytes_in, agg.total_bytes_out) == (1510, 140)
    assert agg.rate_in == 250.0

    # An interval with no traffic lists no process.
    assert third.processes == []
    assert third.aggregated.bytes_in == 0
    assert third.aggregated.peak_rate_in == 505.0  # kept from the first interval


def test_summary_covers_the_whole_run_with_rates_and_peaks():
    probe = FakeProbe([
        counters(p10=dict(tcp_in=1000, udp_in=200)),
        counters(p10=dict(tcp_in=4000, udp_in=200, tcp_out=50)),
        counters(p10=dict(tcp_in=5000, udp_in=200, tcp_out=50), p20=dict(udp_out=300)),
        counters(p10=dict(tcp_in=5000, udp_in=200, tcp_out=50), p20=dict(udp_out=300)),
    ])
    summary, _ = collect(make(probe, interval=1.0, count=4))
    assert summary.mode == "payload"
    assert summary.duration_s == 4.0
    nginx, curl = summary.processes
    assert nginx.pid == 10 and curl.pid == 20
    assert (nginx.bytes_in, nginx.bytes_out) == (5200, 50)
    assert (nginx.tcp.bytes_in, nginx.udp.bytes_in, nginx.tcp.bytes_out) == (5000, 200, 50)
    assert (nginx.rate_in, nginx.rate_out) == (1300.0, 12.5)
    assert (nginx.peak_rate_in, nginx.peak_rate_out) == (3000.0, 50.0)
    assert (curl.bytes_out, curl.rate_out, curl.peak_rate_out) == (300, 75.0, 300.0)
    assert (nginx.name, nginx.cmdline, nginx.alive) == ("nginx", "nginx --flag", True)
    agg = summary.aggregated
    assert (agg.bytes_in, agg.bytes_out) == (5200, 350)
    assert (agg.rate_in, agg.rate_out) == (1300.0, 87.5)
    assert (agg.peak_rate_in, agg.peak_rate_out) == (3000.0, 300.0)


def test_records_carry_the_options_and_lost_updates():
    probe = FakeProbe([counters(p10=dict(tcp_in=1))], lost=3)
    summary, _ = collect(make(probe, interval=1.0, count=1, interfaces=["eth0"], include_loopback=True))
    assert summary.interfaces == ["eth0"]
    assert summary.include_loopback is True
    assert summary.lost_updates == 3


def test_process_seen_then_gone_keeps_its_identity_and_is_not_alive():
    processes = FakeProcesses({10: ident(10, "nginx"), 20: ident(20, "curl")}, alive={10})
    probe = FakeProbe([counters(p10=dict(tcp_in=1), p20=dict(tcp_in=2))], exited={20: "curl-kernel"})
    summary, _ = collect(make(probe, processes=processes, interval=1.0, count=1))
    rows = by_pid(summary)
    assert rows[10].alive is True
    assert (rows[20].alive, rows[20].name, rows[20].cmdline) == (False, "curl", "curl --flag")


def test_process_gone_before_it_was_seen_takes_its_name_from_the_kernel():
    processes = FakeProcesses({})  # /proc no longer knows pid 30 nor 40
    probe = FakeProbe([counters(p30=dict(tcp_out=9), p40=dict(udp_in=1))], exited={30: "wget"})
    summary, _ = collect(make(probe, processes=processes, interval=1.0, count=1))
    rows = by_pid(summary)
    assert (rows[30].alive, rows[30].name, rows[30].cmdline, rows[30].bytes_out) == (False, "wget", "", 9)
    assert (rows[40].alive, rows[40].name) == (False, "?")


def test_dead_processes_get_no_socket_lookup():
    class Strict(FakeProcesses):
        def sockets_of(self, pids):
            for pid in pids:
                assert pid in self.alive, f"asked for the sockets of dead pid {pid}"
            return super().sockets_of(pids)

    processes = Strict({10: ident(10, "nginx")}, alive=set())
    probe = FakeProbe([counters(p10=dict(tcp_in=1))])
    summary, _ = collect(make(probe, processes=processes, interval=1.0, count=1, details=True))
    assert by_pid(summary)[10].connections == []


def test_each_pid_is_identified_once():
    processes = FakeProcesses({10: ident(10, "nginx")})
    probe = FakeProbe([counters(p10=dict(tcp_in=n)) for n in range(1, 5)])
    collect(make(probe, processes=processes, interval=1.0, count=4))
    assert processes.identify_calls == [10]


def test_given_pids_appear_even_without_traffic_in_their_order():
    processes = FakeProcesses({10: ident(10, "nginx"), 20: ident(20, "curl")})
    probe = FakeProbe([counters(p10=dict(tcp_in=100), p99=dict(tcp_in=5))])
    summary, records = collect(make(probe, processes=processes, pids=[20, 10], interval=1.0,
                                    count=1, emit_intervals=True))
    assert processes.identify_calls[:2] == [20, 10]  # identified before sampling
    for record in (records[0], summary):
        assert [p.pid for p in record.processes] == [20, 10]
        idle = record.processes[0]
        assert (idle.name, idle.alive, idle.bytes_in, idle.bytes_out, idle.rate_in,
                idle.peak_rate_in, idle.total_bytes_in) == ("curl", True, 0, 0, 0.0, 0.0, 0)
        assert record.processes[1].bytes_in == 100
        assert record.aggregated.bytes_in == 100  # pid 99 was not asked for


def test_connection_counts_come_from_live_sockets():
    socks = {10: [Socket("tcp", "ipv4", "10.0.0.1", 443, "10.0.0.2", 5555, "ESTABLISHED"),
                  Socket("tcp", "ipv6", "::", 80, "", 0, "LISTEN"),
                  Socket("udp", "ipv4", "0.0.0.0", 53, "", 0, "NONE")]}
    processes = FakeProcesses({10: ident(10, "nginx")}, sockets=socks)
    probe = FakeProbe([counters(p10=dict(tcp_in=1))])
    summary, _ = collect(make(probe, processes=processes, interval=1.0, count=1))
    row = by_pid(summary)[10]
    assert (row.tcp_connections, row.udp_connections, row.tcp_listening) == (2, 1, 1)
    agg = summary.aggregated
    assert (agg.tcp_connections, agg.udp_connections, agg.tcp_listening) == (2, 1, 1)
    assert row.connections is None  # only with details
    assert probe.socket_reads == 0


# -- Sampler: --details ---------------------------------------------------------------


LIVE = [
    Socket("tcp", "ipv4", "10.0.0.1", 443, "10.0.0.2", 5555, "ESTABLISHED", 101),
    Socket("udp", "ipv4", "0.0.0.0", 53, "", 0, "NONE", 102),
    Socket("tcp", "ipv6", "::1", 8080, "::1", 40000, "ESTABLISHED", 103),
    Socket("tcp", "ipv4", "0.0.0.0", 22, "", 0, "LISTEN", 104),
]


def sb(pid, protocol, family, laddr, lport, raddr, rport, b_in, b_out, inode):
    """A kernel socket whose identity is its inode number (as in payload mode)."""
    return SocketBytes(pid, protocol, family, laddr, lport, raddr, rport, b_in, b_out, inode=inode, sock_id=inode)


def kernel_sockets(scale: int = 1) -> list:
    return [
        sb(10, "tcp", "ipv4", "10.0.0.1", 443, "10.0.0.2", 5555, 1000 * scale, 200 * scale, 101),
        # The kernel shows an unconnected UDP socket's remote as 0.0.0.0:0.
        sb(10, "udp", "ipv4", "0.0.0.0", 53, "0.0.0.0", 0, 64 * scale, 0, 102),
        sb(10, "tcp", "ipv6", "::1", 8080, "::1", 40000, 7 * scale, 9 * scale, 103),
        # Same ports and peer as the live TCP socket, other protocol / family: no match.
        sb(10, "udp", "ipv4", "10.0.0.1", 443, "10.0.0.2", 5555, 11 * scale, 0, 201),
        sb(10, "tcp", "ipv6", "::", 443, "10.0.0.2", 5555, 0, 13 * scale, 202),
        # Gone from /proc: a finished connection.
        sb(10, "tcp", "ipv4", "10.0.0.1", 41000, "10.0.0.3", 80, 5 * scale, 6 * scale, 203),
        # No bytes: not worth a row.
        sb(10, "tcp", "ipv4", "10.0.0.1", 41001, "10.0.0.3", 80, 0, 0, 204),
        # Another process's socket.
        sb(20, "tcp", "ipv4", "10.0.0.9", 9999, "10.0.0.8", 1, 77, 77, 205),
    ]


def test_details_match_live_sockets_to_kernel_bytes():
    processes = FakeProcesses({10: ident(10, "nginx")}, sockets={10: LIVE})
    probe = FakeProbe([counters(p10=dict(tcp_in=1))], sockets=[kernel_sockets()])
    summary, _ = collect(make(probe, processes=processes, interval=1.0, count=1, details=True))
    conns = [(c.protocol, c.family, c.local, c.remote, c.state, c.bytes_in, c.bytes_out)
             for c in by_pid(summary)[10].connections]
    assert conns[:4] == [
        ("tcp", "ipv4", "10.0.0.1:443", "10.0.0.2:5555", "ESTABLISHED", 1000, 200),
        ("udp", "ipv4", "0.0.0.0:53", "", "NONE", 64, 0),
        ("tcp", "ipv6", "[::1]:8080", "[::1]:40000", "ESTABLISHED", 7, 9),
        ("tcp", "ipv4", "0.0.0.0:22", "", "LISTEN", 0, 0),
    ]
    assert sorted(conns[4:]) == sorted([
        ("tcp", "ipv4", "10.0.0.1:41000", "10.0.0.3:80", "CLOSED", 5, 6),
        ("tcp", "ipv6", "[::]:443", "10.0.0.2:5555", "CLOSED", 0, 13),
        ("udp", "ipv4", "10.0.0.1:443", "10.0.0.2:5555", "CLOSED", 11, 0),
    ])


def test_details_in_interval_records_are_per_window():
    processes = FakeProcesses({10: ident(10, "nginx")}, sockets={10: LIVE[:1]})
    probe = FakeProbe([counters(p10=dict(tcp_in=1)), counters(p10=dict(tcp_in=2))],
                      sockets=[kernel_sockets(1), kernel_sockets(3)])
    summary, records = collect(make(probe, processes=processes, interval=1.0, count=2,
                                    emit_intervals=True, details=True))
    def table(record):
        return {(c.local, c.state): (c.bytes_in, c.bytes_out) for c in by_pid(record)[10].connections}

    assert table(records[0])[("10.0.0.1:443", "ESTABLISHED")] == (1000, 200)
    assert table(records[1])[("10.0.0.1:443", "ESTABLISHED")] == (2000, 400)
    assert table(records[1])[("10.0.0.1:41000", "CLOSED")] == (10, 12)
    # The summary shows what each socket moved over the whole run.
    assert table(summary)[("10.0.0.1:443", "ESTABLISHED")] == (3000, 600)


def test_sockets_sharing_a_port_and_peer_keep_their_own_rows():
    """dig reusing a local port: two sockets, same addresses, one record; and a
    live one found by its inode number, not by the closed one's addresses."""
    live = [Socket("udp", "ipv4", "10.0.0.1", 5353, "10.0.0.53", 53, "NONE", 402)]
    kernel = [sb(10, "udp", "ipv4", "10.0.0.1", 5353, "10.0.0.53", 53, 59, 55, 400),
              sb(10, "udp", "ipv4", "10.0.0.1", 5353, "10.0.0.53", 53, 61, 57, 401),
              sb(10, "udp", "ipv4", "10.0.0.1", 5353, "10.0.0.53", 53, 3, 2, 402)]
    processes = FakeProcesses({10: ident(10, "dig")}, sockets={10: live})
    probe = FakeProbe([counters(p10=dict(udp_in=123, udp_out=114))], sockets=[kernel])
    summary, _ = collect(make(probe, processes=processes, interval=1.0, count=1, details=True))
    row = by_pid(summary)[10]
    conns = [(c.state, c.bytes_in, c.bytes_out) for c in row.connections]
    assert conns == [("NONE", 3, 2), ("CLOSED", 59, 55), ("CLOSED", 61, 57)]
    assert sum(c.bytes_in for c in row.connections) == row.bytes_in
    assert sum(c.bytes_out for c in row.connections) == row.bytes_out


def test_closed_socket_without_new_bytes_leaves_the_interval_record():
    processes = FakeProcesses({10: ident(10, "nginx")}, sockets={10: []})
    closed = [sb(10, "tcp", "ipv4", "10.0.0.1", 41000, "10.0.0.3", 80, 5, 6, 300)]
    probe = FakeProbe([counters(p10=dict(tcp_in=5)), counters(p10=dict(tcp_in=6))],
                      sockets=[closed, closed])
    summary, records = collect(make(probe, processes=processes, interval=1.0, count=2,
                                    emit_intervals=True, details=True))
    assert [c.state for c in by_pid(records[0])[10].connections] == ["CLOSED"]
    assert by_pid(records[1])[10].connections == []
    assert [(c.bytes_in, c.bytes_out) for c in by_pid(summary)[10].connections] == [(5, 6)]


class ExecingProcesses(FakeProcesses):
    """pid 10 is sh until it execs curl at the second read (``after``: who it is then)."""

    def __init__(self, after):
        super().__init__({10: ident(10, "sh")})
        self.after = after

    def exec_now(self):
        self.identities[10] = self.after
        if self.after is None:
            self.alive.discard(10)


def test_a_process_that_execs_is_named_by_its_new_program_in_the_next_record():
    processes = ExecingProcesses(ident(10, "curl"))
    snaps = [counters(p10=dict(tcp_out=n)) for n in (1, 2, 3)]
    probe = FakeProbe(snaps, execs=[set(), {10}, set()])
    sampler = make(probe, processes=processes, interval=1.0, count=3, emit_intervals=True)
    real_read = probe.read

    def read():
        if probe.reads == 1:
            processes.exec_now()
        return real_read()

    probe.read = read
    summary, records = collect(sampler)
    assert [(r.processes[0].name, r.processes[0].cmdline) for r in records] == \
        [("sh", "sh --flag"), ("curl", "curl --flag"), ("curl", "curl --flag")]
    assert summary.processes[0].name == "curl"


def test_a_process_that_execs_then_exits_is_named_as_the_kernel_last_named_it():
    processes = ExecingProcesses(None)  # gone by the time procnetmon looks again
    probe = FakeProbe([counters(p10=dict(tcp_out=1)), counters(p10=dict(tcp_out=2))],
                      execs=[set(), {10}], exited={10: "curl"})
    real_read = probe.read

    def read():
        if probe.reads == 1:
            processes.exec_now()
        return real_read()

    probe.read = read
    summary, _ = collect(make(probe, processes=processes, interval=1.0, count=2))
    (row,) = summary.processes
    assert (row.name, row.cmdline, row.alive, row.bytes_out) == ("curl", "", False, 2)


def test_a_pid_gone_when_first_seen_is_not_renamed_by_its_successor():
    """The first answer about a PID is kept: a later process reusing it lends no name."""
    answers = {"calls": 0}

    class Processes:
        @staticmethod
        def identify(pid):
            answers["calls"] += 1
            if answers["calls"] == 1:
                return None  # gone before procnetmon first looked
            return Identity(pid, "successor", "", 2.0)

        @staticmethod
        def still_alive(identity):
            return True

        @staticmethod
        def sockets_of(pids):
            return {pid: [] for pid in pids}

        @staticmethod
        def cgroup_of(pid):
            return None

    class Probe(FakeProbe):
        def __init__(self):
            super().__init__([])

        def read(self):
            self.reads += 1
            return Snapshot(counters={CounterKey(42, "tcp", "out"): 100 * self.reads})

        def exited(self):
            # A probe reports an exit once, at the read that collects it.
            return {42: "original"} if self.reads == 3 else {}

    sampler = Sampler(Probe(), Options(interval=0.01, count=3, emit_intervals=True), processes=Processes)
    summary = sampler.run(lambda record: True)
    (row,) = summary.processes
    assert (row.name, row.alive) == ("original", False)
    assert answers["calls"] == 1


# -- cgroups -------------------------------------------------------------------------


def test_rows_carry_cgroup_and_container_and_exited_keep_theirs(tmp_path):
    docker = "ab" * 32
    (tmp_path / "system.slice" / "nginx.service").mkdir(parents=True)
    (tmp_path / f"docker-{docker}.scope").mkdir()
    exit_id = os.stat(tmp_path / f"docker-{docker}.scope").st_ino

    class Procs(FakeProcesses):
        def cgroup_of(self, pid):
            return {10: "/system.slice/nginx.service"}.get(pid) if pid in self.alive else None

    class Probe(FakeProbe):
        def exited_cgroups(self):
            return {20: exit_id}

    probe = Probe([counters(p10=dict(tcp_in=100), p20=dict(udp_out=7))], exited={20: "curl"})
    sampler = make(probe, Procs({10: ident(10, "nginx")}), duration=1.0)
    sampler.cgroup_names = cgroups.CgroupNames(str(tmp_path))
    summary, _ = collect(sampler)
    rows = by_pid(summary)
    assert (rows[10].cgroup, rows[10].container) == ("/system.slice/nginx.service", "nginx.service")
    assert rows[20].alive is False
    assert (rows[20].cgroup, rows[20].container) == (f"/docker-{docker}.scope", f"docker://{docker}")


# -- --group-by ------------------------------------------------------------------------


def two_nginx_and_a_curl():
    return FakeProcesses({10: ident(10, "nginx"), 11: ident(11, "nginx"), 20: ident(20, "curl")})


def test_group_by_name_folds_bytes_and_takes_peaks_of_the_group():
    # nginx 10 peaks in the first interval, nginx 11 in the second: the
    # group never moved more than 100 B in one second, not 200.
    probe = FakeProbe([counters(p10=dict(tcp_in=100), p20=dict(udp_out=5)),
                       counters(p10=dict(tcp_in=100), p11=dict(tcp_in=100), p20=dict(udp_out=5))])
    summary, records = collect(make(probe, two_nginx_and_a_curl(), interval=1.0, duration=2.0,
                                    emit_intervals=True, group_by="name"))
    rows = {p.name: p for p in summary.processes}
    assert set(rows) == {"nginx", "curl"}
    nginx = rows["nginx"]
    assert (nginx.pid, nginx.pids) == (None, [10, 11])
    assert nginx.bytes_in == nginx.tcp.bytes_in == 200
    assert nginx.rate_in == 100.0
    assert nginx.peak_rate_in == 100.0
    assert summary.aggregated.bytes_in == 200
    second = {p.name: p for p in records[1].processes}
    assert set(second) == {"nginx"}  # curl moved nothing in the second interval
    assert (second["nginx"].bytes_in, second["nginx"].total_bytes_in) == (100, 200)


def test_group_by_cgroup_folds_per_cgroup_path():
    class Procs(FakeProcesses):
        def cgroup_of(self, pid):
            return {10: "/a/docker-" + "cd" * 32 + ".scope", 11: "/a/docker-" + "cd" * 32 + ".scope",
                    20: "/system.slice/foo.service"}[pid]

    probe = FakeProbe([counters(p10=dict(tcp_in=10), p11=dict(tcp_out=20), p20=dict(udp_in=3))])
    summary, _ = collect(make(probe, Procs(two_nginx_and_a_curl().identities), duration=1.0, group_by="cgroup"))
    rows = {p.cgroup: p for p in summary.processes}
    docker = rows["/a/docker-" + "cd" * 32 + ".scope"]
    assert (docker.bytes_in, docker.bytes_out, docker.pids, docker.name) == (10, 20, [10, 11], "nginx")
    assert docker.container == "docker://" + "cd" * 32
    assert rows["/system.slice/foo.service"].container == "foo.service"


def test_a_daemon_forgets_exited_processes_once_their_bytes_were_reported():
    class Probe(FakeProbe):
        forgotten: list = []

        def exited(self):
            return {20: "curl"} if self.reads >= 2 and 20 not in self.forgotten else {}

        def forget(self, pids):
            self.forgotten.extend(pids)

    # Read 2 sees curl's exit; read 3 has 10 late bytes under its PID (a wire
    # packet still in flight), counted from zero since it was forgotten.
    probe = Probe([counters(p20=dict(tcp_in=100)), counters(p20=dict(tcp_in=150)),
                   counters(p20=dict(tcp_in=10))])
    processes = FakeProcesses({20: ident(20, "curl")}, alive=set())
    sampler = make(probe, processes, count=3, emit_intervals=True, forget_exited=True)
    _, records = collect(sampler)
    assert [by_pid(r)[20].bytes_in for r in records] == [100, 50, 10]
    assert probe.forgotten == [20]
    # What is kept of PID 20 now is the late bytes' only.
    assert sampler.tracked[20].total.tcp_in == 10 and sampler.tracked[20].peaks.rate_in == 10.0


def test_a_process_gone_before_its_exit_was_collected_is_named_by_the_kernel_note():
    """It wrote and exited between two reads: psutil finds nothing (or a
    zombie) and the read has not collected its exit yet, but the kernel's
    note is already there: never "?"."""
    class Probe(FakeProbe):
        def exit_info(self, pid):
            return ("pnmshort", 0) if pid == 30 else None

    probe = Probe([counters(p30=dict(tcp_out=1000))])
    summary, _ = collect(make(probe, FakeProcesses({}), duration=1.0))
    row = by_pid(summary)[30]
    assert (row.name, row.alive, row.bytes_out) == ("pnmshort", False, 1000)
