"""Soak: a long ``procnetmon -c`` over many short-lived processes.

    sudo .venv/bin/python -m bench.births --births 50000 --rate 50
    sudo scripts/soak --births 20000             # the same

Starts ``procnetmon -c --interval 1s --json --include-loopback`` on every
process, then forks BIRTHS children at RATE a second, each sending one UDP
datagram of 100 bytes over loopback and exiting. Every second it reads
procnetmon's CPU time and resident memory from /proc. At the end it stops
procnetmon with SIGINT, checks that the summary lists every child with its
100 bytes, and prints CPU per interval and resident memory per tenth of the
births: flat means the cost follows the processes of each interval, not
every process ever seen. ``--markdown`` prints the table for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

from bench.procstat import cpu_seconds, rss_mib
from procnetmon.status import is_ready

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAYLOAD = b"x" * 100
CHILD_NAME = "pnm-soak-child"
PR_SET_NAME = 15
_libc = ctypes.CDLL(None, use_errno=True)


def start_procnetmon(python: str, out) -> subprocess.Popen:
    proc = subprocess.Popen([python, "-m", "procnetmon", "-c", "--interval", "1s", "--json",
                             "--include-loopback"], cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=True)
    seen = []
    while not (seen and is_ready(seen[-1])):  # a fresh machine's first line says tracefs was mounted
        seen.append(proc.stderr.readline())
        if not seen[-1]:
            proc.kill()
            raise SystemExit(f"procnetmon did not start: {''.join(seen)}{proc.stderr.read()}")
    return proc


def birth(sink: tuple) -> int:
    """Fork a child that sends one datagram to ``sink`` and exits; its PID."""
    pid = os.fork()
    if pid == 0:
        try:
            _libc.prctl(PR_SET_NAME, CHILD_NAME.encode(), 0, 0, 0)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(PAYLOAD, sink)
        finally:
            os._exit(0)
    return pid


def soak(births: int, rate: float, python: str) -> dict:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    out = tempfile.TemporaryFile("w+")
    pnm = start_procnetmon(python, out)
    samples = []  # (births so far, monotonic, cpu seconds, rss MiB)
    children = set()
    started = time.monotonic()
    next_sample = started
    born = 0
    try:
        while born < births:
            now = time.monotonic()
            due = int((now - started) * rate) + 1
            while born < min(due, births):
                children.add(birth(sink.getsockname()))
                born += 1
            while children:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                children.discard(pid)
            try:
                while True:
                    sink.recv(2048)
            except BlockingIOError:
                pass
            if now >= next_sample:
                samples.append((born, now, cpu_seconds(pnm.pid), rss_mib(pnm.pid)))
                next_sample += 1.0
            time.sleep(min(0.01, 1.0 / rate))
        for pid in children:
            os.waitpid(pid, 0)
        time.sleep(2.5)  # let procnetmon see the last exits
        samples.append((born, time.monotonic(), cpu_seconds(pnm.pid), rss_mib(pnm.pid)))
        pnm.send_signal(signal.SIGINT)
        pnm.wait(120)
    finally:
        if pnm.poll() is None:
            pnm.kill()
    out.seek(0)
    last = None
    for line in out:
        last = line
    summary = json.loads(last)
    # PIDs are reused (pid_max is often 32768): a row may hold several children.
    rows = [p for p in summary["processes"] if p["name"] == CHILD_NAME]
    return {"births": births, "rate": rate, "samples": samples, "summary_rows": len(summary["processes"]),
            "child_rows": len(rows), "child_bytes": sum(p["bytes_out"] for p in rows),
            "status": pnm.returncode}


def tenths(result: dict) -> list[dict]:
    """CPU ms per 1 s interval and mean RSS for each tenth of the births."""
    births = result["births"]
    samples = result["samples"]
    rows = []
    for tenth in range(10):
        lo, hi = births * tenth / 10, births * (tenth + 1) / 10
        window = [s for s in samples if lo < s[0] <= hi]
        if len(window) < 2:
            rows.append({"tenth": tenth + 1, "cpu_ms": None, "rss_mib": None})
            continue
        cpu = (window[-1][2] - window[0][2]) / (window[-1][1] - window[0][1]) * 1000
        rss = sum(s[3] for s in window) / len(window)
        rows.append({"tenth": tenth + 1, "cpu_ms": cpu, "rss_mib": rss})
    return rows


def report(result: dict, markdown: bool) -> str:
    rows = tenths(result)
    first, last = rows[0], rows[-1]
    lines = []
    if markdown:
        lines += ["| tenth of the births | CPU per 1 s interval | resident memory |", "| --- | --- | --- |"]
        for r in rows:
            cpu = "-" if r["cpu_ms"] is None else f"{r['cpu_ms']:.0f} ms"
            rss = "-" if r["rss_mib"] is None else f"{r['rss_mib']:.1f} MiB"
            lines.append(f"| {r['tenth']} | {cpu} | {rss} |")
    else:
        lines.append(f"{'tenth':>5}  {'cpu ms/interval':>15}  {'rss MiB':>8}")
        for r in rows:
            cpu = "-" if r["cpu_ms"] is None else f"{r['cpu_ms']:.1f}"
            rss = "-" if r["rss_mib"] is None else f"{r['rss_mib']:.1f}"
            lines.append(f"{r['tenth']:>5}  {cpu:>15}  {rss:>8}")
    lines.append("")
    lines.append(f"births {result['births']} at {result['rate']:g}/s; summary: {result['summary_rows']} rows, "
                 f"{result['child_rows']} of children with {result['child_bytes']} bytes "
                 f"(expected {result['births'] * len(PAYLOAD)}); procnetmon status {result['status']}")
    if first["rss_mib"] and last["rss_mib"]:
        lines.append(f"resident memory, last tenth vs first: {100 * (last['rss_mib'] / first['rss_mib'] - 1):+.1f}%; "
                     f"CPU per interval: {first['cpu_ms']:.1f} ms -> {last['cpu_ms']:.1f} ms")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="bench.births", description=__doc__.split("\n\n")[0])
    p.add_argument("--births", type=int, default=50_000, help="processes to start (default 50000)")
    p.add_argument("--rate", type=float, default=50, help="births per second (default 50)")
    p.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"),
                   help="the Python that runs procnetmon (default: the project's .venv)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--json", metavar="FILE", help="also write the raw samples to FILE")
    args = p.parse_args(argv)
    result = soak(args.births, args.rate, args.python)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)
    print(report(result, args.markdown))
    return 0 if result["child_bytes"] == args.births * len(PAYLOAD) and result["status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
