"""The Sink of a ``--live`` run: the interval records go to the view (and to
``-o FILE`` as a streaming run writes them), the summary to standard output
once the terminal is put back, as a sampling run prints it.

The sampler keeps the main thread (its interval loop, the stop Event, the
signal handlers of the session); the view runs in a thread of its own that
owns curses, applies the records to the model, reads the keys and draws.
Nothing the view does can hold up the sampling: ``write`` only queues the
record and wakes the view. The q key, like Ctrl-C, ends the run through the
stop Event, so the last interval and the summary are never lost.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import select
import threading
from collections import deque
from typing import Callable, Optional, Protocol, Sequence, TextIO

from procnetmon.live import layout
from procnetmon.live.model import ViewModel
from procnetmon.model import RECORD_SUMMARY, Record
from procnetmon.output.sink import Sink
from procnetmon.output.writer import OutputError

WAKE_S = 0.25  # the longest the view sleeps: a resize is drawn within this
FINISH_WAIT_S = 5.0  # how long the summary waits for the view to let go of the terminal


class Screen(Protocol):
    """What the view needs of a terminal: ``screen.CursesScreen``, or a test's."""

    unicode: bool

    @property
    def input_fd(self) -> int: ...

    def size(self) -> tuple[int, int]: ...

    def keys(self) -> list[str]: ...

    def draw(self, lines: Sequence[layout.Line]) -> None: ...

    def close(self) -> None: ...


def still_running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended): what records cannot say of a process that went quiet first."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


class HeldMessages(io.StringIO):
    """A stream for the session's warnings while the view owns the terminal:
    kept, shown in the status line, and printed to standard error after."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            return super().write(text)

    def last_line(self) -> str:
        with self._lock:
            lines = self.getvalue().splitlines()
        return lines[-1] if lines else ""

    def release(self, err: TextIO) -> None:
        with self._lock:
            text = self.getvalue()
            self.seek(0)
            self.truncate()
        if text:
            try:
                err.write(text)
                err.flush()
            except (OSError, ValueError):
                pass


def without_connections(record: Record) -> Record:
    """``record`` as a run without -d writes it: --live counts per socket for the
    d key, but -o FILE gets only what was asked for."""
    return dataclasses.replace(record, processes=[dataclasses.replace(p, connections=None)
                                                  for p in record.processes])


class LiveSink:
    """Records to the view, to ``files`` (-o), and the summary to ``summary``."""

    def __init__(self, model: ViewModel, open_screen: Callable[[], Screen], summary: Sink, *,
                 files: Optional[Sink] = None, keep_connections: bool = False,
                 err: Optional[TextIO] = None,
                 running: Optional[Callable[[int], bool]] = still_running):
        self.model = model
        self.closed = False
        self.failure: Optional[str] = None  # why the view ended on its own, in a line
        self.terminal_gone = False  # the summary found the terminal hung up
        self.messages = HeldMessages()
        self._open_screen = open_screen
        self._summary = summary
        self._files = files
        self._keep_connections = keep_connections
        self._err = err
        self._running = running
        self._inbox: deque[Record] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._on_quit: Callable[[], None] = lambda: None
        self._finish = threading.Event()
        self._opened = threading.Event()
        self._open_error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self._screen: Optional[Screen] = None
        self._done = False

    # -- the Sink ---------------------------------------------------------------------

    def watch(self, on_gone: Callable[[], None]) -> None:
        """``on_gone`` ends the run: called on q, and when the view fails."""
        self._on_quit = on_gone
        if self._files is not None:
            self._files.watch(on_gone)

    def start(self) -> None:
        """Take the terminal; raises what kept the screen from opening."""
        self._thread = threading.Thread(target=self._run, name="procnetmon-live", daemon=True)
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            self._thread.join()
            raise self._open_error

    def write(self, record: Record) -> bool:
        going = True
        if self._files is not None and not self._files.closed:
            going = self._files.write(record if self._keep_connections else without_connections(record))
        if record.type == RECORD_SUMMARY:
            self._let_go()
            try:
                return self._summary.write(record) and going
            except OutputError as e:
                if e.errno != errno.EIO:
                    raise
                # The terminal is gone (SIGHUP: its window closed, ssh dropped): nobody is
                # there to read the table, as after | head; -o FILE has the summary.
                self.terminal_gone = True
                return going
        self._inbox.append(record)
        self._wake()
        return going

    def close(self, quiet: bool = False) -> None:
        """Give the terminal back (if the summary did not already), then close the outputs."""
        self._let_go()
        try:
            if self._files is not None:
                self._files.close(quiet)
        finally:
            self.closed = True
            self._summary.close(quiet or self.terminal_gone)

    # -- the view's thread ------------------------------------------------------------

    def _let_go(self) -> None:
        """End the view and put the terminal back; then the held messages go to stderr."""
        if self._done:
            return
        self._done = True
        self._finish.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(FINISH_WAIT_S)
            if self._thread.is_alive() and self._screen is not None:
                self._screen.close()  # the view is stuck: the terminal comes first
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._err is not None:
            self.messages.release(self._err)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"r")
        except OSError:
            pass  # full (the view is busy) or closed (it has ended): nothing to wake

    def _run(self) -> None:
        try:
            self._screen = self._open_screen()
        except BaseException as e:
            self._open_error = e
            self._opened.set()
            return
        self._opened.set()
        screen = self._screen
        try:
            self._loop(screen)
        except Exception as e:
            self.failure = f"{type(e).__name__}: {e}"
            self._on_quit()
        finally:
            screen.close()

    def _loop(self, screen: Screen) -> None:
        model = self.model
        dirty = True
        quitting = False
        empty_reads = 0
        while not self._finish.is_set():
            if dirty:
                model.notice = "stopping: the summary follows" if quitting else self.messages.last_line()
                height, width = screen.size()
                screen.draw(layout.frame(model, width, height, screen.unicode))
                dirty = False
            try:
                ready, _, _ = select.select([screen.input_fd, self._wake_r], [], [], WAKE_S)
            except (OSError, ValueError):
                return  # the wake pipe is closed: the run is over
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            while self._inbox:
                model.update(self._inbox.popleft(), self._running)
                dirty = True
            keys = screen.keys()
            if keys:
                dirty, empty_reads = True, 0
            elif screen.input_fd in ready:
                # Readable with no key in it: the terminal hung up (SIGHUP is on its way).
                empty_reads += 1
                if empty_reads > 3:
                    self._finish.wait(WAKE_S)
            page_rows = max(1, screen.size()[0] - 4)
            for key in keys:
                if key != "resize" and model.handle_key(key, page_rows) == "quit" and not quitting:
                    quitting = True
                    self._on_quit()
