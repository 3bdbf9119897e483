"""records.connections for sockets that the socket tables do not list (ping, raw, packet)."""

from procnetmon import records
from procnetmon.probes import SocketBytes


def _ping(pid: int, inode: int) -> SocketBytes:
    return SocketBytes(pid=pid, protocol="icmp", family="ipv4", local_addr="10.0.0.1", local_port=7,
                       remote_addr="0.0.0.0", remote_port=0, bytes_in=84, bytes_out=84, inode=inode, sock_id=inode)


def test_a_ping_socket_of_a_process_that_is_gone_is_closed_not_an_error():
    pid = 2 ** 22 + 12345  # above pid_max: no /proc/PID/fd
    (row,) = records.connections("summary", pid, [], [_ping(pid, 99)], {})
    assert (row.protocol, row.state, row.bytes_in, row.bytes_out) == ("icmp", "CLOSED", 84, 84)


def test_a_ping_socket_still_held_is_open(monkeypatch):
    monkeypatch.setattr(records.sockettable, "socket_inodes", lambda pid: {99})
    (row,) = records.connections("summary", 5, [], [_ping(5, 99)], {})
    assert row.state == "OPEN" and row.local == "10.0.0.1:7" and row.remote == ""
