"""``procnetmon -- COMMAND``: start the command so that not one instruction of
it runs unmeasured, hand its signals on, and turn its end into an exit status.

The child is forked at once and waits on a pipe (``Command.start``). Only when
its PID is in the kernel's PID filter and the probes are attached does
``Command.release`` let it exec COMMAND, which keeps procnetmon's standard
streams, environment, working directory and process group (so a terminal's
Ctrl-C reaches it as it would without procnetmon). Under sudo it runs as the
user who invoked sudo, with that user's groups. Standard library only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import threading
import time
from typing import Callable, Optional

from procnetmon.invoker import Credentials, become, invoking_user  # noqa: F401 (invoking_user: launch's API)

# What shells, env(1) and timeout(1) return when COMMAND cannot be run.
EXIT_NOT_FOUND = 127
EXIT_CANNOT_RUN = 126

# Dispositions the child must not inherit: exec keeps ignored signals
# ignored, and Python ignores SIGPIPE and SIGXFSZ.
_RESET_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP,
                  signal.SIGPIPE, signal.SIGXFSZ)


class CommandError(Exception):
    """COMMAND could not be started; ``status`` is the exit status to return."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def exit_status(wait_status: int) -> int:
    """A shell's view of how the child ended: its exit code, or 128 + the
    number of the signal that killed it."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def check_runnable(argv: list[str], path: Optional[str] = None) -> None:
    """Fail early (before anything is attached) when COMMAND is not on PATH."""
    name = argv[0]
    if os.sep not in name and shutil.which(name, path=path) is None:
        raise CommandError(EXIT_NOT_FOUND, f"cannot run {name!r}: command not found")


class Command:
    """COMMAND, forked and held at the gate until ``release``."""

    def __init__(self, argv: list[str], credentials: Optional[Credentials] = None):
        self.argv = list(argv)
        self.credentials = credentials
        self.pid = 0
        self.status: Optional[int] = None  # exit status, once it has ended
        self.released = False  # COMMAND was exec'd
        self._gate: Optional[int] = None
        self._report: Optional[int] = None
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._waiter: Optional[threading.Thread] = None

    def start(self) -> int:
        """Fork the child, which waits at the gate; return its PID."""
        # os.pipe() descriptors are close-on-exec: the report pipe reads
        # end-of-file exactly when the exec succeeds.
        gate_r, gate_w = os.pipe()
        report_r, report_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            self._child(gate_r, gate_w, report_r, report_w)
        os.close(gate_r)
        os.close(report_w)
        self.pid, self._gate, self._report = pid, gate_w, report_r
        return pid

    def _child(self, gate_r: int, gate_w: int, report_r: int, report_w: int) -> None:
        stage = "wait"
        try:
            os.close(gate_w)
            os.close(report_r)
            for sig in _RESET_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            if os.read(gate_r, 1) != b"1":
                os._exit(EXIT_CANNOT_RUN)  # procnetmon gave up (or died): run nothing
            os.close(gate_r)
            if self.credentials is not None:
                stage = "user"
                become(self.credentials)
            stage = "caps"
            _clear_ambient_capabilities()
            stage = "exec"
            os.execvp(self.argv[0], self.argv)
        except OSError as e:
            try:
                os.write(report_w, f"{stage} {e.errno}".encode())
            except OSError:
                pass
        finally:
            os._exit(EXIT_NOT_FOUND)

    def release(self) -> None:
        """Let the child exec COMMAND; raise CommandError if that failed."""
        gate, self._gate = self._gate, None
        try:
            os.write(gate, b"1")
        except OSError:
            pass  # the child died at the gate (a signal): wait() tells how
        finally:
            os.close(gate)
        chunks = []
        while True:
            chunk = os.read(self._report, 64)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self._report)
        self._report = None
        if chunks:
            self.wait()
            stage, _, number = b"".join(chunks).decode().partition(" ")
            raise _start_error(self.argv[0], stage, int(number or 0), self.credentials)
        self.released = True

    def abort(self) -> None:
        """Close the gate without running COMMAND (procnetmon failed first), and reap the child."""
        if self._gate is not None:
            os.close(self._gate)
            self._gate = None
            if self._report is not None:
                os.close(self._report)
                self._report = None
            self.wait()

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in another thread) once COMMAND has ended."""
        def watch():
            # Waited for without reaping first, so that forward() never
            # signals a PID the kernel may have handed to someone else.
            try:
                os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass
            self._reap()
            callback()

        self._waiter = threading.Thread(target=watch, name="command-waiter", daemon=True)
        self._waiter.start()

    def _reap(self) -> None:
        with self._lock:
            if self.status is None:
                try:
                    _, wait_status = os.waitpid(self.pid, 0)
                    self.status = exit_status(wait_status)
                except ChildProcessError:
                    self.status = EXIT_CANNOT_RUN
            self._ended.set()

    def forward(self, signum: int) -> None:
        """Send ``signum`` to COMMAND if it has not ended."""
        with self._lock:
            if self.status is None:
                try:
                    os.kill(self.pid, signum)
                except ProcessLookupError:
                    pass

    def stop(self, grace: float) -> bool:
        """End COMMAND: SIGTERM, then SIGKILL if it still runs ``grace``
        seconds later; wait for it. Returns whether it was still running."""
        running = self.status is None
        self.forward(signal.SIGTERM)
        if self._waiter is not None:
            deadline = time.monotonic() + grace
            while not self._ended.wait(0.5):  # short waits: signal handlers run in between
                if time.monotonic() >= deadline:
                    self.forward(signal.SIGKILL)
                    break
        self.wait()
        return running

    def wait(self) -> int:
        """Block until COMMAND has ended; return its exit status."""
        if self._waiter is not None:
            while not self._ended.wait(0.5):
                pass  # short waits: signal handlers run in between
        else:
            self._reap()
        return self.status


_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4


def _clear_ambient_capabilities() -> None:
    # A non-root caller's ambient capabilities survive execve: the measured
    # command must not inherit what procnetmon was given to attach probes.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        if err != errno.EINVAL:  # EINVAL: a kernel without ambient capabilities
            raise OSError(err, os.strerror(err))


def _start_error(name: str, stage: str, number: int, credentials: Optional[Credentials]) -> CommandError:
    reason = os.strerror(number) if number else "unknown error"
    if stage == "user" and credentials is not None:
        return CommandError(EXIT_CANNOT_RUN, f"cannot run {name!r} as uid {credentials.uid}: {reason}")
    status = EXIT_NOT_FOUND if number == errno.ENOENT else EXIT_CANNOT_RUN
    return CommandError(status, f"cannot run {name!r}: {reason}")
