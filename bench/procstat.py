"""What a running process has cost so far, read from /proc.

CPU comes from /proc/PID/stat (user + system time of every thread, plus
by default the children it has waited for), in clock ticks: 10 ms at USER_HZ=100, which is
why the benchmark sums it over whole runs rather than reading short slices.
/proc/PID/schedstat would be finer but is all zeros on kernels built without
schedstats, as the benchmark machine's is. Memory comes from
/proc/PID/status: VmHWM at its peak, VmRSS now.
"""

from __future__ import annotations

import os
from typing import Optional

TICK = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = True) -> Optional[float]:
    """utime + stime (+ cutime + cstime, the children it has waited for) of ``pid`` in seconds; None once it
    is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name may hold spaces and parentheses: split after the last ')'.
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is field 3 (state) of proc(5): utime..cstime are fields 14..17.
    return sum(int(v) for v in fields[11:15 if children else 13]) * TICK


def rss_mib(pid: int) -> Optional[float]:
    """VmRSS, the resident set size now, in MiB; None once the process is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_kib(pid: int) -> Optional[int]:
    """VmHWM, the peak resident set size, in KiB; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
