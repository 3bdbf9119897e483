"""One measuring run: a plan resolved from the arguments, then the probes
attached, the sampler run and its records written to the sink.

Everything that can be wrong with the request (a PID that does not exist,
an unknown interface, missing privileges) is found while the plan is made,
before any probe is attached. What goes wrong is raised as a ``Failure`` of
the kind that says why (a bad request, something this machine lacks, an
output that failed); ``__main__`` alone turns a kind into an exit status.
Also here: the two requests that measure nothing, ``--check`` and ``--ebpf``.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, TextIO

from procnetmon import cgroups, cli, engine, interfaces, launch, procinfo, safeopen
from procnetmon.invoker import invoking_user
from procnetmon.kernel import check
from procnetmon.model import MODE_WIRE
from procnetmon.output.writer import OutputError, Writer
from procnetmon.probes import BackendInfo, Probe, ProbeError, expand_includes
from procnetmon.probes.spec import ProbeSpec, bcc_probe_for, probe_for
from procnetmon.status import READY, ExitStatus

if TYPE_CHECKING:
    from procnetmon.live.sink import LiveSink
    from procnetmon.output.endpoint import Endpoint
    from procnetmon.output.sink import Sink


# --exit-over with -- COMMAND: COMMAND gets SIGTERM, and SIGKILL this many
# seconds later if it has not ended by then.
COMMAND_STOP_GRACE = 10.0


class Failure(Exception):
    """Why the run cannot go on, in one line (``error: `` is put before it)."""


class BadRequest(Failure):
    """The request names what is not there or cannot be used: a PID, an
    interface, a cgroup, an output, an address, a --web-config file."""


class Unavailable(Failure):
    """This machine cannot measure: a privilege or a kernel feature is missing."""


class OutputFailed(Failure):
    """The records could not be written while running (a full disk)."""


class CommandFailed(Failure):
    """COMMAND could not be started; ``status`` is the one a shell would give (127, 126)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Plan:
    """A measuring run as resolved from the arguments, before anything is attached."""

    args: argparse.Namespace  # as parsed: what the sinks and the sampler are told
    spec: ProbeSpec  # the probes' settings; with COMMAND, its PID is set once it is forked
    web: Any = None  # --web-config, read and checked (output/webconfig.WebConfig)


def say(stream: TextIO, message: str) -> None:
    try:
        stream.write(f"procnetmon: {message}\n")
        stream.flush()
    except (OSError, ValueError, AttributeError):
        pass  # stderr closed or full: the exit status still tells


# -- --check and --ebpf ------------------------------------------------------------------


def run_check(out: TextIO, wanted_backend: str = "auto") -> ExitStatus:
    findings = check.run_checks()
    # What each mode needs beyond loading BPF programs, after that line.
    after = next((i + 1 for i, f in enumerate(findings) if f.name == "privileges"), len(findings))
    capabilities = check.check_capabilities()
    findings[after:after] = capabilities
    width = max(len(f.name) for f in findings)
    for f in findings:
        mark = "ok " if f.ok else ("NO " if f.required else "-- ")
        out.write(f"{mark} {f.name:<{width}}  {f.detail}\n")
        if not f.ok and f.fix:
            out.write(f"    {'':<{width}}  fix: {f.fix}\n")
    ready, backend = check.payload_backend(findings, wanted_backend)
    out.write(f"payload mode: {'available, backend ' if ready else 'UNAVAILABLE: '}{backend}\n")
    wire_ready, wire_backend = check.wire_backend(findings, wanted_backend)
    wire_privileges = next(f for f in capabilities if f.name == check.WIRE_PRIVILEGES)
    if wire_ready and not wire_privileges.ok:
        wire_ready, wire_backend = False, f"{wire_privileges.name}: {wire_privileges.detail}"
    out.write(f"wire mode: {'available, backend ' if wire_ready else 'UNAVAILABLE: '}{wire_backend}\n")
    out.flush()
    return ExitStatus.OK if ready else ExitStatus.UNAVAILABLE


def print_ebpf(args, out: TextIO, err: TextIO) -> ExitStatus:
    """--ebpf: the C and the flags the probes would be compiled with; nothing is loaded."""
    _check_request(args)
    _prepare_kernel(args, err, required=False)
    probe = bcc_probe_for(_probe_spec(args))
    try:
        source, flags, header_dir = probe.compile_plan()
    except ProbeError as e:
        raise Unavailable(str(e)) from None
    out.write(expand_includes(source))
    out.write(f"\n/* BCC_KERNEL_SOURCE={header_dir}\n * cflags: {' '.join(flags)}\n */\n")
    return ExitStatus.OK


