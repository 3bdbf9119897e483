"""procnetmon's benchmark: what it costs the machine it watches, next to nethogs.

    sudo .venv/bin/python -m bench            # run from the repository root
    sudo scripts/bench                        # the same, after installing what it needs

Makes a namespace peer, keeps an iperf3 server in it, runs the workloads
with no monitor, empty BPF programs (the floor), procnetmon, procnetmon -p,
procnetmon --mode wire, nethogs and bcc's tcptop alternately, prints the
tables and writes docs/benchmarks.md. Everything it creates is removed
at the end, also on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from typing import Optional

from bench import analysis, bpfstats, facts, report, runner
from bench.monitors import Context, Unavailable
from bench.netns import Peer
from bench.workloads import WORKLOADS, IperfServer, Workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MONITORS = ["floor", "procnetmon", "procnetmon-p", "procnetmon-wire", "nethogs", "tcptop"]
# The targets are payload mode's (issues 4, 12); wire mode is measured beside it.
# -i and -d in the BPF pass only: their cost per call, not another throughput series.
BPF_PASS = ["floor", "procnetmon", "procnetmon-p", "procnetmon-i", "procnetmon-d", "procnetmon-wire", "tcptop"]


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="repetitions of the whole series (default 3)")
    p.add_argument("--seconds", type=float, default=5, help="length of each workload run (default 5)")
    p.add_argument("--pin", default=str((os.cpu_count() or 1) - 1),
                   help="CPU to pin iperf3 client and server to, or 'none' (default: the last CPU)")
    p.add_argument("--bpf-seconds", type=float, default=3,
                   help="length of each run of the BPF run-time pass; 0 skips it (default 3)")
    p.add_argument("--bpf-reps", type=int, default=3,
                   help="repetitions of the BPF run-time pass, whose medians the floor targets use (default 3)")
    p.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks.md"),
                   help="where to write the report (default docs/benchmarks.md)")
    p.add_argument("--procnetmon", default=None,
                   help="procnetmon command (default: the one next to this Python, else on PATH)")
    names = [w.name for w in WORKLOADS]
    p.add_argument("--workloads", default=",".join(names),
                   help=f"which workloads to run, comma-separated, of {', '.join(names)} (default all)")
    p.add_argument("--timeout-scale", type=float, default=1.0,
                   help="multiply the monitors' start and stop timeouts, for a slow machine such as a QEMU "
                        "guest without KVM (default 1)")
    p.add_argument("--tcptop", default="tcptop-bpfcc",
                   help="bcc's tcptop command (default tcptop-bpfcc, Debian's name for it)")
    p.add_argument("--note", default=None,
                   help="a paragraph to put under the report's title (where and how it was run)")
    args = p.parse_args(argv)
    args.pin = None if args.pin == "none" else int(args.pin)
    try:
        args.workloads = pick_workloads(args.workloads)
    except ValueError as e:
        p.error(str(e))
    if args.timeout_scale <= 0:
        p.error("--timeout-scale must be positive")
    if args.procnetmon is None:
        beside = os.path.join(os.path.dirname(sys.executable), "procnetmon")
        args.procnetmon = beside if os.access(beside, os.X_OK) else shutil.which("procnetmon")
    if not args.procnetmon:
        p.error("procnetmon not found: run scripts/setup, or pass --procnetmon")
    return args


def pick_workloads(spec: str) -> tuple[Workload, ...]:
    """The workloads named in ``spec`` (comma-separated), in the benchmark's own order."""
    wanted = [name.strip() for name in spec.split(",") if name.strip()]
    known = {w.name for w in WORKLOADS}
    unknown = [name for name in wanted if name not in known]
    if unknown or not wanted:
        raise ValueError(f"--workloads: unknown {', '.join(unknown) or 'nothing given'}; "
                         f"choose from {', '.join(w.name for w in WORKLOADS)}")
    return tuple(w for w in WORKLOADS if w.name in wanted)


def _signals_as_interrupt() -> None:
    """SIGINT, SIGTERM and SIGHUP all unwind like Ctrl-C, so the finally blocks remove what we made.

    SIGINT too, because a shell starts background jobs with it ignored, and
    the namespace, the veth pair and the iperf3 server must still go.
    """
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


def series(setup: runner.Setup, reps: int, unavailable: dict[str, str],
           workloads: tuple[Workload, ...] = WORKLOADS) -> list[runner.Run]:
    """The scored runs: every workload under every configuration, alternating.
    A monitor that cannot start here is noted in ``unavailable`` and left out."""
    by_name = {w.name: w for w in workloads}
    order = runner.plan(reps, list(by_name), MONITORS)
    runs = []
    for i, (rep, wname, monitor) in enumerate(order, 1):
        if monitor in unavailable:
            continue
        try:
            run = runner.measure(setup, by_name[wname], monitor, rep)
        except Unavailable as e:
            unavailable[monitor] = str(e)
            print(f"bench: leaving {monitor} out: {e}", file=sys.stderr)
            continue
        runner.progress(run, by_name[wname], i, len(order))
        runs.append(run)
    return runs


