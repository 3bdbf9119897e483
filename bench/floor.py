"""The floor: what running any BPF program at all costs on a hook.

An empty program (``r0 = 0; exit``) attached to the same tracepoints as
procnetmon's probes costs the kernel's call into BPF (the tracepoint's
static call, the RCU and recursion guards of bpf_trace_run) and, with
BPF_ENABLE_STATS, the two clock reads that time the run. Nothing a probe
does can cost less, so the benchmark reads every probe's time as a
multiple of this. Loaded through bpf(2) directly, like
procnetmon/kernel/trampoline.py: no compiler, nothing else in the program.
"""

from __future__ import annotations

import ctypes
import os
import struct

SYS_BPF = 321  # x86_64
BPF_PROG_LOAD = 5
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_RAW_TRACEPOINT = 17

# r0 = 0; exit
EMPTY = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)


class FloorError(Exception):
    pass


def _bpf(cmd: int, attr: bytes) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    if ret < 0:
        raise FloorError(os.strerror(ctypes.get_errno()))
    return ret


class EmptyPrograms:
    """An empty raw-tracepoint program on each of ``tracepoints``, attached
    while this is open. ``prog_fds`` maps each tracepoint to its program."""

    def __init__(self, tracepoints):
        self.tracepoints = list(tracepoints)
        self.prog_fds: dict[str, int] = {}
        self._fds: list[int] = []

    def __enter__(self) -> "EmptyPrograms":
        try:
            for tp in self.tracepoints:
                insns = ctypes.create_string_buffer(EMPTY, len(EMPTY))
                license_ = ctypes.create_string_buffer(b"GPL")
                attr = bytearray(128)
                struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_RAW_TRACEPOINT, len(EMPTY) // 8,
                                 ctypes.addressof(insns), ctypes.addressof(license_))
                struct.pack_into("<16s", attr, 48, b"floor_" + tp.encode()[:9])
                prog = _bpf(BPF_PROG_LOAD, bytes(attr))
                self._fds.append(prog)
                name = ctypes.create_string_buffer(tp.encode())
                link = _bpf(BPF_RAW_TRACEPOINT_OPEN, struct.pack("<QI", ctypes.addressof(name), prog) + bytes(4))
                self._fds.append(link)
                self.prog_fds[tp] = prog
        except FloorError as e:
            self.__exit__()
            raise FloorError(f"the empty program could not be attached to {tp}: {e}") from e
        return self

    def __exit__(self, *exc) -> None:
        for fd in reversed(self._fds):
            os.close(fd)
        self._fds, self.prog_fds = [], {}

    def stats(self) -> dict[str, tuple[int, int]]:
        """(run_time_ns, run_cnt) of each tracepoint's empty program so far."""
        out = {}
        for tp, fd in self.prog_fds.items():
            with open(f"/proc/self/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
            out[tp] = (int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0)))
        return out