# -- the plan ------------------------------------------------------------------------------


def plan(args, err: TextIO, out: Optional[TextIO] = None) -> Plan:
    """The run the arguments ask for, checked in the order the errors are
    reported in: the request (``out``: where --live would draw), the privileges,
    the kernel's interfaces (mounted if missing), then the probes' settings."""
    if getattr(args, "live", False):
        _check_terminal(out)
    web = _check_request(args)
    if not check.has_bpf_privileges():
        raise Unavailable("loading BPF programs needs root "
                          "(CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN): run as root")
    if args.mode == MODE_WIRE and not check.has_wire_privileges():
        raise Unavailable("wire mode attaches cgroup_skb programs, which needs "
                          "CAP_NET_ADMIN (or CAP_SYS_ADMIN) besides CAP_BPF and CAP_PERFMON: "
                          "run as root, or use --mode payload")
    from procnetmon.kernel import cache

    try:
        cache.check_trusted()
    except cache.UntrustedCache as e:
        raise Unavailable(f"{e}; procnetmon compiles what it reads there "
                          "as root: remove it, or make it root's alone (chown -R root, "
                          "chmod go-w)") from None
    # Backend detection and the compile both read tracefs: it is there
    # before the first probe is even described.
    _prepare_kernel(args, err)
    # Resolved once, before COMMAND is forked: a request that cannot be
    # measured fails first.
    return Plan(args, _probe_spec(args), web)


def _check_terminal(out: Optional[TextIO]) -> None:
    """--live needs a terminal to draw on and to read keys from."""
    if not _is_terminal(out):
        raise BadRequest("--live draws a full-screen view, and standard output is not a terminal: "
                         "run it in one, or use -c for a line per process per interval")
    if not _is_terminal(sys.stdin):
        raise BadRequest("--live reads its keys from standard input, which is not a terminal: "
                         "run it in one, or use -c for a line per process per interval")
    from procnetmon.live.screen import TerminalError, check_terminal

    try:
        check_terminal(out.fileno())  # type: ignore[union-attr]  # a terminal has a descriptor
    except TerminalError as e:
        raise BadRequest(f"--live: {e}") from None
    except (AttributeError, ValueError, OSError):
        pass  # a stream that says it is a terminal but has no descriptor (a test's): curses will tell


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _check_request(args):
    """The PIDs exist and --web-config can be used; returns the latter, loaded."""
    _check_pids(args.pids)
    return _load_web_config(args)


def _check_pids(pids: Optional[list[int]]) -> None:
    missing = [pid for pid in pids or [] if not procinfo.pid_exists(pid)]
    if missing:
        names = ", ".join(str(p) for p in missing)
        plural = "es" if len(missing) > 1 else ""
        raise BadRequest(f"no process{plural} with PID {names}")


def _load_web_config(args):
    """--web-config read and checked whole (TLS files loaded) before the
    machine is touched: a file that is not safe, or not usable, is a usage error."""
    if args.web_config is None:
        return None
    from procnetmon.output import webconfig

    try:
        return webconfig.load(args.web_config)
    except webconfig.WebConfigError as e:
        raise BadRequest(f"--web-config: {e}") from None


def _prepare_kernel(args, err: TextIO, required: bool = True) -> None:
    """Mount the kernel interfaces the probes need (kernel/mounts.py), saying so unless -q."""
    from procnetmon.kernel import mounts

    try:
        mounts.prepare(None if args.quiet else (lambda line: say(err, line)))
    except mounts.MountError as e:
        if required:
            raise Unavailable(str(e)) from None


def _resolve_cgroups(paths: Optional[list[str]]) -> tuple[Optional[list[str]], Optional[str]]:
    """--cgroup paths as paths below the cgroup2 mount, each an existing directory."""
    if paths is None:
        return None, None
    mount = cgroups.cgroup2_mount()
    if mount is None:
        raise Unavailable("--cgroup needs the cgroup v2 hierarchy mounted "
                          "(mount -t cgroup2 none /sys/fs/cgroup)")
    resolved: list[str] = []
    for path in paths:
        below = cgroups.relative_path(path, mount)
        if below is None or not os.path.isdir(os.path.normpath(mount + "/" + below)):
            raise BadRequest(f"no cgroup {path} under the cgroup v2 mount {mount}")
        if below not in resolved:
            resolved.append(below)
    return resolved, mount


