"""CSV output: one row per process per record, columns in the fixed order of
``CSV_COLUMNS`` (documented in the man page; add columns at the end, never
rename or reorder).

Numbers are those of the JSON form (plain bytes and bytes per second, rates
rounded as in ``record_to_dict``); booleans are ``true``/``false``.  With
``aggregate`` a record also gets a ``TOTAL`` row whose pid is empty; a record
without any process gets that row (of zeros) anyway, so every record leaves
at least one row.
"""

from __future__ import annotations

import csv
import io

from procnetmon.model import RECORD_INTERVAL, Record, aggregate_to_dict, process_to_dict, timestamp
from procnetmon.output.text import printable
from procnetmon.probes import PROTOCOL_CLASSES

OTHER_PROTOCOLS = tuple(p for p in PROTOCOL_CLASSES if p not in ("tcp", "udp"))
OTHER_PROTOCOL_COLUMNS = tuple(f"{p}_bytes_{d}" for p in OTHER_PROTOCOLS for d in ("in", "out"))

CSV_COLUMNS = (
    "timestamp",  # end of the record's window, ISO 8601 to the millisecond
    "type",  # interval or summary
    "pid",
    "name",
    "cmdline",
    "alive",
    "mode",  # payload or wire
    "duration_s",
    "bytes_in",
    "bytes_out",
    "rate_in",
    "rate_out",
    "peak_rate_in",
    "peak_rate_out",
    "tcp_bytes_in",
    "tcp_bytes_out",
    "udp_bytes_in",
    "udp_bytes_out",
    "tcp_connections",
    "udp_connections",
    "total_bytes_in",  # since the start; equals bytes_in in a summary
    "total_bytes_out",
    "interfaces",  # "all" or names joined by ";"
    "tcp_listening",  # listening TCP sockets, also counted in tcp_connections
    "cgroup",  # cgroup v2 path; empty when unknown
    "container",  # container or systemd unit the path names; empty for none
    "pod",  # Kubernetes pod UID; empty for none
    "pids",  # a row folded by --group-by: its PIDs joined by ";"; else empty
    "ppid",  # parent PID when first identified; empty when unknown (also user ... start_time)
    "user",  # name of the effective user
    "uid",  # effective user ID
    "exe",  # path of the program (/proc/PID/exe)
    "start_time",  # when the process started, ISO 8601 in UTC to the millisecond
) + OTHER_PROTOCOL_COLUMNS  # <class>_bytes_in, <class>_bytes_out of each class but TCP and UDP

# After those, only with --tcp-health (a record with tcp_health): the
# process's TCP health in the record's window (see model.TcpHealth).
HEALTH_COLUMNS = (
    "tcp_retrans_segs",
    "tcp_retrans_bytes",
    "tcp_drops",
    "tcp_drop_reasons",  # REASON=count joined by ";", reasons sorted
    "tcp_connect_attempts",
    "tcp_connect_ok",
    "tcp_connect_refused",
    "tcp_connect_timed_out",
    "tcp_connect_unreachable",
    "tcp_connect_other",
    "tcp_connect_latency_mean_us",  # empty when no connect was timed
    "tcp_connect_latency_max_us",
    "tcp_resets_in",
    "tcp_resets_out",
    "tcp_srtt_min_us",  # over the connections whose RTT was read in the window; empty for none
    "tcp_srtt_mean_us",
    "tcp_srtt_max_us",
)

TOTAL_NAME = "TOTAL"


def columns_of(record: Record) -> tuple:
    """The columns of a record's rows: HEALTH_COLUMNS follow with --tcp-health."""
    return CSV_COLUMNS + HEALTH_COLUMNS if record.tcp_health is not None else CSV_COLUMNS


def format_csv(record: Record, header: bool, aggregate: bool) -> str:
    """The rows of one record (and the header row first if ``header``)."""
    buf = io.StringIO()
    # "\n" rather than the csv default "\r\n": the rows go to Unix tools and logs.
    writer = csv.DictWriter(buf, fieldnames=columns_of(record), lineterminator="\n")
    if header:
        writer.writeheader()
    common = _record_fields(record)
    for process in record.processes:
        row = {**common, **_process_fields(process, record.type)}
        if record.tcp_health is not None:
            row.update(_health_fields(process.tcp_health.to_dict() if process.tcp_health is not None else None))
        writer.writerow(_escaped(row))
    if aggregate or not record.processes:
        # A record with no process still leaves a row: a cron job's idle
        # minute must not look like a minute it did not run.
        writer.writerow(_escaped({**common, **_total_fields(record)}))
    return buf.getvalue()


