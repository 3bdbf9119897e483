"""The plumbing every part of the kernel matrix shares: paths, errors, commands and their logs.

Nothing here imports another module of testbed.vm, so that kernels, guest,
results and bench can all lean on it without a cycle.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("PROCNETMON_VM_CACHE", "/var/cache/procnetmon-vm")
GUEST_CPUS = 2


class VMError(Exception):
    """Something the matrix needs is missing or broke; the message says what."""


def say(*words) -> None:
    print("vmtest:", *words, file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise VMError(f"{' '.join(cmd[:3])}... failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done


# Process groups of the guests (and native pytest runs) under way: killed with us, so that a
# timeout around scripts/vmtest leaves no QEMU behind.
RUNNING: set = set()
STOPPED: list = []  # the signal that stopped the matrix, once one has


def kill_running(signum, _frame) -> None:
    """Kill every guest and test run; the table of what finished is still printed."""
    STOPPED.append(signum)
    for pgid in list(RUNNING):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_logged(cmd: list[str], env: dict, log: str, timeout: float):
    """Run ``cmd`` in the repository with its output in ``log``; its exit code, or "timeout" once killed."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        RUNNING.add(proc.pid)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            f.write(f"\nvmtest: killed after {timeout:.0f} s\n")
            return "timeout"
        finally:
            RUNNING.discard(proc.pid)


def write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
