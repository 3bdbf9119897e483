"""The live view's state, from interval records alone: one row per process
(or per group of ``--group-by``), its rate now, a minute of history, its peak,
total and connections; and what the person at the keyboard chose: sort,
filter, pause, units, selection, which page is open.

Pure: no curses, no clock, no /proc. Time is the sum of the records'
windows; whether an idle process still runs is asked of a function the
caller passes in (records only say a process exited when it moved bytes in
its last window). Keys arrive as names ("q", "up", "enter"; see
``handle_key``), so tests drive the view as a person would.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Union

from procnetmon.live import units as unitsmod
from procnetmon.model import Connection, ProcessStats, Record
from procnetmon.output.text import workload_label

HISTORY_S = 60.0  # the sparkline: the last minute
MAX_HISTORY = 600  # samples per row at most (100 ms intervals)
EXITED_KEEP_S = 30.0  # an exited process stays on screen, dimmed, this long
CLOSED_KEEP_S = 30.0  # a socket gone from its process's records stays this long
MAX_CONNECTIONS = 512  # sockets kept per row: a process with 100,000 does not grow the view without bound
LIVENESS_CHECKS = 100  # idle rows asked about per record (round robin): the cost stays flat

SORTS = ("rate", "total", "peak", "name")
SORT_KEYS = {"r": "rate", "t": "total", "k": "peak", "n": "name"}

PAGE_TABLE = "table"
PAGE_DETAIL = "detail"
PAGE_CONNECTIONS = "connections"

RowKey = tuple[str, Union[int, str]]


@dataclass
class Conn:
    """One socket of a row, as its records showed it."""

    protocol: str  # "tcp", "udp", "tcp6", "udp6"
    local: str
    remote: str
    state: str
    rate_in: float = 0.0
    rate_out: float = 0.0
    total_in: int = 0
    total_out: int = 0
    seen: float = 0.0  # view time of the last record that listed it
    gone: bool = False  # not in its process's last record


_NO_STATS = ProcessStats(pid=None, name="")


@dataclass
class Clock:
    records: int = 0  # how many records the model has taken: the latest one's number




class Row:
    """One process (or group) as the view shows it.

    What the last record that listed it said is kept as that record's own
    ProcessStats (``last``), read through properties: a record of a thousand
    processes costs a reference per row, not twenty copied fields. A row the
    latest record did not list (``current`` False) moved nothing: its rates
    read zero.
    """

    __slots__ = ("key", "history_len", "clock", "last", "seen", "first", "alive", "exited_at", "protocols",
                 "samples", "workload", "_workload_of", "sockets", "last_sockets", "sockets_seconds")

    def __init__(self, key: RowKey, history_len: int, clock: Optional[Clock] = None):
        self.key = key
        self.history_len = history_len
        self.clock = clock or Clock()  # the model's: which record is the latest
        self.last = _NO_STATS
        self.first = self.seen = 0  # the records that first and last listed it
        self.alive = True
        self.exited_at: Optional[float] = None
        # Bytes [in, out] of each protocol class since the view started (tcp, udp, icmp, ...).
        self.protocols: dict[str, list[int]] = {}
        # (record, rate in, rate out) of the records that listed it, the last minute's: an idle row costs nothing.
        self.samples: deque = deque(maxlen=history_len)
        self.workload = ""  # the container or unit, as the summary table's column names it
        self._workload_of: tuple = (None, None)
        # Per socket, (protocol, family, local, remote) -> [total in, total out, last seen, state];
        # the Conn rows are made from it only when the d page is drawn.
        self.sockets: dict[tuple[str, str, str, str], list] = {}
        self.last_sockets: list[Connection] = []  # as the last record listed them
        self.sockets_seconds = 0.0  # that record's window

    def take(self, s: ProcessStats) -> None:
        index = self.clock.records
        if not self.first:
            self.first = index
        self.last, self.seen = s, index
        protocols = self.protocols
        for name, b in (s.protocols or {"tcp": s.tcp, "udp": s.udp}).items():
            kept = protocols.get(name)
            if kept is None:
                protocols[name] = [b.bytes_in, b.bytes_out]
            else:
                kept[0] += b.bytes_in
                kept[1] += b.bytes_out
        self.samples.append((index, s.rate_in, s.rate_out))
        if (s.container, s.cgroup) != self._workload_of:
            self._workload_of = (s.container, s.cgroup)
            self.workload = workload_label(s)

    def protocol_bytes(self, name: str) -> tuple[int, int]:
        kept = self.protocols.get(name)
        return (kept[0], kept[1]) if kept is not None else (0, 0)

    @property
    def tcp_in(self) -> int:
        return self.protocol_bytes("tcp")[0]

    @property
    def tcp_out(self) -> int:
        return self.protocol_bytes("tcp")[1]

    @property
    def udp_in(self) -> int:
        return self.protocol_bytes("udp")[0]

    @property
    def udp_out(self) -> int:
        return self.protocol_bytes("udp")[1]

    @property
    def current(self) -> bool:
        """Whether the latest record listed the row (else it moved nothing in that window)."""
        return self.seen == self.clock.records

    @property
    def pid(self) -> Optional[int]:
        return self.last.pid if self.key[0] != "pid" else self.key[1]  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return self.last.name

    @property
    def cmdline(self) -> str:
        return self.last.cmdline

    @property
    def cgroup(self) -> Optional[str]:
        return self.last.cgroup

    @property
    def members(self) -> Optional[int]:
        """--group-by: how many processes the row folds."""
        return len(self.last.pids) if self.last.pids is not None else None

    @property
    def rate_in(self) -> float:
        return self.last.rate_in if self.current else 0.0

    @property
    def rate_out(self) -> float:
        return self.last.rate_out if self.current else 0.0

    @property
    def total_in(self) -> int:
        return self.last.total_bytes_in

    @property
    def total_out(self) -> int:
        return self.last.total_bytes_out

    @property
    def peak_in(self) -> float:
        return self.last.peak_rate_in

    @property
    def peak_out(self) -> float:
        return self.last.peak_rate_out

    @property
    def tcp(self) -> Optional[int]:
        return self.last.tcp_connections

    @property
    def udp(self) -> Optional[int]:
        return self.last.udp_connections

    @property
    def listening(self) -> Optional[int]:
        return self.last.tcp_listening

    @property
    def rate(self) -> float:
        return self.rate_in + self.rate_out

    @property
    def total(self) -> int:
        return self.total_in + self.total_out

    @property
    def peak(self) -> float:
        return max(self.peak_in, self.peak_out)

    def _history(self, which: int) -> list[float]:
        """One value per record of the last minute since the row appeared (0 where it was idle), oldest first."""
        latest = self.clock.records
        begin = max(self.first, latest - self.history_len + 1) if self.first else latest + 1
        values = [0.0] * (latest + 1 - begin)
        for sample in self.samples:
            if sample[0] >= begin:
                values[sample[0] - begin] = sample[1] + sample[2] if which == 0 else sample[which]
        return values

    @property
    def history_in(self) -> list[float]:
        return self._history(1)

    @property
    def history_out(self) -> list[float]:
        return self._history(2)

    def history(self) -> list[float]:
        """In + out."""
        return self._history(0)

    @property
    def connections(self) -> dict[tuple[str, str, str], Conn]:
        """The sockets as the d page lists them: rates of the last window
        (zero unless the latest record listed the row), totals since the start."""
        out: dict[tuple[str, str, str], Conn] = {}
        listed = {(c.protocol, c.family, c.local, c.remote) for c in self.last_sockets} if self.current else set()
        for key, (total_in, total_out, seen, state) in self.sockets.items():
            protocol = key[0] + ("6" if key[1] == "ipv6" else "")
            shown = (protocol, key[2], key[3])
            conn = out.get(shown)
            if conn is None:
                conn = out[shown] = Conn(protocol, key[2], key[3], state, seen=seen, gone=key not in listed)
            conn.total_in += total_in
            conn.total_out += total_out
        if self.current and self.sockets_seconds > 0:
            for c in self.last_sockets:
                conn = out.get((c.protocol + ("6" if c.family == "ipv6" else ""), c.local, c.remote))
                if conn is not None:
                    conn.rate_in += c.bytes_in / self.sockets_seconds
                    conn.rate_out += c.bytes_out / self.sockets_seconds
        return out

    def frozen(self) -> "Row":
        """A copy that later records do not change (the p key)."""
        row = Row(self.key, self.history_len)
        for name in self.__slots__:
            setattr(row, name, getattr(self, name))
        row.clock = Clock(self.clock.records)  # the paused screen's latest record stays the latest
        row.samples = deque(self.samples, maxlen=self.history_len)
        row.sockets = {k: list(v) for k, v in self.sockets.items()}
        row.protocols = {k: list(v) for k, v in self.protocols.items()}
        return row


@dataclass
class Totals:
    """The whole view: rates of the last record, bytes since the start."""

    rate_in: float = 0.0
    rate_out: float = 0.0
    total_in: int = 0
    total_out: int = 0
    peak_in: float = 0.0
    peak_out: float = 0.0


class ViewModel:
    """Rows from records, and the view's state."""

    def __init__(self, *, interval: float = 1.0, mode: str = "payload", scope: str = "",
                 rate_units: str = "bits", group_by: str = "pid"):
        self.interval = interval
        self.mode = mode
        self.scope = scope  # the interfaces, as the title shows them
        self.group_by = group_by
        self.history_len = max(1, min(MAX_HISTORY, round(HISTORY_S / interval)))
        self.rows: dict[RowKey, Row] = {}
        self._clock = Clock()
        self.totals = Totals()
        self.clock = 0.0  # seconds of records seen
        self.records = 0
        self.units = unitsmod.Units(rate_units, False)
        self.sort = "rate"
        self.reverse = False
        self.filter = ""
        self.editing: Optional[str] = None  # the filter being typed after /
        self._filter_before = ""
        self.paused = False
        self._frozen: Optional[list[Row]] = None
        self._frozen_totals = Totals()
        self.page = PAGE_TABLE
        self.help = False
        self.selected: Optional[RowKey] = None
        self.index = 0  # the selection's place among the visible rows
        self.top = 0  # the first visible row on screen
        self.scroll = 0  # first line of a detail or connections page
        self.notice = ""  # one line for the status bar (a warning)
        self._liveness_cursor = 0

    # -- records -------------------------------------------------------------------

    def update(self, record: Record, still_running: Optional[Callable[[int], bool]] = None) -> None:
        """Take one interval record. Rows it does not list moved nothing in its
        window; those of processes that ``still_running`` says have ended are
        marked exited; exited rows older than EXITED_KEEP_S are dropped."""
        self.records += 1
        self._clock.records = self.records
        self.clock += record.duration_s
        now = self.clock
        agg = record.aggregated
        t = self.totals
        t.rate_in, t.rate_out = agg.rate_in, agg.rate_out
        t.total_in += agg.bytes_in
        t.total_out += agg.bytes_out
        t.peak_in, t.peak_out = max(t.peak_in, agg.peak_rate_in), max(t.peak_out, agg.peak_rate_out)
        seconds = record.duration_s
        for stats in record.processes:
            key = self._key(stats)
            row = self.rows.get(key)
            if row is None or (not row.alive and stats.alive and stats.pid is not None):
                # New, or a PID used again by a new process.
                row = self.rows[key] = Row(key, self.history_len, self._clock)
            row.take(stats)
            if not stats.alive and row.alive:
                row.alive, row.exited_at = False, now
            if stats.connections is not None:
                self._take_sockets(row, stats.connections, seconds, now)
        latest = self.records
        if still_running is not None:
            idle = [r for r in self.rows.values() if r.seen != latest and r.alive and r.key[0] == "pid"]
            for row in self._round_robin(idle):
                if not still_running(row.pid):  # type: ignore[arg-type]  # idle rows have PIDs
                    row.alive, row.exited_at = False, now
        for key in [k for k, r in self.rows.items() if r.exited_at is not None and now - r.exited_at > EXITED_KEEP_S]:
            del self.rows[key]

    def _round_robin(self, idle: list[Row]) -> list[Row]:
        if len(idle) <= LIVENESS_CHECKS:
            return idle
        start = self._liveness_cursor % len(idle)
        self._liveness_cursor = start + LIVENESS_CHECKS
        return (idle[start:] + idle[:start])[:LIVENESS_CHECKS]

    def _key(self, stats: ProcessStats) -> RowKey:
        if stats.pid is not None:
            return ("pid", stats.pid)
        if self.group_by == "cgroup":
            return ("cgroup", stats.cgroup or "")
        return ("name", stats.name)

    def _take_sockets(self, row: Row, connections: list[Connection], seconds: float, now: float) -> None:
        sockets = row.sockets
        for c in connections:
            key = (c.protocol, c.family, c.local, c.remote)
            kept = sockets.get(key)
            if kept is None:
                sockets[key] = [c.bytes_in, c.bytes_out, now, c.state]
            else:
                kept[0] += c.bytes_in
                kept[1] += c.bytes_out
                kept[2], kept[3] = now, c.state
        row.last_sockets, row.sockets_seconds = connections, seconds
        # Sockets gone from the records for CLOSED_KEEP_S go, looked for now and then: this is per row per record.
        if self.records % 8 == 0 or len(sockets) > MAX_CONNECTIONS:
            for key in [k for k, v in sockets.items() if now - v[2] > CLOSED_KEEP_S]:
                del sockets[key]
            if len(sockets) > MAX_CONNECTIONS:
                for key in sorted(sockets, key=lambda k: sockets[k][2])[: len(sockets) - MAX_CONNECTIONS]:
                    del sockets[key]

    # -- what is shown --------------------------------------------------------------

    def shown_totals(self) -> Totals:
        return self._frozen_totals if self.paused else self.totals

    def shown_rows(self) -> list[Row]:
        """Every row, as shown: frozen while paused."""
        return self._frozen if self._frozen is not None else list(self.rows.values())

    def visible(self) -> list[Row]:
        """The rows that pass the filter, in sort order (ties: by PID or name)."""
        rows: Iterable[Row] = self.shown_rows()
        wanted = self.filter.casefold()
        if wanted:
            rows = [r for r in rows if wanted in r.name.casefold()]
        ordered = sorted(rows, key=_tie_order)
        if self.sort == "name":
            ordered.sort(reverse=self.reverse, key=lambda r: r.last.name.casefold())
        else:
            ordered.sort(key=_SORT_VALUES[self.sort], reverse=not self.reverse)  # largest first unless reversed
        return ordered

    def selection(self, rows: list[Row]) -> Optional[Row]:
        """The selected row among ``rows`` (``visible()``): the same process as
        before if it is still there, else the one now at its place."""
        if not rows:
            self.index, self.selected = 0, None
            return None
        if self.selected is not None:
            for i, r in enumerate(rows):
                if r.key == self.selected:
                    self.index = i
                    return r
        self.index = max(0, min(self.index, len(rows) - 1))
        self.selected = rows[self.index].key
        return rows[self.index]

    def selected_row(self) -> Optional[Row]:
        """The selected row, even when the filter now hides it (a page of it is open)."""
        if self.selected is None:
            return None
        if self._frozen is not None:
            return next((r for r in self._frozen if r.key == self.selected), None)
        return self.rows.get(self.selected)

    def scroll_into_view(self, page_rows: int) -> None:
        """Keep the selection between ``top`` and ``top + page_rows``."""
        page_rows = max(1, page_rows)
        if self.index < self.top:
            self.top = self.index
        elif self.index >= self.top + page_rows:
            self.top = self.index - page_rows + 1
        self.top = max(0, self.top)

    # -- keys -----------------------------------------------------------------------

    def handle_key(self, key: str, page_rows: int = 10) -> Optional[str]:
        """Act on one key; returns "quit" when the view should end.

        ``key`` is a printable character or one of: up, down, pgup, pgdn,
        home, end, enter, esc, backspace, left, right. ``page_rows`` is how
        many rows a page holds now (for pgup/pgdn).
        """
        if self.editing is not None:
            self._edit_filter(key)
            return None
        if key == "q":
            return "quit"
        if self.help:
            self.help = False  # any other key closes the help
            return None
        if key == "?":
            self.help = True
        elif key == "p":
            self.toggle_pause()
        elif key == "u":
            self.units = unitsmod.next_units(self.units)
        elif key == "/":
            self.editing, self._filter_before = self.filter, self.filter
            self.page = PAGE_TABLE
        elif self.page != PAGE_TABLE:
            self._page_key(key, page_rows)
        elif key in SORT_KEYS:
            self.sort = SORT_KEYS[key]
        elif key == "i":
            self.reverse = not self.reverse
        elif key in ("up", "down", "pgup", "pgdn", "home", "end"):
            self._move(key, page_rows)
        elif key == "enter":
            self._open(PAGE_DETAIL)
        elif key == "d":
            self._open(PAGE_CONNECTIONS)
        elif key == "esc":
            self.filter = ""
        return None

    def _page_key(self, key: str, page_rows: int) -> None:
        if key in ("esc", "left", "backspace"):
            self.page = PAGE_TABLE
        elif key == "enter":
            self.page = PAGE_DETAIL if self.page == PAGE_CONNECTIONS else PAGE_TABLE
        elif key == "d":
            self.page = PAGE_CONNECTIONS if self.page == PAGE_DETAIL else PAGE_TABLE
        elif key == "up":
            self.scroll = max(0, self.scroll - 1)
        elif key == "down":
            self.scroll += 1
        elif key == "pgup":
            self.scroll = max(0, self.scroll - page_rows)
        elif key == "pgdn":
            self.scroll += page_rows
        elif key == "home":
            self.scroll = 0

    def _open(self, page: str) -> None:
        if self.selection(self.visible()) is not None:
            self.page, self.scroll = page, 0

    def _move(self, key: str, page_rows: int) -> None:
        rows = self.visible()
        if not rows:
            return
        self.selection(rows)
        step = {"up": -1, "down": 1, "pgup": -page_rows, "pgdn": page_rows,
                "home": -len(rows), "end": len(rows)}[key]
        self.index = max(0, min(len(rows) - 1, self.index + step))
        self.selected = rows[self.index].key

    def _edit_filter(self, key: str) -> None:
        assert self.editing is not None
        if key == "enter":
            self.editing = None
        elif key == "esc":
            self.filter, self.editing = self._filter_before, None
        elif key == "backspace":
            self.editing = self.editing[:-1]
        elif len(key) == 1 and key.isprintable() and len(self.editing) < 64:
            self.editing += key
        else:
            return
        if self.editing is not None:
            self.filter = self.editing
        self.index, self.top = 0, 0

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        if self.paused:
            self._frozen = [r.frozen() for r in self.rows.values()]
            self._frozen_totals = copy.copy(self.totals)
        else:
            self._frozen = None


def _tie_order(row: Row) -> tuple[int, str]:
    key = row.key
    return (key[1], "") if key[0] == "pid" else (0, str(key[1]))  # type: ignore[return-value]


def _rate(row: Row) -> float:
    last = row.last
    return last.rate_in + last.rate_out if row.seen == row.clock.records else 0.0


_SORT_VALUES: dict[str, Callable[[Row], float]] = {
    "rate": _rate,
    "total": lambda r: r.last.total_bytes_in + r.last.total_bytes_out,
    "peak": lambda r: max(r.last.peak_rate_in, r.last.peak_rate_out),
}
