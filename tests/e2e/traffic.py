"""A traffic process for the end-to-end tests: moves known bytes, reports the truth.

Run as ``python traffic.py ROLE ...``. It binds or prepares its socket,
prints ``ready <port>`` and waits for ``go`` on stdin, so that the test can
attach procnetmon to its PID first. It then moves its bytes and prints one
JSON line with what its own socket calls returned (the truth procnetmon is
compared with), and waits for ``exit`` on stdin unless told to exit at once.

Roles:
  tcp-server ADDR          accept one connection; read --expect bytes, reply --reply bytes
  tcp-client ADDR PORT     connect; send --send bytes, read --expect bytes
  udp-server ADDR          recvfrom --count datagrams, answer each with --reply bytes (sendto)
  udp-client ADDR PORT     connect; send --count datagrams of --size bytes, read the answers

With --hold, TCP sockets stay open until ``exit``, so that they are live
connections when procnetmon looks.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import socket
import sys
import tempfile
import threading
import time

PR_SET_NAME = 15


def set_name(name: str) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def recv_exactly(sock: socket.socket, n: int) -> int:
    got = 0
    while got < n:
        chunk = sock.recv(min(65536, n - got))
        if not chunk:
            break
        got += len(chunk)
    return got


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
    threads = []
    totals = {"tcp_in": 0, "tcp_out": 0}
    lock = threading.Lock()

    def serve(conn):
        got = recv_exactly(conn, args.expect)
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
        sent = send_file(s, args.send) if args.sendfile else send_all(s, args.send)
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
    got = sent = 0
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
    s.connect((args.addr, args.port))
    s.settimeout(3.0)
    wait_for("go", announce_first=True)
    sent = got = 0
    for _ in range(args.count):
        sent += s.send(b"u" * args.size)
        if args.reply:
            try:
                got += len(s.recv(65536))
            except socket.timeout:
                pass
    result.update({"udp_in": got, "udp_out": sent})


def announce(port: int = 0) -> None:
    print(f"ready {port}", flush=True)


def wait_for(word: str, announce_first: bool = False) -> None:
    if announce_first:
        announce()
    line = sys.stdin.readline().strip()
    if line != word:
        raise SystemExit(f"expected {word!r} on stdin, got {line!r}")


ROLES = {"tcp-server": tcp_server, "tcp-client": tcp_client,
         "udp-server": udp_server, "udp-client": udp_client}


def main() -> None:
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
    args = p.parse_args()
    if args.name:
        set_name(args.name)
    result: dict = {"tcp_in": 0, "tcp_out": 0, "udp_in": 0, "udp_out": 0}
    held: list = []  # sockets kept open with --hold
    ROLES[args.role](args, result, held)
    print(json.dumps(result), flush=True)
    if not args.exit:
        sys.stdin.readline()


if __name__ == "__main__":
    main()
