"""What --tcp-health costs: byte counting with it off and on, under 1% loss.

    sudo .venv/bin/python -m bench.health            # from the repository root

A TCP stream (iperf3) from this namespace to the benchmark's peer, whose
nftables input drops --loss percent of the data segments at random (on the
receiving side: the sender then retransmits, so the health hooks have work).
Runs alternate between no monitor, procnetmon and procnetmon --tcp-health
(the order rotated per repetition), each scored by the stream's throughput
against the no-monitor runs around it, with procnetmon's own CPU time per
second. A second pass times every BPF program (BPF_ENABLE_STATS) and splits
their run time into byte counting (the socket-call hooks, the same programs
in both configurations) and health (pnm_health_*), with how often each ran:
the health hooks run per retransmit, drop, reset or state change, never per
packet. Writes docs/benchmarks-health.md. Everything it makes is removed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

from bench import bpfstats, facts, runner
from bench.__main__ import ROOT, _signals_as_interrupt
from bench.monitors import Context, Procnetmon
from bench.netns import Peer
from bench.workloads import PORT, IperfServer, TcpStream

HEALTH = "procnetmon-health"
runner.MONITORS[HEALTH] = lambda: Procnetmon(watch_server=False, option="--tcp-health")
CONFIGS = ("procnetmon", HEALTH)
TITLES = {"none": "no monitor", "procnetmon": "procnetmon", HEALTH: "procnetmon --tcp-health"}
HEALTH_PREFIX = "pnm_health"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.health", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="repetitions of the series (default 5)")
    p.add_argument("--seconds", type=float, default=5, help="length of each stream (default 5)")
    p.add_argument("--loss", type=int, default=1, help="percent of data segments dropped (default 1)")
    p.add_argument("--pin", default=str((os.cpu_count() or 1) - 1),
                   help="CPU to pin iperf3 client and server to, or 'none' (default: the last CPU)")
    p.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks-health.md"))
    p.add_argument("--procnetmon", default=os.path.join(os.path.dirname(sys.executable), "procnetmon"))
    args = p.parse_args(argv)
    args.pin = None if args.pin == "none" else int(args.pin)
    if not 0 <= args.loss <= 100:
        p.error("--loss is a percentage")
    return args


def drop_rule(peer: Peer, percent: int) -> None:
    rules = f"""
table inet pnm_bench_loss {{
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp dport {PORT} meta length > 100 numgen random mod 100 < {percent} drop
    }}
}}
"""
    subprocess.run([*peer.exec_prefix(), "nft", "-f", "-"], input=rules, text=True, check=True, capture_output=True)


@dataclass
class Split:
    """One BPF-pass run's program time, per second of the stream, and run counts."""

    config: str
    counting_ns_s: float
    counting_runs: int
    health_ns_s: float
    health_runs: int
    retransmits: Optional[int]
    seconds: float


def split(run: runner.Run) -> Split:
    counting = [p for p in run.programs if not p.name.startswith(HEALTH_PREFIX)]
    health = [p for p in run.programs if p.name.startswith(HEALTH_PREFIX)]
    return Split(run.monitor, sum(p.run_time_ns for p in counting) / run.window_s, sum(p.run_cnt for p in counting),
                 sum(p.run_time_ns for p in health) / run.window_s, sum(p.run_cnt for p in health),
                 run.details.get("retransmits"), run.window_s)


def ratio(runs: list[runner.Run], run: runner.Run) -> float:
    """Throughput against the mean of the no-monitor runs just before and after it."""
    i = runs.index(run)
    before = next((r for r in reversed(runs[:i]) if r.monitor == "none"), None)
    after = next((r for r in runs[i + 1:] if r.monitor == "none"), None)
    around = [r.value for r in (before, after) if r is not None]
    return run.value / statistics.mean(around) if around else float("nan")


def describe(env: facts.Facts) -> str:
    return (f"Measured {env.date} on Linux {env.kernel}, {env.cores} cores ({env.cpu}), procnetmon {env.procnetmon}, "
            f"{env.iperf3}.")