def bpf_pass(setup: runner.Setup, seconds: float, reps: int, unavailable: dict[str, str],
             workloads: tuple[Workload, ...] = WORKLOADS) -> list[runner.Run]:
    """Unscored runs with the kernel timing every BPF program run, the floor
    first in each repetition of each workload."""
    runs = []
    try:
        with bpfstats.RunTimeStats():
            for rep in range(reps):
                for w in workloads:
                    for monitor in (m for m in BPF_PASS if m not in unavailable):
                        try:
                            run = runner.measure(setup, w, monitor, rep, seconds=seconds, programs=True)
                        except Unavailable as e:
                            unavailable[monitor] = str(e)
                            continue
                        print(f"bench: BPF pass {rep + 1}/{reps} {w.name} {monitor}: "
                              f"{analysis.bpf_share(run):.2%} of a core", file=sys.stderr)
                        runs.append(run)
    except bpfstats.StatsUnavailable as e:
        print(f"bench: skipping the BPF run-time pass: {e}", file=sys.stderr)
    return runs


def measure_all(args, unavailable: dict[str, str]) -> tuple[list[runner.Run], list[runner.Run]]:
    peer = Peer.create()
    server = None
    try:
        server = IperfServer(peer, cpu=args.pin)
        ctx = Context(args.procnetmon, peer.host_if, server.pid, args.timeout_scale, args.tcptop)
        setup = runner.Setup(peer, ctx, args.seconds, args.pin)
        print(f"bench: peer {peer.peer_addr} in {peer.netns} via {peer.host_if}, iperf3 server PID {server.pid}",
              file=sys.stderr)
        # The first runs after setup are slower (cold caches, ARP, socket memory): not scored.
        for w in args.workloads:
            w.run(peer, 1, cpu=args.pin)
        runs = series(setup, args.reps, unavailable, args.workloads)
        bpf = (bpf_pass(setup, args.bpf_seconds, args.bpf_reps, unavailable, args.workloads)
               if args.bpf_seconds > 0 else [])
        return runs, bpf
    finally:
        if server is not None:
            server.stop()
        peer.destroy()


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (namespaces, eBPF, packet capture): sudo scripts/bench", file=sys.stderr)
        return 1
    _signals_as_interrupt()
    began = time.monotonic()
    env = facts.collect(ROOT)
    unavailable: dict[str, str] = {}
    try:
        runs, bpf_runs = measure_all(args, unavailable)
    except KeyboardInterrupt:
        print("bench: interrupted; everything it made has been removed", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"bench: error: {e}; everything it made has been removed", file=sys.stderr)
        return 1
    wall = time.monotonic() - began

    workloads = {w.name: w for w in args.workloads}
    table = analysis.rows(runs, list(workloads), [runner.BASELINE] + MONITORS)
    start = analysis.startup(runs)
    # The BPF estimate assumes the data path has one core to itself: only when pinned.
    verdicts = analysis.verdicts(table, start, {w.name: w.title for w in args.workloads},
                                 bpf_runs if args.pin is not None else [])
    results = report.results_table(table, workloads)
    startup = report.startup_table(start)
    verdict_text = report.verdict_table(verdicts)
    bpf = report.bpf_table(bpf_runs, workloads) if bpf_runs else None
    floor = report.floor_table(analysis.floor_multiples(bpf_runs), workloads) if bpf_runs else None
    missing = report.unavailable_text(unavailable)

    print()
    for block in (results, missing, startup, verdict_text, floor, bpf):
        if block:
            print(block, end="\n\n")
    method = report.method(args.reps, args.seconds, args.pin, args.bpf_seconds if bpf_runs else None,
                           args.bpf_reps, workloads=list(workloads))
    text = report.markdown(env, method, results, missing, startup, verdict_text, floor, bpf,
                           report.runs_table(runs, workloads), wall, note=args.note)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    text += kept_sections(args.output)
    with open(args.output, "w") as f:
        f.write(text)
    print(f"bench: wrote {args.output} in {wall:.0f} s", file=sys.stderr)
    return 0


KEEP_MARK = "<!-- kept by scripts/bench:"


def kept_sections(path: str) -> str:
    """The hand-run measurements at the end of the old report (from KEEP_MARK
    on: the soak, the socket tables), which this benchmark does not redo."""
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        return ""
    at = old.find(KEEP_MARK)
    return "\n" + old[at:] if at >= 0 else ""


if __name__ == "__main__":
    sys.exit(main())
