"""The monitors under test, each started, settled, watched and stopped the same way.

A monitor is launched before the traffic and must be ready (procnetmon: its
"probes attached" line; nethogs: its first refresh; tcptop: its "Tracing"
line) before the workload starts; one that cannot start on this machine
raises ``Unavailable`` with its own words, and the benchmark goes on
without it. Its output is read continuously by threads, so it never blocks
on a full pipe, and the moments of its first lines are noted for the start-up
timings. ``NoMonitor`` is the baseline and costs nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from bench import procstat
from procnetmon.status import READY

ATTACHED = re.compile(re.escape(READY) + r" in ([\d.]+) s(?:, ([\d.]+) s after launch)?")


class Unavailable(RuntimeError):
    """The monitor cannot run here at all (not a failed run): the message says why."""


@dataclass
class Context:
    """What monitors need to know about the benchmark's setup."""

    procnetmon: str  # path of the procnetmon command
    host_if: str  # our end of the veth pair
    server_pid: int  # the iperf3 server in the peer namespace
    timeout_scale: float = 1.0  # start and stop timeouts are multiplied by it (a slow QEMU guest)
    tcptop: str = "tcptop-bpfcc"  # path of bcc's tcptop


@dataclass
class StartInfo:
    """How a monitor started: times in seconds from Popen."""

    cpu: float  # CPU seconds it had used by the time it was ready
    attached_external: Optional[float] = None  # procnetmon: Popen -> "probes attached" line read
    attached_reported: Optional[float] = None  # procnetmon: its own "after launch"
    probes_attached_in: Optional[float] = None  # procnetmon: its own "attached in"


@dataclass
class StopInfo:
    first_output: Optional[float]  # seconds from Popen to the first stdout line
    lines: int
    seen: dict = field(default_factory=dict)  # what the monitor reported, as a sanity check


class _Lines:
    """Reads a pipe to its end in a thread, noting when the first line came."""

    def __init__(self, pipe, launched: float, keep_last: bool = False, on_line=None):
        self.launched = launched
        self.first: Optional[float] = None
        self.count = 0
        self.tail: deque[str] = deque(maxlen=200)  # the last non-blank lines, kept with keep_last
        self.keep_last = keep_last
        self.on_line = on_line
        self.thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.thread.start()

    @property
    def last(self) -> str:
        return self.tail[-1] if self.tail else ""

    def _read(self, pipe) -> None:
        for line in pipe:
            if self.first is None:
                self.first = time.monotonic() - self.launched
            self.count += 1
            if self.keep_last and line.strip():
                self.tail.append(line)
            if self.on_line is not None:
                self.on_line(line)


