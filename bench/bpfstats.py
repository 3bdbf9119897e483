"""The in-kernel side of a BPF tool's cost: run time and run count of its programs.

procnetmon's probes run inside the watched processes' socket calls, so their
cost is charged to those processes, never to procnetmon's own CPU time. The
kernel can time every BPF program run (BPF_ENABLE_STATS); the totals appear
in /proc/PID/fdinfo of each program's file descriptor. Timing adds two clock
reads per run, so the benchmark turns it on only for a separate pass whose
throughput it does not score.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
from dataclasses import dataclass

SYS_BPF = 321  # x86_64
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0


class StatsUnavailable(Exception):
    pass


class RunTimeStats:
    """BPF run-time statistics, on while this is open.

    The kernel keeps them on for as long as the returned descriptor is
    open, so a crash or Ctrl-C turns them off again without any cleanup code.
    """

    def __enter__(self) -> "RunTimeStats":
        libc = ctypes.CDLL(None, use_errno=True)
        attr = ctypes.c_uint32(BPF_STATS_RUN_TIME)  # union bpf_attr { struct { __u32 type; } enable_stats; }
        fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
        if fd < 0:
            raise StatsUnavailable(f"BPF_ENABLE_STATS failed: {os.strerror(ctypes.get_errno())}")
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


@dataclass
class ProgramStats:
    prog_id: int
    name: str
    run_time_ns: int
    run_cnt: int


def _fdinfo(pid: int, fd: str) -> dict:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            return dict(re.findall(r"^(\w+):\s*(\S+)", f.read(), re.M))
    except OSError:
        return {}


def _name(prog_id: int, fallback: str) -> str:
    """The program's name from bpftool, which fdinfo does not carry."""
    try:
        done = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id), "-j"],
                              capture_output=True, text=True, timeout=5)
        return json.loads(done.stdout).get("name") or fallback
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return fallback


def programs_of(pid: int) -> list[ProgramStats]:
    """Every BPF program ``pid`` holds open, with the kernel's run totals so far."""
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return []
    # All counters first, names after: bpftool takes a while per call.
    infos = [info for info in (_fdinfo(pid, fd) for fd in fds) if "prog_id" in info and "run_time_ns" in info]
    out = [ProgramStats(int(i["prog_id"]), f"tag {i.get('prog_tag', '?')}", int(i["run_time_ns"]), int(i["run_cnt"]))
           for i in infos]
    for prog in out:
        prog.name = _name(prog.prog_id, prog.name)
    return sorted(out, key=lambda p: p.prog_id)
