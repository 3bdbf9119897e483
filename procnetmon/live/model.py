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
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Union

from procnetmon.live import units as unitsmod
from procnetmon.model import Connection, ProcessStats, Record
from procnetmon.output.text import workload_label

HISTORY_S = 60.0  # the sparkline: the last minute
MAX_HISTORY = 600  # samples per row at most (100 ms intervals)
EXITED_KEEP_S = 30.0  # an exited process stays on screen, dimmed, this long
CLOSED_KEEP_S = 30.0  # a socket gone from its process's records stays this long
MAX_CONNECTIONS = 512  # sockets kept per row: a process with 100,000 does not grow the view without bound
LIVENESS_CHECKS = 200  # idle rows asked about per record (round robin): the cost stays flat

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


@dataclass
class Row:
    """One process (or group) as the view shows it."""

    key: RowKey
    pid: Optional[int]
    name: str
    history_len: int
    cmdline: str = ""
    cgroup: Optional[str] = None
    container: Optional[str] = None
    members: Optional[int] = None  # --group-by: how many processes
    workload: str = ""  # the container or unit, as the summary table's column names it
    alive: bool = True
    exited_at: Optional[float] = None
    rate_in: float = 0.0
    rate_out: float = 0.0
    total_in: int = 0
    total_out: int = 0
    tcp_in: int = 0  # per protocol since the view started
    tcp_out: int = 0
    udp_in: int = 0
    udp_out: int = 0
    peak_in: float = 0.0
    peak_out: float = 0.0
    tcp: Optional[int] = 0
    udp: Optional[int] = 0
    listening: Optional[int] = 0
    history_in: deque = field(default_factory=deque)
    history_out: deque = field(default_factory=deque)
    connections: dict[tuple[str, str, str], Conn] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.history_in = deque(self.history_in, maxlen=self.history_len)
        self.history_out = deque(self.history_out, maxlen=self.history_len)

    @property
    def rate(self) -> float:
        return self.rate_in + self.rate_out

    @property
    def total(self) -> int:
        return self.total_in + self.total_out

    @property
    def peak(self) -> float:
        return max(self.peak_in, self.peak_out)

    def history(self) -> list[float]:
        return [a + b for a, b in zip(self.history_in, self.history_out)]

    def frozen(self) -> "Row":
        """A copy that later records do not change (the p key)."""
        row = copy.copy(self)
        row.history_in = deque(self.history_in, maxlen=self.history_len)
        row.history_out = deque(self.history_out, maxlen=self.history_len)
        row.connections = {k: copy.copy(c) for k, c in self.connections.items()}
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
        self.clock += record.duration_s
        now = self.clock
        agg = record.aggregated
        t = self.totals
        t.rate_in, t.rate_out = agg.rate_in, agg.rate_out
        t.total_in += agg.bytes_in
        t.total_out += agg.bytes_out
        t.peak_in, t.peak_out = max(t.peak_in, agg.peak_rate_in), max(t.peak_out, agg.peak_rate_out)
        seen: set[RowKey] = set()
        for stats in record.processes:
            key = self._key(stats)
            seen.add(key)
            row = self.rows.get(key)
            if row is None or (not row.alive and stats.alive and stats.pid is not None):
                # New, or a PID used again by a new process.
                row = self.rows[key] = Row(key, stats.pid, stats.name, self.history_len)
            self._take(row, stats, record.duration_s, now)
        idle: list[Row] = []
        for key, row in self.rows.items():
            if key in seen:
                continue
            row.rate_in = row.rate_out = 0.0
            row.history_in.append(0.0)
            row.history_out.append(0.0)
            for conn in row.connections.values():
                conn.rate_in = conn.rate_out = 0.0
            if row.alive and row.pid is not None:
                idle.append(row)
        if still_running is not None and idle:
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

    def _take(self, row: Row, s: ProcessStats, seconds: float, now: float) -> None:
        row.name, row.cmdline = s.name, s.cmdline
        row.cgroup, row.container, row.workload = s.cgroup, s.container, workload_label(s)
        row.members = len(s.pids) if s.pids is not None else None
        row.rate_in, row.rate_out = s.rate_in, s.rate_out
        row.total_in, row.total_out = s.total_bytes_in, s.total_bytes_out
        row.tcp_in += s.tcp.bytes_in
        row.tcp_out += s.tcp.bytes_out
        row.udp_in += s.udp.bytes_in
        row.udp_out += s.udp.bytes_out
        row.peak_in, row.peak_out = s.peak_rate_in, s.peak_rate_out
        row.tcp, row.udp, row.listening = s.tcp_connections, s.udp_connections, s.tcp_listening
        row.history_in.append(s.rate_in)
        row.history_out.append(s.rate_out)
        if not s.alive and row.alive:
            row.alive, row.exited_at = False, now
        if s.connections is not None:
            self._take_connections(row, s.connections, seconds, now)

    @staticmethod
    def _take_connections(row: Row, connections: list[Connection], seconds: float, now: float) -> None:
        listed: set[tuple[str, str, str]] = set()
        for c in connections:
            protocol = c.protocol + ("6" if c.family == "ipv6" else "")
            key = (protocol, c.local, c.remote)
            conn = row.connections.get(key)
            if conn is None:
                conn = row.connections[key] = Conn(protocol, c.local, c.remote, c.state)
            if key not in listed:  # two sockets with one address pair add up
                listed.add(key)
                conn.rate_in = conn.rate_out = 0.0
            conn.state, conn.seen, conn.gone = c.state, now, False
            conn.total_in += c.bytes_in
            conn.total_out += c.bytes_out
            if seconds > 0:
                conn.rate_in += c.bytes_in / seconds
                conn.rate_out += c.bytes_out / seconds
        for key, conn in list(row.connections.items()):
            if key in listed:
                continue
            conn.gone, conn.rate_in, conn.rate_out = True, 0.0, 0.0
            if now - conn.seen > CLOSED_KEEP_S:
                del row.connections[key]
        if len(row.connections) > MAX_CONNECTIONS:
            oldest = sorted(row.connections, key=lambda k: (not row.connections[k].gone, row.connections[k].seen))
            for key in oldest[: len(row.connections) - MAX_CONNECTIONS]:
                del row.connections[key]

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
        ordered = sorted(rows, key=lambda r: (r.name.casefold(), r.pid or 0))
        if self.sort == "name":
            ordered.sort(reverse=self.reverse, key=lambda r: r.name.casefold())
        else:
            value: Callable[[Row], float] = {"rate": lambda r: r.rate, "total": lambda r: float(r.total),
                                             "peak": lambda r: r.peak}[self.sort]
            ordered.sort(key=value, reverse=not self.reverse)  # largest first unless reversed
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
