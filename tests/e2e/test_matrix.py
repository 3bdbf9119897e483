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
from harness import Peer, TrafficProcess, Zygote, by_pid, ip_bytes, run_procnetmon

from testbed.netns import link_stats

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


def _addr(case: Case, peer) -> str:
    if case.loopback:
        return "127.0.0.1"
    return peer.peer_v4 if case.family == "ipv4" else peer.peer_v6


def start(cases, peers, zygote, *, ready_timeout=STEP_TIMEOUT):
    """Every case's server, then every client, each batch started at once and then waited for."""
    procs = {}
    try:
        for c in cases:
            role, opts = c.server
            procs[(c.name, "server")] = TrafficProcess(role, _addr(c, peers[c.name]),
                                                      netns=None if c.loopback else peers[c.name].netns,
                                                      wait=False, zygote=zygote, **opts)
        for key, p in procs.items():
            p.wait_ready(ready_timeout)
        for c in cases:
            server = procs[(c.name, "server")]
            role, opts = c.client
            procs[(c.name, "client")] = TrafficProcess(role, _addr(c, peers[c.name]), server.port, wait=False,
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
                            "server_out": ip_bytes(p0, p1, "tx"), "server_in": ip_bytes(p0, p1, "rx")}
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
    try:
        payload_peer = Peer.create(7)
        peers["payload"] = payload_peer
        for i, c in enumerate(WIRE_CASES):
            peers[f"wire {c.name}"] = Peer.create(8 + i)
        plans = {
            "payload": (PAYLOAD_CASES, {c.name: payload_peer for c in PAYLOAD_CASES}, ()),
            "wire": (WIRE_CASES, {c.name: peers[f"wire {c.name}"] for c in WIRE_CASES}, ("--mode", "wire")),
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
