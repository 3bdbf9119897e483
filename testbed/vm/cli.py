"""The kernel matrix: real Debian kernels booted under QEMU, the e2e matrix run inside.

The command line of ``python -m testbed.vm`` (scripts/vmtest, scripts/vmbench):
on this machine it fetches the kernels (kernels.py), boots each and gathers
the table (guest.py, results.py), or runs the benchmark in one (bench.py);
``guest`` and ``bench-guest`` are what the booted kernel runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shlex
import signal
import sys
import time
from typing import Optional

from testbed.vm import bench, guest, kernels, results
from testbed.vm.common import CACHE, GUEST_CPUS, STOPPED, VMError, kill_running, say
from testbed.vm.kernels import KERNELS


def default_jobs(kernels: int, cpus: Optional[int] = None) -> int:
    """Guests booted at once when --jobs is not given: one per CPU. A guest
    keeps less than one CPU busy on average (a matrix of three, one after
    another, used 0.9 of this machine's two: most of a guest's time is one
    emulated Python process), so one per CPU halves the matrix's wall time."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(kernels, cpus))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vmtest", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    inside = sub.add_parser("guest", help="(inside a guest) run the matrix module per backend")
    inside.add_argument("--out", required=True)
    inside.add_argument("--all", action="store_true")
    inside.add_argument("--headers", help="the unpacked kernel packages holding usr/src/linux-headers-*")
    bench_guest = sub.add_parser("bench-guest", help="(inside a guest) run the benchmark as bench-plan.json says")
    bench_guest.add_argument("--out", required=True)
    parser.add_argument("--all", action="store_true", help="every backend of every kernel, and the run with "
                                                           "real headers (default: each kernel's best backend)")
    parser.add_argument("--kernels", default=None,
                        help="which of " + ", ".join(k.name for k in KERNELS) + " to boot (comma-separated; "
                             f"default all, with --bench {bench.BENCH_KERNEL})")
    parser.add_argument("--no-native", action="store_true", help="skip this machine's own kernel")
    parser.add_argument("--jobs", type=int, default=None,
                        help="guests booted at once (default: one per two CPUs of this machine, since each guest "
                             f"has {GUEST_CPUS} and emulating them keeps a CPU busy each)")
    parser.add_argument("--fetch-only", action="store_true", help="fetch and unpack the kernels, boot nothing")
    parser.add_argument("--bench", action="store_true",
                        help=f"run the benchmark (python -m bench) in one guest instead of the tests, and copy "
                             f"its report to --bench-output (default: kernel {bench.BENCH_KERNEL}, where tcptop runs)")
    parser.add_argument("--bench-args", default=" ".join(bench.BENCH_ARGS),
                        help="the benchmark's options in the guest (default: %(default)s)")
    parser.add_argument("--bench-output", default=bench.BENCH_OUTPUT,
                        help="where the report goes (default: %(default)s)")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    if args.command == "guest":
        return guest.guest_main(args.out, args.all, args.headers)
    if args.command == "bench-guest":
        return bench.bench_guest_main(args.out)
    if args.kernels is None:
        args.kernels = bench.BENCH_KERNEL if args.bench else ",".join(k.name for k in KERNELS)

    wanted = [k for k in KERNELS if k.name in args.kernels.split(",")]
    if args.bench and len(wanted) != 1:
        parser.error("--bench boots one kernel: give --kernels one of " + ", ".join(k.name for k in KERNELS))
    signal.signal(signal.SIGTERM, kill_running)
    signal.signal(signal.SIGINT, kill_running)
    started = time.monotonic()
    try:
        vng = guest.ensure_tools()
        fetched = kernels.fetch_all(wanted)
        if args.fetch_only:
            for k in fetched:
                print(f"{k.spec.name:6} {k.release:28} {k.root}" + ("  (+headers)" if k.headers else ""))
            return 0
    except VMError as e:
        print(f"vmtest: {e}", file=sys.stderr)
        return 1
    results_dir = f"{CACHE}/runs/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    os.makedirs(results_dir)
    say(f"results in {results_dir}")
    if args.bench:
        command = bench.bench_command(argv if argv is not None else sys.argv[1:])
        return bench.bench_in_guest(vng, fetched[0], f"{results_dir}/{fetched[0].spec.name}",
                                    shlex.split(args.bench_args), command, args.bench_output)
    runs = {}  # label -> (out dir, guest record)
    if not args.no_native:
        out = f"{results_dir}/native"
        say(f"running natively on {os.uname().release}")
        runs[f"{os.uname().release} (native)"] = (out, guest.native_test(out, args.all))

    def one(kernel):
        out = f"{results_dir}/{kernel.spec.name}"
        if STOPPED:
            return kernel, out, {"runs": [], "not_run": {"all": "the matrix was stopped (timeout) first"}}
        say(f"booting {kernel.release}")
        record = guest.boot_and_test(vng, kernel, out, args.all)
        say(f"{kernel.release} done in {record['wall']:.0f} s")
        return kernel, out, record

    jobs = args.jobs if args.jobs is not None else default_jobs(len(fetched))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for kernel, out, record in pool.map(one, fetched):
            runs[f"{kernel.spec.name} {kernel.release}"] = (out, record)

    rows, summary = results.matrix_summary(runs, time.monotonic() - started, guest.GUEST_TIMEOUT)
    with open(f"{results_dir}/table.txt", "w") as f:
        f.write(summary)
    print(summary, end="")
    return 1 if results.any_failed(rows) else 0
