"""The kernel matrix's tests: one procnetmon run covers many cases at once.

Guests without KVM run everything several times slower, BCC's compile most
of all, so each mode gets one procnetmon run over a crowd of processes that
move their bytes concurrently, each in its own way, and each case is then
checked on its own rows. Payload mode: every row exact to the byte per
protocol and direction. Wire mode: each process's wire bytes reconcile with
the counters of its own veth pair (as in test_wire.py).

The backend is whatever procnetmon picks, or $PROCNETMON_BACKEND (procnetmon
reads it): scripts/vmtest runs this module once per backend a kernel offers.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest
from harness import Peer, TrafficProcess, Zygote, by_pid, ip_bytes, mac_of, run_procnetmon

from testbed.netns import link_stats, sh

# A guest compiles the probes slowly (minutes under TCG, under a second here).
ATTACH_TIMEOUT = 900
STEP_TIMEOUT = 300
WIRE_TOLERANCE = 0.01


@dataclass(frozen=True)
class Case:
    """A server in the peer's namespace and a client on this host, and how they move bytes."""

    name: str
    server: tuple  # role, options
    client: tuple
    family: str = "ipv4"
    checks: dict = field(default_factory=dict)  # truth the case must have moved, by process and key
    # Both on this host over 127.0.0.1, left out as loopback is by default:
    # what procnetmon must show instead of the truth, by process (else 0).
    loopback: dict = None
    # A protocol other than TCP and UDP (traffic.py's proto-* roles): the
    # class its bytes must be counted under, exactly as the calls returned.
    cls: str = ""


# Sockets a kernel may lack (a module that is not there): (family, type, protocol), the option.
OPTIONAL_SOCKETS = {"sctp": ((2, 1, 132), "CONFIG_IP_SCTP"), "mptcp": ((2, 1, 262), "CONFIG_MPTCP"),
                    "udplite": ((2, 2, 136), "CONFIG_INET (UDP-Lite)")}


def _missing(kind: str) -> str:
    """Why this kernel cannot open a socket of ``kind``, or ""."""
    import socket

    if kind not in OPTIONAL_SOCKETS:
        return ""
    (family, kind_type, proto), option = OPTIONAL_SOCKETS[kind]
    try:
        socket.socket(family, kind_type, proto).close()
    except OSError:
        return f"this kernel has no {kind} sockets ({option} is not set, or its module cannot load)"
    return ""


def proto_case(kind: str, cls: str, family: str = "ipv4", server: bool = True) -> Case:
    srv = ("proto-server", dict(kind=kind, count=20, reply=200, expect=300)) if server else None
    return Case(f"{kind}_{family}", srv, ("proto-client", dict(kind=kind, count=20, size=300, expect=200)),
                family, cls=cls)


# Every other protocol a process can use, each counted under its class.
PROTOCOL_CASES = [
    proto_case("ping", "icmp", server=False),
    proto_case("ping", "icmpv6", "ipv6", server=False),
    proto_case("icmp-raw", "icmp", server=False),
    proto_case("raw", "raw"),
    proto_case("udplite", "udplite", "ipv6"),
    proto_case("sctp", "sctp"),
    proto_case("mptcp", "mptcp"),
    proto_case("packet-raw", "packet", "link"),
    proto_case("packet-dgram", "packet", "link"),
]
WIRE_PROTOCOL_CASES = [c for c in PROTOCOL_CASES if c.name in ("ping_ipv4", "raw_ipv4", "mptcp_ipv4",
                                                                 "packet-raw_link")]
SKIPPED = {c.name: why for c in PROTOCOL_CASES if (why := _missing(c.client[1]["kind"]))}


