"""From the list of runs to the numbers the report shows, and the target verdicts.

Pure computation on ``runner.Run`` objects: nothing here runs or prints.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Optional

from bench.floor import CALL_HOOKS, hook_of
from bench.procstat import TICK
from bench.runner import BASELINE, Run

# Of the no-monitor throughput, per workload (issue 12).
THROUGHPUT_TARGETS = {"tcp": 0.99, "udp": 0.97}
FLOOR_TARGET = 2.0  # procnetmon's BPF time per socket call, as a multiple of empty programs'
CPU_TARGET = 0.01  # of one core, at --interval 1s
ATTACH_TARGET = 0.5  # seconds from launch to probes attached
PROCNETMON = ("procnetmon", "procnetmon-p")  # the monitors the targets are for (payload mode)
LABELS = {"procnetmon": "procnetmon", "procnetmon-p": "procnetmon -p", "procnetmon-wire": "procnetmon --mode wire",
          "procnetmon-i": "procnetmon -i", "procnetmon-d": "procnetmon -d",
          "nethogs": "nethogs", "tcptop": "tcptop-bpfcc", "floor": "empty BPF programs"}


@dataclass
class Row:
    """One workload under one monitor configuration, over all repetitions."""

    workload: str
    monitor: str
    values: list[float]
    ratios: list[float]  # each run against its neighbouring no-monitor runs
    cpu_s: float = 0.0  # summed over the runs
    window_s: float = 0.0
    cpu_fractions: list[float] = field(default_factory=list)
    peak_rss_kib: Optional[int] = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def ratio(self) -> float:
        return statistics.fmean(self.ratios)

    @property
    def cpu_fraction(self) -> Optional[float]:
        """CPU per second over all runs together: finer than any single run's ticks allow."""
        return self.cpu_s / self.window_s if self.cpu_fractions else None

    @property
    def cpu_resolution(self) -> float:
        """How far ``cpu_fraction`` may be off from tick counting alone.

        Each run's CPU is the difference of two readings truncated to whole
        ticks, so it is off by less than one tick; the row's sum by less than
        one tick per run.
        """
        return len(self.cpu_fractions) * TICK / self.window_s if self.window_s else float("nan")


def _baselines(runs: list[Run], workload: str) -> dict[int, float]:
    return {r.rep: r.value for r in runs if r.workload == workload and r.monitor == BASELINE}


def neighbour_baseline(base: dict[int, float], rep: int) -> float:
    """Mean of the no-monitor runs that open this repetition and the next one."""
    around = [base[k] for k in (rep, rep + 1) if k in base]
    return statistics.fmean(around)


def run_ratio(runs: list[Run], run: Run) -> float:
    """One run against its neighbouring no-monitor runs (a no-monitor run: against all of them)."""
    base = _baselines(runs, run.workload)
    if run.monitor == BASELINE:
        return run.value / statistics.fmean(base.values())
    return run.value / neighbour_baseline(base, run.rep)


def rows(runs: list[Run], workloads: list[str], monitors: list[str]) -> list[Row]:
    out = []
    for w in workloads:
        for m in monitors:
            mine = [r for r in runs if r.workload == w and r.monitor == m]
            if not mine:
                continue
            # The no-monitor runs are compared with their own mean: the noise floor.
            row = Row(w, m, [r.value for r in mine], [run_ratio(runs, r) for r in mine])
            for r in mine:
                if r.cpu_s is not None:
                    row.cpu_s += r.cpu_s
                    row.window_s += r.window_s
                    row.cpu_fractions.append(r.cpu_fraction)
                if r.peak_rss_kib is not None:
                    row.peak_rss_kib = max(row.peak_rss_kib or 0, r.peak_rss_kib)
            out.append(row)
    return out


@dataclass
class Startup:
    """procnetmon's start-up times over all its runs, in seconds."""

    attached_reported: list[float]  # its own "after launch"
    attached_external: list[float]  # Popen -> "probes attached" line
    compile_and_load: list[float]  # its own "attached in": BPF compile, load and attach
    first_record: list[float]  # Popen -> first JSON line (about one --interval after attaching)
    cpu_to_attach: list[float]  # CPU seconds used by the time it was attached