def _resolve_exclusions(given: Optional[list[str]], mount: Optional[str]) -> Optional[list[str]]:
    """--exclude-cgroup arguments as paths below the cgroup2 mount: each a
    cgroup directory, or a container or unit that cgroup paths name."""
    if given is None:
        return None
    if mount is None:
        raise Unavailable("--exclude-cgroup needs the cgroup v2 hierarchy mounted "
                          "(mount -t cgroup2 none /sys/fs/cgroup)")
    resolved: list[str] = []
    for item in given:
        below = cgroups.relative_path(item, mount)
        if below is not None and os.path.isdir(os.path.normpath(mount + "/" + below)):
            paths = [below]
        else:
            paths = cgroups.find_container(mount, item)
        if not paths:
            raise BadRequest(f"no cgroup or container {item} under the cgroup v2 mount {mount}")
        resolved.extend(p for p in paths if p not in resolved)
    return resolved


def _resolve_interfaces(names: Optional[list[str]]) -> Optional[list[interfaces.InterfaceKey]]:
    if names is None:
        return None
    try:
        invoker = invoking_user()
        return interfaces.resolve(names, owner=invoker.uid if invoker is not None else None)
    except interfaces.UnknownInterface as e:
        raise BadRequest(str(e)) from None


def _probe_spec(args) -> ProbeSpec:
    """The probes' settings, resolved from the arguments once: interface names
    to (netns, ifindex), --cgroup paths to paths below the cgroup2 mount.
    With COMMAND, no PID yet: COMMAND's is set once it is forked."""
    keys = _resolve_interfaces(args.interfaces)
    include_loopback = args.include_loopback or (args.interfaces is not None
                                                 and interfaces.names_include_loopback(args.interfaces))
    targets, mount = _resolve_cgroups(args.cgroups)
    if args.exclude_cgroups is not None and mount is None:
        mount = cgroups.cgroup2_mount()
    excluded = _resolve_exclusions(args.exclude_cgroups, mount)
    follow = _follows_children(args)
    pids = () if args.command else None if args.pids is None else tuple(args.pids)
    return ProbeSpec(mode=args.mode, pids=pids, interfaces=None if keys is None else tuple(keys),
                     include_loopback=include_loopback, details=_wants_details(args), backend=args.backend,
                     cgroups=None if targets is None else tuple(targets), cgroup_mount=mount,
                     follow_children=follow, verbose=args.verbose, tcp_health=args.tcp_health,
                     protocols=None if args.protocols is None else tuple(args.protocols),
                     exclude_cgroups=None if excluded is None else tuple(excluded),
                     exclude_pid=os.getpid() if args.exclude_self else None,
                     **_end_filters(args),
                     # A daemon keeps no compiler: the probes are loaded by a
                     # child process and read here through libbpf (probes/handoff.py).
                     handoff=args.serve is not None and not args.ebpf and not args.details and not follow)


def _wants_details(args) -> bool:
    """-d; and --live, whose d key shows a process's sockets."""
    return bool(args.details or getattr(args, "live", False))


def _end_filters(args) -> dict:
    """The filters on the remote end and the ports, as ProbeSpec fields (None: not given)."""
    names = ("remotes", "exclude_remotes", "remote_ports", "exclude_remote_ports", "local_ports",
             "exclude_local_ports")
    return {name: None if getattr(args, name, None) is None else tuple(getattr(args, name)) for name in names}


def _follows_children(args) -> bool:
    return bool(args.command) or (args.children and args.pids is not None)


# -- the run -------------------------------------------------------------------------------


