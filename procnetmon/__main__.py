"""procnetmon's entry point: parse, validate, attach, sample, write.

Everything that can be wrong with the request (a PID that does not exist,
an unknown interface, missing privileges) is reported before any probe is
attached. Once sampling runs, SIGINT and SIGTERM only end it early: the
summary of everything measured is still written.

With ``-- COMMAND`` procnetmon lives as long as COMMAND does: SIGINT and
SIGQUIT are ignored (a terminal sends them to COMMAND, in the same process
group, directly, as time(1) expects too), SIGTERM and SIGHUP are passed on
to COMMAND, and COMMAND's end ends sampling.
"""

from __future__ import annotations

import enum
import os
import signal
import sys
import threading
import time
from typing import Optional, TextIO

from procnetmon import cli, engine, interfaces, launch, procinfo
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


def _resolve_interfaces(names: Optional[list[str]]) -> Optional[list[interfaces.InterfaceKey]]:
    if names is None:
        return None
    try:
        return interfaces.resolve(names)
    except interfaces.UnknownInterface as e:
        raise Fatal(ExitStatus.USAGE, f"error: {e}") from None


def _interface_filter(args) -> tuple[Optional[list[interfaces.InterfaceKey]], bool]:
    keys = _resolve_interfaces(args.interfaces)
    include_loopback = args.include_loopback or (args.interfaces is not None
                                                 and interfaces.names_include_loopback(args.interfaces))
    return keys, include_loopback


def _make_probe(args, pids: Optional[list[int]], keys, include_loopback: bool):
    if args.mode == MODE_WIRE:
        from procnetmon.probes.wire import WireProbe as Probe
    else:
        from procnetmon.probes.payload import PayloadProbe as Probe

    return Probe(pids=pids, interfaces=keys, include_loopback=include_loopback, details=args.details,
                 backend=args.backend, follow_children=_follows_children(args))


def _follows_children(args) -> bool:
    return bool(args.command) or (args.children and args.pids is not None)


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


def _describe_scope(args, command: Optional[launch.Command] = None) -> str:
    if command is not None:
        who = f"{os.path.basename(args.command[0])} (PID {command.pid}) and all it starts"
    elif args.pids:
        who = f"{len(args.pids)} PID{'s' if len(args.pids) > 1 else ''}"
        if _follows_children(args):
            who += " and their descendants"
    else:
        who = "every process"
    if args.interfaces:
        where = ", ".join(args.interfaces)
    else:
        where = "all interfaces" + ("" if args.include_loopback else " but lo")
    if args.count is not None:
        how_long = f"for {args.count} interval{'s' if args.count > 1 else ''}"
    elif args.time is not None:
        how_long = f"for {args.time:g} s"
    else:
        how_long = "until it ends" if command is not None else "until Ctrl-C"
    if command is not None and (args.count is not None or args.time is not None):
        how_long = f"until it ends or {how_long[4:]}"
    return f"{who}, {where}, {how_long}"


def _install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum, _frame):
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _install_command_handlers(command: launch.Command) -> None:
    def forward(signum, _frame):
        command.forward(signum)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)


def _start_command(args) -> launch.Command:
    """COMMAND forked and waiting at its gate, with procnetmon's signals set for it."""
    try:
        launch.check_runnable(args.command)
    except launch.CommandError as e:
        raise Fatal(e.status, f"error: {e}") from None
    command = launch.Command(args.command, launch.invoking_user(os.environ, os.geteuid()))
    command.start()
    _install_command_handlers(command)
    return command


def run(args, out: TextIO, err: TextIO) -> int:
    if args.check:
        return run_check(out, args.backend)
    _check_pids(args.pids)
    keys, include_loopback = _interface_filter(args)
    if args.ebpf:
        _print_ebpf(_make_probe(args, [] if args.command else args.pids, keys, include_loopback), out)
        return ExitStatus.OK
    if not check.has_bpf_privileges():
        raise Fatal(ExitStatus.UNAVAILABLE, "error: loading BPF programs needs root "
                                            "(CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN): run with sudo")
    if not args.command:
        return _measure(args, out, err, keys, include_loopback, None)
    command = _start_command(args)
    try:
        _measure(args, out, err, keys, include_loopback, command)
    finally:
        command.abort()  # COMMAND never ran if procnetmon failed before releasing it
    return command.wait()


def _measure(args, out: TextIO, err: TextIO, keys, include_loopback: bool,
             command: Optional[launch.Command]) -> ExitStatus:
    stop = threading.Event()
    if command is None:
        _install_stop_handlers(stop)
        pids = args.pids
        if _follows_children(args):
            # Those running now; the kernel adds the ones forked from now on.
            pids = args.pids + [p for p in procinfo.descendants(args.pids) if p not in args.pids]
    else:
        pids = [command.pid]
    probe = _make_probe(args, pids, keys, include_loopback)
    options = engine.Options(pids=[command.pid] if command else args.pids, interfaces=args.interfaces,
                             include_loopback=include_loopback, interval=args.interval, duration=args.time,
                             count=args.count, emit_intervals=cli.is_streaming(args), details=args.details,
                             follow_children=_follows_children(args), command=args.command)
    from procnetmon.probes import ProbeError

    if command is not None:
        target = err if args.output is None else args.output  # COMMAND keeps standard output
    else:
        target = out if args.output in (None, "-") else args.output
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
                          f"({probe.backend.name} backend); sampling {_describe_scope(args, command)}")
            if command is not None:
                try:
                    command.release()
                except launch.CommandError as e:
                    raise Fatal(e.status, f"error: {e}") from None
                command.on_end(stop.set)
            elif _follows_children(args):
                # Forked between the look above and the attach: the kernel missed them.
                probe.add_pids(procinfo.descendants(args.pids))
            summary = sampler.run(writer.write)
            if summary.lost_updates:
                _say(err, f"warning: {summary.lost_updates} counter updates were lost (kernel map full)")
            if not writer.closed:
                writer.write(summary)
        finally:
            probe.close()
    finally:
        writer.close()
    if command is not None and command.status is None and not args.quiet:
        _say(err, f"sampling ended; waiting for {os.path.basename(args.command[0])} (PID {command.pid}) to end")
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
