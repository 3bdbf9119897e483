"""procnetmon's exit statuses (README "Exit status"), shared by the program's
edge (``__main__``), which turns failures into them, and the session."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1  # measurement failed at run time, or the output could not be written
    USAGE = 2  # bad options, nonexistent PID, unknown interface
    UNAVAILABLE = 3  # missing privileges or a kernel feature
    INTERRUPTED = 128  # + the signal number: stopped before sampling began
