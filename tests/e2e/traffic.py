"""A traffic process for the end-to-end tests: moves known bytes, reports the truth.

Run as ``python traffic.py ROLE ...``. It binds or prepares its socket,
prints ``ready <port>`` and waits for ``go`` on stdin, so that the test can
attach procnetmon to its PID first. It then moves its bytes and prints one
JSON line with what its own socket calls returned (the truth procnetmon is
compared with), and waits for ``exit`` on stdin unless told to exit at once.

Roles:
  tcp-server ADDR          accept one connection; read --expect bytes, reply --reply bytes
                           (--peek: each read is first peeked at with MSG_PEEK;
                           --splice-in: read with splice(2) into a pipe;
                           --reset: read nothing, close with a RST)
  tcp-client ADDR PORT     connect; send --send bytes, read --expect bytes
                           (--sendfile, --splice-out: send with sendfile(2) or splice(2)
                           from a pipe; --splice-in: read with splice(2) into a pipe)
  udp-server ADDR          recvfrom --count datagrams, answer each with --reply bytes (sendto)
                           (--mmsg: recvmmsg(2) and sendmmsg(2) instead; --accept-delay S:
                           read nothing for S seconds first)
  udp-client ADDR PORT     connect; send --count datagrams of --size bytes, read the answers
                           (--unconnected: sendto/recvfrom; --mmsg: sendmmsg/recvmmsg)
  fail ADDR PORT           socket calls that fail and move nothing: send on an
                           unconnected TCP or UDP socket, on a reset connection
                           (PORT: a tcp-server --reset), recv that would block
  tcp-serve-many ADDR      --connections times, one after the other: accept, read to EOF,
                           reply --reply bytes, close
  many-clients ADDR PORT   --connections short-lived sockets of --protocol, one after the
                           other, the i-th sending --send + i bytes and reading the reply
                           (TCP: until EOF; UDP: one datagram); --same-port: UDP sockets
                           all bound to one local port in turn

  proto-server ADDR        --kind K: answer --count messages of a protocol other than TCP
                           and UDP with --reply bytes each (udplite, raw: IP protocol 253,
                           sctp, mptcp: one connection, like tcp-server; packet-raw,
                           packet-dgram: ADDR is an interface, frames of ethertype 0x88b5
                           answered to their sender's MAC)
  proto-client ADDR PORT   --kind K: send --count messages of --size bytes and read each
                           answer (udplite, raw, sctp, mptcp; ping: ICMP echo through a
                           ping socket, icmp-raw: through a raw ICMP socket, the peer's
                           kernel answering; packet-raw, packet-dgram: ADDR is
                           IFACE@MAC, the peer's MAC). Reports "in" and "out": what
                           its calls returned

TCP health (test_tcp_health.py):
  tcp-sink ADDR            accept one connection, send one byte ("accepted"), read to EOF,
                           answer one byte, hold the connection until ``exit``
  tcp-bulk ADDR PORT       connect, wait for the sink's byte, send --send bytes, shut down
                           writing, wait for the answer (every byte arrived); report the
                           connection's own tcp_info (retransmitted segments, srtt) and hold it
  connects ADDR            one connect() to each of --ports (comma-separated, 0: skipped),
                           with TCP_SYNCNT 1 (a blackholed one times out in 3 s); report each
                           outcome (errno name, or "ok" with the seconds it took)
  udp-sink ADDR            a UDP socket with the smallest receive buffer, never read
  udp-flood ADDR PORT      send --count datagrams of --size bytes, read nothing

With --hold, TCP sockets stay open until ``exit``, so that they are live
connections when procnetmon looks.

``python traffic.py zygote FD`` forks such processes on request instead
(see zygote()): a VM without KVM takes seconds to start a Python, a fork
takes milliseconds.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import threading
import time

PR_SET_NAME = 15


def set_name(name: str) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def recv_exactly(sock: socket.socket, n: int, peek: bool = False) -> int:
    got = 0
    while got < n:
        if peek:
            # What MSG_PEEK returns stays queued: it must not be counted.
            if not sock.recv(min(65536, n - got), socket.MSG_PEEK):
                break
        chunk = sock.recv(min(65536, n - got))
        if not chunk:
            break
        got += len(chunk)
    return got


def splice_in(sock: socket.socket, n: int) -> int:
    """Read n bytes out of the socket with splice(2) into a pipe, then drain the pipe."""
    r, w = os.pipe()
    got = 0
    try:
        while got < n:
            moved = os.splice(sock.fileno(), w, min(65536, n - got))
            if moved == 0:
                break
            got += moved
            left = moved
            while left:
                left -= len(os.read(r, left))
    finally:
        os.close(r)
        os.close(w)
    return got


def splice_out(sock: socket.socket, n: int) -> int:
    """Send n bytes into the socket with splice(2) from a pipe filled with write(2)."""
    r, w = os.pipe()
    sent = 0
    try:
        while sent < n:
            chunk = min(16384, n - sent)  # fits an empty pipe: the write never blocks
            os.write(w, b"s" * chunk)
            left = chunk
            while left:
                moved = os.splice(r, sock.fileno(), left)
                left -= moved
                sent += moved
    finally:
        os.close(r)
        os.close(w)
    return sent


MSG_WAITFORONE = 0x10000  # recvmmsg: block for the first datagram only


def blocking_with_timeout(sock: socket.socket, seconds: int) -> None:
    """A blocking socket whose reads give up after ``seconds`` (EAGAIN), for calls made through ctypes:
    Python's settimeout() makes the descriptor non-blocking."""
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, 0))


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


