"""Text of the results: the tables printed to stdout and docs/benchmarks.md.

Markdown tables throughout, which read well in a terminal too. Nothing is
rounded before it is compared; only what is shown is.
"""

from __future__ import annotations

import statistics
import textwrap
from typing import Optional

from bench import analysis
from bench.analysis import Row, Startup, Verdict
from bench.facts import Facts
from bench.runner import Run
from bench.workloads import Workload

TITLES = {"none": "no monitor", "procnetmon": "procnetmon", "procnetmon-p": "procnetmon -p (server PID)",
          "procnetmon-wire": "procnetmon --mode wire", "procnetmon-i": "procnetmon -i (host veth)",
          "procnetmon-d": "procnetmon -d", "nethogs": "nethogs -t -C", "tcptop": "tcptop-bpfcc -C",
          "floor": "empty BPF programs (floor)"}


def _table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "| " + " | ".join("-" * w for w in widths) + " |"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in body]
    return "\n".join(lines)


def _pct(x: Optional[float]) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def results_table(table: list[Row], workloads: dict[str, Workload]) -> str:
    body = []
    for row in table:
        w = workloads[row.workload]
        if row.monitor == "none":
            vs = f"1 (runs {min(row.ratios):.3f}–{max(row.ratios):.3f}: the noise floor)"
        else:
            vs = f"{row.ratio:.3f} (runs {min(row.ratios):.3f}–{max(row.ratios):.3f})"
        cpu = "—" if row.cpu_fraction is None else f"{_pct(row.cpu_fraction)} (max run {_pct(max(row.cpu_fractions))})"
        rss = "—" if row.peak_rss_kib is None else f"{row.peak_rss_kib / 1024:.1f} MiB"
        body.append([w.title, TITLES[row.monitor], f"{row.mean / w.scale:.2f} {w.unit}", vs, cpu, rss])
    return _table(["workload", "monitor", "result, mean", "vs no monitor", "monitor CPU, of one core",
                   "peak RSS"], body)


def runs_table(runs: list[Run], workloads: dict[str, Workload]) -> str:
    body = []
    last_rep = max(r.rep for r in runs)  # the no-monitor runs that close the series
    for i, run in enumerate(runs, 1):
        w = workloads[run.workload]
        attached = run.start.attached_reported if run.start else None
        rep = "end" if run.rep == last_rep else str(run.rep + 1)
        body.append([str(i), rep, w.name, run.monitor, f"{run.value / w.scale:.2f} {w.unit}",
                     f"{analysis.run_ratio(runs, run):.3f}", _pct(run.cpu_fraction),
                     "—" if run.peak_rss_kib is None else f"{run.peak_rss_kib / 1024:.1f} MiB",
                     "—" if attached is None else f"{attached:.2f} s", _saw(run), _iperf_notes(run)])
    return _table(["#", "rep", "workload", "monitor", "result", "vs no monitor", "monitor CPU", "peak RSS",
                   "attached after", "monitor saw", "iperf3 also said"], body)


def _iperf_notes(run: Run) -> str:
    d = run.details
    if "sent_pps" in d:
        return f"sent {d['sent_pps'] / 1e3:.0f} kpkt/s, {d['lost_percent']:.0f} % not read by the server"
    if d.get("retransmits") is not None:
        return f"{d['retransmits']} retransmits"
    return ""


def _saw(run: Run) -> str:
    """What the monitor itself reported, to show it was really watching the traffic."""
    seen = run.stop.seen if run.stop else {}
    if "bytes_in" in seen:
        n = seen["processes"]
        return f"{(seen['bytes_in'] + seen['bytes_out']) / 1e9:.2f} GB in+out, {n} process{'' if n == 1 else 'es'}"
    if "saw_iperf3" in seen:
        return "iperf3 listed" if seen["saw_iperf3"] else "iperf3 NOT listed"
    return "—"


def startup_table(start: Startup) -> str:
    def line(what: str, values: list[float], unit: str = "s") -> list[str]:
        if not values:
            return [what, "—", "—", "—"]
        return [what, f"{statistics.median(values):.2f} {unit}", f"{min(values):.2f} {unit}",
                f"{max(values):.2f} {unit}"]

    return _table([f"procnetmon start-up ({len(start.attached_external)} launches)", "median", "best", "worst"], [
        line("launch → probes attached (its own \"after launch\")", start.attached_reported),
        line("launch → \"probes attached\" line read (measured outside)", start.attached_external),
        line("of which compiling, loading, attaching (its own \"attached in\")", start.compile_and_load),
        line("launch → first JSON record (--interval 1s)", start.first_record),
        line("CPU time used up to attached", start.cpu_to_attach, "s CPU"),
    ])


