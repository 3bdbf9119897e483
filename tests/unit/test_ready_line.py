"""The readiness line is a contract: scripts, the tests and the benchmark wait for it."""

from procnetmon.status import READY, is_ready


def test_the_ready_line_is_recognised_and_nothing_else():
    assert READY == "probes attached"
    assert is_ready("procnetmon: probes attached in 0.41 s, 0.52 s after launch (tracepoint backend); "
                    "sampling every process, all interfaces but lo, for 3 s\n")
    assert not is_ready("procnetmon: mounted tracefs at /sys/kernel/tracing (it was not mounted)\n")
    assert not is_ready("x procnetmon: probes attached in 1 s\n")  # only at the start of a line
