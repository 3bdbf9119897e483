"""Filters on the remote end and the ports, in the kernel (--remote, --remote-port,
--local-port and their --exclude- forms).

Two peers on different subnets, traffic to both: a filter for one counts
exactly its bytes and nothing of the other's; for TCP (connected: the
socket's addresses) and unconnected UDP (one socket fed by both peers:
each datagram's own addresses), IPv4 and IPv6, payload and wire mode.
"""

from __future__ import annotations

import signal

import pytest
from harness import TrafficProcess, by_pid, measure_exchange, run_procnetmon, when_silent

from testbed.netns import link_stats

TCP_SEND, TCP_REPLY = 300_000, 70_000
UDP_COUNT, UDP_SIZE, UDP_REPLY = 20, 900, 120
# Bytes of the IP and UDP headers of one datagram, for wire mode.
UDP_HEADERS = {"ipv4": 28, "ipv6": 48}


def _addr(peer, family: str, side: str) -> str:
    return getattr(peer, f"{side}_{family[-2:]}")


def _tcp_to_both(peer, second_peer, family: str, *args: str):
    """A client on this host to a server in each peer: procnetmon's rows by
    client, and each client's truth, under ``args``."""
    procs = {}
    for name, p in (("a", peer), ("b", second_peer)):
        addr = _addr(p, family, "peer")
        server = TrafficProcess("tcp-server", addr, netns=p.netns, expect=TCP_SEND, reply=TCP_REPLY)
        procs[f"server_{name}"] = server
        procs[name] = TrafficProcess("tcp-client", addr, server.port, send=TCP_SEND, expect=TCP_REPLY)
    clients = {name: procs[name] for name in ("a", "b")}
    run, truth = measure_exchange(procs, "-t", "3s", "--json", *args,
                                  pids=[c.pid for c in clients.values()])
    rows = by_pid(run.json())
    return {name: rows.get(c.pid) for name, c in clients.items()}, truth, procs


def _bytes(row) -> tuple[int, int]:
    return (0, 0) if row is None else (row["bytes_in"], row["bytes_out"])


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_remote_counts_one_peer_exactly_and_nothing_of_the_other(peer, second_peer, family):
    rows, truth, _ = _tcp_to_both(peer, second_peer, family, "--remote", _addr(peer, family, "peer"))
    assert _bytes(rows["a"]) == (truth["a"]["tcp_in"], truth["a"]["tcp_out"]) == (TCP_REPLY, TCP_SEND)
    assert _bytes(rows["b"]) == (0, 0)


def test_exclude_remote_cidr_leaves_one_peer_out(peer, second_peer):
    net = ".".join(second_peer.peer_v4.split(".")[:3]) + ".0/24"
    rows, truth, _ = _tcp_to_both(peer, second_peer, "ipv4", "--exclude-remote", net)
    assert _bytes(rows["a"]) == (TCP_REPLY, TCP_SEND)
    assert _bytes(rows["b"]) == (0, 0)


def test_remote_port_picks_one_server(peer, second_peer):
    server_a = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=TCP_SEND, reply=TCP_REPLY)
    server_b = TrafficProcess("tcp-server", second_peer.peer_v4, netns=second_peer.netns, expect=TCP_SEND,
                              reply=TCP_REPLY)
    a = TrafficProcess("tcp-client", peer.peer_v4, server_a.port, send=TCP_SEND, expect=TCP_REPLY)
    b = TrafficProcess("tcp-client", second_peer.peer_v4, server_b.port, send=TCP_SEND, expect=TCP_REPLY)
    port = server_a.port
    low, high = max(1, port - 1), port
    extra = ["--remote-port", f"{low}-{high}"]
    if server_b.port in range(low, high + 1):
        extra += ["--exclude-remote-port", str(server_b.port)]
    run, _truth = measure_exchange({"sa": server_a, "sb": server_b, "a": a, "b": b}, "-t", "3s", "--json",
                                   *extra, pids=[a.pid, b.pid])
    rows = by_pid(run.json())
    assert _bytes(rows.get(a.pid)) == (TCP_REPLY, TCP_SEND)
    assert _bytes(rows.get(b.pid)) == (0, 0)


