"""What psutil knows about processes: names, command lines, liveness, sockets.

Processes vanish at any moment; every psutil call here treats NoSuchProcess,
AccessDenied and zombies as ordinary answers, never as errors.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Optional

import psutil


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


@dataclass(frozen=True)
class Socket:
    protocol: str  # "tcp" | "udp"
    family: str  # "ipv4" | "ipv6"
    local_addr: str
    local_port: int
    remote_addr: str  # "" when unconnected
    remote_port: int
    state: str


def _family(f) -> str:
    return "ipv6" if f == socket.AF_INET6 else "ipv4"


def sockets(pid: int) -> list[Socket]:
    """The TCP and UDP sockets a process holds now (in its own network namespace)."""
    try:
        p = psutil.Process(pid)
        conns = p.net_connections(kind="inet") if hasattr(p, "net_connections") else p.connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return []
    out = []
    for c in conns:
        protocol = "tcp" if c.type == socket.SOCK_STREAM else "udp"
        laddr = c.laddr if c.laddr else ("", 0)
        raddr = c.raddr if c.raddr else ("", 0)
        out.append(Socket(protocol, _family(c.family), laddr[0], laddr[1], raddr[0], raddr[1],
                          c.status if c.status else "NONE"))
    return out