def bpf_table(runs: list[Run], workloads: dict[str, Workload]) -> str:
    body = []
    for run in runs:
        w = workloads[run.workload]
        total_ns = sum(p.run_time_ns for p in run.programs)
        for p in run.programs + [None]:
            name, ns, cnt = (p.name, p.run_time_ns, p.run_cnt) if p else ("all programs", total_ns,
                                                                           sum(q.run_cnt for q in run.programs))
            rate = cnt / run.window_s
            body.append([f"{w.title}, {TITLES[run.monitor]}", name, f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}",
                         f"{ns / cnt:.0f}" if cnt else "—", _pct(ns / 1e9 / run.window_s)])
    return _table(["run", "BPF program", "runs per second", "ns per run", "CPU, of one core"], body)


def floor_table(multiples: list[analysis.FloorMultiple], workloads: dict[str, Workload]) -> str:
    """Each monitor's programs on the socket hooks against empty programs on
    the same hooks: medians over the BPF pass's repetitions, with their range."""
    def span(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} × ({min(values):.2f}–{max(values):.2f})"

    body = []
    for m in multiples:
        where = f"{workloads[m.workload].title}, {TITLES[m.monitor]}"
        for hook, pairs in m.per_hook.items():
            rate = statistics.median(m.rates[hook])
            body.append([where, hook, f"{rate:,.0f}", f"{statistics.median(a for a, _ in pairs):.0f}",
                         f"{statistics.median(b for _, b in pairs):.0f}", span([a / b for a, b in pairs])])
        body.append([where, "**per socket call** (all the above)", "—",
                     f"{statistics.median(m.per_call_ns):.0f}", f"{statistics.median(m.floor_per_call_ns):.0f}",
                     span(m.ratios)])
    return _table(["run", "hook", "runs per second", "ns per run", "empty program, ns per run",
                   "multiple of the floor, median (range)"], body)


def unavailable_text(unavailable: dict[str, str]) -> Optional[str]:
    if not unavailable:
        return None
    return "\n".join(f"- {TITLES.get(m, m)}: not measured here. {why}" for m, why in unavailable.items())


def verdict_table(verdicts: list[Verdict]) -> str:
    return _table(["target", "measured", "verdict"], [[v.target, v.measured, v.verdict] for v in verdicts])


WORKLOAD_METHOD = {
    "tcp": "one TCP stream (`iperf3 -c ADDR -t {seconds:g}`, receiver's bits per second)",
    "udp": "64-byte UDP datagrams as fast as the client sends them (`-u -b 0 -l 64`, datagrams the server "
           "received per second)",
}


def _workloads_sentence(workloads: list[str], seconds: float) -> str:
    """"Two workloads of 5 s each: A and B." (or one), as the method text says it."""
    parts = [WORKLOAD_METHOD[w].format(seconds=seconds) for w in workloads]
    if len(parts) == 1:
        return f"One workload of {seconds:g} s: {parts[0]}."
    count = {2: "Two", 3: "Three"}.get(len(parts), str(len(parts)))
    return f"{count} workloads of {seconds:g} s each: " + ", ".join(parts[:-1]) + f" and {parts[-1]}."


