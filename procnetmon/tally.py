"""Counting: bytes by protocol and direction, running totals, windows and peaks.

``Tally`` turns cumulative counter snapshots into totals since the start,
the last interval's bytes and peak rates, one ``Counted`` per key (a PID,
or a group of ``--group-by``). ``Archive`` keeps what the summary needs of
processes that are gone. Nothing here knows what a process is.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, TypeVar

from procnetmon.probes import PROTOCOL_CLASSES, CounterKey

# A Usage's slots: in and out of each protocol class, TCP's and UDP's first.
SLOT_NAMES = tuple(f"{p}_{d}" for p in PROTOCOL_CLASSES for d in ("in", "out"))
_SLOT = {name: i for i, name in enumerate(SLOT_NAMES)}
_ZERO = (0,) * len(SLOT_NAMES)


class Usage:
    """Bytes of one process by protocol class and direction.

    ``Usage(tcp_in, tcp_out, udp_in, udp_out, ...)`` in SLOT_NAMES order, or
    by name (``Usage(icmp_out=84)``); each slot is also an attribute.
    """

    __slots__ = ("slots",)

    def __init__(self, *slots: int, **named: int):
        values = list(slots) + [0] * (len(SLOT_NAMES) - len(slots))
        for name, value in named.items():
            values[_SLOT[name]] = value
        self.slots: tuple[int, ...] = tuple(values) if any(values) else _ZERO

    def __getattr__(self, name: str) -> int:
        try:
            return self.slots[_SLOT[name]]
        except KeyError:
            raise AttributeError(name) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Usage) and self.slots == other.slots

    def __repr__(self) -> str:
        named = ", ".join(f"{n}={v}" for n, v in zip(SLOT_NAMES, self.slots) if v)
        return f"Usage({named})"

    @property
    def bytes_in(self) -> int:
        return sum(self.slots[0::2])

    @property
    def bytes_out(self) -> int:
        return sum(self.slots[1::2])

    def by_protocol(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each protocol class that moved bytes, in PROTOCOL_CLASSES order."""
        s = self.slots
        return {p: (s[2 * i], s[2 * i + 1]) for i, p in enumerate(PROTOCOL_CLASSES) if s[2 * i] or s[2 * i + 1]}

    def plus(self, other: "Usage") -> "Usage":
        return Usage(*(a + b for a, b in zip(self.slots, other.slots)))

    def minus(self, other: "Usage") -> "Usage":
        return Usage(*(a - b for a, b in zip(self.slots, other.slots)))


def usage_by_pid(counters: dict[CounterKey, int]) -> dict[int, Usage]:
    """Fold (pid, protocol, direction) counters into one Usage per process."""
    slots: dict[int, list[int]] = {}
    for key, value in counters.items():
        row = slots.get(key.pid)
        if row is None:
            row = slots[key.pid] = [0] * len(SLOT_NAMES)
        row[_SLOT[f"{key.protocol}_{key.direction}"]] += value
    return {pid: Usage(*row) for pid, row in slots.items()}


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds if seconds > 0 else 0.0


@dataclass
class Peaks:
    rate_in: float = 0.0
    rate_out: float = 0.0

    def see(self, rate_in: float, rate_out: float) -> None:
        self.rate_in = max(self.rate_in, rate_in)
        self.rate_out = max(self.rate_out, rate_out)


@dataclass(eq=False)
class Counted:
    """One key's counts in a Tally."""

    total: Optional[Usage] = None  # since the start; None: not among the last read's counters
    window: Usage = field(default_factory=Usage)  # the last interval's bytes
    peaks: Peaks = field(default_factory=Peaks)

    def uncount(self) -> None:
        """No longer among the probe's counters (retired, or gone from the read)."""
        self.total = None
        self.window = Usage()


C = TypeVar("C", bound=Counted)


