"""A long -c run over many short-lived processes (issue 14, item 1): the
work of an interval and the memory follow the processes still counted,
not every process ever seen, and the summary still covers them all."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

from test_engine import START, FakeClock, FakeStop, QuietProbe

from procnetmon.engine import Options, Sampler
from procnetmon.probes import CounterKey, Snapshot
from procnetmon.probes.loader import BccProbe
from procnetmon.probes.spec import ProbeSpec

# -- the probe: BccProbe.read over fake kernel maps ------------------------------------


class FakeMap(dict):
    """A BCC table: items() (a list, as BCC's is) of (key, leaf), del by key."""

    def items(self):
        return list(super().items())


class Key(SimpleNamespace):
    def __hash__(self):
        return hash(tuple(sorted(vars(self).items())))

    def __eq__(self, other):
        return vars(self) == vars(other)


class FakeBpf:
    def __init__(self):
        self.maps = {"counters": FakeMap(), "exited": FakeMap(),
                     "lost": {0: SimpleNamespace(value=0)}}

    def __getitem__(self, name):
        if name == "lost":
            return _Lost()
        return self.maps[name]

    def count(self, tgid, nbytes):
        """TCP bytes out (struct counts: bytes[class * 2 + direction])."""
        leaf = self.maps["counters"].setdefault(Key(value=tgid), SimpleNamespace(bytes=[0] * 20))
        leaf.bytes[1] += nbytes

    def exit(self, tgid, comm: bytes):
        self.maps["exited"][Key(value=tgid)] = SimpleNamespace(comm=comm, cgroup_id=1)


class _Lost:
    def __getitem__(self, key):
        assert isinstance(key, ctypes.c_int)
        return SimpleNamespace(value=0)


def probe_over(bpf) -> BccProbe:
    probe = BccProbe(ProbeSpec())
    probe._bpf = bpf
    return probe


def test_read_reports_an_exited_process_once_then_forgets_it():
    bpf = FakeBpf()
    probe = probe_over(bpf)
    bpf.count(10, 100)
    bpf.count(20, 7)
    assert probe.read().counters == {CounterKey(10, "tcp", "out"): 100, CounterKey(20, "tcp", "out"): 7}
    bpf.count(20, 3)
    bpf.exit(20, b"curl")
    snap = probe.read()
    assert snap.counters[CounterKey(20, "tcp", "out")] == 10  # its last, complete count
    assert probe.exited() == {20: "curl"}
    assert probe.exited_cgroups() == {20: 1}
    snap = probe.read()
    assert snap.counters == {CounterKey(10, "tcp", "out"): 100}  # gone from the reads
    assert probe.exited() == {} and probe.exited_cgroups() == {}
    assert probe._claimed == {} and probe._exited_names == {}


def test_read_of_many_exits_stays_as_small_as_the_live_processes():
    bpf = FakeBpf()
    probe = probe_over(bpf)
    for pid in range(1000, 6000):
        bpf.count(pid, 1)
        bpf.exit(pid, b"short")
        probe.read()
    bpf.count(1, 5)
    assert probe.read().counters == {CounterKey(1, "tcp", "out"): 5}
    assert len(bpf.maps["counters"]) == 1


def test_names_that_are_not_utf8_stay_recoverable():
    bpf = FakeBpf()
    probe = probe_over(bpf)
    bpf.count(20, 1)
    bpf.exit(20, b"bad\xff")
    probe.read()
    assert probe.exited()[20].encode("utf-8", "surrogateescape") == b"bad\xff"


# -- the engine over a probe with the real contract -------------------------------------


class ChurnProbe(QuietProbe):
    """Each read: one long-lived process (pid 1) and a new short-lived one
    per interval, which exits; its counters are reported until the read that
    collects its exit, as BccProbe does."""

    def __init__(self):
        self.reads = 0
        self._exits = {}

    def read(self):
        self.reads += 1
        counters = {CounterKey(1, "tcp", "in"): 1000 * self.reads}
        child = 100_000 + self.reads
        counters[CounterKey(child, "udp", "out")] = 10  # born, sent 10 bytes, exited
        self._exits = {child: "child"}
        return Snapshot(counters=counters)

    def exited(self):
        return dict(self._exits)


class Processes:
    def __init__(self):
        self.still_alive_calls = 0

    def identify(self, pid):
        from procnetmon.procinfo import Identity

        return Identity(pid, "daemon", "daemon -f", 1.0) if pid == 1 else None

    def still_alive(self, identity):
        self.still_alive_calls += 1
        return True

    def sockets_of(self, pids):
        return {pid: [] for pid in pids}

    def cgroup_of(self, pid):
        return None


def test_state_follows_the_processes_still_counted_and_the_summary_covers_all():
    clock = FakeClock()
    n = 3000
    procs = Processes()
    sampler = Sampler(ChurnProbe(), Options(interval=1.0, count=n, emit_intervals=True),
                      stop=FakeStop(clock), monotonic=clock, wallclock=lambda: START, processes=procs)
    sizes = []

    def on_interval(record):
        # An interval shows the daemon and the one child of that interval.
        assert len(record.processes) == 2
        sizes.append(len(sampler.tracked) + len(sampler.group_tally.entries) + len(sampler.carried))
        return True

    summary = sampler.run(on_interval)
    assert max(sizes) <= 10  # not n
    assert len(sampler.archive) == n - 1  # the last child is still in the live state
    assert len(sampler.archive._texts) == 2  # "child" and "" stored once
    assert procs.still_alive_calls <= 2 * n + 2
    rows = {p.pid: p for p in summary.processes}
    assert len(rows) == n + 1
    assert rows[1].bytes_in == 1000 * n and rows[1].alive
    child = rows[100_001]
    assert (child.name, child.alive, child.bytes_out, child.udp.bytes_out) == ("child", False, 10, 10)
    assert child.peak_rate_out == 10.0
    assert summary.aggregated.bytes_out == 10 * n
    assert [p.pid for p in summary.processes] == sorted(rows)


def test_pid_reused_after_its_first_process_was_archived_shares_one_row():
    class Probe(ChurnProbe):
        def read(self):
            self.reads += 1
            self._exits = {}
            if self.reads == 1:
                self._exits = {50: "first"}
                return Snapshot(counters={CounterKey(50, "tcp", "out"): 30})
            return Snapshot(counters={CounterKey(50, "tcp", "out"): 4})  # a new process, new counters

    clock = FakeClock()
    sampler = Sampler(Probe(), Options(interval=1.0, count=3), stop=FakeStop(clock), monotonic=clock,
                      wallclock=lambda: START, processes=Processes())
    summary = sampler.run(lambda r: True)
    (row,) = summary.processes
    assert (row.pid, row.bytes_out, row.name) == (50, 34, "first")


def test_children_followed_with_p_that_exit_stay_in_the_summary():
    class Probe(ChurnProbe):
        def read(self):
            self.reads += 1
            counters = {CounterKey(1, "tcp", "in"): 5 * self.reads}
            child = 500 + self.reads
            counters[CounterKey(child, "udp", "out")] = 7
            self._exits = {child: "child"}
            return Snapshot(counters=counters)

    clock = FakeClock()
    sampler = Sampler(Probe(), Options(pids=[1], follow_children=True, interval=1.0, count=4),
                      stop=FakeStop(clock), monotonic=clock, wallclock=lambda: START, processes=Processes())
    summary = sampler.run(lambda r: True)
    assert [p.pid for p in summary.processes] == [1, 501, 502, 503, 504]
    assert [p.bytes_out for p in summary.processes[1:]] == [7, 7, 7, 7]
    assert summary.processes[0].bytes_in == 20
    assert len(sampler.archive) == 3 and not sampler.carried


def test_closing_forgets_the_cgroups_of_the_map_it_freed():
    """attach() falls back to helper reads by closing and attaching again:
    the second map must be filled with every --cgroup id, not only new ones."""
    probe = probe_over(FakeBpf())
    probe._bpf.cleanup = lambda: None
    probe._cgroup_ids = {101, 102}
    probe.close()
    assert probe._cgroup_ids == set()