def method(reps: int, seconds: float, pin: Optional[int], bpf_seconds: Optional[float], bpf_reps: int = 1,
           workloads: Optional[list[str]] = None) -> str:
    pinned = (f"Client and server are both pinned to CPU {pin} (`iperf3 -A {pin}`), so the data path has one "
              "core and the monitor's user-space process the other: the throughput ratio shows what the "
              "monitor adds to the data path (BPF programs, packet capture), the CPU column what its own "
              "process costs.") if pin is not None else "iperf3 is not pinned to a CPU."
    text = f"""\
Traffic runs over a veth pair between the root namespace and a namespace
made for the benchmark (addresses from 198.18.0.0/15), from an iperf3
client in the root namespace to one `iperf3 -s` kept running in the peer
namespace. {_workloads_sentence(workloads or list(WORKLOAD_METHOD), seconds)} {pinned}

Monitors: `procnetmon -c --interval 1s --json` (every process),
`procnetmon -c --interval 1s --json -p <iperf3 server PID>`,
`procnetmon -c --interval 1s --json --mode wire` (every process; measured
beside the others, the targets are payload mode's),
`nethogs -t -C -d 1 <host veth>` (trace mode, TCP and UDP), bcc's
`tcptop-bpfcc -C 1` (Debian's bpfcc-tools; kprobes, TCP only), and "empty
BPF programs": no tool, an empty raw tracepoint program (`r0 = 0; exit`) on
each of procnetmon's socket hooks (sock_send_length, sock_recv_length,
sk_data_ready), the floor of what any program on those hooks costs. Each
monitor is started before the traffic and must be ready first (procnetmon:
its "probes attached" line; nethogs: its first refresh; tcptop: its
"Tracing" line); one that cannot start on this machine is left out, with
the reason. After one unscored
warm-up run per workload, {reps} repetitions each run every workload with no
monitor, then each monitor in an order rotated per repetition; a last
no-monitor run closes the series. Each monitored run is divided by the mean
of the no-monitor runs just before and after it; the table gives the mean of
those ratios and the range over the repetitions. The no-monitor row shows
the spread of the no-monitor runs around their mean: differences smaller than
that are noise.

Monitor CPU is user + system time from /proc/PID/stat over the time the
workload ran (start-up excluded, 10 ms ticks), summed over all runs of a row
and divided by their summed wall time; peak RSS is VmHWM, read just before
the monitor is stopped with SIGINT."""
    if bpf_seconds:
        text += f"""

procnetmon's probes run inside the watched processes' socket calls, so
their cost is charged to those processes (and shows in the throughput), not
to procnetmon's CPU. A separate pass, {bpf_reps} repetitions of {bpf_seconds:g} s
per workload and BPF-based monitor (the empty programs first; procnetmon
also with `-i <host veth>` and with `-d`), not scored for throughput, turns on the kernel's BPF run-time statistics
(BPF_ENABLE_STATS, which itself adds two clock reads per program run) and
reads each program's run count and run time from /proc/PID/fdinfo. The
empty programs' time per run on each hook is the floor: it holds the
tracepoint's call into BPF and the statistics' own clock reads, which no
program can avoid, and it depends on the workload (after a 128 KiB TCP
receive the caches are cold). Each procnetmon program is then read as a
multiple of the floor on its hook in the same repetition, and per socket
call (a send or receive; the per-packet sk_data_ready runs are charged to
the calls): its programs' time per call against what empty programs would
take for the same runs on the same hooks (where trampolines attach, the
fentry program on skb_consume_udp that replaces sk_data_ready counts in
procnetmon's time per call, with no empty program beside it). With the data path saturating
its one core, the programs' share of that core is about what they take
from the throughput; the targets table uses it as a second estimate of the
throughput target, much less noisy than comparing runs on a shared virtual
machine."""
    # Paragraphs above are wrapped by hand around values of any length: rewrap them.
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    return "\n\n".join(textwrap.fill(p, 78, break_long_words=False, break_on_hyphens=False)
                       for p in paragraphs)


def markdown(facts: Facts, method_text: str, results: str, missing: Optional[str], startup: str, verdicts: str,
             floor: Optional[str], bpf: Optional[str], every_run: str, wall_s: float,
             note: Optional[str] = None) -> str:
    parts = [
        "# procnetmon benchmarks",
        "",
        *([note, ""] if note else []),
        "Written by `scripts/bench` (bench/); do not edit by hand, run it again.",
        "What procnetmon costs the machine it watches, next to nethogs and bcc's tcptop, on the same traffic "
        "in the same run.",
        "",
        "## Machine",
        "",
        _table(["", ""], [
            ["date", facts.date], ["kernel", facts.kernel],
            ["CPU", f"{facts.cpu}, {facts.cores} cores"], ["memory", facts.memory],
            ["procnetmon", facts.procnetmon], ["iperf3", facts.iperf3],
            ["nethogs", facts.nethogs], ["BCC (python3-bpfcc)", facts.bcc],
            ["tcptop (bpfcc-tools)", facts.tcptop],
            ["benchmark wall time (setup aside)", f"{wall_s:.0f} s"],
        ]),
        "",
        "## Method",
        "",
        method_text,
        "",
        "## Results",
        "",
        results,
        "",
        *([missing, ""] if missing else []),
        startup,
        "",
        "## Targets",
        "",
        verdicts,
    ]
    if floor:
        parts += ["", "## Cost per run, as a multiple of the floor", "",
                  "An empty program on the same hook, in the same repetition, is the floor (see Method).", "",
                  floor]
    if bpf:
        parts += ["", "## In-kernel cost of every program", "", bpf]
    parts += ["", "## Every run, in the order run", "",
              "\"vs no monitor\": against the mean of the no-monitor runs before and after it "
              "(no-monitor runs: against the mean of all of them).", "", every_run]
    return "\n".join(parts) + "\n"
