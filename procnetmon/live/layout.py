"""One screen of the live view as lines of styled text, from the view model.

``frame(model, width, height)`` returns exactly ``height`` lines, each
exactly ``width`` cells wide, as tuples of (text, style) segments; the
screen maps a style name to terminal attributes and writes the lines that
changed. Columns that do not fit are left out, least needed first, so the
table works from 60x20 up and uses the room of a wide terminal.

Any user can name a process: names reach the screen through
``screen_text`` (control characters, format characters and combining marks
as ``\\xHH``/``\\uHHHH``), and every cell is measured in terminal cells, so a
wide or hostile name can neither move the cursor nor push a column.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Optional, Sequence

from procnetmon.live import units as unitsmod
from procnetmon.live.model import EXITED_KEEP_S, PAGE_CONNECTIONS, PAGE_DETAIL, PAGE_TABLE, Row, ViewModel
from procnetmon.output.text import printable
from procnetmon.probes import PROTOCOL_CLASSES

Segment = tuple[str, str]  # (text, style)
Line = tuple[Segment, ...]

# Styles the screen knows (screen.STYLES gives each its attributes).
NORMAL, TITLE, HEADING, SORTED, SELECTED, EXITED, EXITED_SELECTED, SPARK, STATUS, PAUSED, PROMPT = (
    "normal", "title", "heading", "sorted", "selected", "exited", "exited-selected", "spark", "status",
    "paused", "prompt")

MIN_WIDTH, MIN_HEIGHT = 30, 6
PROTOCOL_LABELS = {"udplite": "UDP-Lite", "icmpv6": "ICMPv6", "mptcp": "MPTCP", "packet": "AF_PACKET",
                   "raw": "raw IP", "other": "other"}
EXITED_CELL = "exited"
SPARK_UNICODE = " \u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588"  # blank, then 1/8 to 8/8
SPARK_ASCII = " .:-=+*#@"


@dataclass(frozen=True)
class Column:
    name: str
    heading: str
    min: int
    align: str  # "<" or ">"


# In the order they are taken while there is room (the table's order is COLUMN_ORDER).
COLUMNS = {c.name: c for c in (
    Column("pid", "PID", 7, ">"),
    Column("name", "NAME", 10, "<"),
    Column("in", "IN", 10, ">"),
    Column("out", "OUT", 10, ">"),
    Column("total", "TOTAL", 9, ">"),
    Column("peak", "PEAK", 10, ">"),
    Column("spark", "LAST MIN", 10, "<"),
    Column("tcp", "TCP", 3, ">"),
    Column("udp", "UDP", 3, ">"),
    Column("container", "CONTAINER", 12, "<"),
)}
COLUMN_ORDER = ("pid", "name", "in", "out", "spark", "peak", "total", "tcp", "udp", "container")
# Where the room left over goes: (column, up to this width), in turn.
GROWTH = (("name", 24), ("container", 24), ("spark", 30), ("container", 40), ("name", 40), ("spark", 60))
SORTED_COLUMNS = {"rate": ("in", "out"), "total": ("total",), "peak": ("peak",), "name": ("name",)}


# -- text in cells ----------------------------------------------------------------------


def screen_text(text: str) -> str:
    """``text`` safe to draw: ``printable`` (control characters escaped), and
    combining marks escaped too, which would otherwise join the cell before."""
    text = printable(text)
    if text.isascii():
        return text
    return "".join(f"\\u{ord(c):04x}" if unicodedata.combining(c) else c for c in text)


def cell_width(text: str) -> int:
    """Terminal cells of ``text`` (East Asian wide and full-width characters take two)."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def fit(text: str, width: int, align: str = "<") -> str:
    """``text`` cut (a cut ends in "~") or padded to exactly ``width`` cells."""
    if width <= 0:
        return ""
    used = cell_width(text)
    if used > width and cell_width(text.rstrip()) <= width:
        text = text.rstrip()  # only blanks were cut: nothing is missing
        used = cell_width(text)
    if used > width:
        out, used = [], 0
        for c in text:
            w = cell_width(c)
            if used + w > width - 1:
                break
            out.append(c)
            used += w
        text = "".join(out) + "~"
        used += 1
    pad = " " * (width - used)
    return pad + text if align == ">" else text + pad


