"""The facts a benchmark result means nothing without: when, on what, with which versions."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone


def _run(*cmd: str, cwd: str | None = None) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout or done.stderr).strip() or "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _package_version(name: str) -> str:
    return _run("dpkg-query", "-W", "-f=${Version}", name)


@dataclass
class Facts:
    date: str
    kernel: str
    cpu: str
    cores: int
    memory: str
    procnetmon: str
    iperf3: str
    nethogs: str
    bcc: str
    tcptop: str = "unknown"


def collect(root: str) -> Facts:
    from procnetmon import __version__

    # Read-only git: which commit was measured, and whether the tree differed from it.
    commit = _run("git", "describe", "--always", "--dirty", "--tags", cwd=root)
    return Facts(
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        kernel=platform.release(),
        cpu=_cpu_model(),
        cores=os.cpu_count() or 0,
        memory=_memory(),
        procnetmon=f"{__version__} (git {commit})",
        iperf3=_run("iperf3", "--version").splitlines()[0],
        nethogs=_package_version("nethogs"),
        bcc=_package_version("python3-bpfcc"),
        tcptop=_package_version("bpfcc-tools"),
    )
