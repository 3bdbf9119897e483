"""A process's TCP and UDP sockets, read in the process's own network namespace.

psutil's connection listing parses ``/proc/net/tcp`` and friends of the
*caller's* namespace, so a process in another one (any container) seems to
have no sockets. ``/proc/PID/net/*`` shows the tables of PID's namespace;
joined with the socket inodes of ``/proc/PID/fd`` they give its sockets.
The parsers take the files' text, so they are tested on canned tables.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from typing import Container, Iterable, NamedTuple, Optional

TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
    "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
    "0B": "CLOSING", "0C": "NEW_SYN_RECV",
}

TABLES = (("tcp", "tcp", "ipv4"), ("tcp6", "tcp", "ipv6"), ("udp", "udp", "ipv4"), ("udp6", "udp", "ipv6"))


class SocketEntry(NamedTuple):
    protocol: str  # "tcp" | "udp"
    family: str  # "ipv4" | "ipv6"
    local_addr: str
    local_port: int
    remote_addr: str  # "" when unconnected
    remote_port: int
    state: str  # TCP state name; "NONE" for UDP
    inode: int = 0


def decode_address(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` or 32 hex digits + port, as the kernel prints them, to (address, port).

    The kernel prints each 32-bit word of the address in host byte order.
    """
    addr_hex, port_hex = text.split(":")
    raw = bytes.fromhex(addr_hex)
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    packed = b"".join(struct.pack(">I", w) for w in words)
    return str(ipaddress.ip_address(packed)), int(port_hex, 16)


def parse_table(text: str, protocol: str, family: str,
                wanted: Optional[Container[int]] = None) -> Iterable[SocketEntry]:
    """The rows of one ``/proc/net/{tcp,tcp6,udp,udp6}`` table (only inodes in ``wanted``, if given).

    A busy host's tables have thousands of rows: the inode is looked at
    before anything is decoded.
    """
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        inode = int(fields[9])
        if wanted is not None and inode not in wanted:
            continue
        local, local_port = decode_address(fields[1])
        remote, remote_port = decode_address(fields[2])
        if remote_port == 0 and ipaddress.ip_address(remote).is_unspecified:
            remote = ""
        state = TCP_STATES.get(fields[3].upper(), "UNKNOWN") if protocol == "tcp" else "NONE"
        yield SocketEntry(protocol, family, local, local_port, remote, remote_port, state, inode)


def socket_inodes(pid: int, proc: str = "/proc") -> set[int]:
    """Inodes of the sockets ``pid`` holds. PermissionError when its
    descriptors are not ours to read (no CAP_SYS_PTRACE)."""
    inodes = set()
    fd_dir = f"{proc}/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except PermissionError:
            raise
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def sockets_by_pid(pids: Iterable[int], proc: str = "/proc") -> dict[int, Optional[list[SocketEntry]]]:
    """The TCP and UDP sockets each of ``pids`` holds: a PID gone has none,
    one whose descriptors we may not read has None (unknown, not zero).

    Each network namespace's four tables are read once, whatever the number
    of processes in it: reading /proc/net/tcp costs milliseconds on a busy host.
    """
    holders: dict[int, dict[int, list[int]]] = {}  # netns -> socket inode -> pids holding it
    found: dict[int, Optional[list[SocketEntry]]] = {}
    reader: dict[int, int] = {}  # netns -> a pid whose /proc/PID/net shows its tables
    for pid in pids:
        found[pid] = []
        try:
            inodes = socket_inodes(pid, proc)
            netns = os.stat(f"{proc}/{pid}/ns/net").st_ino
        except PermissionError:
            found[pid] = None  # not ours to look at: unknown
            continue
        except OSError:
            continue  # gone
        for inode in inodes:
            holders.setdefault(netns, {}).setdefault(inode, []).append(pid)
        reader.setdefault(netns, pid)
    for netns, by_inode in holders.items():
        for name, protocol, family in TABLES:
            try:
                with open(f"{proc}/{reader[netns]}/net/{name}") as f:
                    text = f.read()
            except OSError:
                continue  # no IPv6 in this kernel, or the reader just exited
            for entry in parse_table(text, protocol, family, by_inode):
                for pid in by_inode[entry.inode]:
                    found[pid].append(entry)
    return found