def _escaped(row: dict) -> dict:
    # Users name their processes: a raw newline in a command line would let
    # them add a line of their choosing to root's file (an authorized_keys).
    return {k: printable(v) if isinstance(v, str) else v for k, v in row.items()}


def _record_fields(record: Record) -> dict:
    interfaces = "all" if record.interfaces is None else ";".join(record.interfaces)
    return {
        "timestamp": timestamp(record.end),
        "type": record.type,
        "mode": record.mode,
        "duration_s": round(record.duration_s, 3),
        "interfaces": interfaces,
    }


def _process_fields(process, record_type: str) -> dict:
    d = process_to_dict(process, record_type)
    in_total, out_total = _totals(d, record_type)
    return {
        "pid": "" if d["pid"] is None else d["pid"],
        "name": d["name"],
        "cmdline": d["cmdline"],
        "alive": _bool(d["alive"]),
        **_rate_fields(d),
        "tcp_bytes_in": d["tcp"]["bytes_in"],
        "tcp_bytes_out": d["tcp"]["bytes_out"],
        "udp_bytes_in": d["udp"]["bytes_in"],
        "udp_bytes_out": d["udp"]["bytes_out"],
        "total_bytes_in": in_total,
        "total_bytes_out": out_total,
        "cgroup": d["cgroup"] or "",
        "container": d["container"] or "",
        "pod": d["pod"] or "",
        "pids": ";".join(str(p) for p in d.get("pids", [])),
        **{key: "" if d[key] is None else d[key] for key in ("ppid", "user", "uid", "exe", "start_time")},
        **_other_protocol_fields(d["protocols"]),
    }


def _total_fields(record: Record) -> dict:
    d = aggregate_to_dict(record.aggregated, record.type)
    in_total, out_total = _totals(d, record.type)
    # The aggregate has no protocol split; the sum over the rows is exact.
    procs = record.processes
    return {
        "pid": "",
        "name": TOTAL_NAME,
        "cmdline": "",
        "alive": "",
        **_rate_fields(d),
        "tcp_bytes_in": sum(p.tcp.bytes_in for p in procs),
        "tcp_bytes_out": sum(p.tcp.bytes_out for p in procs),
        "udp_bytes_in": sum(p.udp.bytes_in for p in procs),
        "udp_bytes_out": sum(p.udp.bytes_out for p in procs),
        "total_bytes_in": in_total,
        "total_bytes_out": out_total,
        **_other_protocol_fields(d["protocols"]),
    }


def _other_protocol_fields(protocols: dict) -> dict:
    out = {}
    for p in OTHER_PROTOCOLS:
        pair = protocols.get(p, {"bytes_in": 0, "bytes_out": 0})
        out[f"{p}_bytes_in"], out[f"{p}_bytes_out"] = pair["bytes_in"], pair["bytes_out"]
    return out


def _health_fields(h) -> dict:
    if h is None:
        return {}
    def blank(v):
        return "" if v is None else v

    connects, latency, rtt = h["connects"], h["connect_latency"], h["rtt"]
    return {
        "tcp_retrans_segs": h["retrans_segs"],
        "tcp_retrans_bytes": h["retrans_bytes"],
        "tcp_drops": h["drops"],
        "tcp_drop_reasons": ";".join(f"{r}={n}" for r, n in h["drop_reasons"].items()),
        "tcp_connect_attempts": connects["attempts"],
        "tcp_connect_ok": connects["ok"],
        "tcp_connect_refused": connects["refused"],
        "tcp_connect_timed_out": connects["timed_out"],
        "tcp_connect_unreachable": connects["unreachable"],
        "tcp_connect_other": connects["other"],
        "tcp_connect_latency_mean_us": blank(latency["mean_us"]),
        "tcp_connect_latency_max_us": blank(latency["max_us"]),
        "tcp_resets_in": h["resets_in"],
        "tcp_resets_out": h["resets_out"],
        "tcp_srtt_min_us": blank(rtt["srtt_min_us"]),
        "tcp_srtt_mean_us": blank(rtt["srtt_mean_us"]),
        "tcp_srtt_max_us": blank(rtt["srtt_max_us"]),
    }


def _rate_fields(d: dict) -> dict:
    keys = ("bytes_in", "bytes_out", "rate_in", "rate_out", "peak_rate_in",
            "peak_rate_out", "tcp_connections", "udp_connections", "tcp_listening")
    return {key: d[key] for key in keys}


def _totals(d: dict, record_type: str) -> tuple:
    """Bytes since the start: carried by interval records, and simply the
    window's bytes in a summary (its window is the whole run)."""
    if record_type == RECORD_INTERVAL:
        return d["total_bytes_in"], d["total_bytes_out"]
    return d["bytes_in"], d["bytes_out"]


def _bool(value: bool) -> str:
    return "true" if value else "false"
