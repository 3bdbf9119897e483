"""-d: every connection keeps its own row with its own bytes, however short-lived.

The kernel reuses the memory of a closed socket for the next one, and a
client may use one local port for socket after socket (dig does): neither
may move one connection's bytes onto another's row. Each test makes
hundreds of short-lived TCP and UDP connections, one after the other, and
compares each row with the truth of its connection, and the rows of each
process with its totals.
"""

from __future__ import annotations

from collections import Counter

import pytest
from harness import TrafficProcess, by_pid, measure_exchange

CONNECTIONS = 150
HEADERS = {"ipv4": 28, "ipv6": 48}  # IP + UDP header bytes per datagram


def rows_of(row, protocol):
    return [c for c in row["connections"] if c["protocol"] == protocol and (c["bytes_in"] or c["bytes_out"])]


def assert_rows_sum_to_totals(row):
    for protocol in ("tcp", "udp"):
        conns = [c for c in row["connections"] if c["protocol"] == protocol]
        assert sum(c["bytes_in"] for c in conns) == row[protocol]["bytes_in"], (row["pid"], protocol)
        assert sum(c["bytes_out"] for c in conns) == row[protocol]["bytes_out"], (row["pid"], protocol)


def truth_rows(truth, overhead_in=0, overhead_out=0):
    return Counter((c["local"], c["remote"], c["in"] + overhead_in, c["out"] + overhead_out)
                   for c in truth["connections"])


def measured_rows(conns):
    return Counter((c["local"], c["remote"], c["bytes_in"], c["bytes_out"]) for c in conns)


def many_connections(peer, family, mode):
    addr = peer.peer_v4 if family == "ipv4" else peer.peer_v6
    procs = {
        "tcp_server": TrafficProcess("tcp-serve-many", addr, netns=peer.netns, connections=CONNECTIONS, reply=40),
        "udp_server": TrafficProcess("udp-server", addr, netns=peer.netns, count=CONNECTIONS, reply=30),
    }
    procs["tcp_client"] = TrafficProcess("many-clients", addr, procs["tcp_server"].port, protocol="tcp",
                                         connections=CONNECTIONS, send=100)
    procs["udp_client"] = TrafficProcess("many-clients", addr, procs["udp_server"].port, protocol="udp",
                                         connections=CONNECTIONS, send=50, same_port=True)
    run, truth = measure_exchange(procs, "--mode", mode, "-d", "-t", "4s", "--json")
    return by_pid(run.json()), {name: (procs[name].pid, t) for name, t in truth.items()}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_payload_rows_are_each_connections_own_bytes(peer, family):
    rows, truth = many_connections(peer, family, "payload")
    for name, (pid, t) in truth.items():
        assert_rows_sum_to_totals(rows[pid])
    for name in ("tcp_client", "udp_client", "tcp_server"):
        pid, t = truth[name]
        protocol = t["connections"][0]["protocol"]
        conns = rows_of(rows[pid], protocol)
        assert len(conns) == CONNECTIONS, name
        assert {c["state"] for c in conns} == {"CLOSED"}
        assert measured_rows(conns) == truth_rows(t), name
    # The UDP clients used one local port for all their sockets: still one row each.
    pid, t = truth["udp_client"]
    assert len({c["local"] for c in t["connections"]}) == 1


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_wire_rows_are_each_connections_own_packets(peer, family):
    rows, truth = many_connections(peer, family, "wire")
    for name, (pid, t) in truth.items():
        assert_rows_sum_to_totals(rows[pid])
    # UDP: each datagram is its payload and its headers, exactly.
    header = HEADERS[family]
    pid, t = truth["udp_client"]
    conns = rows_of(rows[pid], "udp")
    assert measured_rows(conns) == truth_rows(t, header, header)
    # TCP: each connection its own row, with its payload and a few headers' worth more.
    for name in ("tcp_client", "tcp_server"):
        pid, t = truth[name]
        conns = rows_of(rows[pid], "tcp")
        assert len(conns) == CONNECTIONS, name
        measured = {(c["local"], c["remote"]): c for c in conns}
        assert len(measured) == CONNECTIONS, name
        for conn in t["connections"]:
            row = measured[(conn["local"], conn["remote"])]
            for direction in ("in", "out"):
                got, payload = row[f"bytes_{direction}"], conn[direction]
                assert payload < got < payload + 12 * (header + 32), (name, conn, row)
