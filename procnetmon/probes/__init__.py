"""Probes: the BPF programs procnetmon attaches, and what they count.

Two words are kept apart throughout: a *mode* is what is counted
(payload: the bytes of socket calls; wire: the bytes of IP packets), one
probe class each; a *backend* is where payload-mode hooks attach
(tracepoint, kprobe or fentry: ``kernel.backends``, ``--backend``).

bcc is imported only when programs are compiled and attached (in
``loader.BccProbe.attach`` and ``wire.WireProbe``), and by ``kernel.check``
to report its version; ``fdprobe`` reads maps held as file descriptors
through libbpf, without it. Importing this package needs neither bcc nor
root, so the CLI and the unit tests run without them.

Each probe attaches its BPF programs and hands the engine plain numbers:
cumulative byte counters per (pid, protocol, direction), the names of
processes that exited, and per-socket bytes when asked for details.
``Probe`` is the contract every probe keeps (``SampledProbe`` the part the
engine reads); ``spec.ProbeSpec`` says what a probe is to count and
``spec.probe_for`` picks the probe for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, NamedTuple, Optional, Protocol, runtime_checkable

if TYPE_CHECKING:
    from procnetmon.probes.health import HealthSnapshot

# The protocol classes the BPF programs count bytes by, in the order of
# their PC_* numbers (bpf/common.h). "icmp" holds ping sockets and raw ICMP
# sockets, "raw" raw IP sockets of any other protocol, "packet" AF_PACKET,
# "other" any other protocol on an inet socket.
PROTOCOL_CLASSES = ("tcp", "udp", "udplite", "icmp", "icmpv6", "raw", "sctp", "mptcp", "packet", "other")
PROTOCOLS = dict(enumerate(PROTOCOL_CLASSES))  # PC_* number -> name
DIRECTIONS = {0: "in", 1: "out"}


class CounterKey(NamedTuple):
    pid: int
    protocol: str  # one of PROTOCOL_CLASSES
    direction: str  # "in" | "out"


@dataclass(frozen=True)
class SocketBytes:
    """Bytes one socket moved, with its addresses as the kernel last saw them.

    ``sock_id`` tells sockets apart even when their addresses are the same
    (one local port used twice in a row): no two sockets of a process share
    it. ``inode`` is the socket's inode number, as /proc/PID/fd shows it
    (0: not known), by which the engine finds it among the live sockets.
    """

    pid: int
    protocol: str
    family: str  # "ipv4" | "ipv6" | "packet" (AF_PACKET: no addresses; local_port holds the ifindex)
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    bytes_in: int
    bytes_out: int
    inode: int = 0
    sock_id: int = 0


@dataclass
class Snapshot:
    """What a probe has counted since it was attached."""

    counters: dict  # CounterKey -> cumulative bytes
    lost_updates: int = 0
    health: Optional["HealthSnapshot"] = None  # with --tcp-health (probes/health.py)


@runtime_checkable
class SampledProbe(Protocol):
    """What the engine needs of attached probes: the reading side, which
    ``reader.MapReader`` implements over BCC's tables and over libbpf's."""

    mode: str  # "payload" | "wire"

    def read(self) -> Snapshot:
        """Cumulative counters of the processes still counted."""

    def exited(self) -> dict[int, str]:
        """Kernel names of the counted processes whose exit the latest read collected."""

    def exited_cgroups(self) -> dict[int, int]:
        """The cgroup v2 id each of them was in at its exit."""

    def exit_info(self, pid: int) -> Optional[tuple[str, int]]:
        """The kernel's note (name, cgroup id) of an exit no read has collected yet."""

    def execed(self) -> set[int]:
        """Processes that called exec since the last call."""

    def forget(self, pids: Iterable[int]) -> None:
        """Drop what is kept of exited processes reported for good (a daemon)."""

    def sockets(self) -> list[SocketBytes]:
        """Per-socket bytes (with details; empty otherwise)."""


class BackendInfo(Protocol):
    """How the probes are attached, as the "probes attached" line names it."""

    @property
    def name(self) -> str: ...

    @property
    def label(self) -> str: ...


@runtime_checkable
class Probe(SampledProbe, Protocol):
    """Probes for one run, from ``spec.probe_for``: attached, sampled, closed."""

    @property
    def backend(self) -> Optional[BackendInfo]:
        """The one chosen; known once attached."""

    def attach(self) -> None:
        """Load and attach the programs; ProbeError names what the kernel lacks."""

    def add_pids(self, pids: Iterable[int]) -> None:
        """Put more thread groups in the kernel's PID filter (with -p only)."""

    def close(self) -> None:
        """Detach and free everything attached."""


class ProbeError(Exception):
    """The probes could not be built or attached; the message names the missing piece."""


def bpf_source(name: str) -> str:
    """Path of a BPF C file: the repo's bpf/ in a checkout, share/procnetmon/bpf when installed."""
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [
        os.path.join(here, "..", "..", "bpf", name),
        os.path.join(sys.prefix, "share", "procnetmon", "bpf", name),
        os.path.join("/usr/local/share/procnetmon/bpf", name),
        os.path.join("/usr/share/procnetmon/bpf", name),
    ]
    for path in candidates:
        if os.path.isfile(path):
            return os.path.normpath(path)
    raise ProbeError(f"BPF source {name} not found (looked in {', '.join(candidates)})")


def expand_includes(path: str) -> str:
    """The C of ``path`` with its ``#include "local.h"`` lines replaced by the files.

    BCC rewrites its map syntax (``counters.lookup(&key)``) only in the main
    file it compiles, so the shared header must become part of that file.
    """
    import os
    import re

    directory = os.path.dirname(path)
    seen: set = set()

    def expand(file: str) -> str:
        if file in seen:
            return ""
        seen.add(file)
        with open(file) as f:
            text = f.read()
        return re.sub(r'^#include "([\w./-]+)"[ \t]*$',
                      lambda m: expand(os.path.join(directory, m.group(1))), text, flags=re.M)

    return expand(path)