def startup(runs: list[Run]) -> Startup:
    mine = [r for r in runs if r.monitor in PROCNETMON and r.start is not None]
    return Startup(
        attached_reported=[r.start.attached_reported for r in mine if r.start.attached_reported is not None],
        attached_external=[r.start.attached_external for r in mine if r.start.attached_external is not None],
        compile_and_load=[r.start.probes_attached_in for r in mine if r.start.probes_attached_in is not None],
        first_record=[r.stop.first_output for r in mine if r.stop and r.stop.first_output is not None],
        cpu_to_attach=[r.start.cpu for r in mine])


@dataclass
class Verdict:
    target: str
    measured: str
    verdict: str  # PASS, FAIL, or "reported" for figures without a threshold


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def noise_floor(table: list[Row], workload: str) -> tuple[float, float]:
    """Lowest and highest no-monitor run of a workload, relative to their mean."""
    base = next(r for r in table if r.workload == workload and r.monitor == BASELINE)
    return min(base.ratios), max(base.ratios)


def bpf_share(run: Run) -> float:
    """The BPF programs' run time per second of the run: their share of one core."""
    return sum(p.run_time_ns for p in run.programs) / 1e9 / run.window_s


def hook_times(run: Run) -> dict[str, tuple[int, int]]:
    """(run time ns, runs) of a run's programs on each socket hook (bench/floor.py's HOOKS)."""
    out: dict[str, tuple[int, int]] = {}
    for p in run.programs:
        hook = hook_of(p.name)
        if hook is not None:
            ns, cnt = out.get(hook, (0, 0))
            out[hook] = (ns + p.run_time_ns, cnt + p.run_cnt)
    return out


@dataclass
class FloorMultiple:
    """One monitor's programs on the socket hooks against empty programs on
    the same hooks, in each repetition of the BPF pass of one workload."""

    workload: str
    monitor: str
    per_hook: dict = field(default_factory=dict)  # hook -> [(ns per run, floor ns per run)] per repetition
    per_call_ns: list = field(default_factory=list)  # all its hook programs' time per socket call
    floor_per_call_ns: list = field(default_factory=list)  # empty programs making the same runs, per call
    rates: dict = field(default_factory=dict)  # hook -> [runs per second]

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.per_call_ns, self.floor_per_call_ns) if b]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)


def floor_multiples(bpf_runs: list[Run]) -> list[FloorMultiple]:
    """Every monitor of the BPF pass as a multiple of the floor measured in
    the same repetition: per hook, and per socket call (a send or receive
    call; the hooks that run per packet or per datagram, sk_data_ready,
    net_dev_queue, skb_copy_datagram_iovec, are charged to them). The floor
    of a call is one empty program on the socket-call hook it ran on: the
    least any monitor that counts per call could cost, so the multiple is
    everything procnetmon runs for a call against that."""
    floors = {(r.workload, r.rep): hook_times(r) for r in bpf_runs if r.monitor == "floor"}
    out: dict[tuple[str, str], FloorMultiple] = {}
    for run in bpf_runs:
        floor = floors.get((run.workload, run.rep))
        mine = hook_times(run)
        if run.monitor == "floor" or not floor or not mine:
            continue
        m = out.setdefault((run.workload, run.monitor), FloorMultiple(run.workload, run.monitor))
        calls = sum(mine.get(h, (0, 0))[1] for h in CALL_HOOKS)
        floor_ns = 0.0
        for hook, (ns, cnt) in mine.items():
            f_ns, f_cnt = floor.get(hook, (0, 0))
            if not cnt or not f_cnt:
                continue
            m.per_hook.setdefault(hook, []).append((ns / cnt, f_ns / f_cnt))
            m.rates.setdefault(hook, []).append(cnt / run.window_s)
            if hook in CALL_HOOKS:  # the floor: one empty program per socket call, nothing per packet
                floor_ns += cnt * f_ns / f_cnt
        if calls:
            m.per_call_ns.append(sum(ns for ns, _ in mine.values()) / calls)
            m.floor_per_call_ns.append(floor_ns / calls)
    return [m for m in out.values() if m.per_call_ns]


