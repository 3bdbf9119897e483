"""How long reading the sockets of many processes takes (issue 14, item 12).

    sudo .venv/bin/python -m bench.sockets --procs 500 --sockets 480
    sudo .venv/bin/python -m bench.sockets --procs 500 --sockets 480 --impl proc

Forks PROCS processes that each hold SOCKETS bound UDP sockets (each on its
own loopback address and port, so that every one is in the kernel's
tables), then times
``procnetmon.sockettable.sockets_by_pid`` over all of them (what a record of
``procnetmon -c`` does for the processes it reports) and over a tenth of
them, and the memory that takes. ``--impl`` picks how the tables are read:
``auto`` (netlink sock_diag where it works), ``proc`` (/proc/PID/net text).
A measurement, not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import sys
import time
import tracemalloc
from typing import Optional

from procnetmon import sockettable


def hold_sockets(index: int, count: int) -> int:
    """Fork a process that binds ``count`` UDP sockets and waits; its PID."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, count + 64))
            held = []
            for i in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                # Ports spread too: the kernel hashes UDP sockets by port first.
                n = index * count + i
                block = n // 40000 + 2
                s.bind((f"127.0.{block >> 8}.{block & 255}", 10000 + n % 40000))
                held.append(s)
            os.write(write_end, b"1")
            signal.pause()
        finally:
            os._exit(0)
    os.close(write_end)
    if os.read(read_end, 1) != b"1":
        raise SystemExit(f"process {index} could not bind its sockets")
    os.close(read_end)
    return pid


def timed(pids: list[int], impl: str, reps: int) -> tuple[float, float, int]:
    """Median seconds, peak MiB allocated by Python (in a run of its own:
    tracing allocations slows everything), and sockets found."""
    times = []
    found = 0
    for _ in range(reps):
        t = time.perf_counter()
        result = sockettable.sockets_by_pid(pids, method=impl)
        times.append(time.perf_counter() - t)
        found = sum(len(v or []) for v in result.values())
    tracemalloc.start()
    sockettable.sockets_by_pid(pids, method=impl)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    times.sort()
    return times[len(times) // 2], peak, found


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="bench.sockets", description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, default=500)
    p.add_argument("--sockets", type=int, default=480, help="bound UDP sockets per process")
    p.add_argument("--impl", choices=("auto", "proc"), default="auto")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    pids = []
    try:
        for i in range(args.procs):
            pids.append(hold_sockets(i, args.sockets))
        total = args.procs * args.sockets
        for label, subset in (("all", pids), ("a tenth", pids[: max(1, len(pids) // 10)])):
            seconds, peak, found = timed(subset, args.impl, args.reps)
            print(f"{args.impl:>5}  {label:>8} of {args.procs} processes, {total} sockets on the machine: "
                  f"{seconds:.3f} s, {peak:.1f} MiB peak allocation, {found} sockets found")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