class Mmsg:
    """sendmmsg(2)/recvmmsg(2) through ctypes (Python's socket module has neither)."""

    def __init__(self, batch: int, size: int):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.bufs = [ctypes.create_string_buffer(size) for _ in range(batch)]
        self.names = [ctypes.create_string_buffer(128) for _ in range(batch)]
        self.iovs = (_Iovec * batch)()
        self.msgs = (_Mmsghdr * batch)()
        for i in range(batch):
            self.iovs[i].iov_base = ctypes.cast(self.bufs[i], ctypes.c_void_p)
            self.iovs[i].iov_len = size
            self.msgs[i].msg_hdr.msg_iov = ctypes.pointer(self.iovs[i])
            self.msgs[i].msg_hdr.msg_iovlen = 1

    def _check(self, n: int, what: str) -> int:
        if n < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")
        return n

    def send(self, sock: socket.socket, sizes: list[int]) -> int:
        """Send len(sizes) datagrams (to the connected peer) in one call; the bytes sent."""
        for i, size in enumerate(sizes):
            self.iovs[i].iov_len = size
            self.msgs[i].msg_hdr.msg_name = None
            self.msgs[i].msg_hdr.msg_namelen = 0
        n = self._check(self.libc.sendmmsg(sock.fileno(), self.msgs, len(sizes), 0), "sendmmsg")
        return sum(self.msgs[i].msg_len for i in range(n))

    def recv(self, sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
        """Receive up to ``count`` datagrams in one call: (length, sender address) of each."""
        for i in range(count):
            self.iovs[i].iov_len = len(self.bufs[i])
            self.msgs[i].msg_hdr.msg_name = ctypes.cast(self.names[i], ctypes.c_void_p)
            self.msgs[i].msg_hdr.msg_namelen = 128
        n = self._check(self.libc.recvmmsg(sock.fileno(), self.msgs, count, MSG_WAITFORONE, None), "recvmmsg")
        return [(self.msgs[i].msg_len, self.names[i].raw[:self.msgs[i].msg_hdr.msg_namelen]) for i in range(n)]

    def send_to(self, sock: socket.socket, sizes_and_names: list[tuple[int, bytes]]) -> int:
        for i, (size, name) in enumerate(sizes_and_names):
            self.iovs[i].iov_len = size
            ctypes.memmove(self.names[i], name, len(name))
            self.msgs[i].msg_hdr.msg_name = ctypes.cast(self.names[i], ctypes.c_void_p)
            self.msgs[i].msg_hdr.msg_namelen = len(name)
        n = self._check(self.libc.sendmmsg(sock.fileno(), self.msgs, len(sizes_and_names), 0), "sendmmsg")
        return sum(self.msgs[i].msg_len for i in range(n))


def send_all(sock: socket.socket, n: int) -> int:
    """Send n bytes, counting what each send() returned."""
    sent = 0
    block = b"x" * 65536
    while sent < n:
        sent += sock.send(block[: min(65536, n - sent)])
    return sent


def send_file(sock: socket.socket, n: int) -> int:
    """Send n bytes from a file with sendfile(2): the kernel moves them, no send() call."""
    with tempfile.TemporaryFile() as f:
        f.write(b"f" * n)
        f.flush()
        f.seek(0)
        return sock.sendfile(f)


def tcp_server(args, result: dict, held: list) -> None:
    fam = family_of(args.addr)
    srv = socket.socket(fam, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.addr, 0))
    srv.listen(8)
    announce(srv.getsockname()[1])
    wait_for("go")
    if args.accept_delay:
        # The client's bytes arrive and queue on the not yet accepted socket.
        time.sleep(args.accept_delay)
    conns = []
    if args.reset:
        for _ in range(args.connections):
            conn, _ = srv.accept()
            conns.append(conn)
        for conn in conns:
            # Linger 0: close() sends a RST, and the peer's next calls fail.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        return
    threads = []
    totals = {"tcp_in": 0, "tcp_out": 0}
    lock = threading.Lock()

    def serve(conn):
        if args.splice_in:
            got = splice_in(conn, args.expect)
        else:
            got = recv_exactly(conn, args.expect, peek=args.peek)
        sent = send_all(conn, args.reply) if args.reply else 0
        with lock:
            totals["tcp_in"] += got
            totals["tcp_out"] += sent

    # Each connection is served as it comes: clients that run one after
    # another each wait for their reply.
    for _ in range(args.connections):
        conn, _ = srv.accept()
        conns.append(conn)
        t = threading.Thread(target=serve, args=(conn,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    result.update(totals)
    if args.hold:
        held.extend([srv] + conns)
        return
    for conn in conns:
        conn.close()


def tcp_client(args, result: dict, held: list) -> None:
    fam = family_of(args.addr)
    wait_for("go", announce_first=True)
    totals = {"tcp_in": 0, "tcp_out": 0}
    lock = threading.Lock()

    def one_connection():
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.connect((args.addr, args.port))
        if args.sendfile:
            sent = send_file(s, args.send)
        elif args.splice_out:
            sent = splice_out(s, args.send)
        else:
            sent = send_all(s, args.send)
        if args.splice_in:
            got = splice_in(s, args.expect)
        else:
            got = recv_exactly(s, args.expect) if args.expect else 0
        with lock:
            totals["tcp_out"] += sent
            totals["tcp_in"] += got
        if args.hold:
            held.append(s)
        else:
            s.close()

    threads = [threading.Thread(target=one_connection) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.update(totals)


def udp_server(args, result: dict, held: list) -> None:
    fam = family_of(args.addr)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((args.addr, 0))
    s.settimeout(3.0)
    announce(s.getsockname()[1])
    wait_for("go")
    if args.accept_delay:
        time.sleep(args.accept_delay)  # let datagrams of several senders queue up first
    got = sent = 0
    if args.mmsg:
        blocking_with_timeout(s, 3)
        mm = Mmsg(8, 65536)
        while got < args.count * args.size:
            try:
                batch = mm.recv(s, 8)
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    raise
                break
            got += sum(length for length, _ in batch)
            if args.reply:
                sent += mm.send_to(s, [(args.reply, name) for _, name in batch])
        result.update({"udp_in": got, "udp_out": sent})
        return
    for _ in range(args.count):
        try:
            data, peer = s.recvfrom(65536)
        except socket.timeout:
            break
        got += len(data)
        if args.reply:
            sent += s.sendto(b"r" * args.reply, peer)
    result.update({"udp_in": got, "udp_out": sent})


def udp_client(args, result: dict, held: list) -> None:
    fam = family_of(args.addr)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if not args.unconnected:
        s.connect((args.addr, args.port))
    s.settimeout(3.0)
    wait_for("go", announce_first=True)
    sent = got = 0
    if args.mmsg:
        blocking_with_timeout(s, 3)
        mm = Mmsg(8, max(args.size, args.reply, 1))
        left = args.count
        while left:
            batch = min(8, left)
            sent += mm.send(s, [args.size] * batch)
            left -= batch
            want = batch if args.reply else 0
            while want:
                try:
                    replies = mm.recv(s, want)
                except OSError as e:
                    if e.errno != errno.EAGAIN:
                        raise
                    break
                got += sum(length for length, _ in replies)
                want -= len(replies)
        result.update({"udp_in": got, "udp_out": sent})
        return
    if args.unconnected:
        for _ in range(args.count):
            sent += s.sendto(b"u" * args.size, (args.addr, args.port))
            if args.reply:
                try:
                    got += len(s.recvfrom(65536)[0])
                except socket.timeout:
                    pass
        result.update({"udp_in": got, "udp_out": sent})
        return
    for _ in range(args.count):
        sent += s.send(b"u" * args.size)
        if args.reply:
            try:
                got += len(s.recv(65536))
            except socket.timeout:
                pass
    result.update({"udp_in": got, "udp_out": sent})


def fail(args, result: dict, held: list) -> None:
    """Calls that fail move nothing; whatever succeeds by surprise is counted as truth."""
    fam = family_of(args.addr)
    wait_for("go", announce_first=True)
    failures = []

    def attempt(what, call, proto):
        try:
            n = call()
        except OSError as e:
            failures.append(f"{what}: {errno.errorcode.get(e.errno, e.errno)}")
            return
        result[proto] += n if isinstance(n, int) else len(n)

    udp = socket.socket(fam, socket.SOCK_DGRAM)
    attempt("udp send unconnected", lambda: udp.send(b"x" * 1000), "udp_out")
    udp.setblocking(False)
    attempt("udp recv empty", lambda: udp.recv(1000), "udp_in")
    tcp = socket.socket(fam, socket.SOCK_STREAM)
    attempt("tcp send unconnected", lambda: tcp.send(b"x" * 1000, socket.MSG_NOSIGNAL), "tcp_out")
    reset = socket.socket(fam, socket.SOCK_STREAM)
    try:
        reset.connect((args.addr, args.port))
    except OSError as e:
        # The server's RST can beat the end of connect() on a slow machine:
        # that is a failed call too.
        failures.append(f"tcp connect reset: {errno.errorcode.get(e.errno, e.errno)}")
    reset.settimeout(5.0)
    attempt("tcp recv reset", lambda: reset.recv(1000), "tcp_in")
    for _ in range(3):
        attempt("tcp send reset", lambda: reset.send(b"x" * 1000, socket.MSG_NOSIGNAL), "tcp_out")
    result["failures"] = failures


def endpoint(sockaddr) -> str:
    addr, port = sockaddr[0], sockaddr[1]
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def recv_to_eof(sock: socket.socket) -> int:
    got = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += len(chunk)


def tcp_serve_many(args, result: dict, held: list) -> None:
    """Each connection's truth (addresses, bytes) goes into result["connections"]."""
    fam = family_of(args.addr)
    srv = socket.socket(fam, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.addr, 0))
    srv.listen(64)
    srv.settimeout(10.0)
    announce(srv.getsockname()[1])
    wait_for("go")
    conns = []
    for _ in range(args.connections):
        conn, _ = srv.accept()
        local, remote = endpoint(conn.getsockname()), endpoint(conn.getpeername())
        got = recv_to_eof(conn)
        sent = send_all(conn, args.reply) if args.reply else 0
        conns.append({"protocol": "tcp", "local": local, "remote": remote, "in": got, "out": sent})
        conn.close()
    result.update({"tcp_in": sum(c["in"] for c in conns), "tcp_out": sum(c["out"] for c in conns),
                   "connections": conns})
    held.append(srv)


def many_clients(args, result: dict, held: list) -> None:
    fam = family_of(args.addr)
    kind = socket.SOCK_STREAM if args.protocol == "tcp" else socket.SOCK_DGRAM
    wait_for("go", announce_first=True)
    conns = []
    port = 0
    for i in range(args.connections):
        s = socket.socket(fam, kind)
        if args.same_port:
            s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
            port = s.getsockname()[1]
        s.settimeout(3.0)
        s.connect((args.addr, args.port))
        local, remote = endpoint(s.getsockname()), endpoint(s.getpeername())
        if kind == socket.SOCK_STREAM:
            sent = send_all(s, args.send + i)
            s.shutdown(socket.SHUT_WR)
            got = recv_to_eof(s)
        else:
            sent = s.send(b"m" * (args.send + i))
            try:
                got = len(s.recv(65536))
            except socket.timeout:
                got = 0
        conns.append({"protocol": args.protocol, "local": local, "remote": remote, "in": got, "out": sent})
        s.close()
    key = args.protocol
    result.update({f"{key}_in": sum(c["in"] for c in conns), f"{key}_out": sum(c["out"] for c in conns),
                   "connections": conns})


IPPROTO_UDPLITE, IPPROTO_SCTP, IPPROTO_MPTCP, IPPROTO_TEST = 136, 132, 262, 253
ETH_P_TEST = 0x88B5  # IEEE local experimental ethertype: no stack answers it


def _inet_socket(kind: str, addr: str) -> socket.socket:
    family = family_of(addr)
    if kind == "udplite":
        return socket.socket(family, socket.SOCK_DGRAM, IPPROTO_UDPLITE)
    if kind == "raw":
        return socket.socket(family, socket.SOCK_RAW, IPPROTO_TEST)
    if kind == "sctp":
        return socket.socket(family, socket.SOCK_STREAM, IPPROTO_SCTP)
    if kind == "mptcp":
        return socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP)
    if kind == "ping":
        return socket.socket(family, socket.SOCK_DGRAM,
                             socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6)
    if kind == "icmp-raw":
        return socket.socket(family, socket.SOCK_RAW,
                             socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6)
    raise SystemExit(f"unknown kind {kind!r}")


def _packet_socket(kind: str, ifname: str) -> socket.socket:
    kind_type = socket.SOCK_RAW if kind == "packet-raw" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_PACKET, kind_type, socket.htons(ETH_P_TEST))
    sock.bind((ifname, ETH_P_TEST))
    return sock


