"""The payload backend: bpf/payload.bpf.c on the sock_send_length/sock_recv_length tracepoints.

Builds the compiler flags (struct offsets from BTF, filters as -D switches),
points BCC at a kernel header tree, fills the filter maps with validated
integers, and reads the counters back as plain numbers.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
from typing import Optional

from procnetmon.interfaces import InterfaceKey
from procnetmon.kernel import headers, layout
from procnetmon.kernel.btf import BTFError
from procnetmon.probes import (DIRECTIONS, PROTOCOLS, CounterKey, ProbeError, Snapshot, SocketBytes,
                               bpf_source, expand_includes)

SOURCE = "payload.bpf.c"
TRACEPOINTS = ("sock_send_length", "sock_recv_length", "sk_data_ready", "sched_process_exit")


def build_cflags(offsets: dict, *, pids: Optional[list[int]], interfaces: Optional[list[InterfaceKey]],
                 include_loopback: bool, details: bool) -> list[str]:
    """The -D flags for one run. Only switches and integers reach the C: no pasted text."""
    flags = layout.offset_cflags(offsets)
    if pids is not None:
        flags.append("-DFILTER_PIDS")
    if interfaces is not None:
        flags.append("-DFILTER_IFACES")
    elif not include_loopback:
        flags.append("-DEXCLUDE_LOOPBACK")
    if details:
        flags.append("-DDETAILS")
    return flags


def _format_addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(bytes(raw[:4])))
    return str(ipaddress.IPv6Address(bytes(raw[:16])))


class PayloadProbe:
    """Attached payload probes for one run. Use as a context manager."""

    mode = "payload"
    source = SOURCE

    def __init__(self, *, pids: Optional[list[int]] = None, interfaces: Optional[list[InterfaceKey]] = None,
                 include_loopback: bool = False, details: bool = False):
        self.pids = pids
        self.interfaces = interfaces
        self.include_loopback = include_loopback
        self.details = details
        self._bpf = None

    def compile_plan(self) -> tuple[str, list[str], str]:
        """Source path, compiler flags and header directory, without loading anything."""
        try:
            offsets = layout.kernel_offsets()
        except BTFError as e:
            raise ProbeError(f"kernel struct layout unavailable: {e}") from e
        try:
            header_dir, _synthetic = headers.ensure_headers()
        except headers.HeadersError as e:
            raise ProbeError(str(e)) from e
        flags = build_cflags(offsets, pids=self.pids, interfaces=self.interfaces,
                             include_loopback=self.include_loopback, details=self.details)
        return bpf_source(self.source), flags, header_dir

    def attach(self) -> None:
        source, flags, header_dir = self.compile_plan()
        os.environ["BCC_KERNEL_SOURCE"] = header_dir
        try:
            from bcc import BPF
        except ImportError as e:
            raise ProbeError("BCC's Python module is missing: install python3-bpfcc "
                             "(Debian/Ubuntu) or python3-bcc (Fedora/RHEL)") from e
        try:
            # Programs are attached before the filter maps are filled, but
            # with FILTER_* every lookup misses until then: nothing is
            # counted that should not be.
            self._bpf = BPF(text=expand_includes(source).encode(), cflags=flags)
        except Exception as e:  # BCC raises bare Exception for compile/load/attach failures
            raise ProbeError(f"loading the payload probes failed: {e} "
                             "(the kernel needs raw tracepoints sock:sock_send_length and "
                             "sock:sock_recv_length, Linux 6.3 or later; run procnetmon --check)") from e
        if self.pids is not None:
            table = self._bpf["target_pids"]
            for pid in self.pids:
                table[table.Key(int(pid))] = table.Leaf(1)
        if self.interfaces is not None:
            table = self._bpf["target_ifaces"]
            for key in self.interfaces:
                k = table.Key()
                k.netns, k.ifindex = int(key.netns), int(key.ifindex)
                table[k] = table.Leaf(1)

    def read(self) -> Snapshot:
        counters: dict[CounterKey, int] = {}
        for k, v in self._bpf["counters"].items():
            protocol = PROTOCOLS.get(k.protocol)
            if protocol is None:
                continue
            key = CounterKey(k.tgid, protocol, DIRECTIONS[k.dir])
            counters[key] = counters.get(key, 0) + v.value
        lost = self._bpf["lost"][ctypes.c_int(0)].value
        return Snapshot(counters=counters, lost_updates=lost)

    def exited(self) -> dict[int, str]:
        """Names of counted processes whose last thread has exited."""
        return {k.value: v.comm.decode("utf-8", "replace") for k, v in self._bpf["exited"].items()}

    def sockets(self) -> list[SocketBytes]:
        if not self.details:
            return []
        out = []
        for _k, v in self._bpf["sockets"].items():
            protocol = PROTOCOLS.get(v.protocol)
            if protocol is None or v.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            out.append(SocketBytes(
                pid=v.tgid, protocol=protocol,
                family="ipv4" if v.family == socket.AF_INET else "ipv6",
                local_addr=_format_addr(v.family, bytes(v.laddr)), local_port=v.lport,
                remote_addr=_format_addr(v.family, bytes(v.raddr)), remote_port=v.rport,
                bytes_in=v.bytes_in, bytes_out=v.bytes_out))
        return out

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> "PayloadProbe":
        self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
