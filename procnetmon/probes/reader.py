"""Reading the probes' maps between samples: the same over BCC's tables and libbpf's.

``MapReader`` is what ``loader.BccProbe`` (tables through BCC) and
``fdprobe.FdProbe`` (tables through libbpf, in the daemon) share: folding
the counters, retiring those of processes that exited, giving wire mode's
late-owned bytes to their owners, keeping the --cgroup map in step with
the cgroup tree, and forgetting what a daemon no longer needs. A subclass
says only how to reach a map by name (``_table``); a table is used through
the part of BCC's table API both kinds offer: ``items()``, ``keys()``,
``t[key]`` (KeyError if absent), ``t[key] = value``, ``del t[key]``,
``t.Key`` and ``t.Leaf``.
"""

from __future__ import annotations

import ctypes
from typing import Optional

from procnetmon import cgroups as cgroupfs
from procnetmon.interfaces import LOOPBACK_IFINDEX
from procnetmon.probes import DIRECTIONS, PROTOCOL_CLASSES, PROTOCOLS, CounterKey, ProbeError, Snapshot, health
from procnetmon.probes.spec import ProbeSpec

# The slots of a process's entry in the counters map: struct counts's
# bytes[class * 2 + direction] (bpf/common.h).
SLOTS = tuple((protocol, direction) for protocol in PROTOCOL_CLASSES for direction in ("in", "out"))
COUNT_SLOTS = 32  # the room struct counts has (COUNT_SLOTS): 16 classes
MPTCP_CLASS = PROTOCOL_CLASSES.index("mptcp")


def _delete(table, key) -> None:
    try:
        del table[key]
    except KeyError:
        pass  # gone already (an LRU map evicts, the kernel deletes)


