"""Every protocol a process can use, counted per process in both modes.

A client on this host talks to a peer namespace over a veth pair with ICMP
(ping sockets and raw ICMP sockets), a raw IP protocol (253), UDP-Lite,
SCTP, MPTCP and AF_PACKET frames (SOCK_RAW and SOCK_DGRAM). Payload mode
must equal what the client's own calls returned; wire mode what the host's
veth counted (IP bytes; for AF_PACKET the frames as written). Where this
kernel lacks a protocol, the test skips and names the option.
"""

from __future__ import annotations

import errno
import os
import signal
import socket

import pytest
from harness import TrafficProcess, by_pid, ip_bytes, mac_of, run_procnetmon, when_silent

from testbed.netns import link_stats, sh

# kind -> (protocol class for IPv4, for IPv6, a server process needed, families)
KINDS = {
    "ping": ("icmp", "icmpv6", False, ("ipv4", "ipv6")),
    "icmp-raw": ("icmp", "icmpv6", False, ("ipv4", "ipv6")),
    "raw": ("raw", "raw", True, ("ipv4", "ipv6")),
    "udplite": ("udplite", "udplite", True, ("ipv4", "ipv6")),
    "sctp": ("sctp", "sctp", True, ("ipv4",)),
    "mptcp": ("mptcp", "mptcp", True, ("ipv4",)),
    "packet-raw": ("packet", "packet", True, ("link",)),
    "packet-dgram": ("packet", "packet", True, ("link",)),
}
MISSING = {"sctp": "CONFIG_IP_SCTP", "mptcp": "CONFIG_MPTCP", "udplite": "CONFIG_IPV6 (UDP-Lite over IPv6)"}
COUNT, SIZE, REPLY = 20, 300, 200
STRAY = 300  # bytes of a packet or two a kernel may send of its own (MLD, neighbour discovery)

CASES = [(kind, fam) for kind, spec in KINDS.items() for fam in spec[3]]


def _supported(kind: str, family: str) -> None:
    """Skip, naming the kernel option, where this kernel cannot open the socket."""
    if kind.startswith("packet"):
        return
    af = socket.AF_INET6 if family == "ipv6" else socket.AF_INET
    proto = {"sctp": 132, "mptcp": 262, "udplite": 136, "raw": 253}.get(kind)
    if proto is None:
        return
    kind_type = socket.SOCK_RAW if kind == "raw" else socket.SOCK_DGRAM if kind == "udplite" else socket.SOCK_STREAM
    try:
        socket.socket(af, kind_type, proto).close()
    except OSError as e:
        if e.errno in (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT, errno.ENOPROTOOPT):
            pytest.skip(f"this kernel has no {kind} sockets ({MISSING.get(kind, kind)} is not set)")
        raise


@pytest.fixture
def ping_sockets():
    """Ping sockets are open to the groups of net.ipv4.ping_group_range, none by default."""
    before = sh("sysctl", "-n", "net.ipv4.ping_group_range").split()
    sh("sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647")
    yield
    sh("sysctl", "-q", "-w", f"net.ipv4.ping_group_range={before[0]} {before[1]}")


def _start(kind: str, family: str, peer):
    """The peer's server (or None) and the host's client, both ready."""
    server = None
    if kind.startswith("packet"):
        server = TrafficProcess("proto-server", peer.peer_if, kind=kind, count=COUNT, reply=REPLY,
                                netns=peer.netns)
        client = TrafficProcess("proto-client", f"{peer.host_if}@{mac_of(peer.peer_if, peer.netns)}",
                                kind=kind, count=COUNT, size=SIZE)
        return server, client
    addr = peer.peer_v6 if family == "ipv6" else peer.peer_v4
    port = 0
    if KINDS[kind][2]:
        server = TrafficProcess("proto-server", addr, kind=kind, count=COUNT, reply=REPLY,
                                expect=SIZE, netns=peer.netns)
        port = server.port
    client = TrafficProcess("proto-client", addr, port, kind=kind, count=COUNT, size=SIZE, expect=REPLY)
    return server, client


def _exchange(kind: str, family: str, peer, *args: str):
    """procnetmon on the client while it moves its bytes: (document, client truth, veth IP bytes, frames)."""
    server, client = _start(kind, family, peer)
    got: dict = {}

    def during():
        got["before"] = link_stats(peer.host_if)
        if server:
            server.go()
        client.go()
        got["truth"] = client.result()
        if server:
            server.result()
        got["after"] = when_silent(lambda: link_stats(peer.host_if))

    try:
        run = run_procnetmon("-p", str(client.pid), "-t", "120s", "--json", *args,
                             during=during, after_start=lambda p: p.send_signal(signal.SIGINT))
    finally:
        for p in (client, server):
            if p:
                p.finish()
    assert run.returncode == 0, run.stderr
    before, after = got["before"], got["after"]
    frames = {"out": after["tx_bytes"] - before["tx_bytes"], "in": after["rx_bytes"] - before["rx_bytes"]}
    ip = {"out": ip_bytes(before, after, "tx"), "in": ip_bytes(before, after, "rx")}
    return run.json(), client.pid, got["truth"], ip, frames


