"""Probes held only as file descriptors, read through libbpf: no bcc, no LLVM.

``FdProbe`` reads, as ``loader.BccProbe`` does (both are
``reader.MapReader``), the maps whose descriptors ``handoff.attach_in_child``
brought back, using Debian's libbpf (libbpf1) through ctypes: ``Map``
offers the part of BCC's table API the reader uses. The struct layouts
are those of bpf/common.h and bpf/wire.bpf.c.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

from procnetmon.kernel import bpfsys
from procnetmon.probes import ProbeError, SocketBytes, health, libbpf
from procnetmon.probes.reader import COUNT_SLOTS, MapReader
from procnetmon.probes.spec import ProbeSpec


class CountsC(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_uint64 * COUNT_SLOTS)]


class ExitInfoC(ctypes.Structure):
    _fields_ = [("comm", ctypes.c_char * 16), ("exit_ns", ctypes.c_uint64), ("cgroup_id", ctypes.c_uint64)]


class PendingKeyC(ctypes.Structure):
    _fields_ = [("cookie", ctypes.c_uint64), ("ifindex", ctypes.c_uint32), ("protocol", ctypes.c_uint16),
                ("dir", ctypes.c_uint16)]


class OwnerC(ctypes.Structure):
    _fields_ = [("tgid", ctypes.c_uint32), ("netns", ctypes.c_uint32), ("ino", ctypes.c_uint64),
                ("cls", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class Map:
    """One BPF map by descriptor, with the ctypes types of its keys and values.

    The types are written here after the structs of bpf/*.c; a map whose
    key or value the kernel says is of another size is refused, since the
    kernel copies its size into a buffer of ours (OwnerC was once 8 bytes
    for a 16-byte value).
    """

    def __init__(self, lib, fd: int, key_type, value_type, name: str = "?"):
        key_size, value_size = bpfsys.map_sizes(fd)
        if (key_size, value_size) != (ctypes.sizeof(key_type), ctypes.sizeof(value_type)):
            raise ProbeError(f"the BPF map {name} has {key_size}-byte keys and {value_size}-byte values, "
                             f"procnetmon reads {ctypes.sizeof(key_type)} and {ctypes.sizeof(value_type)}: "
                             "its programs and its reader disagree (a bug: please report it)")
        self.lib, self.fd, self.Key, self.Value = lib, fd, key_type, value_type

    def keys(self) -> list:
        out: list = []
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

    def __getitem__(self, key):
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __delitem__(self, key) -> None:
        if self.lib.bpf_map_delete_elem(self.fd, ctypes.byref(key)) != 0:
            raise KeyError(key)

    def __setitem__(self, key, value) -> None:
        if self.lib.bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

    @property
    def Leaf(self):  # BCC's name for the value type
        return self.Value


@dataclass(frozen=True)
class LoadedBackend:
    """The backend the loader child attached with, as its header names it."""

    name: str
    label: str


class FdProbe(MapReader):
    """Attached probes held as descriptors from the loader child. Use as a context manager."""

    def __init__(self, spec: ProbeSpec):
        if spec.details or spec.follow_children:
            raise ValueError("per-socket details and followed children need the BCC probes")
        super().__init__(spec)
        self.mode = spec.mode
        self.backend: Optional[LoadedBackend] = None  # known once attached
        self._fds: list[int] = []
        self._maps: dict[str, Map] = {}

    def attach(self) -> None:
        from procnetmon.probes import handoff

        # The child attaches in its own process, and logs the compiler's
        # output to a file: its standard error is not the user's.
        header, self._fds = handoff.attach_in_child(dataclasses.replace(self.spec, handoff=False, verbose=False))
        self.backend = LoadedBackend(header["backend"], header["label"])
        lib = libbpf.load("reading the maps")
        u32, u64, u8 = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint8
        types = {"counters": (u32, CountsC), "exited": (u32, ExitInfoC), "lost": (u32, u64),
                 "target_pids": (u32, u8), "target_cgroups": (u64, u8), "excluded_cgroups": (u64, u8),
                 "execed": (u32, u8),
                 "owners": (u64, OwnerC), "pending": (PendingKeyC, u64), **health.MAP_TYPES}
        for name, index in header["maps"].items():
            if name in types:
                self._maps[name] = Map(lib, self._fds[index], *types[name], name=name)
        self._cgroup_ids = set(header.get("cgroup_ids", []))
        self._excluded_cgroup_ids = set(header.get("excluded_cgroup_ids", []))

    def _table(self, name: str) -> Map:
        return self._maps[name]

    def sockets(self) -> list[SocketBytes]:
        return []

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