PAYLOAD_CASES = [
    Case("tcp_ipv4", ("tcp-server", dict(expect=1_000_000, reply=250_000)),
         ("tcp-client", dict(send=1_000_000, expect=250_000)),
         checks={"client": {"tcp_out": 1_000_000, "tcp_in": 250_000}}),
    Case("tcp_ipv6", ("tcp-server", dict(expect=1_000_000, reply=250_000)),
         ("tcp-client", dict(send=1_000_000, expect=250_000)), "ipv6",
         checks={"client": {"tcp_out": 1_000_000, "tcp_in": 250_000}}),
    Case("udp_ipv4_connected", ("udp-server", dict(count=100, reply=300)),
         ("udp-client", dict(count=100, size=1200, reply=300)),
         checks={"client": {"udp_out": 120_000}}),
    Case("udp_ipv6_connected", ("udp-server", dict(count=100, reply=300)),
         ("udp-client", dict(count=100, size=1200, reply=300)), "ipv6",
         checks={"client": {"udp_out": 120_000}}),
    Case("udp_ipv4_sendto", ("udp-server", dict(count=100, reply=300)),
         ("udp-client", dict(count=100, size=900, reply=300, unconnected=True)),
         checks={"client": {"udp_out": 90_000}}),
    Case("udp_ipv6_sendto", ("udp-server", dict(count=100, reply=300)),
         ("udp-client", dict(count=100, size=900, reply=300, unconnected=True)), "ipv6",
         checks={"client": {"udp_out": 90_000}}),
    Case("udp_mmsg", ("udp-server", dict(count=64, size=1000, reply=200, mmsg=True)),
         ("udp-client", dict(count=64, size=1000, reply=200, mmsg=True)),
         checks={"client": {"udp_out": 64_000}, "server": {"udp_in": 64_000}}),
    Case("sendfile", ("tcp-server", dict(expect=500_000)), ("tcp-client", dict(send=500_000, sendfile=True)),
         checks={"client": {"tcp_out": 500_000}}),
    Case("splice_from_socket", ("tcp-server", dict(expect=100, reply=100_000)),
         ("tcp-client", dict(send=100, expect=100_000, splice_in=True)),
         checks={"client": {"tcp_in": 100_000}}),
    Case("splice_into_socket", ("tcp-server", dict(expect=300_000)),
         ("tcp-client", dict(send=300_000, splice_out=True)),
         checks={"client": {"tcp_out": 300_000}}),
    Case("msg_peek", ("tcp-server", dict(expect=200_000, reply=1000, peek=True)),
         ("tcp-client", dict(send=200_000, expect=1000)),
         checks={"server": {"tcp_in": 200_000}}),
    Case("failed_calls", ("tcp-server", dict(reset=True)), ("fail", dict())),
    Case("exit_mid_sample", ("tcp-server", dict(expect=300_000)),
         ("tcp-client", dict(send=300_000, name="pnmgone", exit=True)),
         checks={"client": {"tcp_out": 300_000}}),
    Case("before_accept", ("tcp-server", dict(expect=60_000, reply=1000, accept_delay=1.0)),
         ("tcp-client", dict(send=60_000, expect=1000)),
         checks={"server": {"tcp_in": 60_000}}),
    Case("threads", ("tcp-server", dict(expect=100_000, reply=10_000, connections=4)),
         ("tcp-client", dict(send=100_000, expect=10_000, threads=4)),
         checks={"client": {"tcp_out": 400_000, "tcp_in": 40_000}}),
    # Each datagram's interface decides, received (the server's 35,000 bytes
    # in, the client's 15,000) or sent: the server replies with sendto(),
    # which has no cached route, and each reply's device is its own (lo).
    Case("udp_loopback_left_out", ("udp-server", dict(count=50, reply=300)),
         ("udp-client", dict(count=50, size=700, reply=300)),
         checks={"client": {"udp_out": 35_000, "udp_in": 15_000}},
         loopback={"server": {}}),
]

WIRE_CASES = [
    Case("tcp_ipv4", ("tcp-server", dict(expect=2_000_000, reply=100_000)),
         ("tcp-client", dict(send=2_000_000, expect=100_000))),
    Case("tcp_ipv6", ("tcp-server", dict(expect=2_000_000, reply=100_000)),
         ("tcp-client", dict(send=2_000_000, expect=100_000)), "ipv6"),
    Case("udp_ipv4", ("udp-server", dict(count=2000, reply=0)), ("udp-client", dict(count=2000, size=200))),
]


