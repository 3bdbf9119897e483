"""Probes held only as file descriptors, read through libbpf: no bcc, no LLVM.

``FdProbe`` has the reading side of ``loader.BccProbe`` (counters, exits,
the --cgroup map, wire mode's late owners) over the descriptors that
``handoff.attach_in_child`` brought back, using Debian's libbpf (libbpf1)
through ctypes. The struct layouts are those of bpf/common.h and
bpf/wire.bpf.c.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Optional

from procnetmon import cgroups as cgroupfs
from procnetmon.interfaces import LOOPBACK_IFINDEX
from procnetmon.probes import DIRECTIONS, PROTOCOLS, CounterKey, ProbeError, Snapshot, SocketBytes


class CounterKeyC(ctypes.Structure):
    _fields_ = [("tgid", ctypes.c_uint32), ("ifindex", ctypes.c_uint32), ("protocol", ctypes.c_uint16),
                ("dir", ctypes.c_uint16), ("pad", ctypes.c_uint32)]


class ExitInfoC(ctypes.Structure):
    _fields_ = [("comm", ctypes.c_char * 16), ("exit_ns", ctypes.c_uint64), ("cgroup_id", ctypes.c_uint64)]


class PendingKeyC(ctypes.Structure):
    _fields_ = [("cookie", ctypes.c_uint64), ("ifindex", ctypes.c_uint32), ("protocol", ctypes.c_uint16),
                ("dir", ctypes.c_uint16)]


class OwnerC(ctypes.Structure):
    _fields_ = [("tgid", ctypes.c_uint32), ("netns", ctypes.c_uint32)]


def _libbpf():
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise ProbeError(f"reading the maps needs libbpf (libbpf1): {e}") from e
    for fn in ("bpf_map_get_next_key", "bpf_map_lookup_elem", "bpf_map_delete_elem"):
        getattr(lib, fn).argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p][: 2 if fn.endswith("delete_elem") else 3]
        getattr(lib, fn).restype = ctypes.c_int
    lib.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
    lib.bpf_map_update_elem.restype = ctypes.c_int
    return lib


class Map:
    """One BPF map by descriptor, with the ctypes types of its keys and values."""

    def __init__(self, lib, fd: int, key_type, value_type):
        self.lib, self.fd, self.Key, self.Value = lib, fd, key_type, value_type

    def keys(self) -> list:
        out = []
        prev = None
        while True:
            nxt = self.Key()
            if self.lib.bpf_map_get_next_key(self.fd, None if prev is None else ctypes.byref(prev),
                                             ctypes.byref(nxt)) != 0:
                return out  # ENOENT: the end
            out.append(nxt)
            prev = nxt

    def get(self, key):
        value = self.Value()
        if self.lib.bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value)) != 0:
            return None
        return value

    def items(self) -> list:
        out = []
        for key in self.keys():
            value = self.get(key)
            if value is not None:
                out.append((key, value))
        return out

    def delete(self, key) -> None:
        self.lib.bpf_map_delete_elem(self.fd, ctypes.byref(key))

    def put(self, key, value) -> None:
        self.lib.bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), 0)


def _value(v) -> int:
    return v.value if hasattr(v, "value") else int(v)


class FdProbe:
    """Attached probes held as descriptors from the loader child. Use as a context manager."""

    def __init__(self, *, mode: str = "payload", pids: Optional[list[int]] = None, interfaces=None,
                 include_loopback: bool = False, backend: str = "auto",
                 cgroups: Optional[list[str]] = None, cgroup_mount: Optional[str] = None, details: bool = False):
        if details:
            raise ValueError("per-socket details need the BCC probes")
        self.mode = mode
        self.wanted_backend = backend
        self.backend = None
        self.pids = pids
        self.interfaces = interfaces
        self.include_loopback = include_loopback
        self.details = False
        self.cgroups = cgroups
        self.cgroup_mount = cgroup_mount
        self._fds: list[int] = []
        self._maps: dict[str, Map] = {}
        self._retired: dict[CounterKey, int] = {}
        self._claimed: dict[CounterKey, int] = {}
        self._exited_names: dict[int, str] = {}
        self._exited_cgroups: dict[int, int] = {}
        self._cgroup_ids: set[int] = set()
        self._wanted_ifaces = {(k[0], k[1]) for k in interfaces} if interfaces else None

    def attach(self) -> None:
        from procnetmon.probes import handoff

        config = {"mode": self.mode, "pids": self.pids,
                  "interfaces": None if self.interfaces is None else [list(k) for k in self.interfaces],
                  "include_loopback": self.include_loopback, "backend": self.wanted_backend,
                  "cgroups": self.cgroups, "cgroup_mount": self.cgroup_mount}
        header, self._fds = handoff.attach_in_child(config)
        self.backend = type("Backend", (), {"name": header["backend"]})()
        lib = _libbpf()
        u32, u64, u8 = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint8
        types = {"counters": (CounterKeyC, u64), "exited": (u32, ExitInfoC), "lost": (u32, u64),
                 "target_cgroups": (u64, u8), "owners": (u64, OwnerC), "pending": (PendingKeyC, u64)}
        for name, index in header["maps"].items():
            if name in types:
                self._maps[name] = Map(lib, self._fds[index], *types[name])
        self._cgroup_ids = set(header.get("cgroup_ids", []))

    def _refresh_cgroups(self) -> None:
        if self.cgroups is None or "target_cgroups" not in self._maps:
            return
        table = self._maps["target_cgroups"]
        now = {cid for top in self.cgroups for cid, _ in cgroupfs.walk_ids(self.cgroup_mount, top)}
        for cid in now - self._cgroup_ids:
            table.put(ctypes.c_uint64(cid), ctypes.c_uint8(1))
        for cid in self._cgroup_ids - now:
            table.delete(ctypes.c_uint64(cid))
        self._cgroup_ids = now

    def read(self) -> Snapshot:
        newly_exited = self._collect_exits()
        self._refresh_cgroups()
        counters: dict[CounterKey, int] = dict(self._retired)
        table = self._maps["counters"]
        for k, v in table.items():
            protocol = PROTOCOLS.get(k.protocol)
            if protocol is None:
                continue
            key = CounterKey(k.tgid, protocol, DIRECTIONS[k.dir])
            counters[key] = counters.get(key, 0) + v.value
            if k.tgid in newly_exited:
                self._retired[key] = self._retired.get(key, 0) + v.value
                table.delete(k)
        if self.mode == "wire":
            self._claim_pending(counters)
        lost = self._maps["lost"].get(ctypes.c_uint32(0))
        return Snapshot(counters=counters, lost_updates=_value(lost) if lost is not None else 0)

    def _wanted(self, netns: int, ifindex: int) -> bool:
        if self._wanted_ifaces is not None:
            return (netns, ifindex) in self._wanted_ifaces
        return self.include_loopback or ifindex != LOOPBACK_IFINDEX

    def _claim_pending(self, counters: dict) -> None:
        owners, pending = self._maps["owners"], self._maps["pending"]
        for k, v in pending.items():
            owner = owners.get(ctypes.c_uint64(k.cookie))
            if owner is None:
                continue
            protocol = PROTOCOLS.get(k.protocol)
            if protocol is not None and self._wanted(owner.netns, k.ifindex):
                key = CounterKey(owner.tgid, protocol, DIRECTIONS[k.dir])
                self._claimed[key] = self._claimed.get(key, 0) + v.value
            pending.delete(k)
        for key, value in self._claimed.items():
            counters[key] = counters.get(key, 0) + value

    def _collect_exits(self) -> set[int]:
        table = self._maps["exited"]
        fresh = set()
        # Only this read's exits, as loader.BccProbe: the engine keeps what it needs.
        self._exited_names, self._exited_cgroups = {}, {}
        for k, v in table.items():
            self._exited_names[k.value] = v.comm.decode("utf-8", "surrogateescape")
            self._exited_cgroups[k.value] = v.cgroup_id
            fresh.add(k.value)
            table.delete(k)
        return fresh

    def exited(self) -> dict[int, str]:
        return dict(self._exited_names)

    def exit_info(self, pid: int) -> Optional[tuple[str, int]]:
        """The kernel's note of ``pid``'s exit (name, cgroup id) before a read
        collects it: a process that wrote and exited between two reads."""
        info = self._maps["exited"].get(ctypes.c_uint32(pid)) if "exited" in self._maps else None
        return None if info is None else (info.comm.decode("utf-8", "surrogateescape"), info.cgroup_id)

    def exited_cgroups(self) -> dict[int, int]:
        return dict(self._exited_cgroups)

    def sockets(self) -> list[SocketBytes]:
        return []

    def forget(self, pids) -> None:
        """Drop what is kept of exited processes whose bytes were reported for
        good (a daemon's memory must not grow with every process that ever ran)."""
        gone = set(pids)
        for store in (self._retired, self._claimed):
            for key in [k for k in store if k.pid in gone]:
                del store[key]
        for pid in gone:
            self._exited_names.pop(pid, None)
            self._exited_cgroups.pop(pid, None)

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
        self._maps = {}

    def __enter__(self) -> "FdProbe":
        self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
