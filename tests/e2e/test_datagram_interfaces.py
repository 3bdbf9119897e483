"""Each datagram on the interface it used, not its socket's guess.

An unconnected UDP socket has no route of its own, and one socket may be fed
by several interfaces: the interface filters (-i, loopback left out by
default) must still count exactly the bytes of the interfaces they name,
in payload and in wire mode.
"""

from __future__ import annotations

import signal

import pytest
from harness import TrafficProcess, by_pid, ip_bytes, run_procnetmon, when_silent

from testbed.netns import link_stats

LO_COUNT, LO_SIZE = 30, 700
VETH_COUNT, VETH_SIZE = 20, 1400
REPLY = 100


def _mixed(peer, *args: str):
    """A UDP server on 0.0.0.0 fed by a loopback client and one in the peer
    namespace, their datagrams queued together before it reads them, and
    answered with unconnected sendto: procnetmon's row for the server, the
    server's truth, and the host veth's IP bytes."""
    server = TrafficProcess("udp-server", "0.0.0.0", count=LO_COUNT + VETH_COUNT, reply=REPLY, accept_delay=1.5)
    lo = TrafficProcess("udp-client", "127.0.0.1", server.port, unconnected=True, count=LO_COUNT, size=LO_SIZE)
    veth = TrafficProcess("udp-client", peer.host_v4, server.port, unconnected=True, count=VETH_COUNT,
                          size=VETH_SIZE, netns=peer.netns)
    got: dict = {}

    def during():
        got["before"] = link_stats(peer.host_if)
        server.go()
        # Interleaved, so that the server's queue holds both interfaces' datagrams.
        lo.go()
        veth.go()
        lo.result()
        veth.result()
        got["truth"] = server.result()
        got["after"] = when_silent(lambda: link_stats(peer.host_if))

    try:
        run = run_procnetmon("-p", str(server.pid), "-t", "120s", "--json", *args,
                             during=during, after_start=lambda p: p.send_signal(signal.SIGINT))
    finally:
        for p in (server, lo, veth):
            p.finish()
    assert run.returncode == 0, run.stderr
    truth = got["truth"]
    assert truth["udp_in"] == LO_COUNT * LO_SIZE + VETH_COUNT * VETH_SIZE, truth
    veth_ip = {"in": ip_bytes(got["before"], got["after"], "rx"), "out": ip_bytes(got["before"], got["after"], "tx")}
    return by_pid(run.json()).get(server.pid), truth, veth_ip


@pytest.mark.parametrize("how", ["-i", "default"])
def test_a_socket_fed_by_loopback_and_a_veth_counts_only_the_veth(peer, how):
    args = ("-i", peer.host_if) if how == "-i" else ()
    row, _truth, _veth = _mixed(peer, *args)
    assert row is not None
    assert (row["bytes_in"], row["bytes_out"]) == (VETH_COUNT * VETH_SIZE, VETH_COUNT * REPLY)


def test_with_loopback_included_it_counts_both(peer):
    row, truth, _veth = _mixed(peer, "--include-loopback")
    assert (row["bytes_in"], row["bytes_out"]) == (truth["udp_in"], truth["udp_out"])


def test_wire_mode_counts_the_veths_packets_of_that_socket(peer):
    row, _truth, veth = _mixed(peer, "--mode", "wire", "-i", peer.host_if)
    # IP and UDP headers on every datagram.
    assert (row["bytes_in"], row["bytes_out"]) == (VETH_COUNT * (VETH_SIZE + 28), VETH_COUNT * (REPLY + 28))
    # The veth also carries packets of a kernel's own (an MLD report; the
    # peer's ICMP errors for replies that reach its closed client): no process's.
    assert row["bytes_out"] <= veth["out"] <= row["bytes_out"] + 300, (row, veth)
    assert row["bytes_in"] <= veth["in"], (row, veth)


@pytest.mark.parametrize("include", [False, True])
def test_unconnected_udp_over_loopback_is_left_out_by_default(include):
    server = TrafficProcess("udp-server", "127.0.0.1", count=LO_COUNT, reply=REPLY)
    client = TrafficProcess("udp-client", "127.0.0.1", server.port, unconnected=True, count=LO_COUNT,
                            size=LO_SIZE, reply=REPLY)
    truth = {}

    def during():
        server.go()
        client.go()
        truth["client"] = client.result()
        server.result()

    try:
        run = run_procnetmon("-p", str(client.pid), "-t", "120s", "--json",
                             *(["--include-loopback"] if include else []),
                             during=during, after_start=lambda p: p.send_signal(signal.SIGINT))
    finally:
        server.finish()
        client.finish()
    assert run.returncode == 0, run.stderr
    row = by_pid(run.json()).get(client.pid)
    got = (row["bytes_in"], row["bytes_out"]) if row else (0, 0)
    want = (truth["client"]["udp_in"], truth["client"]["udp_out"]) if include else (0, 0)
    assert got == want


@pytest.mark.parametrize("mode", ["payload", "wire"])
def test_unconnected_sendto_under_i_counts_every_byte(peer, mode):
    server = TrafficProcess("udp-server", peer.peer_v4, count=VETH_COUNT, reply=REPLY, netns=peer.netns)
    client = TrafficProcess("udp-client", peer.peer_v4, server.port, unconnected=True, count=VETH_COUNT,
                            size=VETH_SIZE, reply=REPLY)
    truth = {}

    def during():
        server.go()
        client.go()
        truth["client"] = client.result()
        server.result()

    try:
        run = run_procnetmon("-p", str(client.pid), "-t", "120s", "--json", "--mode", mode, "-i", peer.host_if,
                             during=during, after_start=lambda p: p.send_signal(signal.SIGINT))
    finally:
        server.finish()
        client.finish()
    assert run.returncode == 0, run.stderr
    row = by_pid(run.json())[client.pid]
    c = truth["client"]
    assert c["udp_out"] == VETH_COUNT * VETH_SIZE
    if mode == "payload":
        assert (row["bytes_in"], row["bytes_out"]) == (c["udp_in"], c["udp_out"])
    else:  # IP and UDP headers on every datagram
        assert (row["bytes_in"], row["bytes_out"]) == (c["udp_in"] + 28 * VETH_COUNT, c["udp_out"] + 28 * VETH_COUNT)