def note(text: str) -> None:
    """Progress with a time stamp, for the guest's log (pytest -s shows it): guests are slow to watch."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass
class Exchange:
    """What one procnetmon run over a set of cases gave, and what the processes say they moved."""

    doc: dict
    procs: dict  # (case name, "server"|"client") -> TrafficProcess
    truth: dict  # same keys -> the process's own counts
    veth: dict = field(default_factory=dict)  # case name -> IP bytes its veth pair counted
    stderr: str = ""


def _addr(case: Case, peer, who: str = "server") -> str:
    if case.loopback:
        return "127.0.0.1"
    if case.family == "link":  # AF_PACKET: the server's interface, the client's and the server's MAC
        return peer.peer_if if who == "server" else f"{peer.host_if}@{mac_of(peer.peer_if, peer.netns)}"
    return peer.peer_v4 if case.family == "ipv4" else peer.peer_v6


def start(cases, peers, zygote, *, ready_timeout=STEP_TIMEOUT):
    """Every case's server, then every client, each batch started at once and then waited for."""
    procs = {}
    try:
        for c in cases:
            if c.server is None:
                continue  # the peer's kernel answers (ICMP echo)
            role, opts = c.server
            procs[(c.name, "server")] = TrafficProcess(role, _addr(c, peers[c.name]),
                                                      netns=None if c.loopback else peers[c.name].netns,
                                                      wait=False, zygote=zygote, **opts)
        for key, p in procs.items():
            p.wait_ready(ready_timeout)
        for c in cases:
            server = procs.get((c.name, "server"))
            role, opts = c.client
            procs[(c.name, "client")] = TrafficProcess(role, _addr(c, peers[c.name], "client"),
                                                      server.port if server else 0, wait=False,
                                                      zygote=zygote, **opts)
        for c in cases:
            procs[(c.name, "client")].wait_ready(ready_timeout)
    except Exception:
        for p in procs.values():
            p.finish()
        raise
    return procs


def exchange(cases, peers, zygote, *args) -> Exchange:
    """One procnetmon run (options ``args``) over all ``cases``, stopped with SIGINT once all reported."""
    note(f"starting {2 * len(cases)} traffic processes")
    procs = start(cases, peers, zygote)
    note("starting procnetmon " + " ".join(args))
    truth, veth, before, after = {}, {}, {}, {}
    wire = "wire" in args

    def while_running(procnetmon):
        note("probes attached; traffic starts")
        try:
            if wire:
                for c in cases:
                    p = peers[c.name]
                    before[c.name] = (link_stats(p.host_if), link_stats(p.peer_if, p.netns))
            for key, p in procs.items():
                if key[1] == "server":
                    p.go()
            for key, p in procs.items():
                if key[1] == "client":
                    p.go()
            for key, p in procs.items():
                truth[key] = p.result(STEP_TIMEOUT)
            for key, p in procs.items():
                if "--exit" in p.proc.args:
                    p.proc.wait(STEP_TIMEOUT)
            note("every process reported")
            time.sleep(1.0)  # connection teardown and the last counters
            if wire:
                for c in cases:
                    p = peers[c.name]
                    after[c.name] = (link_stats(p.host_if), link_stats(p.peer_if, p.netns))
        finally:
            procnetmon.send_signal(signal.SIGINT)

    pids = ",".join(str(p.pid) for p in procs.values())
    try:
        run = run_procnetmon("-p", pids, "-t", "3600s", "--json", *args, while_running=while_running,
                             attach_timeout=ATTACH_TIMEOUT, timeout=STEP_TIMEOUT)
    finally:
        for p in procs.values():
            p.finish()
    note(f"procnetmon exited {run.returncode}: " + " | ".join(run.stderr.strip().splitlines()[:3]))
    if run.returncode != 0:
        note("procnetmon's stderr:\n" + run.stderr)
    assert run.returncode == 0, run.stderr
    for c in cases:
        if c.name in before:
            (h0, p0), (h1, p1) = before[c.name], after[c.name]
            veth[c.name] = {"client_out": ip_bytes(h0, h1, "tx"), "client_in": ip_bytes(h0, h1, "rx"),
                            "server_out": ip_bytes(p0, p1, "tx"), "server_in": ip_bytes(p0, p1, "rx"),
                            "client_frames_out": h1["tx_bytes"] - h0["tx_bytes"],
                            "client_frames_in": h1["rx_bytes"] - h0["rx_bytes"]}
    return Exchange(run.json(), procs, truth, veth, run.stderr)


