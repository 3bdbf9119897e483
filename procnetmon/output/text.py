"""Human-readable output: a table per summary, and a time-stamped line per
process per interval when streaming (the column headings printed once, so
``-c`` gives one line per process per second, like vmstat).

Sizes are scaled with powers of 1000 (B, KB, MB, GB, TB); rates are shown in
bits (bps, Kbps, Mbps, ...) or bytes (B/s, KB/s, ...) per second.  Only ASCII
is used in the frame, so the text survives any locale and log file.

Any user can name a process: control characters in names (an escape
sequence, a newline) are shown as ``\\xHH`` so that they neither drive the
terminal nor break rows, and bytes that are not UTF-8 as ``\\xHH`` too.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from procnetmon.model import RECORD_INTERVAL, Connection, ProcessStats, Record, clean_text

NO_TRAFFIC = "no traffic measured"
EXITED = " (exited)"
TOTAL_NAME = "TOTAL"
UNKNOWN = "?"  # a count that could not be read

# Widths fit the widest scaled value ("999.9 KB", "999.9 Mbps") so that the
# lines of successive intervals line up; a wider value only widens its row.
PID_WIDTH = 7
BYTES_WIDTH = 9
RATE_WIDTH = 10
COUNT_WIDTH = 5
NAME_MIN_WIDTH = 16  # a kernel comm is at most 15 characters
STREAM_NAME_WIDTH = 20  # fixed in streaming lines; longer names are cut
TIME_WIDTH = 8  # HH:MM:SS

_BYTE_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")
_BIT_RATE_UNITS = ("bps", "Kbps", "Mbps", "Gbps", "Tbps", "Pbps")
_BYTE_RATE_UNITS = ("B/s", "KB/s", "MB/s", "GB/s", "TB/s", "PB/s")

_SORT_KEYS: dict[str, tuple[Callable[[ProcessStats], object], bool]] = {
    # key: (value, descending)
    "pid": (lambda p: p.pid or 0, False),
    "name": (lambda p: p.name.lower(), False),
    "in": (lambda p: p.bytes_in, True),
    "out": (lambda p: p.bytes_out, True),
    "total": (lambda p: p.bytes_in + p.bytes_out, True),
}


def printable(text: str) -> str:
    """``text`` safe for a terminal: C0 and C1 control characters and DEL
    as ``\\xHH``, undecodable bytes as ``\\xHH`` (see ``clean_text``)."""
    text = clean_text(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else _escape_char(c) for c in text)


def _escape_char(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


# --------------------------------------------------------------------------
# Scaling of numbers.


def _scale(value: float, units: Sequence[str]) -> str:
    """``value`` with one of ``units`` (each 1000 times the previous)."""
    if round(value) < 1000:
        return f"{value:.0f} {units[0]}"
    for unit in units[1:]:
        value /= 1000.0
        # Compare after rounding so 999.96 KB becomes "1.0 MB", not "1000.0 KB".
        if round(value, 1) < 1000 or unit == units[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def human_bytes(n: float) -> str:
    """1500 -> "1.5 KB" (powers of 1000)."""
    return _scale(n, _BYTE_UNITS)


def human_rate(bytes_per_s: float, units: str = "bits") -> str:
    """1_000_000 B/s -> "8.0 Mbps" (units="bits") or "1.0 MB/s" (units="bytes")."""
    if units == "bytes":
        return _scale(bytes_per_s, _BYTE_RATE_UNITS)
    return _scale(bytes_per_s * 8, _BIT_RATE_UNITS)


# --------------------------------------------------------------------------
# Public entry point.


def format_text(
    record: Record,
    *,
    units: str = "bits",
    sort: str = "total",
    top: Optional[int] = None,
    aggregate: bool = False,
    details: bool = False,
    header: bool = True,
) -> str:
    """The text of one record.

    A summary is a titled table (``header``: with its column headings).  An
    interval is one time-stamped line per process (``header``: preceded by
    the column headings, which a streaming writer asks for once).
    """
    rows = sorted_processes(record.processes, sort, top)
    if record.type == RECORD_INTERVAL:
        lines = _interval_lines(record, rows, units, aggregate, details, header)
    else:
        lines = _summary_lines(record, rows, units, aggregate, details, header)
    if record.exit_over is not None:
        over = record.exit_over
        who = f"PID {over.pid}" if over.pid is not None else "all processes"
        amount = human_rate(over.value, units) if over.threshold.endswith("/s") else human_bytes(over.value)
        lines.append(f"exit-over {printable(over.threshold)} crossed: {amount} ({who})")
    if record.lost_updates:
        lines.append(
            f"warning: {record.lost_updates} counter updates were lost "
            "(kernel map full); the totals above are too low"
        )
    return "".join(line.rstrip() + "\n" for line in lines)


def sorted_processes(
    processes: Sequence[ProcessStats], sort: str, top: Optional[int]
) -> list[ProcessStats]:
    """The processes in table order (ties by PID), cut to ``top`` rows."""
    key, descending = _SORT_KEYS[sort]
    ordered = sorted(processes, key=lambda p: (p.pid or 0, p.name))  # the tie-break order
    ordered.sort(key=key, reverse=descending)  # stable: ties keep PID order
    return ordered if top is None else ordered[:top]


# --------------------------------------------------------------------------
# Summary: a titled table.


def _summary_lines(record, rows, units, aggregate, details, header) -> list[str]:
    lines = [_title(record)]
    if not record.processes:
        return lines + [NO_TRAFFIC]
    labels = [_label(p) for p in rows]
    name_width = max([NAME_MIN_WIDTH] + [len(label) for label in labels])
    columns = _summary_columns(name_width)
    health = record.tcp_health is not None
    if health:
        columns.append(RETRANS_COLUMN)
    # The workload column only when a row is in some cgroup other than the root.
    workloads = [workload_label(p) for p in rows] if any(workload_label(p) for p in rows) else None
    # The other protocols' column only when some row moved bytes of one.
    others = any(_other_bytes(p) for p in rows)
    if others:
        columns.append(("OTHER", BYTES_WIDTH, ">"))
    if workloads:
        columns.append(("CONTAINER/CGROUP", 0, "<"))
    if header:
        lines.append(_row(columns, [c[0] for c in columns]))
    for i, (process, label) in enumerate(zip(rows, labels)):
        cells = _summary_cells(process, label, units) + ([_retrans_cell([process])] if health else [])
        if others:
            cells.append(human_bytes(_other_bytes(process)))
        lines.append(_row(columns, cells + [workloads[i]] if workloads else cells))
        if details:
            lines.extend(_protocol_lines(process, PID_WIDTH + 2))
            lines.extend(_who_lines(process, PID_WIDTH + 2))
            lines.extend(_connection_lines(process.connections, PID_WIDTH + 2, units))
    if aggregate:
        cells = _summary_cells(record.aggregated, TOTAL_NAME, units, pid="")
        if health:
            cells.append(_retrans_cell(record.processes))
        if others:
            cells.append(human_bytes(_other_bytes(record.aggregated)))
        lines.append(_row(columns, cells))
    return lines


# --tcp-health: retransmitted bytes as a share of the TCP bytes sent.
RETRANS_COLUMN = ("RETRANS%", 8, ">")


def _retrans_cell(processes: Sequence[ProcessStats]) -> str:
    sent = sum(p.tcp.bytes_out for p in processes)
    again = sum(p.tcp_health.retrans_bytes for p in processes if p.tcp_health is not None)
    if sent <= 0:
        return "-" if not again else "?"
    return f"{100.0 * again / sent:.2f}"


def _other_bytes(stats) -> int:
    """Bytes both ways of every protocol class but TCP and UDP."""
    return sum(b.bytes_in + b.bytes_out for p, b in stats.protocols.items() if p not in ("tcp", "udp"))


def _protocol_lines(stats, indent: int) -> list[str]:
    """With --details, a row's bytes by protocol class, when it used more than TCP and UDP."""
    if not _other_bytes(stats):
        return []
    parts = [f"{p} in {human_bytes(b.bytes_in)} out {human_bytes(b.bytes_out)}" for p, b in stats.protocols.items()]
    return [" " * indent + "protocols: " + ", ".join(parts)]