class MapReader:
    """The reading side of attached probes, for the settings of ``spec``.
    Subclasses define ``_table(name)``."""

    mode = ""

    def __init__(self, spec: ProbeSpec):
        self.spec = spec
        self._wanted_ifaces = {(int(k[0]), int(k[1])) for k in spec.interfaces} if spec.interfaces else None
        self._cgroup_ids: set[int] = set()  # in target_cgroups
        self._excluded_cgroup_ids: set[int] = set()  # in excluded_cgroups
        self._claimed: dict[CounterKey, int] = {}  # wire mode: bytes whose owner was learnt late
        self._exited_names: dict[int, str] = {}
        self._exited_cgroups: dict[int, int] = {}
        self._health_facts: Optional[health.HealthFacts] = None

    def health_facts(self) -> health.HealthFacts:
        """What this kernel offers for --tcp-health (read from BTF once);
        ProbeError when it cannot give it at all."""
        if self._health_facts is None:
            from procnetmon.kernel.btf import BTFError

            try:
                facts = health.health_facts()
            except BTFError as e:
                raise ProbeError(f"--tcp-health needs the kernel's BTF: {e}") from e
            problems = facts.problems()
            if problems:
                raise ProbeError(f"--tcp-health cannot run on this kernel: {'; '.join(problems)} "
                                 "(procnetmon --check lists what it offers)")
            self._health_facts = facts
        return self._health_facts

    def _table(self, name: str):
        raise NotImplementedError

    def _has_table(self, name: str) -> bool:
        try:
            self._table(name)
        except KeyError:
            return False
        return True

    def read(self) -> Snapshot:
        """Cumulative counters of the processes in the kernel's map: live ones,
        and those whose exit this read collected, for the last time.

        Exits first: a process gone before its counters are read can add
        nothing more, so its counters leave the map after this read and the
        engine keeps its totals. Nothing of past processes is merged in
        again: the cost of a read follows the processes still counted.
        """
        newly_exited = self._collect_exits()
        self._refresh_cgroups()
        table = self._table("counters")
        counters: dict[CounterKey, int] = {}
        for k, v in list(table.items()):
            tgid = k.value
            for (protocol, direction), n in zip(SLOTS, v.bytes):
                if n:
                    counters[CounterKey(tgid, protocol, direction)] = n
            if tgid in newly_exited:
                _delete(table, k)  # the map stays as small as the live processes
        if self.mode == "wire":
            self._claim_pending(counters)
        lost = self._table("lost")[ctypes.c_int(0)].value  # a one-slot array
        found = None
        if self.spec.tcp_health:
            found = health.read(self._table, self.health_facts().reason_name, newly_exited)
        return Snapshot(counters=counters, lost_updates=lost, health=found)

    def _wanted(self, netns: int, ifindex: int) -> bool:
        """The in-kernel interface filter, for bytes whose owner was learnt late."""
        if self._wanted_ifaces is not None:
            return (netns, ifindex) in self._wanted_ifaces
        return self.spec.include_loopback or ifindex != LOOPBACK_IFINDEX

    def _claim_pending(self, counters: dict) -> None:
        """Wire mode: give the bytes of sockets whose owner became known since
        the last read (the ``pending`` map) to that owner."""
        owners, pending = self._table("owners"), self._table("pending")
        for k, v in list(pending.items()):
            try:
                owner = owners[owners.Key(k.cookie)]
            except KeyError:
                continue  # not known yet, or a socket of a process not sampled
            # The owner's class: an MPTCP subflow's bytes were held as TCP's.
            protocol = PROTOCOLS.get(owner.cls if owner.cls == MPTCP_CLASS else k.protocol)
            if protocol is not None and self._wanted(owner.netns, k.ifindex):
                key = CounterKey(owner.tgid, protocol, DIRECTIONS[k.dir])
                self._claimed[key] = self._claimed.get(key, 0) + v.value
            _delete(pending, k)
        for key, value in self._claimed.items():
            counters[key] = counters.get(key, 0) + value

    def _refresh_cgroups(self) -> None:
        """Put every cgroup now at or below a --cgroup path in target_cgroups
        (and at or below an --exclude-cgroup path in excluded_cgroups), and
        take out those that were removed (the kernel adds new ones itself)."""
        mount = self.spec.cgroup_mount  # resolved with the spec whenever either is given
        if mount is None:
            return
        self._cgroup_ids = self._refresh_cgroup_map("target_cgroups", self.spec.cgroups, self._cgroup_ids, mount)
        self._excluded_cgroup_ids = self._refresh_cgroup_map(
            "excluded_cgroups", self.spec.exclude_cgroups, self._excluded_cgroup_ids, mount)

    def _refresh_cgroup_map(self, name: str, tops, known: set[int], mount: str) -> set[int]:
        """The ids now in map ``name``: every cgroup at or below ``tops``."""
        if tops is None or not self._has_table(name):
            return known
        table = self._table(name)
        now = {cid for top in tops for cid, _ in cgroupfs.walk_ids(mount, top)}
        for cid in now - known:
            table[table.Key(cid)] = table.Leaf(1)
        for cid in known - now:
            _delete(table, table.Key(cid))
        return now

    def _collect_exits(self) -> set[int]:
        table = self._table("exited")
        # Only this read's exits: the engine keeps the names and cgroups it needs.
        self._exited_names, self._exited_cgroups = {}, {}
        for k, v in list(table.items()):
            # surrogateescape: bytes that are not UTF-8 stay recoverable, and
            # the outputs write them as \xHH like psutil's names.
            self._exited_names[k.value] = v.comm.decode("utf-8", "surrogateescape")
            self._exited_cgroups[k.value] = v.cgroup_id
            _delete(table, k)
        return set(self._exited_names)

    def exit_info(self, pid: int) -> Optional[tuple[str, int]]:
        """The kernel's note of ``pid``'s exit (name, cgroup id) before a read
        collects it: a process that wrote and exited between two reads."""
        table = self._table("exited")
        try:
            info = table[table.Key(pid)]
        except KeyError:
            return None
        return info.comm.decode("utf-8", "surrogateescape"), info.cgroup_id

    def exited(self) -> dict[int, str]:
        """Names of the counted processes whose exit the latest read collected
        (each exit is reported by one read only)."""
        return dict(self._exited_names)

    def exited_cgroups(self) -> dict[int, int]:
        """The cgroup v2 id each counted process that exited was in at its exit."""
        return dict(self._exited_cgroups)

    def add_pids(self, pids) -> None:
        """Put more thread groups in the kernel's PID filter (with -p only)."""
        table = self._table("target_pids")
        for pid in pids:
            table[table.Key(int(pid))] = table.Leaf(1)

    def execed(self) -> set[int]:
        """Processes that called exec since the last call: who they are has changed."""
        if not self._has_table("execed"):
            return set()
        table = self._table("execed")
        fresh = set()
        for k in list(table.keys()):
            fresh.add(k.value)
            _delete(table, k)
        return fresh

    def forget(self, pids) -> None:
        """Drop what is kept of exited processes whose bytes were reported for
        good (a daemon's memory must not grow with every process that ever ran)."""
        gone = set(pids)
        for key in [k for k in self._claimed if k.pid in gone]:
            del self._claimed[key]
        for pid in gone:
            self._exited_names.pop(pid, None)
            self._exited_cgroups.pop(pid, None)