@pytest.fixture(scope="module")
def exchanges():
    """Both modes' runs, side by side: in a guest each compile takes minutes.

    Payload mode's cases share one peer; wire mode's get a veth pair each,
    so that a pair's counters belong to that case's two processes alone.
    """
    zygote = Zygote()
    peers = {}
    results: dict = {}
    # Ping sockets are open to the groups of net.ipv4.ping_group_range, none by default.
    ping_range = sh("sysctl", "-n", "net.ipv4.ping_group_range").split()
    sh("sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647")
    payload_cases = PAYLOAD_CASES + [c for c in PROTOCOL_CASES if c.name not in SKIPPED]
    try:
        payload_peer = Peer.create(7)
        peers["payload"] = payload_peer
        wire_cases = WIRE_CASES + [c for c in WIRE_PROTOCOL_CASES if c.name not in SKIPPED]
        for i, c in enumerate(wire_cases):
            peers[f"wire {c.name}"] = Peer.create(8 + i)
        plans = {
            "payload": (payload_cases, {c.name: payload_peer for c in payload_cases}, ()),
            "wire": (wire_cases, {c.name: peers[f"wire {c.name}"] for c in wire_cases}, ("--mode", "wire")),
        }

        def one(mode):
            cases, case_peers, args = plans[mode]
            try:
                results[mode] = exchange(cases, case_peers, zygote, *args)
            except BaseException as e:  # handed to the tests of that mode
                results[mode] = e

        threads = [threading.Thread(target=one, args=(mode,)) for mode in plans]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        yield results
    finally:
        for p in peers.values():
            p.destroy()
        zygote.close()
        sh("sysctl", "-q", "-w", f"net.ipv4.ping_group_range={ping_range[0]} {ping_range[1]}")


def result_of(exchanges: dict, mode: str) -> Exchange:
    r = exchanges[mode]
    if isinstance(r, BaseException):
        raise r
    return r


@pytest.fixture(scope="module")
def payload(exchanges):
    return result_of(exchanges, "payload")


@pytest.fixture(scope="module")
def wire(exchanges):
    return result_of(exchanges, "wire")


def row_of(doc: dict, pid: int) -> dict:
    """procnetmon's row for ``pid``; a process that moved nothing may have none."""
    zero = {"bytes_in": 0, "bytes_out": 0}
    return by_pid(doc).get(pid, {"pid": pid, "tcp": dict(zero), "udp": dict(zero), **zero})


def assert_exact(row: dict, truth: dict, who: str) -> None:
    got = {f"{proto}_{d}": row[proto][f"bytes_{d}"] for proto in ("tcp", "udp") for d in ("in", "out")}
    want = {k: truth[k] for k in got}
    assert got == want, f"{who}: procnetmon {got} != truth {want}"
    assert row["bytes_out"] == truth["tcp_out"] + truth["udp_out"], who
    assert row["bytes_in"] == truth["tcp_in"] + truth["udp_in"], who


