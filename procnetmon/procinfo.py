"""Who processes are (psutil: names, command lines, liveness) and the sockets they hold.

Processes vanish at any moment; every psutil call here treats NoSuchProcess,
AccessDenied and zombies as ordinary answers, never as errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import psutil

from procnetmon import cgroups, sockettable


@dataclass(frozen=True)
class Identity:
    """Who a PID was when procnetmon first saw it (create_time tells reuse apart)."""

    pid: int
    name: str
    cmdline: str
    create_time: float


def identify(pid: int) -> Optional[Identity]:
    """The process now behind ``pid``, or None when there is none."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            name = p.name()
            create_time = p.create_time()
            try:
                cmdline = " ".join(p.cmdline())
            except (psutil.AccessDenied, psutil.ZombieProcess):
                cmdline = ""
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
        return Identity(pid, name, cmdline, create_time)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return Identity(pid, "?", "", 0.0)


def pid_exists(pid: int) -> bool:
    return identify(pid) is not None


def still_alive(identity: Identity) -> bool:
    """Whether the same process (not a successor reusing its PID) still runs."""
    now = identify(identity.pid)
    return now is not None and (identity.create_time == 0.0 or now.create_time == identity.create_time)


# A socket of a process: protocol, family, addresses, ports, state.
Socket = sockettable.SocketEntry


def sockets_of(pids: list[int]) -> dict[int, list[Socket]]:
    """The TCP and UDP sockets each process holds now, seen in its own network namespace."""
    return sockettable.sockets_by_pid(pids)


def cgroup_of(pid: int) -> Optional[str]:
    """The cgroup v2 path of a live process (None once it is gone)."""
    return cgroups.process_cgroup(pid)


def descendants(pids: list[int]) -> list[int]:
    """PIDs of every process now below ``pids`` in the process tree (children,
    their children, ...), in no particular order."""
    found: set[int] = set()
    for pid in pids:
        try:
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return sorted(found)