def _frame(sock: socket.socket, kind: str, dst_mac: bytes, size: int) -> tuple[bytes, tuple]:
    """What to send for a packet socket: a whole frame (SOCK_RAW) or a payload (SOCK_DGRAM)."""
    ifname = sock.getsockname()[0]
    if kind == "packet-raw":
        src_mac = sock.getsockname()[4]
        header = dst_mac + src_mac + struct.pack("!H", ETH_P_TEST)
        return header + b"f" * max(size - len(header), 0), (ifname, ETH_P_TEST)
    return b"d" * size, (ifname, ETH_P_TEST, 0, 0, dst_mac)


def proto_server(args, result: dict, held: list) -> None:
    kind = args.kind
    if kind.startswith("packet"):
        sock = _packet_socket(kind, args.addr)
        wait_for("go", announce_first=True)
        for _ in range(args.count):
            data, sender = sock.recvfrom(65536)
            result["in"] += len(data)
            reply, to = _frame(sock, kind, sender[4], args.reply)
            result["out"] += sock.sendto(reply, to)
        return
    sock = _inet_socket(kind, args.addr)
    if kind in ("sctp", "mptcp"):
        sock.bind((args.addr, 0))
        sock.listen(1)
        announce(sock.getsockname()[1])
        wait_for("go")
        conn, _ = sock.accept()
        held.append(conn)
        for _ in range(args.count):
            result["in"] += recv_exactly(conn, args.expect)
            result["out"] += send_all(conn, args.reply)
        return
    sock.bind((args.addr, 0))
    announce(sock.getsockname()[1] if kind != "raw" else 0)
    wait_for("go")
    for _ in range(args.count):
        data, sender = sock.recvfrom(65536)
        result["in"] += len(data)
        result["out"] += sock.sendto(b"r" * args.reply, sender)


