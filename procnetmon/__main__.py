"""procnetmon's entry point, the program's edge: parse, run, turn what happened
into an exit status. The run itself (plan, probes, sampler, sinks) is session.py.

Everything that can be wrong with the request (a PID that does not exist,
an unknown interface, missing privileges) is reported before any probe is
attached. Once sampling runs, SIGINT and SIGTERM only end it early: the
summary of everything measured is still written. Before that, they end the
program at once (status 130 or 143, no traceback): nothing is attached and
nothing has been written yet. A signal after the summary changes nothing.

With ``-- COMMAND`` procnetmon lives as long as COMMAND does: once COMMAND is
forked, SIGINT and SIGQUIT are ignored (a terminal sends them to COMMAND, in
the same process group, directly, as time(1) expects too), SIGTERM and
SIGHUP are passed on to COMMAND, and COMMAND's end ends sampling.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING, Optional, TextIO

from procnetmon import cli
from procnetmon.status import ExitStatus

if TYPE_CHECKING:
    from procnetmon import session


def _load_modules() -> None:
    """The rest of procnetmon (psutil, the BTF reader, the engine, all that
    the session imports), imported after the early signal handlers are in
    place: a Ctrl-C during these imports ends the program quietly instead of
    with a traceback."""
    global session
    from procnetmon import session


def _quit_before_sampling(signum, _frame) -> None:
    # Nothing is attached and nothing written yet: leave at once, as the
    # default action would, but without KeyboardInterrupt's traceback.
    os._exit(ExitStatus.INTERRUPTED + signum)


def _install_early_handlers() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _quit_before_sampling)


def _repair_std_streams() -> bool:
    """Point closed standard descriptors at /dev/null so that nothing opened
    later (the -o file) takes their number and no write to them raises.
    Returns whether standard output was closed: then nobody reads it, as
    after ``| head`` has exited."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):
        devnull = os.open(os.devnull, os.O_RDWR)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)
    if 1 in closed or sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if 2 in closed or sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)
    return 1 in closed


def run(args, out: TextIO, err: TextIO, *, stdout_closed: bool = False) -> int:
    """What the arguments ask for: --check, --ebpf, or a measuring session."""
    if args.check:
        return session.run_check(out, args.backend)
    if args.ebpf:
        return session.print_ebpf(args, out, err)
    return session.run(session.plan(args, err, out), out, err, failed=lambda e: _failed(err, e),
                       stdout_closed=stdout_closed)


def _failed(err: TextIO, failure: session.Failure) -> int:
    """The one place a failure becomes its line on stderr and its exit status."""
    session.say(err, f"error: {failure}")
    if isinstance(failure, session.CommandFailed):
        return failure.status  # as a shell would say it: 127 not found, 126 not runnable
    if isinstance(failure, session.BadRequest):
        return ExitStatus.USAGE
    if isinstance(failure, session.Unavailable):
        return ExitStatus.UNAVAILABLE
    return ExitStatus.ERROR  # session.OutputFailed: the records could not be written


def main(argv: Optional[list[str]] = None, *, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None) -> int:
    """Run procnetmon and return its exit status. Called without streams it
    is the program itself: it also takes care of closed standard
    descriptors and of signals before and after sampling."""
    whole_program = stdout is None and stderr is None
    stdout_closed = False
    if whole_program:
        _install_early_handlers()
        stdout_closed = _repair_std_streams()
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        try:
            # argparse prints --help, --version and usage errors itself.
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                args = cli.parse_args(argv)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (ExitStatus.OK if e.code is None else ExitStatus.USAGE)
        _load_modules()
        try:
            return int(run(args, out, err, stdout_closed=stdout_closed))
        except session.Failure as e:
            return _failed(err, e)
    finally:
        if whole_program:
            # The summary is out: a late second Ctrl-C must not turn the
            # status into death by signal while the interpreter shuts down
            # (which puts back the default handlers).
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