def test_local_port_counts_a_listeners_connections(peer, second_peer):
    """A server on this host, a client in each peer: --local-port of the
    server counts its accepted connection; --exclude-local-port none."""
    for args, counted in ((("--local-port",), True), (("--exclude-local-port",), False)):
        server = TrafficProcess("tcp-server", "0.0.0.0", expect=TCP_SEND, reply=TCP_REPLY)
        client = TrafficProcess("tcp-client", peer.host_v4, server.port, netns=peer.netns, send=TCP_SEND,
                                expect=TCP_REPLY)
        run, _ = measure_exchange({"s": server, "c": client}, "-t", "3s", "--json", args[0], str(server.port),
                                  pids=[server.pid])
        expected = (TCP_SEND, TCP_REPLY) if counted else (0, 0)
        assert _bytes(by_pid(run.json()).get(server.pid)) == expected, args


def _udp_from_both(peer, second_peer, family: str, *args: str):
    """One unconnected UDP server on this host, fed by a client in each peer
    (queued together before it reads), answering with sendto."""
    server = TrafficProcess("udp-server", "::" if family == "ipv6" else "0.0.0.0", count=2 * UDP_COUNT,
                            reply=UDP_REPLY, accept_delay=1.0)
    clients = [TrafficProcess("udp-client", _addr(p, family, "host"), server.port, unconnected=True,
                              count=UDP_COUNT, size=UDP_SIZE, netns=p.netns) for p in (peer, second_peer)]
    got: dict = {}

    def during():
        server.go()
        for c in clients:
            c.go()
        for c in clients:
            c.result()
        got["truth"] = server.result()
        # On a busy machine wire mode's count of the last replies was seen to
        # land a few milliseconds after the server said its sendto() calls were
        # done (why is not known yet): stop once the veths are silent.
        when_silent(lambda: [link_stats(p.host_if) for p in (peer, second_peer)])

    try:
        run = run_procnetmon("-p", str(server.pid), "-t", "120s", "--json", *args,
                             during=during, after_start=lambda p: p.send_signal(signal.SIGINT))
    finally:
        for p in [server, *clients]:
            p.finish()
    assert run.returncode == 0, run.stderr
    assert got["truth"]["udp_in"] == 2 * UDP_COUNT * UDP_SIZE, got["truth"]
    return by_pid(run.json()).get(server.pid)