def run(plan: Plan, out: TextIO, err: TextIO, *, failed: Callable[[Failure], int],
        stdout_closed: bool = False) -> int:
    """Measure as planned and return the exit status: OK, or with COMMAND,
    COMMAND's; OVER when an --exit-over threshold was crossed (COMMAND is
    then stopped). ``failed`` reports a failure and names its status; it is
    called here only for one that comes once COMMAND runs, which is then
    waited for. Any other failure is raised."""
    if not plan.args.command:
        return _measure(plan, out, err, None, stdout_closed)
    command = _start_command(plan.args)
    try:
        measured = _measure(plan, out, err, command, stdout_closed)
    except Failure as e:
        if not command.released:
            raise
        # The records are lost (say, -o on a full disk); COMMAND is not left
        # running on its own.
        status = failed(e)
        command.wait()
        return status
    finally:
        command.abort()  # COMMAND never ran if procnetmon failed before releasing it
    if measured == ExitStatus.OVER:
        # The run is over the threshold: COMMAND and what it started are not
        # left running unmeasured (those still below it: a daemon that left
        # the tree is not found).
        below = procinfo.processes_below(command.pid)
        procinfo.terminate(below)
        running = command.stop(COMMAND_STOP_GRACE)
        procinfo.reap(below, COMMAND_STOP_GRACE)
        if running and not plan.args.quiet:
            more = f" and {len(below)} process{'es' if len(below) != 1 else ''} it started" if below else ""
            say(err, f"stopped {os.path.basename(plan.args.command[0])} (PID {command.pid}){more}")
        return measured
    return command.wait()


def _measure(plan: Plan, out: TextIO, err: TextIO, command: Optional[launch.Command],
             stdout_closed: bool) -> ExitStatus:
    args, spec = plan.args, plan.spec
    if command is not None:
        spec = spec.with_pids([command.pid])
    elif spec.follow_children:
        # Those running now; the kernel adds the ones forked from now on.
        spec = spec.with_pids(args.pids + [p for p in procinfo.descendants(args.pids) if p not in args.pids])
    probe = probe_for(spec)
    options = engine.Options(pids=[command.pid] if command else args.pids, interfaces=args.interfaces,
                             include_loopback=spec.include_loopback, interval=args.interval, duration=args.time,
                             count=args.count, emit_intervals=cli.is_streaming(args), details=_wants_details(args),
                             group_by=args.group_by, follow_children=spec.follow_children,
                             command=args.command, forget_exited=args.serve is not None,
                             exit_over=tuple(args.exit_over or ()),
                             exclude_names=tuple(args.exclude_names or ()),
                             exclude_children_of=os.getpid() if args.exclude_self else None,
                             tcp_health=args.tcp_health)
    if command is not None:
        # COMMAND keeps standard output; the records go where time(1) puts its own.
        to_stdout = False
        target = err if args.output is None else args.output
        where = "standard error" if args.output is None else args.output
    else:
        to_stdout = args.output in (None, "-")
        target = out if to_stdout else args.output
        where = "standard output" if to_stdout else args.output
    if to_stdout and stdout_closed:
        return ExitStatus.OK  # nobody reads: nothing to measure for
    serving = ""
    endpoint: Optional[Endpoint] = None
    stop = threading.Event()
    writer: Sink
    live: Optional[LiveSink] = None
    if args.live:
        writer = live = _live_sink(plan, out, err, stop)
    elif args.serve is not None or args.format == "prometheus":
        writer, endpoint, serving = _metrics_writer(plan, target)
    else:
        try:
            # A FIFO without a reader blocks here; SIGINT and SIGTERM still end it.
            writer = Writer(args.format, target, streaming=cli.is_streaming(args), aggregate=args.aggregate,
                            details=args.details, units=args.units, sort=args.sort, top=args.top,
                            no_header=args.no_header, stop=stop)
        except OSError as e:
            raise BadRequest(f"cannot append to {args.output}: {_why(e, args.output)}") from None
    if command is None:
        _install_stop_handlers(stop, hangup=args.live)
    # A reader that leaves (| head) ends the run within an interval, even
    # when nothing is being written.
    writer.watch(stop.set)
    # Who the -p processes are is asked before the compile: one that exits
    # meanwhile still has its command line in the summary.
    sampler = engine.Sampler(probe, options, stop=stop)
    try:
        started = time.monotonic()
        try:
            probe.attach()
        except ProbeError as e:
            raise Unavailable(str(e)) from None
        try:
            if not args.quiet:
                since_launch = _seconds_since_launch()
                launched = f", {since_launch:.2f} s after launch" if since_launch is not None else ""
                say(err, f"{READY} in {time.monotonic() - started:.2f} s{launched} "
                         f"({_attached_backend(probe).label}); sampling {_describe_scope(args, command)}{serving}")
            if endpoint is not None:
                endpoint.start()
            if command is not None:
                try:
                    command.release()
                except launch.CommandError as e:
                    raise CommandFailed(e.status, str(e)) from None
                command.on_end(stop.set)
            elif _follows_children(args):
                # Forked between the look above and the attach: the kernel missed them.
                probe.add_pids(procinfo.descendants(args.pids))
            if live is not None:
                _start_live(live)
            # While the view owns the terminal, warnings wait for it to end.
            emit = _warn_on_unknown_counts(writer.write, err if live is None else live.messages)
            summary = sampler.run(emit)
            if summary.lost_updates:
                say(err if live is None else live.messages,
                    f"warning: {summary.lost_updates} counter updates were lost (kernel map full)")
            if not writer.closed:
                emit(summary)
        finally:
            probe.close()
        writer.close()
    except OutputError as e:
        raise OutputFailed(f"cannot write to {where}: {e.strerror}") from None
    finally:
        writer.close(quiet=True)
    if live is not None and live.failure:
        raise OutputFailed(f"the live view failed ({live.failure}); the summary above is complete")
    if sampler.crossing is not None:
        if not args.quiet:
            say(err, sampler.crossing.message())
        return ExitStatus.OVER
    if command is not None and command.status is None and not args.quiet:
        say(err, f"sampling ended; waiting for {os.path.basename(args.command[0])} (PID {command.pid}) to end")
    return ExitStatus.OK