class Monitor:
    """Base class: a monitored process launched by ``start`` and ended by ``stop``."""

    name = ""  # short key used in results
    title = ""  # shown in tables
    own_process = True  # its CPU and memory are a process of its own (not the floor's)

    def __init__(self):
        self.proc: Optional[subprocess.Popen] = None
        self.timeout_scale = 1.0  # from the Context, at start

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def command(self, ctx: Context) -> list[str]:
        raise NotImplementedError

    def start(self, ctx: Context) -> StartInfo:
        raise NotImplementedError

    def stop(self) -> StopInfo:
        raise NotImplementedError

    def kill(self) -> None:
        """Last-resort cleanup, for errors and Ctrl-C."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _end(self, timeout: float = 15) -> None:
        """SIGINT, as Ctrl-C would: both tools end cleanly on it."""
        timeout *= self.timeout_scale
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"{self.title} did not stop within {timeout:g} s of SIGINT")


def _why(lines: "_Lines", fallback: str) -> str:
    """The line of a failed start that says why: the first that names an
    error (BCC's compiler and loader say it before their traceback), else
    the last that is not part of a traceback."""
    text = [line.strip() for line in lines.tail if line.strip()]
    errors = [t for t in text if re.search(r"fatal error|FATAL|Unable to|cannot|No such file|[Ff]ailed to attach|"
                                           r"not permitted|\berror:", t)]
    if errors:
        return "; ".join(errors[:2])
    rest = [t for t in text if not t.startswith(("Traceback", "File ", "^", "raise ", "b = BPF"))]
    return rest[-1] if rest else fallback


class NoMonitor(Monitor):
    name = "none"
    title = "no monitor"

    def start(self, ctx: Context) -> StartInfo:
        return StartInfo(cpu=0.0)

    def stop(self) -> StopInfo:
        return StopInfo(first_output=None, lines=0)


class Procnetmon(Monitor):
    """procnetmon streaming one JSON line per second, every process or one PID.

    Run without -q: the "probes attached" line on stderr is how we know it
    is ready, and carries its own launch-to-attached time.
    """

    def __init__(self, watch_server: bool, mode: str = "payload", option: str = ""):
        super().__init__()
        self.watch_server = watch_server
        self.mode = mode
        self.option = option  # "-i" (our veth) or "-d", beside the others in the BPF pass
        suffix = ("" if mode == "payload" else f"-{mode}") + option
        self.name = ("procnetmon-p" if watch_server else "procnetmon") + suffix
        self.title = (("procnetmon -p" if watch_server else "procnetmon") +
                      ("" if mode == "payload" else f" --mode {mode}") + (f" {option}" if option else ""))
        self._attached = threading.Event()
        self._attach_line = ""
        self._attached_at: Optional[float] = None

    def command(self, ctx: Context) -> list[str]:
        cmd = [ctx.procnetmon, "-c", "--interval", "1s", "--json", "--mode", self.mode]
        if self.watch_server:
            cmd += ["-p", str(ctx.server_pid)]
        if self.option == "-i":
            cmd += ["-i", ctx.host_if]
        elif self.option:
            cmd.append(self.option)
        return cmd

    def _on_stderr(self, line: str) -> None:
        if self._attached_at is None and ATTACHED.search(line):
            self._attached_at = time.monotonic() - self.launched
            self._attach_line = line
            self._attached.set()

    def start(self, ctx: Context) -> StartInfo:
        self.timeout_scale = ctx.timeout_scale
        self.launched = time.monotonic()
        self.proc = subprocess.Popen(self.command(ctx), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.out = _Lines(self.proc.stdout, self.launched, keep_last=True)
        self.err = _Lines(self.proc.stderr, self.launched, keep_last=True, on_line=self._on_stderr)
        deadline = time.monotonic() + 60 * ctx.timeout_scale
        while not self._attached.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                self.err.thread.join(2)
                raise RuntimeError(f"{self.title} did not attach: {self.err.last.strip()!r}")
        match = ATTACHED.search(self._attach_line)
        return StartInfo(cpu=procstat.cpu_seconds(self.pid) or 0.0, attached_external=self._attached_at,
                         attached_reported=float(match.group(2)) if match.group(2) else None,
                         probes_attached_in=float(match.group(1)))

    def stop(self) -> StopInfo:
        self._end()
        self.out.thread.join(5)
        self.err.thread.join(5)
        seen = {}
        try:
            summary = json.loads(self.out.last)
            if summary.get("type") == "summary":
                agg = summary["aggregated"]
                seen = {"bytes_in": agg["bytes_in"], "bytes_out": agg["bytes_out"],
                        "processes": len(summary["processes"])}
        except (json.JSONDecodeError, KeyError):
            pass
        if not seen:
            raise RuntimeError(f"{self.title} wrote no summary (exit {self.proc.returncode}): "
                               f"{self.err.last.strip()!r}")
        return StopInfo(first_output=self.out.first, lines=self.out.count, seen=seen)


class ReadyLineTool(Monitor):
    """Another tool, ready once its output shows a line starting with
    ``ready``; seen watching when a line names iperf3. One that exits before
    it is ready cannot run here: ``Unavailable``, with its words."""

    ready = ""
    start_timeout = 10.0

    def __init__(self):
        super().__init__()
        self._ready = threading.Event()
        self._saw_iperf = False

    def _on_stdout(self, line: str) -> None:
        if line.startswith(self.ready):
            self._ready.set()
        elif "iperf3" in line:
            self._saw_iperf = True

    def start(self, ctx: Context) -> StartInfo:
        self.timeout_scale = ctx.timeout_scale
        self.launched = time.monotonic()
        try:
            self.proc = subprocess.Popen(self.command(ctx), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, env=self.environment())
        except OSError as e:
            raise Unavailable(f"{self.title} not runnable: {e}") from e
        self.out = _Lines(self.proc.stdout, self.launched, on_line=self._on_stdout)
        self.err = _Lines(self.proc.stderr, self.launched, keep_last=True)
        timeout = self.start_timeout * ctx.timeout_scale
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self.err.thread.join(2)
                raise Unavailable(f"{self.title} did not start: {_why(self.err, f'exit {self.proc.returncode}')}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.title} was not ready within {timeout:g} s")
        return StartInfo(cpu=procstat.cpu_seconds(self.pid) or 0.0)

    def environment(self) -> Optional[dict]:
        """The tool's environment (None: the benchmark's own)."""
        return None

    def stop(self) -> StopInfo:
        self._end()
        self.out.thread.join(5)
        self.err.thread.join(5)
        return StopInfo(first_output=self.out.first, lines=self.out.count, seen={"saw_iperf3": self._saw_iperf})


class Nethogs(ReadyLineTool):
    """nethogs in trace mode on our veth, TCP and UDP (-C), refreshing every second.

    Its first "Refreshing:" block means it is capturing; the traffic starts after it.
    """

    name = "nethogs"
    title = "nethogs"
    ready = "Refreshing:"

    def command(self, ctx: Context) -> list[str]:
        return ["nethogs", "-t", "-C", "-d", "1", ctx.host_if]


class Tcptop(ReadyLineTool):
    """bcc's tcptop (Debian's bpfcc-tools), every second, without clearing the screen.

    The in-kernel peer of procnetmon: kprobes on tcp_sendmsg and
    tcp_cleanup_rbuf, per-connection sums read every interval. Ready when it
    prints "Tracing..."; it needs kprobes and the kernel's headers.
    """

    name = "tcptop"
    title = "tcptop-bpfcc"
    ready = "Tracing"
    start_timeout = 60.0  # BCC compiles its program first

    def command(self, ctx: Context) -> list[str]:
        return [ctx.tcptop, "-C", "1"]

    def environment(self) -> Optional[dict]:
        """Unbuffered: tcptop is Python, whose print() into a pipe waits for
        4 KiB, so its "Tracing..." line would come many intervals late."""
        return dict(os.environ, PYTHONUNBUFFERED="1")

    def start(self, ctx: Context) -> StartInfo:
        try:
            return super().start(ctx)
        except Unavailable as e:
            from procnetmon.kernel import backends

            kprobes = backends.kprobe_backend(backends.kernel_symbols())
            raise Unavailable(f"{e}" + ("" if kprobes.usable else f"; it also needs kprobes: {kprobes.detail}"))


class Floor(Monitor):
    """No tool: an empty BPF program on each hook procnetmon's payload mode
    uses here (bench/floor.py), to price the bare act of running one."""

    name = "floor"
    title = "empty BPF programs"
    own_process = False  # the programs belong to the benchmark's process

    def __init__(self):
        super().__init__()
        self._programs = None

    @property
    def pid(self) -> Optional[int]:
        import os

        return os.getpid()  # the programs' descriptors are this process's

    def start(self, ctx: Context) -> StartInfo:
        from bench import floor

        hooks = floor.hooks_here()
        if not hooks:
            raise Unavailable("none of procnetmon's socket tracepoints exist on this kernel")
        try:
            self._programs = floor.EmptyPrograms(hooks).__enter__()
        except floor.FloorError as e:
            raise Unavailable(str(e)) from e
        return StartInfo(cpu=0.0)

    def stop(self) -> StopInfo:
        self.kill()
        return StopInfo(first_output=None, lines=0)

    def kill(self) -> None:
        if self._programs is not None:
            self._programs.__exit__()
            self._programs = None