@pytest.mark.parametrize("mode", ["payload", "wire"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_unconnected_udp_counts_each_datagram_by_its_peer(peer, second_peer, family, mode):
    row = _udp_from_both(peer, second_peer, family, "--mode", mode, "--remote", _addr(peer, family, "peer"))
    extra = UDP_HEADERS[family] if mode == "wire" else 0
    assert _bytes(row) == (UDP_COUNT * (UDP_SIZE + extra), UDP_COUNT * (UDP_REPLY + extra))


def test_unconnected_udp_excluded_peer(peer, second_peer):
    row = _udp_from_both(peer, second_peer, "ipv4", "--exclude-remote", second_peer.peer_v4)
    assert _bytes(row) == (UDP_COUNT * UDP_SIZE, UDP_COUNT * UDP_REPLY)


def test_wire_mode_tcp_remote(peer, second_peer):
    rows, _truth, _ = _tcp_to_both(peer, second_peer, "ipv4", "--mode", "wire", "--remote", peer.peer_v4)
    bytes_in, bytes_out = _bytes(rows["a"])
    # Wire bytes: the payload plus every packet's headers (and the handshake's).
    assert bytes_in > TCP_REPLY and bytes_out > TCP_SEND
    assert _bytes(rows["b"]) == (0, 0)


@pytest.mark.parametrize("mode", ["payload", "wire"])
def test_unconnected_udp_remote_ports_come_from_each_datagram(peer, second_peer, mode):
    # The peers' source ports are ephemeral: every port but 0 counts them
    # all, which only each datagram's own header can tell (the socket has
    # no remote port); excluding every port counts none.
    row = _udp_from_both(peer, second_peer, "ipv4", "--mode", mode, "--remote-port", "1-65535")
    extra = UDP_HEADERS["ipv4"] if mode == "wire" else 0
    assert _bytes(row) == (2 * UDP_COUNT * (UDP_SIZE + extra), 2 * UDP_COUNT * (UDP_REPLY + extra))
    row = _udp_from_both(peer, second_peer, "ipv4", "--mode", mode, "--exclude-remote-port", "1-65535")
    assert _bytes(row) == (0, 0)


def test_wire_mode_local_port_and_port_range(peer, second_peer):
    server = TrafficProcess("tcp-server", "0.0.0.0", expect=TCP_SEND, reply=TCP_REPLY)
    client = TrafficProcess("tcp-client", peer.host_v4, server.port, netns=peer.netns, send=TCP_SEND,
                            expect=TCP_REPLY)
    run, _ = measure_exchange({"s": server, "c": client}, "-t", "3s", "--json", "--mode", "wire",
                              "--local-port", f"{server.port - 1}-{server.port}", pids=[server.pid])
    bytes_in, bytes_out = _bytes(by_pid(run.json()).get(server.pid))
    assert bytes_in > TCP_SEND and bytes_out > TCP_REPLY


def test_serve_loads_the_filters_in_its_loader_child(peer, second_peer):
    """--serve compiles and fills the maps in a short-lived child and keeps
    only the descriptors (probes/handoff.py): the filters hold there too."""
    import subprocess
    import time

    from harness import procnetmon_cmd
    from prometheus_client.parser import text_string_to_metric_families
    from test_prometheus import http_get, stop, wait_until

    from testbed.netns import free_port

    servers = [TrafficProcess("tcp-server", p.peer_v4, netns=p.netns, expect=TCP_SEND, reply=TCP_REPLY)
               for p in (peer, second_peer)]
    clients = [TrafficProcess("tcp-client", p.peer_v4, s.port, send=TCP_SEND, expect=TCP_REPLY, name=name)
               for p, s, name in ((peer, servers[0], "pnmrfa"), (second_peer, servers[1], "pnmrfb"))]
    port = free_port()
    serve = subprocess.Popen(procnetmon_cmd("--serve", f"127.0.0.1:{port}", "--interval", "500ms",
                                            "-p", ",".join(str(c.pid) for c in clients),
                                            "--exclude-remote", second_peer.peer_v4),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: "procnetmon_last_sample_timestamp_seconds" in
                   http_get(f"http://127.0.0.1:{port}/metrics"), 60, "procnetmon --serve")
        for p in [*servers, *clients]:
            p.go()
        for p in [*servers, *clients]:
            p.result()

        def values():
            out = {}
            for f in text_string_to_metric_families(http_get(f"http://127.0.0.1:{port}/metrics")):
                for s in f.samples:
                    if s.name == "procnetmon_payload_bytes_total" and s.labels["protocol"] == "tcp":
                        out[(s.labels["name"], s.labels["direction"])] = s.value
            return out

        got = wait_until(lambda: (v := values()).get(("pnmrfa", "out"), 0) >= TCP_SEND and v, 20, "a's bytes")
        time.sleep(1.0)
        got = values()
        assert (got[("pnmrfa", "in")], got[("pnmrfa", "out")]) == (TCP_REPLY, TCP_SEND)
        assert got.get(("pnmrfb", "in"), 0) == got.get(("pnmrfb", "out"), 0) == 0
    finally:
        stop(serve)
        for p in [*servers, *clients]:
            p.finish()
    assert serve.returncode == 0, serve.stderr.read()