def _attached_backend(probe: Probe) -> BackendInfo:
    backend = probe.backend
    assert backend is not None, "an attached probe knows its backend"
    return backend


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
    if args.cgroups:
        who += f" in {', '.join(args.cgroups)}"
    left_out = [*(args.exclude_names or []), *(args.exclude_cgroups or []),
                *(["procnetmon itself"] if args.exclude_self else [])]
    if left_out:
        who += f" but {', '.join(left_out)}"
    if args.interfaces:
        where = ", ".join(args.interfaces)
    else:
        where = "all interfaces" + ("" if args.include_loopback else " but lo")
    where += _describe_ends(args)
    if args.serve is not None and args.time is None and args.count is None:
        how_long = "until stopped"
    elif args.count is not None:
        how_long = f"for {args.count} interval{'s' if args.count > 1 else ''}"
    elif args.time is not None:
        how_long = f"for {args.time:g} s"
    elif args.live:
        how_long = "until q"
    else:
        how_long = "until it ends" if command is not None else "until Ctrl-C"
    if command is not None and (args.count is not None or args.time is not None):
        how_long = f"until it ends or {how_long[4:]}"
    return f"{who}, {where}, {how_long}"


def _describe_ends(args) -> str:
    """The remote and port filters for the status line, "" without them."""
    def listed(items, shown=3) -> str:
        text = ", ".join(items[:shown])
        return text + (f" and {len(items) - shown} more" if len(items) > shown else "")

    def ports(ranges) -> list[str]:
        return [str(low) if low == high else f"{low}-{high}" for low, high in ranges]

    parts = []
    for what, inc, exc in (("remote", args.remotes, args.exclude_remotes),
                           ("remote port", None if args.remote_ports is None else ports(args.remote_ports),
                            None if args.exclude_remote_ports is None else ports(args.exclude_remote_ports)),
                           ("local port", None if args.local_ports is None else ports(args.local_ports),
                            None if args.exclude_local_ports is None else ports(args.exclude_local_ports))):
        if inc is None and exc is None:
            continue
        text = f"{what} " + (listed(inc) if inc is not None else "any")
        if exc is not None:
            text += f" but {listed(exc)}"
        parts.append(text)
    return f" ({'; '.join(parts)})" if parts else ""


def _warn_on_unknown_counts(write, err: TextIO):
    """``write``, saying once on stderr why connection counts are unknown
    (null, "?") when a record first has such a process."""
    warned = False

    def emit(record) -> bool:
        nonlocal warned
        if not warned:
            unknown = [p.pid for p in record.processes if p.tcp_connections is None]
            if unknown:
                warned = True
                say(err, f"warning: connection counts of {len(unknown)} process"
                         f"{'es' if len(unknown) > 1 else ''} (PID {', '.join(map(str, unknown[:5]))}"
                         f"{', ...' if len(unknown) > 5 else ''}) are unknown: their /proc/PID/fd is not "
                         "readable without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH")
        return write(record)

    return emit