def _summary_columns(name_width: int) -> list[tuple[str, int, str]]:
    """(heading, width, alignment) of each column of the summary table."""
    return [
        ("PID", PID_WIDTH, ">"),
        ("NAME", name_width, "<"),
        ("IN", BYTES_WIDTH, ">"),
        ("OUT", BYTES_WIDTH, ">"),
        ("IN RATE", RATE_WIDTH, ">"),
        ("OUT RATE", RATE_WIDTH, ">"),
        ("PEAK IN", RATE_WIDTH, ">"),
        ("PEAK OUT", RATE_WIDTH, ">"),
        ("TCP", COUNT_WIDTH, ">"),
        ("UDP", COUNT_WIDTH, ">"),
    ]


def _summary_cells(stats, label: str, units: str, pid=None) -> list[str]:
    """Cells of a process (or of the aggregate, with ``pid=""``)."""
    return [
        _pid_cell(stats) if pid is None else pid,
        label,
        human_bytes(stats.bytes_in),
        human_bytes(stats.bytes_out),
        human_rate(stats.rate_in, units),
        human_rate(stats.rate_out, units),
        human_rate(stats.peak_rate_in, units),
        human_rate(stats.peak_rate_out, units),
        _count(stats.tcp_connections),
        _count(stats.udp_connections),
    ]


