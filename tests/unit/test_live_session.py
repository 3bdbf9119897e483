"""A --live run through the session, over the fake probe of test_session and
the fake screen of test_live_sink: the view starts once the probes are
attached, gets every interval, lets go of the terminal before the summary
is written, and -o FILE gets every record."""

from __future__ import annotations

import signal
import threading

import pytest
from test_live_sink import FakeScreen
from test_session import MINE, Run, restored_handlers  # noqa: F401  # restored_handlers: the fixture

from procnetmon import session
from procnetmon.model import RECORD_INTERVAL, RECORD_SUMMARY


@pytest.fixture
def live(monkeypatch):
    run = Run(monkeypatch)
    run.screens = []

    def open_screen():
        run.events.append("screen opened")
        run.screens.append(FakeScreen(run.events))
        return run.screens[-1]

    monkeypatch.setattr(session, "_open_screen", open_screen)
    return run


def test_a_live_run_shows_every_interval_then_prints_the_summary(live):
    live.probe_options = dict(snapshots=[MINE])
    assert live("--live", "-n", "2", "--interval", "0.1", "-q", "--json", "-o", "/somewhere/x.json") == 0
    (files_fmt, files_target, files_kw), (fmt, target, kw) = live.writer_calls
    assert (files_fmt, files_target, files_kw["streaming"]) == ("json", "/somewhere/x.json", True)
    assert (fmt, target, kw.get("streaming", False)) == ("text", live.out, False)  # the table, as -t prints it
    events = [e for e in live.events if e != "watch"]
    assert events.index("attach") < events.index("screen opened")
    last_summary = len(events) - 1 - events[::-1].index(("write", RECORD_SUMMARY))  # the table's
    assert events.index(("write", RECORD_SUMMARY)) < events.index("screen closed") < last_summary
    # The file writer (first) took both intervals and the summary; the table writer the summary alone.
    writes = [e for e in events if isinstance(e, tuple)]
    assert writes == [("write", RECORD_INTERVAL), ("write", RECORD_INTERVAL), ("write", RECORD_SUMMARY),
                      ("write", RECORD_SUMMARY)]
    (spec,) = live.specs
    assert spec.details  # for the d key


def test_q_ends_a_live_run_and_sighup_is_a_stop_signal(live, monkeypatch):
    def press_q_when_drawn():
        screen = live.screens[0]
        screen.drawn.wait(5)
        screen.type("q")

    live.probe_options = dict(snapshots=[MINE])
    start = session._start_live

    def start_then_quit(sink):
        start(sink)
        threading.Thread(target=press_q_when_drawn, daemon=True).start()

    monkeypatch.setattr(session, "_start_live", start_then_quit)
    assert live("--live", "--interval", "0.1", "-q") == 0  # no -t, -n: only q ends it
    assert ("write", RECORD_SUMMARY) in live.events
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)
