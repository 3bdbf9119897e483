"""procnetmon's exit statuses (README "Exit status"), shared by the program's
edge (``__main__``), which turns failures into them, and the session; and
its readiness line, which scripts, the tests and the benchmark wait for."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1  # measurement failed at run time, or the output could not be written
    USAGE = 2  # bad options, nonexistent PID, unknown interface
    UNAVAILABLE = 3  # missing privileges or a kernel feature
    OVER = 4  # an --exit-over threshold was crossed (after the records that show it were written)
    INTERRUPTED = 128  # + the signal number: stopped before sampling began


# The stderr line that says the probes are attached and counting: from it
# on, nothing a process moves is missed. Its first words are a contract
# (README "Usage"); what follows them (times, backend, scope) is for people.
READY = "probes attached"


def is_ready(line: str) -> bool:
    """Whether a line of procnetmon's stderr is its readiness line."""
    return line.startswith(f"procnetmon: {READY} ")