def _title(record: Record) -> str:
    start, end = record.start.astimezone(), record.end.astimezone()
    end_format = "%H:%M:%S" if start.date() == end.date() else "%Y-%m-%d %H:%M:%S"
    return (
        f"procnetmon {record.type}  {start:%Y-%m-%d %H:%M:%S} -> {end.strftime(end_format)}"
        f"  {record.duration_s:.1f} s  {record.mode}  interfaces: {_interfaces(record)}"
    )


def _interfaces(record: Record) -> str:
    if record.interfaces is None:
        return "all" if record.include_loopback else "all but lo"
    return printable(",".join(record.interfaces))


# --------------------------------------------------------------------------
# Interval: a time-stamped line per process.


def _interval_columns() -> list[tuple[str, int, str]]:
    return [
        ("TIME", TIME_WIDTH, "<"),
        ("PID", PID_WIDTH, ">"),
        ("NAME", STREAM_NAME_WIDTH, "<"),
        ("IN", BYTES_WIDTH, ">"),
        ("OUT", BYTES_WIDTH, ">"),
        ("IN RATE", RATE_WIDTH, ">"),
        ("OUT RATE", RATE_WIDTH, ">"),
        ("TOTAL IN", BYTES_WIDTH, ">"),
        ("TOTAL OUT", BYTES_WIDTH, ">"),
        ("TCP", COUNT_WIDTH, ">"),
        ("UDP", COUNT_WIDTH, ">"),
    ]


def _interval_lines(record, rows, units, aggregate, details, header) -> list[str]:
    columns = _interval_columns()
    health = record.tcp_health is not None
    if health:
        columns.append(RETRANS_COLUMN)
    lines = [_row(columns, [c[0] for c in columns])] if header else []
    clock = f"{record.end.astimezone():%H:%M:%S}"
    if not record.processes:
        return lines + [f"{clock}  {NO_TRAFFIC}"]
    for process in rows:
        label = _fit(printable(process.name), not process.alive, STREAM_NAME_WIDTH)
        cells = _interval_cells(process, label, units) + ([_retrans_cell([process])] if health else [])
        lines.append(_row(columns, [clock] + cells))
        if details:
            lines.extend(_protocol_lines(process, TIME_WIDTH + PID_WIDTH + 4))
            lines.extend(_who_lines(process, TIME_WIDTH + PID_WIDTH + 4))
            lines.extend(_connection_lines(process.connections, TIME_WIDTH + PID_WIDTH + 4, units))
    if aggregate:
        cells = _interval_cells(record.aggregated, TOTAL_NAME, units, pid="")
        lines.append(_row(columns, [clock] + cells + ([_retrans_cell(record.processes)] if health else [])))
    return lines


