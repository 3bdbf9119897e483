"""The matrix's results: pytest's JUnit files read back, one table row per kernel, backend and mode.

Pure but for junits_of, which reads a run's files; unit-tested in tests/unit/test_vm.py.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Outcome:
    """One pytest run's tests of one mode: how many passed, failed, were skipped (and why)."""

    passed: int = 0
    failed: list = field(default_factory=list)  # test ids
    skipped: dict = field(default_factory=dict)  # reason -> count


def mode_of(test_name: str) -> str:
    return "wire" if test_name.startswith("test_wire") else "payload"


def parse_junit(text: str) -> dict[str, Outcome]:
    """Outcomes by mode from pytest's --junitxml."""
    out: dict[str, Outcome] = {}
    for case in ET.fromstring(text).iter("testcase"):
        name = case.get("name", "")
        o = out.setdefault(mode_of(name), Outcome())
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            o.failed.append(name)
        elif skip is not None:
            reason = (skip.get("message") or "").strip()
            reason = re.sub(r"^Skipped:\s*", "", reason)
            o.skipped[reason] = o.skipped.get(reason, 0) + 1
        else:
            o.passed += 1
    return out


@dataclass
class Row:
    kernel: str
    backend: str
    mode: str
    passed: int = 0
    failed: int = 0
    skipped: str = ""  # "N (reason)" or ""
    seconds: Optional[float] = None
    note: str = ""  # a backend not run, and why
    failed_ids: list = field(default_factory=list)


def rows_of(kernel: str, guest: dict, junits: dict) -> list[Row]:
    """Table rows for one kernel from its guest.json and the junit texts by run label."""
    rows = []
    for run in guest.get("runs", []):
        label = run["label"]
        text = junits.get(label)
        outcomes = parse_junit(text) if text else {}
        if not outcomes:
            rows.append(Row(kernel, label, "-", failed=1, seconds=run.get("seconds"),
                            note=f"no results (pytest exit {run.get('returncode')}; see {run.get('log', 'the log')})"))
            continue
        for mode in ("payload", "wire"):
            o = outcomes.get(mode)
            if o is None:
                continue
            skipped = ", ".join(f"{n} ({r})" for r, n in sorted(o.skipped.items()))
            rows.append(Row(kernel, label, mode, o.passed, len(o.failed), skipped, run.get("seconds"),
                            failed_ids=o.failed))
    for name, reason in sorted(guest.get("missing", {}).items()):
        rows.append(Row(kernel, name, "-", note=f"missing: {reason}"))
    for name, reason in sorted(guest.get("not_run", {}).items()):
        rows.append(Row(kernel, name, "-", note=f"not run: {reason}"))
    return rows


def format_table(rows: list[Row]) -> str:
    head = ("kernel", "backend", "mode", "passed", "failed", "skipped (reason)", "time")
    lines = [head]
    for r in rows:
        if r.note:
            lines.append((r.kernel, r.backend, r.mode, "", str(r.failed) if r.failed else "", r.note,
                          f"{r.seconds:.0f} s" if r.seconds is not None else ""))
            continue
        lines.append((r.kernel, r.backend, r.mode, str(r.passed), str(r.failed), r.skipped or "0",
                      f"{r.seconds:.0f} s" if r.seconds is not None else ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = []
    for i, line in enumerate(lines):
        text.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        if i == 0:
            text.append("  ".join("-" * w for w in widths))
    failed = [f"{r.kernel} {r.backend} {t}" for r in rows for t in r.failed_ids]
    if failed:
        text.append("")
        text.append("failed: " + ", ".join(failed))
    return "\n".join(text) + "\n"


def any_failed(rows: list[Row]) -> bool:
    return any(r.failed for r in rows)


def junits_of(out: str, guest: dict) -> dict:
    texts = {}
    for run in guest.get("runs", []):
        path = f"{out}/{run['label']}.xml"
        if os.path.exists(path):
            with open(path) as f:
                texts[run["label"]] = f.read()
    return texts


def matrix_summary(results: dict, wall: float, guest_timeout: float) -> tuple[list[Row], str]:
    """The rows and the printed summary (table, then timings) of ``results``: label -> (out dir, guest record)."""
    rows = []
    timings = []
    for label, (out, guest) in results.items():
        rows += rows_of(label, guest, junits_of(out, guest))
        if guest.get("timed_out"):
            rows.append(Row(label, "-", "-", failed=1, note=f"guest killed after {guest.get('wall', 0):.0f} s "
                                                            f"(limit {guest_timeout} s, or stopped); "
                                                            f"see {out}/*.log"))
        runs = ", ".join(f"{r['label']} {r['seconds']:.0f} s" for r in guest.get("runs", []))
        boot = guest.get("uptime_at_start")
        timings.append(f"{label}: wall {guest.get('wall', 0):.0f} s"
                       + (f", boot {boot:.0f} s" if boot is not None and "native" not in label else "")
                       + (f", --check {guest['check_seconds']:.0f} s" if "check_seconds" in guest else "")
                       + (f", runs: {runs}" if runs else "")
                       + (" (TIMED OUT)" if guest.get("timed_out") else ""))
    table = format_table(rows)
    return rows, table + "\n" + "\n".join(timings) + f"\nmatrix wall time: {wall:.0f} s\n"