def verdicts(table: list[Row], start: Startup, workload_titles: dict[str, str],
             bpf_runs: list[Run]) -> list[Verdict]:
    out = []
    for row in table:
        if row.monitor in PROCNETMON:
            lo, hi = noise_floor(table, row.workload)
            target = THROUGHPUT_TARGETS[row.workload]
            out.append(Verdict(
                f"throughput with {LABELS[row.monitor]} ≥ {target:g} × without, "
                f"{workload_titles[row.workload]}",
                f"{row.ratio:.3f} (runs {min(row.ratios):.3f}–{max(row.ratios):.3f}; "
                f"no-monitor runs alone spread {lo:.3f}–{hi:.3f})",
                "PASS" if row.ratio >= target else "FAIL"))
    # The same target seen through the kernel's own timing of the probes:
    # with the data path saturating its one core, every nanosecond the
    # programs take is a nanosecond of traffic not moved.
    for m in floor_multiples(bpf_runs):
        if m.monitor not in PROCNETMON:
            continue
        out.append(Verdict(
            f"{LABELS[m.monitor]} BPF time per socket call ≤ {FLOOR_TARGET:g} × empty programs' on the same "
            f"hooks, median of {len(m.ratios)}, {workload_titles[m.workload]}",
            f"{m.ratio:.2f} × ({statistics.median(m.per_call_ns):.0f} ns against "
            f"{statistics.median(m.floor_per_call_ns):.0f} ns; runs {min(m.ratios):.2f}–{max(m.ratios):.2f})",
            "PASS" if m.ratio <= FLOOR_TARGET else "FAIL"))
    grouped: dict[tuple[str, str], list[Run]] = {}
    for run in bpf_runs:
        if run.monitor in PROCNETMON:
            grouped.setdefault((run.workload, run.monitor), []).append(run)
    for (workload, monitor), runs in grouped.items():
        share = statistics.median(bpf_share(r) for r in runs)
        rate = statistics.median(sum(p.run_cnt for p in r.programs) / r.window_s for r in runs)
        allowed = 1 - THROUGHPUT_TARGETS[workload]
        out.append(Verdict(
            f"estimate: {LABELS[monitor]} BPF run time ≤ {100 * allowed:g} % of the data path's core, "
            f"{workload_titles[workload]}",
            f"{_pct(share)}, median of {len(runs)} ({rate:,.0f} program runs/s)",
            "PASS" if share <= allowed else "FAIL"))
    for m in PROCNETMON:
        mine = [r for r in table if r.monitor == m and r.cpu_fraction is not None]
        if not mine:
            continue
        cpu = sum(r.cpu_s for r in mine) / sum(r.window_s for r in mine)
        worst = max(max(r.cpu_fractions) for r in mine)
        out.append(Verdict(f"{LABELS[m]} CPU ≤ {100 * CPU_TARGET:g} % of one core (--interval 1s)",
                           f"{_pct(cpu)} over all its runs (worst run {_pct(worst)})",
                           "PASS" if cpu <= CPU_TARGET else "FAIL"))
    if start.attached_reported:
        worst = max(start.attached_reported)
        out.append(Verdict(f"launch to probes attached ≤ {ATTACH_TARGET:g} s (every run)",
                           f"median {statistics.median(start.attached_reported):.2f} s, worst {worst:.2f} s "
                           f"(measured outside: median {statistics.median(start.attached_external):.2f} s, "
                           f"worst {max(start.attached_external):.2f} s)",
                           "PASS" if worst <= ATTACH_TARGET else "FAIL"))
    peaks = {}
    for r in table:
        if r.peak_rss_kib is not None:
            peaks[r.monitor] = max(peaks.get(r.monitor, 0), r.peak_rss_kib)
    if peaks:
        measured = ", ".join(f"{LABELS[m]} {kib / 1024:.1f} MiB" for m, kib in peaks.items())
        out.append(Verdict("peak memory (VmHWM, highest run)", measured, "reported"))
    flat = rate_check(table)
    if flat is not None:
        out.append(flat)
    return out


def rate_check(table: list[Row]) -> Optional[Verdict]:
    """procnetmon's own CPU must not grow with the packet rate: UDP small packets vs one TCP stream.

    Counting happens in the kernel and user space reads the counters once per
    interval, so the two should be equal within what the clock ticks resolve.
    """
    by = {(r.workload, r.monitor): r for r in table}
    tcp, udp = by.get(("tcp", "procnetmon")), by.get(("udp", "procnetmon"))
    if not tcp or not udp or tcp.cpu_fraction is None or udp.cpu_fraction is None:
        return None
    resolution = tcp.cpu_resolution + udp.cpu_resolution
    grew = udp.cpu_fraction - tcp.cpu_fraction > resolution
    return Verdict("procnetmon CPU does not grow with packet rate (UDP 64 B vs TCP)",
                   f"TCP {_pct(tcp.cpu_fraction)}, UDP {_pct(udp.cpu_fraction)} of a core "
                   f"(clock ticks cannot tell apart differences under {_pct(resolution)})",
                   "FAIL" if grew else "PASS")