def proto_client(args, result: dict, held: list) -> None:
    kind = args.kind
    if kind.startswith("packet"):
        ifname, mac = args.addr.split("@")
        sock = _packet_socket(kind, ifname)
        held.append(sock)  # open until exit: a live socket when procnetmon looks
        dst = bytes.fromhex(mac.replace(":", ""))
        wait_for("go", announce_first=True)
        for _ in range(args.count):
            frame, to = _frame(sock, kind, dst, args.size)
            result["out"] += sock.sendto(frame, to)
            result["in"] += len(sock.recv(65536))
        return
    sock = _inet_socket(kind, args.addr)
    held.append(sock)
    sock.settimeout(10)
    if kind in ("sctp", "mptcp"):
        wait_for("go", announce_first=True)
        sock.connect((args.addr, args.port))
        held.append(sock)
        for _ in range(args.count):
            result["out"] += send_all(sock, args.size)
            result["in"] += recv_exactly(sock, args.expect)
        return
    wait_for("go", announce_first=True)
    for seq in range(args.count):
        if kind in ("ping", "icmp-raw"):
            v6 = family_of(args.addr) == socket.AF_INET6
            header = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 0x1234, seq)
            payload = header + b"p" * max(args.size - len(header), 0)
            if kind == "icmp-raw" and not v6:  # the raw socket sends the checksum we give
                payload = header[:2] + struct.pack("!H", _checksum(payload)) + payload[4:]
        else:
            payload = b"q" * args.size
        result["out"] += sock.sendto(payload, (args.addr, args.port))
        while True:  # a raw ICMP socket also sees its own requests on some paths: read to the answer
            data = sock.recv(65536)
            result["in"] += len(data)
            if kind != "icmp-raw" or _is_echo_reply(data, family_of(args.addr)):
                break


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _is_echo_reply(data: bytes, family: int) -> bool:
    if family == socket.AF_INET6:
        return data[:1] == bytes([129])
    return len(data) > 20 and data[(data[0] & 0xF) * 4] == 0