def _class_of(kind: str, family: str) -> str:
    return KINDS[kind][1] if family == "ipv6" else KINDS[kind][0]


@pytest.mark.parametrize("kind,family", CASES)
def test_payload_counts_each_protocol_as_its_calls_returned(peer, ping_sockets, kind, family):
    _supported(kind, family)
    doc, pid, truth, _ip, _frames = _exchange(kind, family, peer, "-i", peer.host_if)
    assert truth["out"] > 0 and truth["in"] > 0, truth
    row = by_pid(doc)[pid]
    cls = _class_of(kind, family)
    assert row["protocols"] == {cls: {"bytes_in": truth["in"], "bytes_out": truth["out"]}}
    assert (row["bytes_in"], row["bytes_out"]) == (truth["in"], truth["out"])
    assert row["tcp"] == row["udp"] == {"bytes_in": 0, "bytes_out": 0}


@pytest.mark.parametrize("kind,family", CASES)
def test_wire_counts_each_protocol_as_the_veth_did(peer, ping_sockets, kind, family):
    _supported(kind, family)
    doc, pid, truth, ip, frames = _exchange(kind, family, peer, "--mode", "wire", "-i", peer.host_if)
    row = by_pid(doc)[pid]
    cls = _class_of(kind, family)
    counted = row["protocols"].get(cls)
    assert counted is not None, row["protocols"]
    assert (row["bytes_in"], row["bytes_out"]) == (counted["bytes_in"], counted["bytes_out"])
    # AF_PACKET frames pass no IP layer: what the socket wrote is the frame
    # (SOCK_DGRAM writes only the payload, the kernel adds the link header).
    if kind == "packet-raw":
        assert counted == {"bytes_in": truth["in"], "bytes_out": truth["out"]}
        # The veth's frames may include one of the kernel's own (an MLD report).
        assert counted["bytes_out"] <= frames["out"] <= counted["bytes_out"] + STRAY, (counted, frames)
        veth_in = frames["in"]
    elif kind == "packet-dgram":
        assert counted == {"bytes_in": truth["in"], "bytes_out": truth["out"]}
        return
    else:
        veth_out, veth_in = ip["out"], ip["in"]
        assert truth["out"] <= counted["bytes_out"] <= veth_out <= counted["bytes_out"] + STRAY, (counted, ip)
    # The veth may also carry a packet of a kernel's own, no process's
    # (an MLD report as an IPv6 address joins its groups).
    assert truth["in"] <= counted["bytes_in"] <= veth_in <= counted["bytes_in"] + STRAY, (counted, veth_in)


def test_protocol_filter_counts_only_what_it_names(peer, ping_sockets):
    """--protocol is decided in the kernel: a ping counted under icmp,
    nothing under --protocol tcp,udp."""
    doc, pid, truth, _ip, _frames = _exchange("ping", "ipv4", peer, "--protocol", "icmp")
    assert by_pid(doc)[pid]["protocols"] == {"icmp": {"bytes_in": truth["in"], "bytes_out": truth["out"]}}
    doc, pid, truth, _ip, _frames = _exchange("ping", "ipv4", peer, "--protocol", "tcp,udp")
    assert pid not in by_pid(doc) or by_pid(doc)[pid]["bytes_out"] == 0


def test_local_ipc_is_not_network_traffic():
    """AF_UNIX and netlink move bytes through socket calls too; none is counted."""
    def during():
        a, b = socket.socketpair()
        for _ in range(50):
            a.send(b"u" * 1000)
            b.recv(2000)
        a.close()
        b.close()

    run = run_procnetmon("-p", str(os.getpid()), "-t", "2s", "--json", "--include-loopback", during=during)
    assert run.returncode == 0, run.stderr
    mine = by_pid(run.json()).get(os.getpid())
    assert mine is None or mine["bytes_out"] == 0, mine


@pytest.mark.parametrize("kind,family", [("ping", "ipv4"), ("raw", "ipv6"), ("packet-raw", "link")])
def test_details_give_each_such_socket_its_row(peer, ping_sockets, kind, family):
    _supported(kind, family)
    doc, pid, truth, _ip, _frames = _exchange(kind, family, peer, "-d", "-i", peer.host_if)
    row = by_pid(doc)[pid]
    (conn,) = row["connections"]
    assert conn["protocol"] == _class_of(kind, family)
    assert (conn["bytes_in"], conn["bytes_out"]) == (truth["in"], truth["out"])
    assert conn["state"] == "OPEN"  # still held by the client as the summary is made
    if kind.startswith("packet"):
        assert conn["family"] == "packet" and conn["local"] == f"ifindex:{socket.if_nametoindex(peer.host_if)}"
    else:
        assert conn["family"] == family
