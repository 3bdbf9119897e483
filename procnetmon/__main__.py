"""procnetmon's entry point: parse, validate, attach, sample, write.

Everything that can be wrong with the request (a PID that does not exist,
an unknown interface, missing privileges) is reported before any probe is
attached. Once sampling runs, SIGINT and SIGTERM only end it early: the
summary of everything measured is still written.
"""

from __future__ import annotations

import enum
import os
import signal
import sys
import threading
import time
from typing import Optional, TextIO

from procnetmon import cgroups, cli, engine, interfaces, procinfo
from procnetmon.kernel import check
from procnetmon.model import MODE_WIRE
from procnetmon.output.writer import Writer


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1  # measurement failed at run time
    USAGE = 2  # bad options, nonexistent PID, unknown interface
    UNAVAILABLE = 3  # missing privileges or a kernel feature


class Fatal(Exception):
    def __init__(self, status: ExitStatus, message: str):
        super().__init__(message)
        self.status = status


def _say(stream: TextIO, message: str) -> None:
    try:
        stream.write(f"procnetmon: {message}\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def run_check(out: TextIO, wanted_backend: str = "auto") -> ExitStatus:
    findings = check.run_checks()
    width = max(len(f.name) for f in findings)
    for f in findings:
        mark = "ok " if f.ok else ("NO " if f.required else "-- ")
        out.write(f"{mark} {f.name:<{width}}  {f.detail}\n")
        if not f.ok and f.fix:
            out.write(f"    {'':<{width}}  fix: {f.fix}\n")
    ready, backend = check.payload_backend(findings, wanted_backend)
    out.write(f"payload mode: {'available, backend ' if ready else 'UNAVAILABLE: '}{backend}\n")
    wire_ready, wire_backend = check.wire_backend(findings, wanted_backend)
    out.write(f"wire mode: {'available, backend ' if wire_ready else 'UNAVAILABLE: '}{wire_backend}\n")
    out.flush()
    return ExitStatus.OK if ready else ExitStatus.UNAVAILABLE


def _check_pids(pids: Optional[list[int]]) -> None:
    missing = [pid for pid in pids or [] if not procinfo.pid_exists(pid)]
    if missing:
        names = ", ".join(str(p) for p in missing)
        plural = "es" if len(missing) > 1 else ""
        raise Fatal(ExitStatus.USAGE, f"error: no process{plural} with PID {names}")


def _resolve_cgroups(paths: Optional[list[str]]) -> tuple[Optional[list[str]], Optional[str]]:
    """--cgroup paths as paths below the cgroup2 mount, each an existing directory."""
    if paths is None:
        return None, None
    mount = cgroups.cgroup2_mount()
    if mount is None:
        raise Fatal(ExitStatus.UNAVAILABLE, "error: --cgroup needs the cgroup v2 hierarchy mounted "
                                            "(mount -t cgroup2 none /sys/fs/cgroup)")
    resolved = []
    for path in paths:
        below = cgroups.relative_path(path, mount)
        if below is None or not os.path.isdir(os.path.normpath(mount + "/" + below)):
            raise Fatal(ExitStatus.USAGE, f"error: no cgroup {path} under the cgroup v2 mount {mount}")
        if below not in resolved:
            resolved.append(below)
    return resolved, mount


def _resolve_interfaces(names: Optional[list[str]]) -> Optional[list[interfaces.InterfaceKey]]:
    if names is None:
        return None
    try:
        return interfaces.resolve(names)
    except interfaces.UnknownInterface as e:
        raise Fatal(ExitStatus.USAGE, f"error: {e}") from None


def _make_probe(args):
    if args.mode == MODE_WIRE:
        from procnetmon.probes.wire import WireProbe as Probe
    else:
        from procnetmon.probes.payload import PayloadProbe as Probe

    keys = _resolve_interfaces(args.interfaces)
    include_loopback = args.include_loopback or (args.interfaces is not None
                                                 and interfaces.names_include_loopback(args.interfaces))
    targets, mount = _resolve_cgroups(getattr(args, "cgroups", None))
    if args.serve is not None and not args.ebpf and not args.details:
        # A daemon keeps no compiler: the probes are loaded by a child
        # process and read here through libbpf (probes/handoff.py).
        from procnetmon.probes.fdprobe import FdProbe

        return FdProbe(mode=args.mode, pids=args.pids, interfaces=keys, include_loopback=include_loopback,
                       backend=args.backend, cgroups=targets, cgroup_mount=mount), include_loopback
    return Probe(pids=args.pids, interfaces=keys, include_loopback=include_loopback,
                 details=args.details, backend=args.backend, cgroups=targets,
                 cgroup_mount=mount), include_loopback


def _print_ebpf(probe, out: TextIO) -> None:
    from procnetmon.probes import ProbeError

    try:
        source, flags, header_dir = probe.compile_plan()
    except ProbeError as e:
        raise Fatal(ExitStatus.UNAVAILABLE, f"error: {e}") from None
    from procnetmon.probes import expand_includes

    out.write(expand_includes(source))
    out.write(f"\n/* BCC_KERNEL_SOURCE={header_dir}\n * cflags: {' '.join(flags)}\n */\n")


def _seconds_since_launch() -> Optional[float]:
    """Time since this process was created, to 10 ms (psutil's create_time
    rests on the boot time in whole seconds, too coarse for this)."""
    try:
        with open("/proc/self/stat") as f:
            after_comm = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - int(after_comm[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _describe_scope(args) -> str:
    who = f"{len(args.pids)} PID{'s' if len(args.pids) > 1 else ''}" if args.pids else "every process"
    if args.cgroups:
        who += f" in {', '.join(args.cgroups)}"
    if args.interfaces:
        where = ", ".join(args.interfaces)
    else:
        where = "all interfaces" + ("" if args.include_loopback else " but lo")
    if args.continuous:
        how_long = "until Ctrl-C"
    elif args.serve is not None and args.time is None and args.count is None:
        how_long = "until stopped"
    elif args.count is not None:
        how_long = f"for {args.count} interval{'s' if args.count > 1 else ''}"
    else:
        how_long = f"for {args.time:g} s"
    return f"{who}, {where}, {how_long}"


def _metrics_writer(args, target):
    """The records' sink for --serve (the HTTP endpoint, started here so that
    a busy port is a usage error before anything is attached) or for
    --format prometheus."""
    from procnetmon.output import prometheus

    if args.serve is None:
        try:
            return prometheus.TextfileWriter(target, args.mode, with_pid=args.metrics_pid), ""
        except OSError as e:
            raise Fatal(ExitStatus.USAGE, f"error: cannot write {args.output}: {e.strerror}: {e.filename}") from None
    metrics = prometheus.Metrics(args.mode, with_pid=args.metrics_pid)
    addr, port = args.serve
    try:
        prometheus.serve(metrics, addr, port)
    except OSError as e:
        raise Fatal(ExitStatus.USAGE, f"error: cannot serve metrics on {addr}:{port}: {e.strerror}") from None
    host = f"[{addr}]" if ":" in addr else addr
    return prometheus.MetricsSink(metrics), f"; metrics on http://{host}:{port}/metrics"


def _install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum, _frame):
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run(args, out: TextIO, err: TextIO) -> ExitStatus:
    if args.check:
        return run_check(out, args.backend)
    _check_pids(args.pids)
    probe, include_loopback = _make_probe(args)
    if args.ebpf:
        _print_ebpf(probe, out)
        return ExitStatus.OK
    if not check.has_bpf_privileges():
        raise Fatal(ExitStatus.UNAVAILABLE, "error: loading BPF programs needs root "
                                            "(CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN): run with sudo")

    stop = threading.Event()
    _install_stop_handlers(stop)
    options = engine.Options(pids=args.pids, interfaces=args.interfaces, include_loopback=include_loopback,
                             interval=args.interval, duration=args.time, count=args.count,
                             emit_intervals=cli.is_streaming(args), details=args.details,
                             group_by=args.group_by, daemon=args.serve is not None)
    from procnetmon.probes import ProbeError

    target = out if args.output in (None, "-") else args.output
    serving = ""
    if args.serve is not None or args.format == "prometheus":
        writer, serving = _metrics_writer(args, target)
    else:
        try:
            writer = Writer(args.format, target, streaming=cli.is_streaming(args), aggregate=args.aggregate,
                            details=args.details, units=args.units, sort=args.sort, top=args.top,
                            no_header=args.no_header)
        except OSError as e:
            raise Fatal(ExitStatus.USAGE, f"error: cannot append to {args.output}: {e.strerror}") from None
    # Who the -p processes are is asked before the compile: one that exits
    # meanwhile still has its command line in the summary.
    sampler = engine.Sampler(probe, options, stop=stop)
    try:
        started = time.monotonic()
        try:
            probe.attach()
        except ProbeError as e:
            raise Fatal(ExitStatus.UNAVAILABLE, f"error: {e}") from None
        try:
            if not args.quiet:
                since_launch = _seconds_since_launch()
                launched = f", {since_launch:.2f} s after launch" if since_launch is not None else ""
                _say(err, f"probes attached in {time.monotonic() - started:.2f} s{launched} "
                          f"({probe.backend.name} backend); sampling {_describe_scope(args)}{serving}")
            summary = sampler.run(writer.write)
            if summary.lost_updates:
                _say(err, f"warning: {summary.lost_updates} counter updates were lost (kernel map full)")
            if not writer.closed:
                writer.write(summary)
        finally:
            probe.close()
    finally:
        writer.close()
    return ExitStatus.OK


def main(argv: Optional[list[str]] = None, *, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = cli.parse_args(argv)
    try:
        return int(run(args, out, err))
    except Fatal as e:
        _say(err, str(e))
        return int(e.status)


if __name__ == "__main__":
    sys.exit(main())