def report(args, runs: list[runner.Run], splits: list[Split], env: str) -> str:
    lines = ["# What --tcp-health costs", "",
             f"One iperf3 TCP stream over a veth pair, {args.loss}% of its data segments dropped at random by "
             f"nftables on the receiver; {args.reps} repetitions of {args.seconds:g} s, configurations alternating "
             "(`python -m bench.health`).", "", env, "",
             "| configuration | throughput (Gbit/s, median) | vs no monitor (median) | retransmits per run "
             "(median) | procnetmon CPU (% of a core) |", "| --- | --- | --- | --- | --- |"]
    for config in ("none",) + CONFIGS:
        mine = [r for r in runs if r.monitor == config]
        if not mine:
            continue
        cpu = [r.cpu_fraction for r in mine if r.cpu_fraction is not None]
        retrans = [r.details["retransmits"] for r in mine if r.details.get("retransmits") is not None]
        cells = [TITLES[config], f"{statistics.median(r.value for r in mine) / 1e9:.2f}",
                 f"{statistics.median(ratio(runs, r) for r in mine):.3f}",
                 f"{statistics.median(retrans):.0f}" if retrans else "-",
                 f"{100 * statistics.median(cpu):.2f}" if cpu else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if splits:
        lines += ["", "BPF run time (BPF_ENABLE_STATS, a separate pass whose throughput is not scored), "
                      "per second of the stream, medians:", "",
                  "| configuration | byte counting (µs/s) | its runs per s | ns per run | health hooks (µs/s) | "
                  "their runs per s | ns per run | retransmitted segments per s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for config in CONFIGS:
            mine = [s for s in splits if s.config == config]
            if not mine:
                continue
            retrans = [s.retransmits / s.seconds for s in mine if s.retransmits is not None]

            def per_run(ns_s: float, runs_s: float) -> str:
                return f"{ns_s / runs_s:.0f}" if runs_s else "-"

            counting_ns = statistics.median(s.counting_ns_s for s in mine)
            counting_runs = statistics.median(s.counting_runs / s.seconds for s in mine)
            health_ns = statistics.median(s.health_ns_s for s in mine)
            health_runs = statistics.median(s.health_runs / s.seconds for s in mine)
            lines.append(f"| {TITLES[config]} | {counting_ns / 1e3:.1f} | {counting_runs:.0f} | "
                         f"{per_run(counting_ns, counting_runs)} | {health_ns / 1e3:.1f} | {health_runs:.0f} | "
                         f"{per_run(health_ns, health_runs)} | "
                         f"{statistics.median(retrans) if retrans else 0:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.health: needs root", file=sys.stderr)
        return 1
    _signals_as_interrupt()
    env = facts.collect(ROOT)
    workload = TcpStream()
    peer = Peer.create()
    server = None
    runs: list[runner.Run] = []
    splits: list[Split] = []
    try:
        server = IperfServer(peer, cpu=args.pin)
        drop_rule(peer, args.loss)
        setup = runner.Setup(peer, Context(args.procnetmon, peer.host_if, server.pid), args.seconds, args.pin)
        workload.run(peer, 1, cpu=args.pin)  # warm-up, not scored
        order = runner.plan(args.reps, [workload.name], list(CONFIGS))
        for i, (rep, _w, config) in enumerate(order, 1):
            run = runner.measure(setup, workload, config, rep)
            runner.progress(run, workload, i, len(order))
            runs.append(run)
        try:
            with bpfstats.RunTimeStats():
                for rep in range(args.reps):
                    for config in CONFIGS:
                        run = runner.measure(setup, workload, config, rep, programs=True)
                        splits.append(split(run))
                        s = splits[-1]
                        print(f"bench.health: BPF pass {rep + 1}/{args.reps} {config}: counting "
                              f"{s.counting_ns_s / 1e3:.1f} µs/s ({s.counting_runs} runs), health "
                              f"{s.health_ns_s / 1e3:.1f} µs/s ({s.health_runs} runs)", file=sys.stderr)
        except bpfstats.StatsUnavailable as e:
            print(f"bench.health: no BPF run-time pass: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("bench.health: interrupted; everything it made has been removed", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            server.stop()
        peer.destroy()
    text = report(args, runs, splits, describe(env))
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
