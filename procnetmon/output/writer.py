"""The Writer: owns where output goes (standard output, or a file appended
to with ``-o``), picks the formatter for each record and writes its text.

Rules it keeps, and why:

* Each record is written with one ``write(2)`` of whole lines and nothing is
  left in a buffer, so a process killed between records never leaves half a
  line in a log, and appends from cron runs do not interleave mid-line.
* The CSV header goes out once: on standard output, or when the ``-o`` file
  is new or empty; never when appending to a file that already has rows, and
  never with ``--no-header``.
* A closed standard output (``procnetmon ... | head``) is not an error: the
  Writer sets ``closed``, points the stdout descriptor at /dev/null so that
  Python's own flush at exit cannot fail again, and the caller stops quietly.
  ``watch`` notices a pipe's reader leaving while nothing is written (as
  ``tail -f`` does), so an idle run does not go on for nobody.
* Any other write error (``ENOSPC`` on /dev/full, ``EIO``) raises
  ``OutputError``: the caller reports it in one line.
* Appends to a regular file take an exclusive ``flock`` around each write,
  and the CSV header is decided under it, at the first write: CSV jobs
  started together on a new file write one header between them. The lock
  is only tried (``_FileLock``): a reader holding it delays a write by at
  most LOCK_WAIT_S, and not at all once the run is stopping.
* Without streaming only the summary is written (one JSON document, one
  table); when streaming every record is (JSON lines, interval lines).  CSV
  writes rows for every record it is given.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import select
import stat
import sys
import threading
import time
from typing import IO, Callable, Optional, Union

from procnetmon import safeopen
from procnetmon.model import RECORD_SUMMARY, Record
from procnetmon.output.csvout import format_csv
from procnetmon.output.jsonout import format_json, format_json_line
from procnetmon.output.text import format_text

STDOUT_NAMES = (None, "-")


class OutputError(OSError):
    """Writing the output failed for a reason other than a closed reader."""


class Writer:
    """Formats records and writes them to a stream or appends them to a file.

    ``target`` is a path (opened for appending; ``None`` or ``"-"`` mean
    standard output) or an open text stream.  ``write`` returns False once
    the output is closed; the caller should then stop measuring.
    """

    def __init__(
        self,
        fmt: str,
        target: Union[str, os.PathLike, IO[str], None] = None,
        *,
        streaming: bool = False,
        aggregate: bool = False,
        details: bool = False,
        units: str = "bits",
        sort: str = "total",
        top: Optional[int] = None,
        no_header: bool = False,
        stop: Optional[threading.Event] = None,
    ):
        if fmt not in ("text", "json", "csv"):
            raise ValueError(f"unknown output format {fmt!r}")
        self.fmt = fmt
        self.streaming = streaming
        self.aggregate = aggregate
        self.details = details
        self.units = units
        self.sort = sort
        self.top = top
        self.no_header = no_header
        self.closed = False
        self._stop = stop  # set when the run is ending: lock waits end at once
        self._peer_gone = threading.Event()  # set by the watch thread
        self._owned = False  # whether close() closes the stream
        self._stream = self._open(target)
        # CSV: the header row only if nothing is there yet, decided at the
        # first write (under the file lock).  Text: the column headings of
        # the streaming lines, once per run.
        self._header_due = not no_header
        self._header_decided = fmt != "csv"

    # ------------------------------------------------------------------
    def _open(self, target) -> IO[str]:
        if target in STDOUT_NAMES:
            return sys.stdout
        if isinstance(target, (str, os.PathLike)):
            self._owned = True
            # safeopen: no symlink at the name, no directory on the way that
            # another user can change, 0600 (the rows hold every user's
            # command lines), and under sudo opened as the invoking user.
            fd = safeopen.open_append(os.fspath(target), 0o600)
            try:
                mode = os.fstat(fd).st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
                    raise OSError(errno.EINVAL, "not a regular file", os.fspath(target))
                # newline="": the formatters already end their lines with "\n".
                return open(fd, "a", encoding="utf-8", errors="backslashreplace", newline="")
            except BaseException:
                os.close(fd)
                raise
        return target

    @staticmethod
    def _is_empty(stream: IO[str]) -> bool:
        """Whether ``stream`` is a regular file with nothing in it, or is not
        a regular file at all (terminal, pipe, in-memory stream)."""
        fd = _fileno(stream)
        if fd is None:
            return True
        st = os.fstat(fd)
        return not stat.S_ISREG(st.st_mode) or st.st_size == 0

    # ------------------------------------------------------------------
    def render(self, record: Record) -> str:
        """The text this writer would write for ``record`` ("" for none).
        Advances the header-once state."""
        if not self.streaming and self.fmt != "csv" and record.type != RECORD_SUMMARY:
            return ""  # without streaming only the summary is shown
        if self.fmt == "json":
            return format_json_line(record) if self.streaming else format_json(record)
        if self.fmt == "csv":
            text = format_csv(record, header=self._header_due, aggregate=self.aggregate)
            self._header_due = False
            return text
        return self._render_text(record)

    def _render_text(self, record: Record) -> str:
        is_summary = record.type == RECORD_SUMMARY
        # Interval lines get their column headings once; a summary table
        # always has them (unless --no-header).
        header = (not self.no_header) if is_summary else self._header_due
        if not is_summary:
            self._header_due = False
        text = format_text(
            record,
            units=self.units,
            sort=self.sort,
            top=self.top,
            aggregate=self.aggregate,
            details=self.details,
            header=header,
        )
        if is_summary and self.streaming:
            text = "\n" + text  # set the summary apart from the interval lines
        return text

    def write(self, record: Record) -> bool:
        """Format ``record`` and write it whole.  False once output is closed."""
        if self._peer_gone.is_set() and not self.closed:
            self._on_broken_pipe()
        if self.closed:
            return False
        with self._locked():
            if not self._header_decided:
                self._header_decided = True
                self._header_due = self._header_due and self._is_empty(self._stream)
            text = self.render(record)
            if text:
                self._write_all(text)
        return not self.closed

    def _locked(self):
        """An exclusive flock on a regular output file for one write (a no-op
        for anything else): appenders started together take turns."""
        fd = _fileno(self._stream)
        return _FileLock(fd if fd is not None and _is_regular(fd) else None, self._stop)

    def _write_all(self, text: str) -> None:
        try:
            fd = _fileno(self._stream)
            if fd is None:
                self._stream.write(text)
                self._stream.flush()
            else:
                # Flush anything written through the stream object first, then
                # one write(2) straight to the descriptor, so nothing is left
                # half-written in a userspace buffer.  Undecodable bytes of
                # names reach here already escaped; backslashreplace only
                # guarantees that what is written is UTF-8.
                self._stream.flush()
                _write_fd(fd, text.encode("utf-8", "backslashreplace"))
        except BrokenPipeError:
            self._on_broken_pipe()
        except OSError as e:
            raise OutputError(e.errno, e.strerror or os.strerror(e.errno or errno.EIO)) from None

    def watch(self, on_gone: Callable[[], None]) -> None:
        """Call ``on_gone`` (from a thread) when the reader of a pipe or socket
        output goes away, even while nothing is written."""
        fd = _fileno(self._stream)
        if fd is None or self.closed:
            return
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return

        def wait_for_error() -> None:
            poller = select.poll()
            poller.register(fd, 0)  # POLLERR and POLLHUP are reported without asking
            while True:
                try:
                    events = poller.poll()
                except OSError:
                    return
                if any(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, ev in events):
                    self._peer_gone.set()
                    on_gone()
                    return

        threading.Thread(target=wait_for_error, name="procnetmon-output-watch", daemon=True).start()

    def _on_broken_pipe(self) -> None:
        self.closed = True
        fd = _fileno(self._stream)
        if fd is not None and fd == _fileno(sys.stdout):
            # The recipe of the Python docs (signal module, "Note on SIGPIPE"):
            # later flushes of sys.stdout, including the one at exit, must not
            # raise BrokenPipeError again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)

    def close(self, quiet: bool = False) -> None:
        """Flush, and close the file if this writer opened it.  ``quiet``:
        after a failure already reported, raise nothing more."""
        if self.closed and not self._owned:
            return
        try:
            if self._owned:
                self._stream.close()
            elif not self.closed:
                self._stream.flush()
        except BrokenPipeError:
            self._on_broken_pipe()
        except OSError as e:
            if not quiet:
                raise OutputError(e.errno, e.strerror) from None
        finally:
            self.closed = True
            self._owned = False

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


LOCK_WAIT_S = 0.5
LOCK_POLL_S = 0.01


class _FileLock:
    """flock(LOCK_EX) for one write, tried without blocking: anyone who can
    read the file can take the lock, so after LOCK_WAIT_S, or at once when
    ``stop`` is set (SIGTERM, Ctrl-C: the summary is due), the write goes
    ahead unlocked rather than let another user stall root or lose what
    was measured."""

    def __init__(self, fd: Optional[int], stop: Optional[threading.Event] = None):
        self.fd = fd
        self.stop = stop or threading.Event()

    def __enter__(self):
        if self.fd is not None:
            try:
                deadline = time.monotonic() + LOCK_WAIT_S
                while True:
                    try:
                        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline or self.stop.wait(LOCK_POLL_S):
                            self.fd = None
                            break
            except OSError:
                self.fd = None  # a filesystem without locks: write anyway
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


def _is_regular(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _fileno(stream) -> Optional[int]:
    """The descriptor under ``stream``, or None for in-memory streams."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data``; a pipe may take less than asked per call."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
