"""One measured run (a monitor watching one workload), and the order the runs go in.

Runs of the same workload with and without a monitor alternate, so slow
drift of the machine's speed (a busy neighbour, a VM host) affects both
sides of every comparison alike: each repetition starts with a no-monitor
run and the monitors follow in an order rotated per repetition, and one
more no-monitor run closes the series. Every monitored run is then compared
with the no-monitor runs just before and after it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from bench import bpfstats, procstat
from bench.monitors import Context, Floor, Monitor, Nethogs, NoMonitor, Procnetmon, StartInfo, StopInfo, Tcptop
from bench.netns import Peer
from bench.workloads import Workload

# Configuration name -> a fresh monitor for one run (monitors hold per-run state).
MONITORS: dict[str, Callable[[], Monitor]] = {
    "none": NoMonitor,
    "procnetmon": lambda: Procnetmon(watch_server=False),
    "procnetmon-p": lambda: Procnetmon(watch_server=True),
    "procnetmon-wire": lambda: Procnetmon(watch_server=False, mode="wire"),
    "procnetmon-i": lambda: Procnetmon(watch_server=False, option="-i"),
    "procnetmon-d": lambda: Procnetmon(watch_server=False, option="-d"),
    "nethogs": Nethogs,
    "tcptop": Tcptop,
    "floor": Floor,
}
BASELINE = "none"


@dataclass
class Run:
    """Everything measured in one run."""

    rep: int
    workload: str
    monitor: str
    value: float  # the workload's score
    window_s: float  # wall time the workload ran under the monitor
    cpu_s: Optional[float] = None  # the monitor's CPU time within that window
    peak_rss_kib: Optional[int] = None
    start: Optional[StartInfo] = None
    stop: Optional[StopInfo] = None
    details: dict = field(default_factory=dict)
    programs: list = field(default_factory=list)  # bpfstats.ProgramStats, in the BPF pass only

    @property
    def cpu_fraction(self) -> Optional[float]:
        """The monitor's CPU time per second of sampling: 0.01 is 1 % of one core."""
        return self.cpu_s / self.window_s if self.cpu_s is not None else None


@dataclass
class Setup:
    peer: Peer
    ctx: Context
    seconds: float
    cpu: Optional[int]  # where iperf3 client and server are pinned


def plan(reps: int, workloads: list[str], monitors: list[str]) -> list[tuple[int, str, str]]:
    """(repetition, workload, monitor) in the order they run."""
    order = []
    for rep in range(reps):
        for w in workloads:
            order.append((rep, w, BASELINE))
            shift = rep % len(monitors)
            order += [(rep, w, m) for m in monitors[shift:] + monitors[:shift]]
    order += [(reps, w, BASELINE) for w in workloads]
    return order


def measure(setup: Setup, workload: Workload, monitor_name: str, rep: int, *,
            seconds: Optional[float] = None, programs: bool = False) -> Run:
    """Start the monitor, let it settle, run the workload, read the monitor's cost, stop it."""
    monitor = MONITORS[monitor_name]()
    try:
        start = monitor.start(setup.ctx)
        pid = monitor.pid
        own = pid if monitor.own_process else None
        cpu_before = procstat.cpu_seconds(own) if own else None
        began = time.monotonic()
        outcome = workload.run(setup.peer, seconds or setup.seconds, cpu=setup.cpu)
        window = time.monotonic() - began
        # Read before the stop signal: what a monitor does on the way out is not sampling.
        cpu_after = procstat.cpu_seconds(own) if own else None
        peak = procstat.peak_rss_kib(own) if own else None
        progs = bpfstats.programs_of(pid) if programs and pid else []
        stop = monitor.stop()
    except BaseException:
        monitor.kill()
        raise
    cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    return Run(rep, workload.name, monitor_name, outcome.value, window, cpu, peak, start, stop,
               outcome.details, progs)


def progress(run: Run, workload: Workload, index: int, total: int) -> None:
    cpu = f", monitor CPU {100 * run.cpu_fraction:.2f} %" if run.cpu_fraction is not None else ""
    print(f"bench: [{index}/{total}] rep {run.rep + 1} {workload.name:<3} {run.monitor:<13} "
          f"{run.value / workload.scale:8.2f} {workload.unit}{cpu}", file=sys.stderr, flush=True)