def _line(width: int, *segments: Segment) -> Line:
    """Segments cut or padded (in the last one's style) to ``width`` cells."""
    out: list[Segment] = []
    room = width
    for text, style in segments:
        if room <= 0:
            break
        w = cell_width(text)
        if w > room:
            text, w = fit(text, room), room
        out.append((text, style))
        room -= w
    if room > 0:
        last = out[-1][1] if out else NORMAL
        out.append((" " * room, last))
    return tuple(out)


# -- columns --------------------------------------------------------------------------


def columns_for(width: int, with_container: bool) -> list[tuple[Column, int]]:
    """The columns that fit in ``width`` cells (one blank between two), each with its width."""
    chosen: dict[str, int] = {}
    used = -1
    for name, column in COLUMNS.items():
        if name == "container" and not with_container:
            continue
        if used + 1 + column.min <= width:
            chosen[name] = column.min
            used += 1 + column.min
    room = width - used
    for name, limit in GROWTH:
        if name in chosen and room > 0:
            grow = min(room, max(0, limit - chosen[name]))
            chosen[name] += grow
            room -= grow
    return [(COLUMNS[name], chosen[name]) for name in COLUMN_ORDER if name in chosen]


def sparkline(values: Sequence[float], width: int, unicode: bool, slots: int) -> str:
    """``values`` (oldest first, at most ``slots`` of them) as ``width`` cells,
    newest at the right; each cell the highest of the samples it covers,
    scaled to the highest of all. Zero is a blank."""
    if width <= 0:
        return ""
    ramp = SPARK_UNICODE if unicode else SPARK_ASCII
    per_cell = max(1, -(-slots // width))  # ceil
    cells: list[float] = []
    values = list(values)
    # Bucket from the newest end, so the rightmost cell is always the latest sample.
    for end in range(len(values), 0, -per_cell):
        cells.append(max(values[max(0, end - per_cell):end]))
        if len(cells) == width:
            break
    cells.reverse()
    top = max(cells, default=0.0)
    levels = len(ramp) - 1
    text = "".join(ramp[0] if v <= 0 or top <= 0 else ramp[max(1, min(levels, math.ceil(v / top * levels)))]
                   for v in cells)
    return " " * (width - len(cells)) + text


def _count(value: Optional[int], width: int) -> str:
    if value is None:
        return "?"
    text = str(value)
    return text if len(text) <= width else f"{value // 1000}k"


def _cells(row: Row, columns: list[tuple[Column, int]], units: unitsmod.Units, unicode: bool,
           slots: int) -> list[tuple[str, bool]]:
    """(text, is_sparkline) of each cell of ``row``."""
    out = []
    for column, width in columns:
        name = column.name
        spark = False
        if name == "pid":
            text = f"{row.members}x" if row.members is not None else str(row.pid)
        elif name == "name":
            text = screen_text(row.name)
        elif name == "in":
            text = unitsmod.rate(row.rate_in, units) if row.alive else EXITED_CELL
        elif name == "out":
            text = unitsmod.rate(row.rate_out, units) if row.alive else ""
        elif name == "spark":
            text, spark = sparkline(row.history(), width, unicode, slots), True
        elif name == "peak":
            text = unitsmod.rate(row.peak, units)
        elif name == "total":
            text = unitsmod.size(row.total, units)
        elif name == "tcp":
            text = _count(row.tcp, width)
        elif name == "udp":
            text = _count(row.udp, width)
        else:
            text = screen_text(row.workload)
        out.append((fit(text, width, column.align), spark))
    return out


# -- the pages --------------------------------------------------------------------------


def frame(model: ViewModel, width: int, height: int, unicode: bool = True) -> list[Line]:
    """The whole screen: ``height`` lines of ``width`` cells."""
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        lines = [_line(width, (f"procnetmon: the terminal is too small ({width}x{height})", NORMAL))]
        lines += [_line(width, (f"at least {MIN_WIDTH}x{MIN_HEIGHT}; q quits", NORMAL))]
        return (lines + [_line(width)] * height)[:height]
    body_height = height - 3
    row = model.selected_row()
    if row is None and model.page != PAGE_TABLE:
        model.page = PAGE_TABLE  # its process is gone (exited a while ago): back to the table
    if model.help:
        body = _help(width)
    elif model.page == PAGE_DETAIL and row is not None:
        body = _scrolled(model, _detail(model, row, width, unicode), body_height + 1)
    elif model.page == PAGE_CONNECTIONS and row is not None:
        body = _connections(model, row, width, body_height + 1)
    else:
        return [_title(model, width), _summary(model, width)] + _table(model, width, body_height, unicode) \
            + [_footer(model, width)]
    body = (body + [_line(width)] * (body_height + 1))[: body_height + 1]
    return [_title(model, width)] + body + [_footer(model, width)]


def _title(model: ViewModel, width: int) -> Line:
    elapsed = int(model.clock)
    clock = f"{elapsed // 3600:d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}"
    left = f" procnetmon  {model.mode} mode  {screen_text(model.scope)}  {model.interval:g}s  {clock}"
    right = f"sort: {model.sort} {'^' if model.reverse else 'v'}  {model.units.label} "
    paused = "  PAUSED" if model.paused else ""
    gap = width - cell_width(left) - len(paused) - len(right)
    if gap < 1:
        return _line(width, (left, TITLE), (paused, PAUSED), (" " + right, TITLE))
    return _line(width, (left, TITLE), (paused, PAUSED), (" " * gap + right, TITLE))


def _summary(model: ViewModel, width: int) -> Line:
    t, u = model.shown_totals(), model.units
    rows = model.visible() if model.filter else model.shown_rows()
    count = len(rows)
    exited = sum(1 for r in rows if not r.alive)
    what = "group" if model.group_by != "pid" else "process"
    plural = "es" if what == "process" else "s"
    text = (f" now in {unitsmod.rate(t.rate_in, u)} out {unitsmod.rate(t.rate_out, u)}"
            f"  total in {unitsmod.size(t.total_in, u)} out {unitsmod.size(t.total_out, u)}"
            f"  {count} {what}{'' if count == 1 else plural}" + (f" ({exited} exited)" if exited else ""))
    if model.filter:
        text += f"  filter: {screen_text(model.filter)}"
    return _line(width, (text, STATUS))


def _table(model: ViewModel, width: int, height: int, unicode: bool) -> list[Line]:
    """The heading and ``height`` - 1 rows."""
    rows = model.visible()
    columns = columns_for(width, any(r.workload for r in rows))
    sorted_names = SORTED_COLUMNS[model.sort]
    heading: list[Segment] = []
    for i, (column, w) in enumerate(columns):
        if i:
            heading.append((" ", HEADING))
        heading.append((fit(column.heading, w, column.align), SORTED if column.name in sorted_names else HEADING))
    lines = [_line(width, *heading)]
    page = height - 1
    selected = model.selection(rows)
    model.scroll_into_view(page)
    if not rows:
        if model.records == 0:
            message = "waiting for the first interval..."
        elif model.filter:
            message = f"no process name contains {screen_text(model.filter)!r} (Esc clears the filter)"
        else:
            message = "no traffic measured yet"
        lines.append(_line(width, ("  " + message, NORMAL)))
    slots = model.history_len
    for row in rows[model.top: model.top + page]:
        is_selected = row is selected
        if row.alive:
            style = SELECTED if is_selected else NORMAL
        else:
            style = EXITED_SELECTED if is_selected else EXITED
        segments: list[Segment] = []
        text = ""
        for i, (cell, spark) in enumerate(_cells(row, columns, model.units, unicode, slots)):
            if i:
                text += " "
            if spark and style == NORMAL:
                segments += [(text, style), (cell, SPARK)]
                text = ""
            else:
                text += cell
        segments.append((text, style))
        lines.append(_line(width, *segments))
    return (lines + [_line(width)] * height)[:height]


def _footer(model: ViewModel, width: int) -> Line:
    if model.editing is not None:
        return _line(width, ("/" + screen_text(model.editing) + "_", PROMPT),
                     ("   Enter keeps the filter, Esc drops it", STATUS))
    if model.notice:
        return _line(width, (" " + screen_text(model.notice), STATUS))
    if model.help:
        return _line(width, (" any key: back   q: quit and print the summary", STATUS))
    if model.page != "table":
        return _line(width, (" Esc: back  Enter: detail  d: connections  Up/Down: scroll  q: quit", STATUS))
    return _line(width, (" q quit  ? help  Enter detail  d sockets  / filter  p pause  u units  rtkn sort",
                         STATUS))


HELP = (
    ("Up Down PgUp PgDn Home End", "select a process"),
    ("Enter", "the selected process in detail"),
    ("d", "its sockets, one row each, as -d lists them"),
    ("r t k n", "sort by rate now, total, peak or name"),
    ("i", "reverse the order"),
    ("/", "filter by name; Enter keeps it, Esc drops it"),
    ("Esc", "back to the table; there, clear the filter"),
    ("p", "pause the screen; sampling goes on"),
    ("u", "units: bits or bytes, SI or IEC"),
    ("?", "this help; any key closes it"),
    ("q", "quit; the summary table follows"),
)

HELP_COLUMNS = (
    "IN, OUT: the rates of the last interval. PEAK: the highest one-interval",
    "rate either way. TOTAL: bytes in + out since the start. LAST MIN: in + out,",
    "each row scaled to its own highest. TCP, UDP: the sockets it holds.",
    f"An exited process shows 'exited' and stays, dimmed, for {EXITED_KEEP_S:g} s.",
    "Ctrl-C, SIGTERM and SIGHUP end the view as q does; -o FILE gets every record.",
)


def _help(width: int) -> list[Line]:
    lines = [_line(width, (" Keys", HEADING))]
    key_width = max(len(k) for k, _ in HELP) + 2
    for keys, what in HELP:
        lines.append(_line(width, ("   " + keys.ljust(key_width) + what, NORMAL)))
    lines.append(_line(width))
    lines.append(_line(width, (" Columns", HEADING)))
    lines += [_line(width, ("   " + text, NORMAL)) for text in HELP_COLUMNS]
    return lines


def _scrolled(model: ViewModel, lines: list[Line], height: int) -> list[Line]:
    model.scroll = max(0, min(model.scroll, len(lines) - height))
    return lines[model.scroll:]


def _detail(model: ViewModel, row: Row, width: int, unicode: bool) -> list[Line]:
    u = model.units
    who = f"{row.members} processes" if row.members is not None else f"PID {row.pid}"
    state = "alive" if row.alive else "exited"
    out = [_line(width, (f" {who}  {screen_text(row.name)}  ({state})", HEADING))]
    if row.cmdline:
        out.append(_line(width, (f" command:   {screen_text(row.cmdline)}", NORMAL)))
    if row.workload or (row.cgroup and row.cgroup != "/"):
        out.append(_line(width, (f" cgroup:    {screen_text(row.cgroup or '')}"
                                 + (f"   ({screen_text(row.workload)})" if row.workload else ""), NORMAL)))
    out.append(_line(width))

    def pair(label: str, a: str, b: str) -> Line:
        return _line(width, (f" {label:<12}{a:>22}  {b:>22}", NORMAL))

    out.append(_line(width, (f" {'':<12}{'IN':>22}  {'OUT':>22}", HEADING)))
    out.append(pair("rate now", unitsmod.rate(row.rate_in, u), unitsmod.rate(row.rate_out, u)))
    out.append(pair("peak", unitsmod.rate(row.peak_in, u), unitsmod.rate(row.peak_out, u)))
    out.append(pair("total", f"{row.total_in} B", f"{row.total_out} B"))
    out.append(pair("", unitsmod.size(row.total_in, u), unitsmod.size(row.total_out, u)))
    # Each protocol class that moved bytes (TCP and UDP always), in the probes' order.
    for name in PROTOCOL_CLASSES:
        if name in ("tcp", "udp") or name in row.protocols:
            b_in, b_out = row.protocol_bytes(name)
            out.append(pair(PROTOCOL_LABELS.get(name, name.upper()), f"{b_in} B", f"{b_out} B"))
    listening = f" ({_count(row.listening, 9)} listening)" if row.listening else ""
    out.append(_line(width, (f" sockets     TCP {_count(row.tcp, 9)}{listening}, UDP {_count(row.udp, 9)}",
                             NORMAL)))
    out.append(_line(width))
    spark_width = max(1, width - 16)
    for label, history in (("in, last min", row.history_in), ("out, last min", row.history_out)):
        out.append(_line(width, (f" {label:<14} ", NORMAL),
                         (sparkline(list(history), spark_width, unicode, model.history_len), SPARK)))
    out.append(_line(width))
    out.append(_line(width, (" totals count from the start of the run; rates, peaks and the history "
                             "from the start of the view", STATUS)))
    return out


def _connections(model: ViewModel, row: Row, width: int, height: int) -> list[Line]:
    u = model.units
    who = f"{row.members} processes" if row.members is not None else f"PID {row.pid}"
    count = len(row.connections)
    lines = [_line(width, (f" {who}  {screen_text(row.name)}: {count} socket{'' if count == 1 else 's'}"
                           + ("" if row.alive else "  (exited)"), HEADING))]
    conns = sorted(row.connections.values(), key=lambda c: (c.gone, -(c.total_in + c.total_out), c.local))
    # The rates now only where both addresses still get room for an IPv4 one with its port.
    fixed = [("PROTO", 5, "<"), ("STATE", 11, "<"), ("TOTAL IN", 9, ">"), ("TOTAL OUT", 9, ">")]
    with_rates = (width - 39 - 22) // 2 >= 21
    if with_rates:
        fixed[2:2] = [("IN", 10, ">"), ("OUT", 10, ">")]
    address = max(8, (width - sum(w for _, w, _ in fixed) - len(fixed) - 1) // 2)
    columns = fixed[:1] + [("LOCAL", address, "<"), ("REMOTE", address, "<")] + fixed[1:]

    def cells(values: list[str]) -> str:
        return " ".join(fit(v, w, a) for v, (_, w, a) in zip(values, columns))

    lines.append(_line(width, (cells([c[0] for c in columns]), HEADING)))
    if not conns:
        lines.append(_line(width, ("  no sockets seen (a process shows its sockets once it moves bytes)", NORMAL)))
    body = []
    for c in conns:
        rates = [unitsmod.rate(c.rate_in, u), unitsmod.rate(c.rate_out, u)] if with_rates else []
        values = [c.protocol, screen_text(c.local), screen_text(c.remote) or "*", "CLOSED" if c.gone else c.state,
                  *rates, unitsmod.size(c.total_in, u), unitsmod.size(c.total_out, u)]
        body.append(_line(width, (cells(values), EXITED if c.gone else NORMAL)))
    page = max(1, height - len(lines))
    model.scroll = max(0, min(model.scroll, len(body) - page))
    return lines + body[model.scroll: model.scroll + page]
