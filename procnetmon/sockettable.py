"""A process's TCP and UDP sockets, read in the process's own network namespace.

psutil's connection listing parses ``/proc/net/tcp`` and friends of the
*caller's* namespace, so a process in another one (any container) seems to
have no sockets. The socket inodes of ``/proc/PID/fd``, joined with the
socket tables of PID's namespace, give its sockets.

The tables are read once per namespace per record, through netlink
``sock_diag`` (the binary interface ``ss`` uses): the kernel leaves out the
sockets no descriptor holds (TIME_WAIT, half-open requests), and each entry
is a fixed-size struct whose inode is looked at before anything is decoded.
On a host with 240,000 sockets that is several times faster, and far
lighter, than the text of ``/proc/PID/net/{tcp,tcp6,udp,udp6}``, which
remains the fallback (no sock_diag, or no CAP_SYS_ADMIN to enter another
namespace). The text parsers are tested on canned tables.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
from typing import Container, Iterable, Iterator, NamedTuple, Optional

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


# -- netlink sock_diag ---------------------------------------------------------------

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
CLONE_NEWNET = 0x40000000
TCP_TIME_WAIT, TCP_NEW_SYN_RECV = 6, 12
# Every state but those of sockets that no descriptor holds (inode 0).
DIAG_STATES = 0xFFFFFFFF & ~((1 << TCP_TIME_WAIT) | (1 << TCP_NEW_SYN_RECV))
DIAG_TABLES = ((socket.AF_INET, socket.IPPROTO_TCP, "tcp", "ipv4"),
               (socket.AF_INET6, socket.IPPROTO_TCP, "tcp", "ipv6"),
               (socket.AF_INET, socket.IPPROTO_UDP, "udp", "ipv4"),
               (socket.AF_INET6, socket.IPPROTO_UDP, "udp", "ipv6"))
TCP_STATE_NUMBERS = {int(code, 16): name for code, name in TCP_STATES.items()}

_NLMSGHDR = struct.Struct("=IHHII")
_DIAG_REQ = struct.Struct("=BBBxI48x")  # inet_diag_req_v2, an all-zero socket id
_INODE = struct.Struct("=I")  # inet_diag_msg.idiag_inode, at byte 68 of the message
_PORTS = struct.Struct(">HH")  # idiag_sport, idiag_dport, at byte 4
_ERRNO = struct.Struct("=i")


class NetlinkUnavailable(Exception):
    """sock_diag cannot be used here; the /proc text tables are read instead."""


def diag_entries(sock, family: int, protocol: int, proto_name: str, family_name: str,
                 wanted: Container[int]) -> Iterator[SocketEntry]:
    """The sockets of one family and protocol whose inode is in ``wanted``,
    from a sock_diag dump over the netlink socket ``sock``."""
    request = _DIAG_REQ.pack(family, protocol, 0, DIAG_STATES)
    sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY,
                             NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + request)
    addr_len = 4 if family == socket.AF_INET else 16
    buf = bytearray(1 << 20)
    while True:
        size = sock.recv_into(buf)
        if size == 0:
            raise NetlinkUnavailable("netlink closed the dump")
        data = memoryview(buf)[:size]
        offset = 0
        while offset + _NLMSGHDR.size <= size:
            length, kind, _flags, _seq, _port = _NLMSGHDR.unpack_from(data, offset)
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                errno = -_ERRNO.unpack_from(data, offset + 16)[0]
                raise NetlinkUnavailable(f"sock_diag refused the dump: {os.strerror(errno)}")
            msg = offset + _NLMSGHDR.size
            inode = _INODE.unpack_from(data, msg + 68)[0]
            if inode in wanted:
                sport, dport = _PORTS.unpack_from(data, msg + 4)
                local = socket.inet_ntop(family, bytes(data[msg + 8:msg + 8 + addr_len]))
                raw_remote = bytes(data[msg + 24:msg + 24 + addr_len])
                remote = "" if dport == 0 and not any(raw_remote) else socket.inet_ntop(family, raw_remote)
                if proto_name == "tcp":
                    state = TCP_STATE_NUMBERS.get(data[msg + 1], "UNKNOWN")
                else:
                    state = "NONE"
                yield SocketEntry(proto_name, family_name, local, sport, remote, dport, state, inode)
            if length < _NLMSGHDR.size:
                raise NetlinkUnavailable("malformed netlink message")
            offset += (length + 3) & ~3


_libc = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def netlink_socket_in(ns_path: str) -> socket.socket:
    """A sock_diag netlink socket in the network namespace at ``ns_path``.

    A netlink socket belongs to the namespace it is made in: this thread
    enters the namespace (setns, CAP_SYS_ADMIN), makes it, and comes back.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(ns_path, os.O_RDONLY)
    except OSError:
        os.close(own)
        raise
    try:
        if os.fstat(own).st_ino == os.fstat(target).st_ino:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        try:
            _setns(target)
        except OSError as e:
            raise NetlinkUnavailable(f"cannot enter the network namespace: {e.strerror}") from None
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        finally:
            # Never stay in another namespace: everything after would be wrong.
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def netlink_tables(ns_path: str, wanted: Container[int]) -> list[SocketEntry]:
    """Sockets of a namespace whose inodes are in ``wanted``, through sock_diag."""
    try:
        sock = netlink_socket_in(ns_path)
    except (OSError, NetlinkUnavailable) as e:
        raise NetlinkUnavailable(str(e)) from None
    with sock:
        out: list[SocketEntry] = []
        for family, protocol, proto_name, family_name in DIAG_TABLES:
            try:
                out.extend(diag_entries(sock, family, protocol, proto_name, family_name, wanted))
            except NetlinkUnavailable:
                if family == socket.AF_INET6:
                    continue  # a kernel without IPv6
                raise
            except OSError as e:
                raise NetlinkUnavailable(str(e)) from None
        return out


def proc_tables(reader_pid: int, wanted: Container[int], proc: str = "/proc") -> list[SocketEntry]:
    """Sockets of a namespace whose inodes are in ``wanted``, from the text of
    ``/proc/PID/net/*`` of a process in it."""
    out: list[SocketEntry] = []
    for name, protocol, family in TABLES:
        try:
            with open(f"{proc}/{reader_pid}/net/{name}") as f:
                text = f.read()
        except OSError:
            continue  # no IPv6 in this kernel, or the reader just exited
        out.extend(parse_table(text, protocol, family, wanted))
    return out


def sockets_by_pid(pids: Iterable[int], proc: str = "/proc",
                   method: str = "auto") -> dict[int, Optional[list[SocketEntry]]]:
    """The TCP and UDP sockets each of ``pids`` holds: a PID gone has none,
    one whose descriptors we may not read has None (unknown, not zero).

    Each network namespace's tables are read once, whatever the number of
    processes in it. ``method``: "auto" (sock_diag, or the /proc text where
    it cannot be used), "netlink" (sock_diag only) or "proc" (text only).
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
        entries = None
        if method in ("auto", "netlink"):
            try:
                entries = netlink_tables(f"{proc}/{reader[netns]}/ns/net", by_inode)
            except NetlinkUnavailable:
                if method == "netlink":
                    raise
        if entries is None:
            entries = proc_tables(reader[netns], by_inode, proc)
        for entry in entries:
            for pid in by_inode[entry.inode]:
                found[pid].append(entry)
    return found
