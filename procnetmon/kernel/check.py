"""What the running kernel and machine offer procnetmon (``procnetmon --check``).

Feature detection, never version checks: each fact is probed where the
kernel shows it, and each missing one comes with the line that fixes it.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from typing import Optional

from procnetmon import cgroups
from procnetmon.kernel import backends, cache, headers, mounts
from procnetmon.kernel.btf import BTF, VMLINUX_BTF, BTFError

TRACEFS = mounts.TRACEFS
# Every backend needs these.
HELPER_TRACEPOINTS = ("sched_process_exit",)
WIRE_TRACEPOINTS = ("inet_sock_set_state",)
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_NET_ADMIN, CAP_SYS_PTRACE = 1, 2, 12, 19


@dataclass
class Finding:
    name: str
    ok: bool
    detail: str
    fix: str = ""  # one line that mends it, when something does
    required: bool = True  # whether measurement is impossible without it
    backend: Optional[backends.Backend] = None  # set on the findings of probe backends


def effective_caps(status_path: str = "/proc/self/status") -> int:
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def _has(caps: int, cap: int) -> bool:
    return bool(caps & (1 << cap))


def has_bpf_privileges(caps: Optional[int] = None) -> bool:
    """Whether BPF programs can be loaded and tracepoints attached (payload mode)."""
    caps = effective_caps() if caps is None else caps
    if _has(caps, CAP_SYS_ADMIN):
        return True
    return _has(caps, CAP_BPF) and _has(caps, CAP_PERFMON)


def has_wire_privileges(caps: Optional[int] = None) -> bool:
    """Whether wire mode can run: cgroup_skb programs are network-admin
    programs, refused (EPERM) without CAP_NET_ADMIN or CAP_SYS_ADMIN."""
    caps = effective_caps() if caps is None else caps
    return has_bpf_privileges(caps) and (_has(caps, CAP_NET_ADMIN) or _has(caps, CAP_SYS_ADMIN))


def can_read_other_processes(caps: Optional[int] = None) -> bool:
    """Whether other processes' /proc/PID/fd can be read, which their
    connection counts need: readlink there is a ptrace-mode access
    (CAP_SYS_PTRACE), and the directory of another user's process is
    closed to root without CAP_DAC_READ_SEARCH (or CAP_DAC_OVERRIDE)."""
    caps = effective_caps() if caps is None else caps
    return _has(caps, CAP_SYS_PTRACE) and (_has(caps, CAP_DAC_READ_SEARCH) or _has(caps, CAP_DAC_OVERRIDE))


def check_privileges(caps: Optional[int] = None) -> Finding:
    caps = effective_caps() if caps is None else caps
    if has_bpf_privileges(caps):
        return Finding("privileges", True, "can load BPF programs (CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN)")
    return Finding("privileges", False, "loading BPF programs needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)",
                   "run as root: sudo procnetmon ...")


WIRE_PRIVILEGES = "wire privileges"
SOCKET_PRIVILEGES = "connection counts"


def check_capabilities(caps: Optional[int] = None) -> list[Finding]:
    """What each mode needs beyond loading BPF programs, and what is lost without it."""
    caps = effective_caps() if caps is None else caps
    findings = []
    if has_wire_privileges(caps):
        findings.append(Finding(WIRE_PRIVILEGES, True, "can attach cgroup_skb programs (CAP_NET_ADMIN or "
                                                       "CAP_SYS_ADMIN; needed by wire mode only)", required=False))
    else:
        findings.append(Finding(WIRE_PRIVILEGES, False, "wire mode also needs CAP_NET_ADMIN (or CAP_SYS_ADMIN) "
                                                        "to attach its cgroup_skb programs",
                                "run as root, or add CAP_NET_ADMIN", required=False))
    if can_read_other_processes(caps):
        findings.append(Finding(SOCKET_PRIVILEGES, True, "can read every process's sockets (CAP_SYS_PTRACE and "
                                                         "CAP_DAC_READ_SEARCH)", required=False))
    else:
        findings.append(Finding(SOCKET_PRIVILEGES, False, "other processes' /proc/PID/fd is unreadable without "
                                                          "CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH: their TCP/UDP "
                                                          "connection counts will be reported as unknown",
                                "run as root, or add CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH", required=False))
    return findings


def check_bcc() -> Finding:
    try:
        import bcc
    except ImportError:
        return Finding("bcc", False, "BCC's Python module is not importable",
                       "apt-get install python3-bpfcc (Debian/Ubuntu) or dnf install python3-bcc (Fedora/RHEL); "
                       "a venv needs --system-site-packages")
    version = getattr(bcc, "__version__", "?")
    return Finding("bcc", True, f"BCC {version} ({os.path.dirname(bcc.__file__)})")


def check_btf() -> tuple[Finding, Optional[BTF]]:
    if not os.path.exists(VMLINUX_BTF):
        return Finding("btf", False, f"{VMLINUX_BTF} is missing (kernel built without CONFIG_DEBUG_INFO_BTF)",
                       "use a kernel with BTF (every major distribution's since 2021)"), None
    try:
        btf = BTF.from_file()
    except BTFError as e:
        return Finding("btf", False, str(e)), None
    return Finding("btf", True, f"{VMLINUX_BTF}"), btf


def check_layout(btf: Optional[BTF]) -> Finding:
    from procnetmon.kernel.layout import offsets_from_btf

    if btf is None:
        return Finding("struct layout", False, "needs BTF")
    try:
        offsets = offsets_from_btf(btf)
    except BTFError as e:
        return Finding("struct layout", False, str(e))
    return Finding("struct layout", True, f"{len(offsets)} member offsets read from BTF "
                                          f"(cached in {cache.kernel_cache_dir()})")


def check_headers() -> Finding:
    real = headers.real_headers_dir()
    if real:
        return Finding("kernel headers", True, f"installed: {real}")
    for needed in (headers.SYSTEM_UAPI, headers.SYSTEM_ASM_GENERIC):
        if not os.path.isdir(needed):
            return Finding("kernel headers", False, f"none installed, and {needed} is missing to build a substitute",
                           "apt-get install linux-libc-dev")
    tree = os.path.join(cache.kernel_cache_dir(), f"headers-v{headers.TREE_VERSION}")
    return Finding("kernel headers", True, f"none installed; procnetmon builds the small tree BCC needs in {tree}",
                   required=False)


def check_kernel_config() -> Finding:
    """Whether procnetmon's own header tree has a kernel configuration to be built from."""
    if headers.real_headers_dir():
        return Finding("kernel config", True, "not needed: kernel headers are installed", required=False)
    try:
        _text, path = headers.read_config()
    except headers.NoConfigError as e:
        release = os.uname().release
        return Finding("kernel config", False, "none readable, so no header tree can be built: " + "; ".join(e.tried),
                       f"apt-get install linux-headers-{release}, or copy the kernel's config "
                       f"to /boot/config-{release}")
    return Finding("kernel config", True, f"{path} (for procnetmon's header tree)", required=False)