TCP_INFO_TOTAL_RETRANS = 100  # struct tcp_info: tcpi_total_retrans (u32)
TCP_INFO_RTT = 68  # tcpi_rtt, microseconds (u32)


def tcp_info_figures(sock: socket.socket) -> dict:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    (total_retrans,) = struct.unpack_from("I", info, TCP_INFO_TOTAL_RETRANS)
    (rtt,) = struct.unpack_from("I", info, TCP_INFO_RTT)
    return {"total_retrans": total_retrans, "rtt_us": rtt}


def tcp_sink(args, result: dict, held: list) -> None:
    srv = socket.socket(family_of(args.addr), socket.SOCK_STREAM)
    srv.bind((args.addr, 0))
    srv.listen(1)
    announce(srv.getsockname()[1])
    wait_for("go")
    conn, _ = srv.accept()
    conn.sendall(b"a")  # accepted: its owner is known before a data segment arrives
    got = 0
    while chunk := conn.recv(1 << 16):
        got += len(chunk)
    conn.sendall(b"d")
    result.update(tcp_in=got, tcp_out=2)
    held.extend([srv, conn])


def tcp_bulk(args, result: dict, held: list) -> None:
    wait_for("go", announce_first=True)
    s = socket.socket(family_of(args.addr), socket.SOCK_STREAM)
    s.connect((args.addr, args.port))
    recv_exactly(s, 1)
    sent = send_all(s, args.send)
    s.shutdown(socket.SHUT_WR)
    recv_exactly(s, 1)
    result.update(tcp_out=sent, tcp_in=2, local_port=s.getsockname()[1], **tcp_info_figures(s))
    held.append(s)


