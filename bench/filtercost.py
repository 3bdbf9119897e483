"""What the remote filters cost per socket call: 0, 1 and 100 CIDRs.

    python -m bench.filtercost [--seconds S] [--rounds N] [--kind udp|tcp|both] [--json]

Attaches procnetmon's payload probes in this process (every process, loopback
left out: the defaults), once with no filter, once with --remote naming the
flood's peer, once with 100 CIDRs (99 others and the peer's), and drives a
flood over a veth pair to a namespace it makes: unconnected UDP sendto (each
datagram's peer read from its note) and a TCP stream (the socket's own
addresses). The kernel times every program run (BPF_ENABLE_STATS,
bench/bpfstats.py); the cost of a call is the send hook's run time per run,
and the cost of a datagram adds the hooks that note it (net_dev_queue).
The configurations alternate, N rounds each; the medians are reported.
Needs root; makes and removes its namespace itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Optional

from bench.bpfstats import RunTimeStats, programs_of
from bench.netns import Peer

FLOOD = r"""
import socket, sys, time
kind, addr, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
data = b"x" * (64 if kind == "udp" else 16384)
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    send = lambda: s.sendto(data, (addr, port))
else:
    s = socket.create_connection((addr, port))
    send = lambda: s.send(data)
sys.stdin.readline()  # "go": once the probes are attached, with this PID as their target
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    for _ in range(100):
        send()
    n += 100
print(n)
"""

SINK = r"""
import socket, sys
kind, port = sys.argv[1], int(sys.argv[2])
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        s.recv(65536)
else:
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("0.0.0.0", port))
    l.listen(1)
    print("ready", flush=True)
    c, _ = l.accept()
    while c.recv(1 << 20):
        pass
"""

PORT = 39099


def _specs(peer_addr: str) -> dict:
    from procnetmon.probes.spec import ProbeSpec

    others = tuple(f"10.{i // 256}.{i % 256}.0/24" for i in range(99))
    return {
        "0 CIDRs": ProbeSpec(),
        "1 CIDR": ProbeSpec(remotes=(peer_addr,)),
        "100 CIDRs": ProbeSpec(remotes=others + (peer_addr,)),
    }


# The hooks timed, by the kernel's 15-character program names, and how
# many runs each flood call makes of them (UDP: one datagram a call).
TIMED = {"udp": ("sock_send_leng", "net_dev_queue"), "tcp": ("sock_send_leng",)}


def _one(peer: Peer, spec, kind: str, seconds: float, target: bool) -> dict:
    """Run time (ns) and runs of each timed hook over one flood with ``spec``
    attached, its PID the probes' target (else this process's: every run of
    the hooks leaves at the PID filter, for the correction below)."""
    import dataclasses

    from procnetmon.probes.spec import bcc_probe_for

    sink = subprocess.Popen([*peer.exec_prefix(), sys.executable, "-c", SINK, kind, str(PORT)],
                            stdout=subprocess.PIPE, text=True)
    flood = None
    probe = None
    try:
        assert sink.stdout is not None
        sink.stdout.readline()
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, kind, peer.peer_addr, str(PORT), str(seconds)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        probe = bcc_probe_for(dataclasses.replace(spec, pids=(flood.pid if target else os.getpid(),)))
        probe.attach()
        with RunTimeStats():
            before = {p.prog_id: p for p in programs_of(os.getpid())}
            out, _ = flood.communicate("go\n", timeout=seconds + 30)
            after = programs_of(os.getpid())
        result: dict = {"calls": int(out)}
        for p in after:
            hook = next((h for h in TIMED[kind] if h in p.name), None)
            if hook:
                b = before.get(p.prog_id)
                result[hook] = (p.run_time_ns - (b.run_time_ns if b else 0), p.run_cnt - (b.run_cnt if b else 0))
        return result
    finally:
        if probe is not None:
            probe.close()
        for proc in (flood, sink):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def flood_cost(filtered: dict, untargeted: dict, hook: str) -> float:
    """ns per flood call in ``hook``: the runs of other processes (every
    process's socket calls run the hooks) cost what a run that leaves at the
    PID filter costs, measured in the untargeted run of the same round."""
    ns, runs = filtered[hook]
    other_ns, other_runs = untargeted[hook]
    exit_cost = other_ns / other_runs if other_runs else 0.0
    calls = filtered["calls"]
    return (ns - max(runs - calls, 0) * exit_cost) / calls


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.filtercost", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kind", choices=("udp", "tcp", "both"), default="both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    peer = Peer.create()
    costs: dict = {}
    try:
        specs = _specs(peer.peer_addr)
        for kind in ("udp", "tcp") if args.kind == "both" else (args.kind,):
            for _ in range(args.rounds):
                for label, spec in specs.items():
                    untargeted = _one(peer, spec, kind, args.seconds / 2, target=False)
                    filtered = _one(peer, spec, kind, args.seconds, target=True)
                    per_hook = {hook: flood_cost(filtered, untargeted, hook) for hook in TIMED[kind]}
                    costs.setdefault(kind, {}).setdefault(label, []).append(per_hook)
    finally:
        peer.destroy()
    summary = {kind: {label: {hook: statistics.median(r[hook] for r in rounds) for hook in TIMED[kind]}
                      for label, rounds in by_label.items()} for kind, by_label in costs.items()}
    if args.json:
        print(json.dumps({"ns_per_call_median": summary, "rounds": costs}, indent=1))
        return 0
    for kind, by_label in summary.items():
        base = sum(by_label["0 CIDRs"].values())
        for label, hooks in by_label.items():
            total = sum(hooks.values())
            parts = ", ".join(f"{hook} {ns:.0f}" for hook, ns in hooks.items())
            print(f"{kind} {label:>9}: {total:6.0f} ns per call ({total / base:.2f}x)  [{parts}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
