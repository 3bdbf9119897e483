"""The floor: what running any BPF program at all costs on a hook.

An empty program (``r0 = 0; exit``) attached to the same tracepoints as
procnetmon's probes costs the kernel's call into BPF (the tracepoint's
static call, the RCU and recursion guards of bpf_trace_run) and, with
BPF_ENABLE_STATS, the two clock reads that time the run. Nothing a probe
does can cost less, so the benchmark reads every probe's time as a
multiple of this. Loaded through bpf(2) directly (procnetmon/kernel/bpfsys.py):
no compiler, nothing else in the program.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Optional

from procnetmon.kernel import bpfsys

BPF_PROG_LOAD = 5
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_RAW_TRACEPOINT = 17

# r0 = 0; exit
EMPTY = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)


# procnetmon's payload hooks on the tracepoint backend (bpf/hooks.h): the
# socket calls' two, then those that note each datagram's interface, only
# with an interface filter or without loopback, as by default: a datagram
# sent (net_dev_queue: every packet queued to a device), one copied out
# (skb_copy_datagram_iovec), one arrived, where no program can run inside
# a UDP recvmsg (sk_data_ready).
CALL_HOOKS = ("sock_send_length", "sock_recv_length")
DATAGRAM_HOOKS = ("net_dev_queue", "skb_copy_datagram_iovec")
HOOKS = CALL_HOOKS + ("sk_data_ready",) + DATAGRAM_HOOKS
# Where trampolines attach, an fentry program on this function replaces
# sk_data_ready: its time counts per call, with no empty program beside it.
KFUNC_HOOKS = ("skb_consume_udp",)


class FloorError(Exception):
    pass


def hook_of(program: str) -> Optional[str]:
    """The hook a program runs on, from its name: procnetmon's raw tracepoint
    programs are raw_tracepoint__<hook>, its BTF-typed ones and the empty
    ones are <hook> cut to the kernel's 15 characters."""
    if program.startswith("kfunc__"):
        return next((h for h in KFUNC_HOOKS if program == f"kfunc__{h}"), None)
    name = program.removeprefix("raw_tracepoint__")
    return next((h for h in HOOKS if name == h or (len(name) == 15 and h.startswith(name))), None)


def hooks_here() -> list[str]:
    """Those of HOOKS this kernel has."""
    from procnetmon.kernel import backends

    facts = backends.btf_facts()
    if facts is None:
        return []
    # The datagram hooks are in every kernel procnetmon runs on (Linux 3.x on).
    return [h for h in HOOKS if facts.tracepoints.get(h) or h in DATAGRAM_HOOKS]


class EmptyPrograms:
    """An empty raw-tracepoint program on each of ``tracepoints``, attached
    while this is open."""

    def __init__(self, tracepoints):
        self.tracepoints = list(tracepoints)
        self._fds: list[int] = []

    def __enter__(self) -> "EmptyPrograms":
        try:
            for tp in self.tracepoints:
                insns = ctypes.create_string_buffer(EMPTY, len(EMPTY))
                license_ = ctypes.create_string_buffer(b"GPL")
                attr = bytearray(128)
                struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_RAW_TRACEPOINT, len(EMPTY) // 8,
                                 ctypes.addressof(insns), ctypes.addressof(license_))
                # Named as procnetmon names its program on the hook, to pair them.
                struct.pack_into("<16s", attr, 48, tp.encode()[:15])
                prog = bpfsys.bpf(BPF_PROG_LOAD, bytes(attr))
                self._fds.append(prog)
                name = ctypes.create_string_buffer(tp.encode())
                link = bpfsys.bpf(BPF_RAW_TRACEPOINT_OPEN, struct.pack("<QI", ctypes.addressof(name), prog) + bytes(4))
                self._fds.append(link)
        except bpfsys.BpfError as e:
            self.__exit__()
            raise FloorError(f"the empty program could not be attached to {tp}: {e}") from e
        return self

    def __exit__(self, *exc) -> None:
        for fd in reversed(self._fds):
            os.close(fd)
        self._fds = []
