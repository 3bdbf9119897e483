"""The /proc/PID/net socket tables, parsed from canned text taken from a real kernel."""

from __future__ import annotations

import os
import socket

import pytest

from procnetmon import sockettable

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
          "inode\n")
TCP = HEADER + (
    "   0: 0100007F:8FE1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 40958 1 "
    "000000008f542bf0 100 0 0 10 0\n"
    "   1: 0A00000A:01BB 0200000A:15B3 01 00000000:00000000 00:00000000 00000000     0        0 777 1 "
    "0000000000000000 20 4 30 10 -1\n"
)
TCP6 = HEADER + (
    "   0: 00000000000000000000000001000000:BA25 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 40957 1 00000000c0e16c6d 100 0 0 10 0\n"
)
UDP = HEADER + (
    "  1234: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 555 2 "
    "0000000000000000 0\n"
)


def test_ipv4_listener_and_connection():
    rows = list(sockettable.parse_table(TCP, "tcp", "ipv4"))
    assert rows[0] == sockettable.SocketEntry("tcp", "ipv4", "127.0.0.1", 36833, "", 0, "LISTEN", 40958)
    assert rows[1] == sockettable.SocketEntry("tcp", "ipv4", "10.0.0.10", 443, "10.0.0.2", 5555,
                                              "ESTABLISHED", 777)


def test_ipv6_words_are_in_host_order():
    (row,) = sockettable.parse_table(TCP6, "tcp", "ipv6")
    assert (row.local_addr, row.local_port, row.remote_addr, row.state) == ("::1", 47653, "", "LISTEN")


def test_udp_rows_have_no_state():
    (row,) = sockettable.parse_table(UDP, "udp", "ipv4")
    assert (row.local_addr, row.local_port, row.state, row.inode) == ("0.0.0.0", 53, "NONE", 555)


def test_short_lines_are_skipped():
    assert list(sockettable.parse_table(HEADER + "garbage\n", "tcp", "ipv4")) == []


def test_this_process_sockets_are_found():
    listener = socket.socket(socket.AF_INET6)
    listener.bind(("::1", 0))
    listener.listen()
    dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dgram.bind(("127.0.0.1", 0))
    try:
        found = sockettable.sockets_by_pid([os.getpid()])[os.getpid()]
        mine = {(e.protocol, e.family, e.local_addr, e.local_port, e.state) for e in found}
        assert ("tcp", "ipv6", "::1", listener.getsockname()[1], "LISTEN") in mine
        assert ("udp", "ipv4", "127.0.0.1", dgram.getsockname()[1], "NONE") in mine
    finally:
        listener.close()
        dgram.close()


def test_a_namespace_table_is_read_once_for_all_its_processes(tmp_path):
    """Two processes of one namespace, one socket each, and a socket they share (fork)."""
    ns_file = tmp_path / "netns"
    ns_file.write_text("")
    for pid, inodes in ((100, [40958, 777]), (200, [777, 555])):
        (tmp_path / str(pid) / "fd").mkdir(parents=True)
        (tmp_path / str(pid) / "ns").mkdir()
        os.symlink(ns_file, tmp_path / str(pid) / "ns" / "net")
        for fd, inode in enumerate(inodes):
            os.symlink(f"socket:[{inode}]", tmp_path / str(pid) / "fd" / str(fd))
    # Only the first process's tables exist: the second must not need its own.
    (tmp_path / "100" / "net").mkdir()
    (tmp_path / "100" / "net" / "tcp").write_text(TCP)
    (tmp_path / "100" / "net" / "udp").write_text(UDP)
    found = sockettable.sockets_by_pid([100, 200, 300], proc=str(tmp_path))
    assert sorted(e.inode for e in found[100]) == [777, 40958]
    assert sorted(e.inode for e in found[200]) == [555, 777]
    assert found[300] == []  # gone


# -- netlink sock_diag (issue 14, item 12) ----------------------------------------------


def test_netlink_and_proc_text_agree_on_this_process():
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.bind(("::1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect(("127.0.0.1", 9))
    try:
        me = os.getpid()
        by_netlink = sorted(sockettable.sockets_by_pid([me], method="netlink")[me])
        by_text = sorted(sockettable.sockets_by_pid([me], method="proc")[me])
        assert by_netlink == by_text
        assert len(by_netlink) == 5
        assert {e.state for e in by_netlink} == {"LISTEN", "ESTABLISHED", "NONE"}
    finally:
        for s in (listener, client, accepted, udp6, udp):
            s.close()


class CannedNetlink:
    """A netlink socket that answers every request with canned bytes."""

    def __init__(self, replies):
        self.replies = list(replies)

    def send(self, data):
        return len(data)

    def recv_into(self, buf):
        data = self.replies.pop(0)
        buf[:len(data)] = data
        return len(data)


def diag_message(inode, state=10, sport=80, dport=0, src=b"\x7f\0\0\x01", dst=b"\0" * 4):
    import struct

    body = struct.pack("=BBBB", 2, state, 0, 0) + struct.pack(">HH", sport, dport)
    body += src.ljust(16, b"\0") + dst.ljust(16, b"\0") + struct.pack("=I8s", 0, b"\0" * 8)
    body += struct.pack("=IIIII", 0, 0, 0, 0, inode)
    return struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body


def test_diag_entries_decode_only_the_wanted_inodes():
    import socket
    import struct

    done = struct.pack("=IHHII", 20, 3, 2, 1, 0) + b"\0" * 4
    sock = CannedNetlink([diag_message(11) + diag_message(12, state=1, sport=5000, dport=443,
                                                          dst=b"\x0a\0\0\x02"), done])
    got = list(sockettable.diag_entries(sock, socket.AF_INET, socket.IPPROTO_TCP, "tcp", "ipv4", {12}))
    assert got == [sockettable.SocketEntry("tcp", "ipv4", "127.0.0.1", 5000, "10.0.0.2", 443, "ESTABLISHED", 12)]


def test_a_refused_dump_falls_back_to_the_text_tables(tmp_path, monkeypatch):
    import struct

    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -95) + b"\0" * 16
    import socket
    sock = CannedNetlink([error])
    with pytest.raises(sockettable.NetlinkUnavailable):
        list(sockettable.diag_entries(sock, socket.AF_INET, socket.IPPROTO_TCP, "tcp", "ipv4", {1}))

    def refuse(*_a):
        raise sockettable.NetlinkUnavailable("no sock_diag")

    monkeypatch.setattr(sockettable, "netlink_tables", refuse)
    me = os.getpid()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        found = sockettable.sockets_by_pid([me])[me]
        assert any(e.local_port == listener.getsockname()[1] for e in found)
        with pytest.raises(sockettable.NetlinkUnavailable):
            sockettable.sockets_by_pid([me], method="netlink")
    finally:
        listener.close()
