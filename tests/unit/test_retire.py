"""A process that is gone leaves nothing of itself in the sampler.

A ``--serve`` daemon runs for months over processes that come and go: any
per-process state that is not dropped when its process is retired grows
without bound. The sampler's whole state is searched for the PID, so a new
field (in ``Tracked`` or anywhere else in the sampler) that keeps it is
caught without this test having to name it.
"""

from __future__ import annotations

import pytest
from test_engine import START, FakeClock, FakeStop

from procnetmon.engine import Options, Sampler
from procnetmon.probes import CounterKey, Snapshot, SocketBytes
from procnetmon.procinfo import Identity, Socket

DAEMON = 1
EXITS = 424242  # its exit is collected by a read
VANISHES = 434343  # its counters go without an exit note (a full exit map)
CGROUP_ID = 9001


class Probe:
    """Both children move bytes in reads 1 and 2; EXITS's exit comes with
    read 2, and neither is counted from read 3 on."""

    mode = "payload"

    def __init__(self):
        self.reads = 0

    def read(self):
        self.reads += 1
        counters = {CounterKey(DAEMON, "tcp", "in"): 10 * self.reads}
        if self.reads <= 2:
            counters[CounterKey(EXITS, "tcp", "out")] = 7 * self.reads
            counters[CounterKey(VANISHES, "udp", "in")] = 3 * self.reads
        return Snapshot(counters=counters)

    def exited(self):
        return {EXITS: "child"} if self.reads == 2 else {}

    def exited_cgroups(self):
        return {EXITS: CGROUP_ID} if self.reads == 2 else {}

    def exit_info(self, pid):
        return ("child", CGROUP_ID) if pid in (EXITS, VANISHES) and self.reads >= 2 else None

    def execed(self):
        return {EXITS} if self.reads == 1 else set()

    def forget(self, pids):
        pass

    def sockets(self):
        return [SocketBytes(pid, "tcp", "ipv4", "127.0.0.1", 40000 + i, "127.0.0.1", 80, 5 * self.reads,
                            2 * self.reads, inode=600 + i, sock_id=70 + i)
                for i, pid in enumerate((DAEMON, EXITS, VANISHES))
                if pid == DAEMON or self.reads <= 2]


class Processes:
    def __init__(self, probe):
        self.probe = probe

    def identify(self, pid):
        return Identity(pid, "child" if pid != DAEMON else "daemon", f"prog {pid}", 1.0)

    def still_alive(self, identity):
        return identity.pid == DAEMON or self.probe.reads < 2

    def sockets_of(self, pids):
        return {pid: [Socket("tcp", "ipv4", "127.0.0.1", 40000 + i, "127.0.0.1", 80, "ESTABLISHED", 600 + i)]
                for i, pid in enumerate(pids)}

    def cgroup_of(self, pid):
        return "/system.slice/daemon.service" if pid == DAEMON or self.probe.reads < 2 else None


# What the sampler was given or keeps on purpose: the probe and process
# table (fakes here), the options, the clocks, and the archive the summary
# reads (empty for a daemon, see below).
NOT_STATE = {"probe", "processes", "options", "stop", "monotonic", "wallclock", "archive"}


def holders(obj, pid: int, path: str, seen: set[int]) -> list[str]:
    """Where ``pid`` is kept under ``obj``: a dict key, a member of a
    collection, or an attribute of an object of procnetmon's."""
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == pid:
                found.append(f"{path}[{key!r}]")
            found += holders(value, pid, f"{path}[{key!r}]", seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, value in enumerate(obj):
            if type(value) is int and value == pid:
                found.append(f"{path} holds it")
            found += holders(value, pid, f"{path}[{i}]", seen)
    elif type(obj).__module__.startswith("procnetmon") and hasattr(obj, "__dict__"):
        for name, value in vars(obj).items():
            if name in NOT_STATE and path == "sampler":
                continue
            if type(value) is int and value == pid:
                found.append(f"{path}.{name}")
            found += holders(value, pid, f"{path}.{name}", seen)
    return found


def kept(sampler: Sampler, pid: int) -> list[str]:
    return holders(sampler, pid, "sampler", set())


@pytest.mark.parametrize("forget_exited", [False, True], ids=["run", "daemon"])
@pytest.mark.parametrize("group_by", ["pid", "name", "cgroup"])
@pytest.mark.parametrize("follow", [False, True], ids=["all", "p-children"])
def test_a_retired_process_leaves_nothing_behind(forget_exited, group_by, follow):
    probe = Probe()
    clock = FakeClock()
    options = Options(interval=1.0, count=5, emit_intervals=True, details=True, group_by=group_by,
                      forget_exited=forget_exited, pids=[DAEMON] if follow else None, follow_children=follow)
    sampler = Sampler(probe, options, stop=FakeStop(clock), monotonic=clock, wallclock=lambda: START,
                      processes=Processes(probe))
    sampler.cgroup_names._paths[CGROUP_ID] = "/system.slice/child.scope"
    seen = {}

    def on_interval(record):
        seen[probe.reads] = {pid: kept(sampler, pid) for pid in (EXITS, VANISHES)}
        return True

    summary = sampler.run(on_interval)
    # The search finds what is kept while the children are counted...
    assert all(seen[1].values()) and all(seen[2].values()), seen
    # ...and nothing once they are retired: EXITS after the record that
    # showed its exit, VANISHES when a read no longer had its counters.
    for read in (3, 4, 5):
        assert seen[read] == {EXITS: [], VANISHES: []}, (read, seen[read])
    assert kept(sampler, DAEMON)  # the one still counted is kept
    if forget_exited:
        assert len(sampler.archive) == 0  # a daemon keeps no history
    else:
        # A run keeps what its summary needs, in the archive alone.
        assert sorted(sampler.archive.pids) == [EXITS, VANISHES]
        rows = {row.pid: row for row in summary.processes} if group_by == "pid" else {}
        if rows:
            assert (rows[EXITS].bytes_out, rows[VANISHES].bytes_in) == (14, 6)