class Tally(Generic[C]):
    """Running totals, the last interval and peak rates, from cumulative snapshots.

    ``entries`` holds one ``C`` (made by ``new``) per key ever counted and
    not dropped by its owner; a key missing from a snapshot keeps its entry
    (and peaks) but has no total and an empty window.

    A peak is the highest one-interval rate. A final interval cut short (by
    Ctrl-C, or -t not being a multiple of --interval) shorter than half an
    interval does not set peaks, because a few milliseconds of burst would
    read as an absurd rate; it still counts in every total.
    """

    def __init__(self, interval: float, new: Callable[[], C], entries: Optional[dict[Any, C]] = None):
        self.interval = interval
        self.new = new
        self.entries: dict[Any, C] = {} if entries is None else entries  # by pid, or by group
        self.aggregate_peaks = Peaks()
        self.intervals = 0

    def advance(self, cumulative: dict[Any, Usage], seconds: float) -> None:
        """Take the counters at the end of an interval that lasted ``seconds``."""
        entries = self.entries
        for key, entry in entries.items():
            if entry.total is not None and key not in cumulative:
                entry.uncount()
        for key, u in cumulative.items():
            counted = entries.get(key)
            if counted is None:
                counted = entries[key] = self.new()
            counted.window = u.minus(counted.total if counted.total is not None else Usage())
            counted.total = u
        self.intervals += 1
        if seconds < self.interval / 2 and self.intervals > 1:
            return
        agg_in = agg_out = 0
        for key in cumulative:
            w = entries[key].window
            entries[key].peaks.see(rate(w.bytes_in, seconds), rate(w.bytes_out, seconds))
            agg_in += w.bytes_in
            agg_out += w.bytes_out
        self.aggregate_peaks.see(rate(agg_in, seconds), rate(agg_out, seconds))


# Who a process was (procinfo.Who): ppid, uid, user, exe, create_time, each None when unknown.
WhoFields = tuple[Optional[int], Optional[int], Optional[str], Optional[str], Optional[float]]
NO_WHO: WhoFields = (None, None, None, None, None)


class Archive:
    """Final totals of processes that are gone, for the summary only.

    A long ``-c`` run sees tens of thousands of processes come and go; what
    the summary needs of each (PID, bytes by protocol and direction, peaks,
    name, command line, cgroup, group, and who it was: parent, user,
    executable, start) is packed here in flat arrays, about 100 bytes a
    process, each text stored once however often it recurs.
    Nothing here is looked at again until the summary.
    """

    TEXTS = 6  # name, cmdline, cgroup ("" for none), group key, user, exe
    _NONE = -1  # an unknown ppid or uid, or text

    def __init__(self) -> None:
        self.pids = array("q")
        self.usage = array("Q")  # tcp_in, tcp_out, udp_in, udp_out per process
        self.more: dict[int, tuple[int, ...]] = {}  # by process index: its other classes' slots, if any
        self.peaks = array("d")  # rate_in, rate_out per process
        self.text = array("i")  # TEXTS indexes into _texts per process (_NONE: none)
        self.ids = array("q")  # ppid, uid per process (_NONE: unknown)
        self.starts = array("d")  # create_time per process (0.0: unknown)
        self._texts: list[str] = []
        self._text_index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.pids)

    def _intern(self, text: Optional[str]) -> int:
        if text is None:
            return self._NONE
        index = self._text_index.get(text)
        if index is None:
            index = self._text_index[text] = len(self._texts)
            self._texts.append(text)
        return index

    def add(self, pid: int, usage: Usage, peaks: Peaks, name: str, cmdline: str,
            cgroup: Optional[str] = None, group: str = "", who: WhoFields = NO_WHO) -> None:
        ppid, uid, user, exe, create_time = who
        if any(usage.slots[4:]):
            self.more[len(self.pids)] = usage.slots[4:]
        self.pids.append(pid)
        self.usage.extend(usage.slots[:4])
        self.peaks.extend((peaks.rate_in, peaks.rate_out))
        self.text.extend(self._intern(t) for t in (name, cmdline, cgroup or "", group, user, exe))
        self.ids.extend(self._NONE if v is None else v for v in (ppid, uid))
        self.starts.append(create_time or 0.0)

    def _text(self, index: int) -> Optional[str]:
        return None if index == self._NONE else self._texts[index]

    def rows(self):
        """(pid, Usage, Peaks, name, cmdline, cgroup, group, who) of each process, oldest first."""
        n = self.TEXTS
        for i, pid in enumerate(self.pids):
            name, cmdline, cgroup, group, user, exe = (self._text(j) for j in self.text[n * i:n * i + n])
            ppid, uid = (None if v == self._NONE else v for v in self.ids[2 * i:2 * i + 2])
            who: WhoFields = (ppid, uid, user, exe, self.starts[i] or None)
            usage = Usage(*self.usage[4 * i:4 * i + 4], *self.more.get(i, ()))
            yield (pid, usage, Peaks(*self.peaks[2 * i:2 * i + 2]), name, cmdline, cgroup or None, group, who)