def _interval_cells(stats, label: str, units: str, pid=None) -> list[str]:
    return [
        _pid_cell(stats) if pid is None else pid,
        label,
        human_bytes(stats.bytes_in),
        human_bytes(stats.bytes_out),
        human_rate(stats.rate_in, units),
        human_rate(stats.rate_out, units),
        human_bytes(stats.total_bytes_in),
        human_bytes(stats.total_bytes_out),
        _count(stats.tcp_connections),
        _count(stats.udp_connections),
    ]


# --------------------------------------------------------------------------
# Shared pieces.


def _count(value) -> str:
    """A connection count; "?" when it could not be read."""
    return UNKNOWN if value is None else str(value)


def _pid_cell(stats) -> str:
    """The PID, or for a row folded by --group-by the number of its processes."""
    if getattr(stats, "pids", None) is not None:
        return f"{len(stats.pids)}x"
    return str(stats.pid)


def workload_label(process: ProcessStats) -> str:
    """The container (its ID cut to 12 digits, as docker ps shows it) or unit,
    else the cgroup path; "" for the root cgroup or none."""
    if process.container:
        runtime, sep, ident = process.container.partition("://")
        if sep and len(ident) == 64:
            return f"{runtime}://{ident[:12]}"
        return process.container if len(process.container) != 64 else process.container[:12]
    return "" if process.cgroup in (None, "/") else process.cgroup


def _label(process: ProcessStats) -> str:
    return printable(process.name) + (EXITED if not process.alive else "")


def _fit(name: str, exited: bool, width: int) -> str:
    """The name (and exited marker) cut to ``width``; a cut name ends in "~"."""
    suffix = EXITED if exited else ""
    room = width - len(suffix)
    if len(name) > room:
        name = name[: room - 1] + "~"
    return name + suffix


def _row(columns, cells: Sequence[str]) -> str:
    return "  ".join(f"{cell:{align}{width}}" for (_, width, align), cell in zip(columns, cells))


def who_text(process: ProcessStats) -> str:
    """Who a process is, on one line: parent, user, start (local time, as the
    title's), executable; "" when none of it is known."""
    parts = []
    if process.ppid is not None:
        parts.append(f"ppid {process.ppid}")
    if process.user is not None or process.uid is not None:
        uid = "" if process.uid is None else f" ({process.uid})"
        parts.append(f"user {printable(process.user) if process.user is not None else UNKNOWN}{uid}")
    if process.start_time is not None:
        parts.append(f"started {process.start_time.astimezone():%Y-%m-%d %H:%M:%S}")
    if process.exe is not None:
        parts.append(f"exe {printable(process.exe)}")
    return "  ".join(parts)


def _who_lines(process: ProcessStats, indent: int) -> list[str]:
    text = who_text(process)
    return [" " * indent + text] if text else []


def _connection_health_cells(c: Connection) -> list[str]:
    """--tcp-health: the connection's retransmitted segments and smoothed RTT."""
    h = c.tcp_health
    if h is None:
        return []
    return ["retrans", str(h.retrans_segs), "srtt", "-" if h.srtt_us is None else f"{h.srtt_us / 1000:.2f}ms"]


def _connection_lines(
    connections: Optional[list[Connection]], indent: int, units: str
) -> list[str]:
    """One aligned line per connection: proto local -> remote state in/out."""
    if not connections:
        return []
    cells = [
        [
            c.protocol + ("6" if c.family == "ipv6" else ""),
            c.local,
            "->",
            c.remote or "*",
            c.state,
            "in",
            human_bytes(c.bytes_in),
            "out",
            human_bytes(c.bytes_out),
        ] + _connection_health_cells(c)
        for c in connections
    ]
    width = max(len(row) for row in cells)
    cells = [row + [""] * (width - len(row)) for row in cells]
    widths = [max(len(row[i]) for row in cells) for i in range(width)]
    aligns = "<<<<<<><>" + "<>" * ((width - 9) // 2)
    pad = " " * indent
    return [
        pad + "  ".join(f"{cell:{align}{width}}" for cell, align, width in zip(row, aligns, widths))
        for row in cells
    ]
