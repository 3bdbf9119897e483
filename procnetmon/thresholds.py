"""``--exit-over``: thresholds on bytes or rates, their grammar and the test
of each sample against them. Pure: no I/O, the standard library only (the
CLI parses with it, and argparse-manpage loads the CLI without the package).

The grammar, spaces ignored::

    SPEC   = [SCOPE ":"] WHAT ">" AMOUNT
    SCOPE  = "all"           every counted process together (the default)
           | "proc"          any one process on its own
    WHAT   = "in" | "out" | "in+out" | "out+in" | "total"    (total is in+out)
    AMOUNT = NUMBER [UNIT] ["/s"]
    UNIT   = "B" | "kB" | "KB" | "MB" | "GB" | "TB"          powers of 1000
           | "KiB" | "MiB" | "GiB" | "TiB"                   powers of 1024

``out>10MB``: more than 10,000,000 bytes sent since the start, all processes
together. ``proc:in+out>1MiB/s``: one process moved more than 1 MiB in one
interval (``--interval``, the window of the peak rates). ``out>0``: any byte
sent. The prefix letter may be either case; the B must be a capital, since
``Mb`` reads as megabits, which procnetmon does not count in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Optional

# The largest amount: far beyond any counter (2**63 bytes is 9.2 EB), small
# enough that comparisons stay exact in a float.
MAX_AMOUNT = 2.0 ** 63

EXAMPLES = "e.g. out>10MB, total>5GB, proc:in+out>1MiB/s, out>0"

_UNITS = {
    "": 1, "B": 1,
    "KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3, "TB": 1000 ** 4,
    "KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3, "TIB": 1024 ** 4,
}
_WHAT = {"in": ("in",), "out": ("out",), "in+out": ("in", "out"), "out+in": ("in", "out"),
         "total": ("in", "out")}
_SCOPES = ("all", "proc")
_SPEC_RE = re.compile(
    r"(?:(?P<scope>[a-z]+):)?(?P<what>[a-z+]+)>(?P<number>\d+(?:\.\d*)?|\.\d+)"
    r"(?P<unit>[kKmMgGtT]?i?B)?(?P<rate>/s)?"
)


class BadThreshold(ValueError):
    """A SPEC that does not parse; the message says what to write instead."""


@dataclass(frozen=True)
class Threshold:
    """One --exit-over: crossed when the quantity is more than ``limit``."""

    text: str  # as written, for messages
    per_process: bool  # any one process (proc:), or all together
    directions: tuple[str, ...]  # ("in",), ("out",) or ("in", "out")
    limit: float  # bytes, or bytes per second when ``rate``
    rate: bool  # a one-interval rate, not bytes since the start

    def quantity(self, bytes_in: float, bytes_out: float) -> float:
        return (bytes_in if "in" in self.directions else 0) + (bytes_out if "out" in self.directions else 0)


@dataclass(frozen=True)
class Crossing:
    """A threshold crossed: by how much, and by which process (None: all together)."""

    threshold: Threshold
    value: float  # bytes or bytes per second
    pid: Optional[int] = None

    def message(self) -> str:
        t = self.threshold
        what = "+".join(t.directions)
        amount = f"{self.value:.0f} bytes/s {what} over one interval" if t.rate else \
            f"{self.value:.0f} bytes {what} since the start"
        who = f"PID {self.pid}" if self.pid is not None else "all processes together"
        return f"--exit-over {t.text} crossed: {amount} ({who})"


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 60 else f"{text[:40]!r}... ({len(text)} characters)"


def parse(text: str) -> Threshold:
    """The Threshold a SPEC says; BadThreshold for anything else."""
    compact = "".join(text.split())
    match = _SPEC_RE.fullmatch(_lower_but_unit(compact))
    if match is None:
        raise BadThreshold(_why_not(compact))
    scope = match.group("scope") or "all"
    if scope not in _SCOPES:
        raise BadThreshold(f"unknown scope {scope!r} in {_shown(text)}: write proc: (each process) "
                           f"or nothing (all together), {EXAMPLES}")
    what = match.group("what")
    if what not in _WHAT:
        raise BadThreshold(f"unknown quantity {what!r} in {_shown(text)}: write in, out, in+out or total, "
                           f"{EXAMPLES}")
    unit = match.group("unit") or ""
    factor = _UNITS.get(unit.upper())
    if factor is None:
        raise BadThreshold(f"unknown unit {unit!r} in {_shown(text)}: write B, kB, MB, GB, TB "
                           f"(powers of 1000) or KiB, MiB, GiB, TiB, {EXAMPLES}")
    limit = float(match.group("number")) * factor
    if not math.isfinite(limit) or limit >= MAX_AMOUNT:
        raise BadThreshold(f"amount too large in {_shown(text)}: the largest is 8 EiB")
    return Threshold(text=compact, per_process=scope == "proc", directions=_WHAT[what], limit=limit,
                     rate=match.group("rate") is not None)


def _lower_but_unit(compact: str) -> str:
    """``compact`` with everything but the unit's letters lower-cased: the
    words of a SPEC may be written in any case, the unit keeps its B."""
    head, sep, amount = compact.partition(">")
    return head.lower() + sep + amount


def _why_not(compact: str) -> str:
    """Why a SPEC does not parse, as specifically as can be told."""
    shown = _shown(compact)
    if not compact:
        return f"empty threshold: write WHAT>AMOUNT, {EXAMPLES}"
    if ">" not in compact:
        if "<" in compact or "=" in compact:
            return f"invalid threshold {shown}: only > is supported (exit when over), {EXAMPLES}"
        return f"invalid threshold {shown}: write WHAT>AMOUNT, {EXAMPLES}"
    amount = compact.partition(">")[2]
    if amount.startswith("="):
        return f"invalid threshold {shown}: only > is supported (exit when over), {EXAMPLES}"
    parts = re.fullmatch(r"(?P<number>[^A-Za-z/]*)(?P<unit>[A-Za-z]*)(?P<per>/.*)?", amount)
    if parts is None:
        return f"invalid threshold {shown}: {EXAMPLES}"
    number, unit, per = parts.group("number"), parts.group("unit"), parts.group("per")
    if number.startswith("-"):
        return f"invalid amount in {shown}: it cannot be negative, {EXAMPLES}"
    if not re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", number):
        return f"invalid amount in {shown}: write a number with an optional unit and /s, {EXAMPLES}"
    if per is not None and per != "/s":
        return f"invalid rate in {shown}: rates are per second, written /s, {EXAMPLES}"
    if unit.endswith("b") and unit.upper() in _UNITS:
        return f"invalid unit in {shown}: bytes are a capital B (bits are not counted), {EXAMPLES}"
    if unit.upper() not in _UNITS:
        return (f"unknown unit {unit!r} in {shown}: write B, kB, MB, GB, TB (powers of 1000) "
                f"or KiB, MiB, GiB, TiB, {EXAMPLES}")
    return f"invalid threshold {shown}: {EXAMPLES}"


def first_crossing(thresholds: Iterable[Threshold], *, moved: tuple[float, float], window: tuple[float, float],
                   seconds: float, processes: Iterable[tuple[int, tuple[float, float], tuple[float, float]]],
                   rates_count: bool = True) -> Optional[Crossing]:
    """The first threshold the latest sample crossed, or None.

    ``moved`` is (in, out) since the start over all processes, ``window``
    the same for the last interval, which lasted ``seconds``; ``processes``
    gives (pid, since the start, last interval) of each counted process.
    ``rates_count`` is False for an interval too short to give a rate (as
    for the peaks: a final stretch of a few milliseconds).
    """
    thresholds = list(thresholds)
    rows = list(processes) if any(t.per_process for t in thresholds) else []
    for t in thresholds:
        if t.rate and (not rates_count or seconds <= 0):
            continue
        if not t.per_process:
            value = t.quantity(*window) / seconds if t.rate else t.quantity(*moved)
            if value > t.limit:
                return Crossing(t, value)
            continue
        for pid, total, last in rows:
            value = t.quantity(*last) / seconds if t.rate else t.quantity(*total)
            if value > t.limit:
                return Crossing(t, value, pid)
    return None
