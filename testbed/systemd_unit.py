"""contrib/procnetmon.service and its drop-ins, read as systemd reads them, for the tests.

systemd cannot run here (it is not PID 1), so the tests take the unit's
settings and apply the ones that decide what the daemon may do: its user
(nobody, for the dynamic user), its ambient capabilities (setpriv), its
system call filter (testbed/seccomp_exec.py, with the @groups resolved by
``systemd-analyze syscall-filter``) and its umask. What needs the service
manager itself (IPAddressDeny=, MemoryMax=, the namespaces) is checked by
value and with ``systemd-analyze verify``/``security --offline``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRIB = os.path.join(ROOT, "contrib")
UNIT = os.path.join(CONTRIB, "procnetmon.service")
WIRE_DROPIN = os.path.join(CONTRIB, "procnetmon-wire.conf")
CONNECTIONS_DROPIN = os.path.join(CONTRIB, "procnetmon-connections.conf")
SECCOMP_EXEC = os.path.join(ROOT, "testbed", "seccomp_exec.py")
NOBODY = 65534


def read_assignments(*paths: str) -> dict[str, list[tuple[str, str]]]:
    """Every ``Key=value`` per section, in the order systemd applies them
    (the unit, then its drop-ins), as (key, value) pairs; nothing merged yet."""
    sections: dict[str, list[tuple[str, str]]] = {}
    for path in paths:
        section = ""
        with open(path) as f:
            for raw in f:
                line = raw.strip()
                if not line or line[0] in "#;":
                    continue
                if line.startswith("[") and line.endswith("]"):
                    section = line[1:-1]
                    continue
                key, sep, value = line.partition("=")
                if not sep:
                    raise ValueError(f"{path}: not an assignment: {line!r}")
                sections.setdefault(section, []).append((key.strip(), value.strip()))
    return sections


def last_values(assignments: list[tuple[str, str]]) -> dict[str, str]:
    """Key -> its last assignment (for settings where the last one wins)."""
    return {key: value for key, value in assignments}


def merged_list(assignments: list[tuple[str, str]], key: str) -> list[str]:
    """A list setting merged as systemd merges capability sets and
    Environment=: lines add, an empty assignment resets."""
    items: list[str] = []
    for k, value in assignments:
        if k == key:
            items = [] if not value else items + [v for v in value.split() if v not in items]
    return items


def environment(assignments: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in merged_list(assignments, "Environment"):
        name, _, value = item.partition("=")
        env[name] = value
    return env


def exec_start(assignments: list[tuple[str, str]]) -> list[str]:
    """ExecStart's words with ${VAR} expanded from Environment= (one word each)."""
    starts = [v for k, v in assignments if k == "ExecStart"]
    env = environment(assignments)
    words = starts[-1].split()
    for i, word in enumerate(words):
        for name, value in env.items():
            word = word.replace("${" + name + "}", value)
        words[i] = word
    return words


def service(*dropins: str) -> list[tuple[str, str]]:
    return read_assignments(UNIT, *dropins)["Service"]


def systemd_analyze() -> Optional[str]:
    return shutil.which("systemd-analyze")


@functools.lru_cache(maxsize=None)
def syscall_group(name: str) -> frozenset[str]:
    """The system calls of a @group, its nested groups resolved, by systemd's
    own table (the one in force on this machine's systemd)."""
    out = subprocess.run([systemd_analyze(), "syscall-filter", "--no-pager", name], check=True,
                         capture_output=True, text=True).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        calls |= syscall_group(word) if word.startswith("@") else {word}
    return frozenset(calls)


def allowed_syscalls(assignments: list[tuple[str, str]]) -> set[str]:
    """SystemCallFilter= applied in order as for an allow list (the unit's
    first line is one): plain lines add, ``~`` lines take away."""
    allowed: set[str] = set()
    for key, value in assignments:
        if key != "SystemCallFilter":
            continue
        deny = value.startswith("~")
        names: set[str] = set()
        for word in value.lstrip("~").split():
            names |= syscall_group(word) if word.startswith("@") else {word}
        allowed = allowed - names if deny else allowed | names
    return allowed


def readable_install(dest: str) -> str:
    """A copy of procnetmon as an install lays it out, which nobody can read
    without CAP_DAC_READ_SEARCH: the checkout need not be (a fresh clone in
    a 0700 directory is not). ``dest`` must be traversable by all; returns
    the copy's python, whose ``-I -m procnetmon`` runs the copy."""
    import sysconfig

    venv = os.path.join(dest, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], check=True)
    here = sysconfig.get_paths()["purelib"]  # this venv's: psutil, prometheus_client
    python = os.path.join(venv, "bin", "python")
    there = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("psutil", "prometheus_client"):
        shutil.copytree(os.path.join(here, package), os.path.join(there, package), ignore=ignore)
    shutil.copytree(os.path.join(ROOT, "procnetmon"), os.path.join(there, "procnetmon"), ignore=ignore)
    shutil.copytree(os.path.join(ROOT, "bpf"), os.path.join(venv, "share", "procnetmon", "bpf"))
    shutil.copy(SECCOMP_EXEC, os.path.join(venv, "bin", "seccomp_exec.py"))
    for top, dirs, files in os.walk(dest):
        os.chmod(top, 0o755)
        for name in files:
            os.chmod(os.path.join(top, name), 0o644 | (os.stat(os.path.join(top, name)).st_mode & 0o111))
    return python


def setpriv_caps(caps: list[str]) -> str:
    return ",".join(["-all"] + ["+" + c[len("CAP_"):].lower() for c in caps])


def sandboxed(command: list[str], *dropins: str, allow_file: str, without: tuple[str, ...] = (),
              python: str = sys.executable) -> list[str]:
    """COMMAND as the unit would run it: as nobody (standing in for the
    dynamic user), with exactly the unit's capabilities (less ``without``),
    no supplementary groups, no_new_privs, its system call filter and its
    umask. The caller writes ``allow_file`` (see ``write_allow_file``);
    ``python`` (one of ``readable_install``) runs the filter's wrapper."""
    settings = service(*dropins)
    ambient = setpriv_caps([c for c in merged_list(settings, "AmbientCapabilities") if c not in without])
    bounding = setpriv_caps([c for c in merged_list(settings, "CapabilityBoundingSet") if c not in without])
    last = last_values(settings)
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", f"--inh-caps={ambient}",
            f"--ambient-caps={ambient}", f"--bounding-set={bounding}", "--no-new-privs",
            python, "-I", os.path.join(os.path.dirname(python), "seccomp_exec.py")
            if python != sys.executable else SECCOMP_EXEC, "--errno", last.get("SystemCallErrorNumber", "EPERM"),
            "--umask", last.get("UMask", "0022"), "--allow-file", allow_file, "--", *command]


def write_allow_file(path: str, *dropins: str) -> None:
    with open(path, "w") as f:
        f.write("\n".join(sorted(allowed_syscalls(service(*dropins)))) + "\n")
    os.chmod(path, 0o644)