def tracepoint_available(name: str, btf: Optional[BTF]) -> bool:
    """Whether raw tracepoint ``name`` exists: BTF names each as btf_trace_<name>."""
    if btf is not None:
        return btf.has_typedef(f"btf_trace_{name}")
    for root in (TRACEFS, "/sys/kernel/debug/tracing"):
        if os.path.isdir(root + "/events"):
            return any(os.path.isdir(f"{root}/events/{cat}/{name}") for cat in ("sock", "sched", "net"))
    return False


def check_tracepoints(btf: Optional[BTF]) -> Finding:
    missing = [n for n in HELPER_TRACEPOINTS if not tracepoint_available(n, btf)]
    if missing:
        return Finding("tracepoints", False, f"missing: {', '.join(missing)} (raw tracepoints, Linux 4.17+)",
                       "use Linux 5.10 or later")
    return Finding("tracepoints", True, ", ".join(HELPER_TRACEPOINTS))


def check_backends(btf: Optional[BTF]) -> list[Finding]:
    """One finding per probe backend: where it attaches, or why it cannot."""
    found = []
    facts = backends.btf_facts(btf) if btf is not None else None
    for b in backends.detect(facts):
        detail = b.detail + "".join(f"; would miss {gap}" for gap in b.gaps)
        found.append(Finding(f"backend {b.name}", b.usable, detail, required=False, backend=b))
    return found


def usable_backends(btf: Optional[BTF] = None) -> list[str]:
    """Names of the payload backends this kernel offers, the automatic choice first."""
    found = backends.detect(backends.btf_facts(btf))
    try:
        best = backends.choose(found).name
    except LookupError:
        return []
    return [best] + [b.name for b in found if b.usable and b.name != best]


def check_wire_tracepoints(btf: Optional[BTF]) -> Finding:
    missing = [n for n in WIRE_TRACEPOINTS if not tracepoint_available(n, btf)]
    if missing:
        return Finding("wire tracepoints", False, f"missing: {', '.join(missing)} (needed by wire mode only)",
                       required=False)
    return Finding("wire tracepoints", True, ", ".join(WIRE_TRACEPOINTS) + " (needed by wire mode only)",
                   required=False)


