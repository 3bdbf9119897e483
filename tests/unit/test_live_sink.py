"""The live view's Sink over a fake screen: records reach the view, q ends the
run through the stop callback, the terminal is given back before the
summary is printed, and -o FILE gets every record."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest
import test_contracts
from livefixtures import conn, interval, proc, summary

from procnetmon.live import sink as livesink
from procnetmon.live.model import ViewModel
from procnetmon.output.sink import Sink
from procnetmon.output.writer import Writer


class FakeScreen:
    """Keys typed by the test; frames kept as text; every call noted in ``events``."""

    unicode = True

    def __init__(self, events: list, fail_on_draw: bool = False):
        self.events = events
        self.fail_on_draw = fail_on_draw
        self._r, self._w = os.pipe()
        self._keys: list[str] = []
        self._lock = threading.Lock()
        self.frames: list[list[str]] = []
        self.drawn = threading.Event()

    @property
    def input_fd(self) -> int:
        return self._r

    def type(self, *keys: str) -> None:
        with self._lock:
            self._keys += keys
        os.write(self._w, b"k")

    def size(self):
        return (24, 80)

    def keys(self):
        with self._lock:
            keys, self._keys = self._keys, []
        if keys:
            os.read(self._r, 4096)
        return keys

    def draw(self, lines):
        if self.fail_on_draw:
            raise RuntimeError("drawing failed")
        self.frames.append(["".join(t for t, _ in line) for line in lines])
        self.drawn.set()

    def close(self):
        self.events.append("screen closed")


class Recorder:
    """A Sink that notes what it was given."""

    def __init__(self, events: list, name: str):
        self.events, self.name = events, name
        self.closed = False
        self.records = []

    def write(self, record):
        self.records.append(record)
        self.events.append(f"{self.name} {record.type}")
        return True

    def watch(self, on_gone):
        self.events.append(f"{self.name} watched")

    def close(self, quiet=False):
        self.closed = True
        self.events.append(f"{self.name} closed")


def wait_until(condition, what: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def make(events, *, files=None, keep=False, fail=False, err=None):
    screen = FakeScreen(events, fail_on_draw=fail)
    stops = []
    live = livesink.LiveSink(ViewModel(), lambda: screen, Recorder(events, "summary"), files=files,
                             keep_connections=keep, err=err, running=lambda pid: True)
    live.watch(lambda: stops.append("stop"))
    return live, screen, stops


def test_the_live_sink_is_a_sink():
    test_contracts.assert_conforms(make([])[0], Sink)


def test_records_reach_the_view_and_q_stops_the_run_once():
    events: list = []
    live, screen, stops = make(events)
    live.start()
    live.write(interval(proc(42, "curl", 1000)))
    wait_until(lambda: any("curl" in line for frame in screen.frames for line in frame), "curl on screen")
    screen.type("q", "q")
    wait_until(lambda: stops, "the stop")
    wait_until(lambda: any("stopping" in frame[-1] for frame in screen.frames), "the stopping notice")
    assert stops == ["stop"]
    live.write(summary(proc(42, "curl", 1000)))
    live.close()
    assert events.index("screen closed") < events.index("summary summary")  # the terminal first
    assert events.count("screen closed") == 1


def test_every_record_goes_to_the_file_and_connections_only_when_asked():
    for keep in (False, True):
        events: list = []
        files = Recorder(events, "file")
        live, screen, _ = make(events, files=files, keep=keep)
        live.start()
        row = proc(1, "srv", 10, connections=[conn("127.0.0.1:80", "127.0.0.1:9", 10)])
        live.write(interval(row))
        live.write(summary(row))
        live.close()
        assert [r.type for r in files.records] == ["interval", "summary"]
        assert (files.records[0].processes[0].connections is not None) == keep
        assert files.closed and "file watched" in events


def test_a_view_that_fails_ends_the_run_and_gives_the_terminal_back():
    events: list = []
    live, screen, stops = make(events, fail=True)
    live.start()
    wait_until(lambda: stops, "the stop")
    assert "screen closed" in events
    assert "RuntimeError: drawing failed" in live.failure
    live.write(summary(proc(1, "a", 1)))  # the summary is still printed
    live.close()
    assert "summary summary" in events


def test_a_screen_that_cannot_open_is_raised_by_start():
    live = livesink.LiveSink(ViewModel(), _raise(OSError("no terminal")), Recorder([], "summary"))
    with pytest.raises(OSError, match="no terminal"):
        live.start()
    live.close()


def _raise(error):
    def open_screen():
        raise error
    return open_screen


def test_close_without_a_summary_gives_the_terminal_back():
    events: list = []
    live, screen, _ = make(events)
    live.start()
    live.close(quiet=True)
    assert events[-2:] == ["screen closed", "summary closed"]


def test_warnings_wait_for_the_terminal_and_show_in_the_status_line():
    events: list = []
    err = io.StringIO()
    live, screen, _ = make(events, err=err)
    live.start()
    live.messages.write("procnetmon: warning: something\n")
    live.write(interval(proc(1, "a", 1)))
    wait_until(lambda: any("warning: something" in frame[-1] for frame in screen.frames), "the warning")
    assert err.getvalue() == ""
    live.write(summary(proc(1, "a", 1)))
    live.close()
    assert err.getvalue() == "procnetmon: warning: something\n"


def test_the_summary_is_the_table_a_sampling_run_prints():
    out = io.StringIO()
    table = Writer("text", out)
    live = livesink.LiveSink(ViewModel(), lambda: FakeScreen([]), table)
    live.start()
    record = summary(proc(1, "curl", 1500, 20))
    live.write(record)
    live.close()
    expected = io.StringIO()
    Writer("text", expected).write(record)
    assert out.getvalue() == expected.getvalue() and "curl" in out.getvalue()


def test_still_running_reads_proc():
    assert livesink.still_running(os.getpid())
    assert not livesink.still_running(2 ** 22 + 1)  # above PID_MAX_LIMIT: never a process


def test_a_terminal_gone_before_the_summary_ends_quietly():
    import errno

    from procnetmon.output.writer import OutputError

    class HungUp(Recorder):
        def write(self, record):
            raise OutputError(errno.EIO, "Input/output error")

        def close(self, quiet=False):
            assert quiet  # nothing more to say to a terminal that is gone
            super().close(quiet)

    events: list = []
    files = Recorder(events, "file")
    live = livesink.LiveSink(ViewModel(), lambda: FakeScreen(events), HungUp(events, "summary"), files=files)
    live.start()
    assert live.write(summary(proc(1, "a", 1)))
    live.close()
    assert live.terminal_gone and [r.type for r in files.records] == ["summary"]


def test_any_other_failure_of_the_summary_is_raised():
    import errno

    from procnetmon.output.writer import OutputError

    class Full(Recorder):
        def write(self, record):
            raise OutputError(errno.ENOSPC, "No space left on device")

    live = livesink.LiveSink(ViewModel(), lambda: FakeScreen([]), Full([], "summary"))
    live.start()
    with pytest.raises(OutputError):
        live.write(summary(proc(1, "a", 1)))
    live.close(quiet=True)