@pytest.mark.parametrize("case", PAYLOAD_CASES, ids=[c.name for c in PAYLOAD_CASES])
def test_payload(payload, case):
    assert payload.doc["mode"] == "payload"
    for who in ("client", "server"):
        truth = payload.truth[(case.name, who)]
        for key, value in case.checks.get(who, {}).items():
            assert truth[key] == value, f"{who} moved {truth[key]} {key}, the case needs {value}"
        if case.loopback is not None:
            truth = {key: case.loopback.get(who, {}).get(key, 0) for key in ("tcp_in", "tcp_out", "udp_in", "udp_out")}
        assert_exact(row_of(payload.doc, payload.procs[(case.name, who)].pid), truth, who)
    if case.name == "failed_calls":
        failures = payload.truth[(case.name, "client")]["failures"]
        # Every call failed; what did not is in the truth. On a slow machine
        # the server's RST can also beat connect() itself: one more failure.
        calls = [f for f in failures if not f.startswith("tcp connect")]
        assert len(calls) == 7, failures
    if case.name == "exit_mid_sample":
        row = by_pid(payload.doc)[payload.procs[(case.name, "client")].pid]
        assert row["alive"] is False and row["name"] == "pnmgone"


@pytest.mark.parametrize("case", PROTOCOL_CASES, ids=[c.name for c in PROTOCOL_CASES])
def test_protocol(payload, case):
    """Each protocol's bytes under its class, both ends exact to what their calls returned."""
    if case.name in SKIPPED:
        pytest.skip(SKIPPED[case.name])
    for who in ("client", "server"):
        if (case.name, who) not in payload.procs:
            continue
        truth = payload.truth[(case.name, who)]
        assert truth["in"] > 0 and truth["out"] > 0, (who, truth)
        row = row_of(payload.doc, payload.procs[(case.name, who)].pid)
        assert row.get("protocols", {}).get(case.cls) == {"bytes_in": truth["in"], "bytes_out": truth["out"]}, \
            (who, row.get("protocols"))
        assert (row["bytes_in"], row["bytes_out"]) == (truth["in"], truth["out"]), who


@pytest.mark.parametrize("case", WIRE_CASES, ids=[c.name for c in WIRE_CASES])
def test_wire(wire, case):
    assert wire.doc["mode"] == "wire"
    veth = wire.veth[case.name]
    for who in ("client", "server"):
        row = row_of(wire.doc, wire.procs[(case.name, who)].pid)
        truth = wire.truth[(case.name, who)]
        for direction in ("out", "in"):
            measured, counted = row[f"bytes_{direction}"], veth[f"{who}_{direction}"]
            payload_bytes = truth["tcp_" + direction] + truth["udp_" + direction]
            assert measured >= payload_bytes, (who, direction, measured, payload_bytes)
            if case.server[0] == "udp-server" and (who, direction) in (("client", "in"), ("server", "out")):
                continue  # nothing flows back: the veth counts only the odd neighbour packet
            assert counted > 0, (who, direction)
            assert abs(measured - counted) <= WIRE_TOLERANCE * counted, (who, direction, measured, counted)


STRAY = 300  # a packet or two of a kernel's own on a veth (an MLD report, an ICMP error)


@pytest.mark.parametrize("case", WIRE_PROTOCOL_CASES, ids=[c.name for c in WIRE_PROTOCOL_CASES])
def test_wire_protocol(wire, case):
    """The client's packets of each protocol, as its veth counted them (AF_PACKET: the frames it wrote)."""
    if case.name in SKIPPED:
        pytest.skip(SKIPPED[case.name])
    veth = wire.veth[case.name]
    truth = wire.truth[(case.name, "client")]
    row = row_of(wire.doc, wire.procs[(case.name, "client")].pid)
    counted = row.get("protocols", {}).get(case.cls)
    assert counted is not None, row.get("protocols")
    frames = case.family == "link"
    for direction in ("out", "in"):
        measured = counted[f"bytes_{direction}"]
        seen = veth[f"client_frames_{direction}" if frames else f"client_{direction}"]
        assert truth[direction] <= measured <= seen, (direction, measured, seen, truth)
        assert seen - measured <= max(STRAY, WIRE_TOLERANCE * seen), (direction, measured, seen)