def check_tracefs() -> Finding:
    """What is mounted, and what a run would do; changes nothing."""
    from procnetmon.kernel import mounts

    tracefs = mounts.TRACEFS_INTERFACE
    if mounts.is_mounted(tracefs):
        return Finding("tracefs", True, f"mounted at {TRACEFS}", required=False)
    if _mounted_fstype("tracefs"):
        return Finding("tracefs", False, "mounted, but not readable without root",
                       "run as root, or with CAP_DAC_READ_SEARCH", required=False)
    if _has(effective_caps(), CAP_SYS_ADMIN):
        return Finding("tracefs", True, f"not mounted at {TRACEFS}; a run mounts it (mount(2)) before it "
                                        "compiles", required=False)
    return Finding("tracefs", False, f"not mounted at {TRACEFS}, and mounting it needs CAP_SYS_ADMIN",
                   f"as root: {tracefs.fix}")


def kernel_config() -> dict[str, str]:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return dict(line.strip().split("=", 1) for line in f if line.startswith("CONFIG_") and "=" in line)
    except OSError:
        return {}


def _mounted_fstype(fstype: str, mounts_path: str = "/proc/mounts") -> bool:
    try:
        with open(mounts_path) as f:
            return any(len(parts) > 2 and parts[2] == fstype for parts in (line.split() for line in f))
    except OSError:
        return False


def check_cgroup2() -> Finding:
    where = cgroups.cgroup2_mount()
    if where:
        return Finding("cgroup2", True, f"mounted at {where} (needed by wire mode only)", required=False)
    return Finding("cgroup2", False, "not mounted (needed by wire mode only)",
                   "mount -t cgroup2 none /sys/fs/cgroup", required=False)


def check_cgroup_bpf(config: dict[str, str]) -> Finding:
    if not config or config.get("CONFIG_CGROUP_BPF") == "y":
        detail = "CONFIG_CGROUP_BPF=y" if config else "kernel config unreadable; assumed"
        return Finding("cgroup_skb", True, f"{detail} (needed by wire mode only)", required=False)
    return Finding("cgroup_skb", False, "CONFIG_CGROUP_BPF is not set (needed by wire mode only)",
                   "use a kernel built with CONFIG_CGROUP_BPF=y", required=False)


def run_checks() -> list[Finding]:
    btf_finding, btf = check_btf()
    config = kernel_config()
    return [
        Finding("kernel", True, f"{os.uname().release} ({os.uname().machine})", required=False),
        check_privileges(),
        check_bcc(),
        btf_finding,
        check_layout(btf),
        check_headers(),
        check_tracefs(),
        check_tracepoints(btf),
        check_wire_tracepoints(btf),
        *check_backends(btf),
        check_cgroup2(),
        check_cgroup_bpf(config),
        check_kernel_config(),
        *check_tcp_health(btf),
    ]


def check_tcp_health(btf: Optional[BTF]) -> list[Finding]:
    """Which --tcp-health figures the kernel offers, one finding each (none required)."""
    if btf is None:
        return [Finding("tcp-health", False, "needs the kernel's BTF", required=False)]
    from procnetmon.probes import health

    facts = health.health_facts(btf)
    problems = facts.problems()
    found = [Finding("tcp-health", not problems,
                     "available" if not problems else "UNAVAILABLE: " + "; ".join(problems), required=False)]
    for figure, ok, detail in health.describe(facts):
        found.append(Finding(f"tcp-health {figure}", ok, detail, required=False))
    return found


def payload_backend(findings: list[Finding], wanted: str = "auto") -> tuple[bool, str]:
    """Whether payload mode can run, and the backend (with why it was chosen)
    or the reason it cannot."""
    blockers = [f for f in findings if f.required and not f.ok]
    if blockers:
        return False, "; ".join(f"{f.name}: {f.detail}" for f in blockers)
    offered = [f.backend for f in findings if f.backend is not None]
    try:
        chosen = backends.choose(offered, wanted)
    except LookupError as e:
        return False, f"no probe backend: {e}"
    if wanted != "auto":
        why = "forced with --backend"
    elif chosen is offered[0]:
        why = "the best this kernel offers"
    else:
        passed = [b for b in offered if b is not chosen and offered.index(b) < offered.index(chosen)]
        why = "; ".join(f"not {b.name}: {'it would miss data here' if b.usable else b.detail}" for b in passed)
    return True, f"{chosen.name} ({why})"


def wire_backend(findings: list[Finding], wanted: str = "auto") -> tuple[bool, str]:
    """Whether wire mode can run: what payload mode needs, plus cgroup v2 and cgroup_skb."""
    ready, reason = payload_backend(findings, wanted)
    if not ready:
        return False, reason
    blockers = [f for f in findings if f.name in ("cgroup2", "cgroup_skb", "wire tracepoints") and not f.ok]
    if blockers:
        return False, "; ".join(f"{f.name}: {f.detail}" for f in blockers)
    return True, ("cgroup_skb ingress/egress on the cgroup v2 root, socket owners from the "
                  f"{reason.split()[0]} backend's hooks and sock:inet_sock_set_state")
