"""SIGINT and SIGTERM during sampling: the handler never blocks.

A handler that set the stop Event took the Event's lock, which is not
reentrant: a second Ctrl-C landing while the first handler (or the main
thread's own Event.wait) held it hung the run for good, with nothing
written (seen once in a fresh-machine CI run, and 1 in 4 runs of
test_hostile's double Ctrl-C under load).
"""

from __future__ import annotations

import signal
import threading

import pytest

from procnetmon import session


@pytest.fixture
def restored_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_landing_inside_the_events_lock_does_not_hang(restored_handlers, signum):
    stop = threading.Event()
    session._install_stop_handlers(stop)
    handler = signal.getsignal(signum)
    returned = threading.Event()

    def nested():
        with stop._cond:  # where a second signal can land: inside the Event's own lock
            handler(signum, None)
            returned.set()

    threading.Thread(target=nested, daemon=True).start()
    assert returned.wait(5), "the handler blocked on the stop event's lock"
    assert stop.wait(5), "the stop never arrived"


def test_many_signals_make_one_stop(restored_handlers):
    stop = threading.Event()
    session._install_stop_handlers(stop)
    handler = signal.getsignal(signal.SIGINT)
    for _ in range(100_000):  # more than a pipe holds: the extra ones are dropped, not blocking
        handler(signal.SIGINT, None)
    assert stop.wait(5)