def _live_sink(plan: Plan, out: TextIO, err: TextIO, stop: threading.Event) -> LiveSink:
    """--live: the view, the summary table on ``out`` once the view has
    ended, and -o FILE written as a streaming run writes it."""
    from procnetmon.live.model import ViewModel
    from procnetmon.live.sink import LiveSink

    args = plan.args
    files = None
    if args.output is not None:
        try:
            files = Writer(args.format, args.output, streaming=True, aggregate=args.aggregate,
                           details=args.details, units=args.units, sort=args.sort, top=args.top,
                           no_header=args.no_header, stop=stop)
        except OSError as e:
            raise BadRequest(f"cannot append to {args.output}: {_why(e, args.output)}") from None
    summary = Writer("text", out, aggregate=args.aggregate, details=args.details, units=args.units,
                     sort=args.sort, top=args.top, no_header=args.no_header)
    model = ViewModel(interval=args.interval, mode=args.mode, scope=_interfaces_shown(args),
                      rate_units=args.units, group_by=args.group_by)
    return LiveSink(model, _open_screen, summary, files=files, keep_connections=args.details, err=err)


def _open_screen():
    from procnetmon.live.screen import CursesScreen

    return CursesScreen()


def _start_live(live: LiveSink) -> None:
    from procnetmon.live.screen import TerminalError

    try:
        live.start()
    except TerminalError as e:
        raise BadRequest(f"--live: {e}") from None


def _interfaces_shown(args) -> str:
    if args.interfaces:
        return ",".join(args.interfaces) + (" +lo" if args.include_loopback else "")
    return "all interfaces" if args.include_loopback else "all but lo"


def _metrics_writer(plan: Plan, target) -> tuple[Sink, Optional[Endpoint], str]:
    """The records' sink for --serve, with its HTTP endpoint (made here so
    that a busy port or a bad --web-config is a usage error before anything
    is attached; it answers once started), or for --format prometheus; and
    what the "probes attached" line adds."""
    from procnetmon.output import prometheus

    args = plan.args
    bounds = dict(with_pid=args.metrics_pid, max_sets=args.metrics_max_sets,
                  idle_intervals=math.ceil(prometheus.IDLE_SECONDS / args.interval))
    if args.serve is None:
        try:
            return prometheus.TextfileWriter(target, args.mode, **bounds), None, ""
        except OSError as e:
            raise BadRequest(f"cannot write {args.output}: {_why(e, args.output)}") from None
    metrics = prometheus.Metrics(args.mode, **bounds)
    addr, port = args.serve
    try:
        endpoint = prometheus.serve(metrics, addr, port, plan.web)
    except OSError as e:
        raise BadRequest(f"cannot serve metrics on {addr}:{port}: {e.strerror}") from None
    host = f"[{addr}]" if ":" in addr else addr
    return prometheus.MetricsSink(metrics), endpoint, f"; metrics on {endpoint.scheme}://{host}:{port}/metrics"


def _why(e: OSError, output: str) -> str:
    """An output's OSError in words: a refusal names the culprit itself;
    otherwise the path that failed, when it is not the output's own."""
    if isinstance(e, safeopen.UnsafePath) or not e.filename or os.fspath(e.filename) == output:
        return e.strerror or str(e)
    return f"{e.strerror}: {e.filename}"


# -- signals while sampling, and COMMAND -----------------------------------------------------


def _install_stop_handlers(stop: threading.Event, hangup: bool = False) -> None:
    """SIGINT and SIGTERM (and with ``hangup``, SIGHUP: --live's terminal
    closed) end the sampling through ``stop``.

    The handlers only write a byte to a pipe, and a thread sets the event:
    Event.set() takes a lock that is not reentrant, and a second Ctrl-C
    arriving while the first one's handler held it hung the run for good.
    """
    readable, writable = os.pipe()
    os.set_blocking(writable, False)

    def handler(signum, _frame):
        try:
            os.write(writable, b"s")
        except OSError:
            pass  # the pipe is full: stops are already on their way

    def relay():
        os.read(readable, 1)
        stop.set()

    threading.Thread(target=relay, name="stop-signals", daemon=True).start()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    if hangup:
        signal.signal(signal.SIGHUP, handler)


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
        raise CommandFailed(e.status, str(e)) from None
    command = launch.Command(args.command, launch.invoking_user(os.environ, os.geteuid()))
    command.start()
    _install_command_handlers(command)
    return command