def connects(args, result: dict, held: list) -> None:
    wait_for("go", announce_first=True)
    outcomes = []
    for port in (int(p) for p in args.ports.split(",")):
        if not port:
            continue
        s = socket.socket(family_of(args.addr), socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)
        started = time.perf_counter()
        try:
            s.connect((args.addr, port))
            outcomes.append(["ok", time.perf_counter() - started])
            held.append(s)
        except OSError as e:
            outcomes.append([errno.errorcode.get(e.errno, str(e.errno)), time.perf_counter() - started])
            s.close()
    result["outcomes"] = outcomes


def udp_sink(args, result: dict, held: list) -> None:
    s = socket.socket(family_of(args.addr), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
    s.bind((args.addr, 0))
    announce(s.getsockname()[1])
    wait_for("go")
    held.append(s)


def udp_flood(args, result: dict, held: list) -> None:
    wait_for("go", announce_first=True)
    s = socket.socket(family_of(args.addr), socket.SOCK_DGRAM)
    sent = 0
    for _ in range(args.count):
        sent += s.sendto(b"u" * args.size, (args.addr, args.port))
    result.update(udp_out=sent)
    s.close()


def announce(port: int = 0) -> None:
    print(f"ready {port}", flush=True)


def wait_for(word: str, announce_first: bool = False) -> None:
    if announce_first:
        announce()
    line = sys.stdin.readline().strip()
    if line != word:
        raise SystemExit(f"expected {word!r} on stdin, got {line!r}")


ROLES = {"tcp-server": tcp_server, "tcp-client": tcp_client,
         "udp-server": udp_server, "udp-client": udp_client, "fail": fail,
         "tcp-serve-many": tcp_serve_many, "many-clients": many_clients,
         "proto-server": proto_server, "proto-client": proto_client,
         "tcp-sink": tcp_sink, "tcp-bulk": tcp_bulk, "connects": connects, "udp-sink": udp_sink,
         "udp-flood": udp_flood}


CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move this process into the named network namespace, as ``ip netns exec`` would."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def zygote(ctl_fd: int) -> None:
    """Fork a traffic process per request on the unix socket ``ctl_fd``.

    A request is a JSON object {"argv": [...], "netns": name or null} with
    two descriptors, the child's stdin and stdout; the answer is its PID.
    The child is a process of its own (its own PID, as procnetmon needs),
    reaped by the kernel. The zygote ends when the socket closes.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    ctl = socket.socket(fileno=ctl_fd)
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(ctl, 65536, 2)
        if not msg:
            return
        request = json.loads(msg)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ctl.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.dup2(fds[0], 0)
                os.dup2(fds[1], 1)
                for fd in fds:
                    os.close(fd)
                sys.stdin = open(0, "r", closefd=False)
                sys.stdout = open(1, "w", closefd=False)
                if request.get("netns"):
                    enter_netns(request["netns"])
                main(request["argv"])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
                if not isinstance(e.code, int) and e.code:
                    print(e.code, file=sys.stderr)
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                except OSError:
                    pass
                os._exit(code)
        for fd in fds:
            os.close(fd)
        ctl.send(f"{pid}".encode())


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=sorted(ROLES))
    p.add_argument("addr")
    p.add_argument("port", type=int, nargs="?", default=0)
    p.add_argument("--name", default="")
    p.add_argument("--send", type=int, default=0)
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--reply", type=int, default=0)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--size", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--accept-delay", type=float, default=0.0)
    p.add_argument("--exit", action="store_true", help="exit right after reporting")
    p.add_argument("--hold", action="store_true", help="keep the TCP sockets open until told to exit")
    p.add_argument("--sendfile", action="store_true", help="tcp-client: send with sendfile(2)")
    p.add_argument("--splice-out", action="store_true", help="tcp-client: send with splice(2) from a pipe")
    p.add_argument("--splice-in", action="store_true", help="TCP: read with splice(2) into a pipe")
    p.add_argument("--peek", action="store_true", help="tcp-server: MSG_PEEK before every read")
    p.add_argument("--reset", action="store_true", help="tcp-server: close each connection with a RST")
    p.add_argument("--unconnected", action="store_true", help="udp-client: sendto/recvfrom, no connect")
    p.add_argument("--mmsg", action="store_true", help="udp-*: sendmmsg/recvmmsg")
    p.add_argument("--protocol", choices=("tcp", "udp"), default="tcp", help="many-clients: which sockets")
    p.add_argument("--same-port", action="store_true", help="many-clients: one local port for every UDP socket")
    p.add_argument("--kind", default="", help="proto-*: which protocol (see the roles above)")
    p.add_argument("--ports", default="", help="connects: the ports to connect to, comma-separated")
    args = p.parse_args(argv)
    if args.name:
        set_name(args.name)
    result: dict = {"tcp_in": 0, "tcp_out": 0, "udp_in": 0, "udp_out": 0}
    if args.role.startswith("proto-"):
        result.update({"in": 0, "out": 0})  # what the calls of another protocol returned
    held: list = []  # sockets kept open with --hold
    ROLES[args.role](args, result, held)
    print(json.dumps(result), flush=True)
    if not args.exit:
        sys.stdin.readline()


if __name__ == "__main__":
    if sys.argv[1:2] == ["zygote"]:
        zygote(int(sys.argv[2]))
    else:
        main()
