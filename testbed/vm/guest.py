"""A kernel booted under QEMU, and what runs inside it: the e2e matrix module once per payload backend.

On this machine: the tools (QEMU from apt, virtme-ng in its own venv), then
each kernel booted with virtme-ng (TCG: nested KVM hangs here). The guest
sees this machine's root filesystem read-only with throw-away overlays and
runs ``python -m testbed.vm guest``, which is guest_main: ``procnetmon
--check``, then tests/e2e/test_matrix.py per backend the kernel offers (wire
mode included; with --all also test_tcp_health.py). Results come back through a shared directory. The same
guest_main runs natively on this machine's own kernel.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

from testbed.vm.common import CACHE, GUEST_CPUS, ROOT, RUNNING, STOPPED, VMError, run, run_logged, say, write_json
from testbed.vm.kernels import Kernel

PROGRAMS_LIST = os.path.join(ROOT, "scripts", "programs.txt")
VIRTME_NG = "virtme-ng"
BACKENDS = ("tracepoint", "fentry", "kprobe")  # procnetmon's payload backends, as --backend names them
# Each module does one procnetmon run per mode it covers: a guest compiles slowly.
MATRIX_TESTS = ("tests/e2e/test_matrix.py",)
# Run by scripts/vmtest --all only: its own procnetmon runs double a 5.10
# guest's time under TCG (16 minutes of tests here), which CI's slower
# machine would take past RUN_TIMEOUT.
FULL_MATRIX_TESTS = MATRIX_TESTS + ("tests/e2e/test_tcp_health.py",)
# Hard limits, so that a hung guest or test cannot eat CI's time.
GUEST_TIMEOUT = 40 * 60  # one boot, all its runs
RUN_TIMEOUT = 20 * 60  # one pytest run of the matrix module in a guest


# ---------------------------------------------------------------- the tools

def programs_of(group: str, path: str = PROGRAMS_LIST) -> dict[str, str]:
    """The programs of one group of scripts/programs.txt (the one list the scripts share), with their packages."""
    found = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and not fields[0].startswith("#") and group in fields[2].split(","):
                found[fields[0]] = fields[1]
    return found


def ensure_tools(cache: str = CACHE) -> str:
    """Install QEMU, kmod and busybox (apt) and virtme-ng (its own venv); return the vng path.

    Called before anything else runs: fetching a kernel runs depmod (kmod)."""
    wanted = programs_of("vm")
    missing = [p for p in sorted(set(wanted.values()))
               if "install ok installed" not in subprocess.run(
                   ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout]
    if missing:
        say("installing", *missing)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)
    absent = [f"{program} ({package})" for program, package in wanted.items()
              if program != "-" and not shutil.which(program)]
    if absent:
        raise VMError("missing after install: " + ", ".join(absent))
    venv = f"{cache}/venv"
    vng = f"{venv}/bin/vng"
    if not os.path.exists(vng):
        say(f"installing {VIRTME_NG} into {venv}")
        run(["/usr/bin/python3", "-m", "venv", venv])
        run([f"{venv}/bin/pip", "install", "-q", "--disable-pip-version-check", VIRTME_NG])
    return vng


# ---------------------------------------------------------------- in the guest (or natively)

def reasons_from_check(check_text: str, backend: str) -> str:
    """The --check lines that speak of ``backend`` (the reason it is missing), or a plain word."""
    lines = [line.strip() for line in check_text.splitlines()]
    hits = [line for line in lines if f"backend {backend}" in line.lower() and not line.startswith(("payload", "wire"))]
    hits = hits or [line for line in lines if backend in line.lower()]
    return "; ".join(hits) if hits else "procnetmon --check does not offer it"


def offered_backends() -> list[str]:
    """The payload backends procnetmon offers on this kernel, best first."""
    from procnetmon.kernel import check

    return list(check.usable_backends())


def link_headers(release: str, headers_root: str, modules_dir: str = "/lib/modules") -> None:
    """Make /lib/modules/<release>/{build,source} point at the unpacked linux-headers, as installing them would."""
    mods = f"{modules_dir}/{release}"
    real = os.path.realpath(mods)
    if os.path.islink(mods):
        os.unlink(mods)
        os.makedirs(mods)
        for name in os.listdir(real):
            if name not in ("build", "source"):
                os.symlink(os.path.join(real, name), os.path.join(mods, name))
    for name in ("build", "source"):
        if os.path.lexists(f"{mods}/{name}"):
            os.unlink(f"{mods}/{name}")
    version = release[:-len("-amd64")] if release.endswith("-amd64") else release
    os.symlink(f"{headers_root}/usr/src/linux-headers-{release}", f"{mods}/build")
    os.symlink(f"{headers_root}/usr/src/linux-headers-{version}-common", f"{mods}/source")


def ensure_modules(release: str, modules_dir: str = "/lib/modules", cache: str = CACHE) -> None:
    """The guest's /lib/modules is not this machine's: without the kernel's modules there,
    ``ip link add ... type veth`` fails with "Unknown device type". virtme-ng links them
    when it can see them; link them here when it did not."""
    if os.path.exists(f"{modules_dir}/{release}/modules.dep"):
        return
    unpacked = f"{cache}/kernels/{release}/lib/modules/{release}"
    if os.path.exists(f"{unpacked}/modules.dep"):
        if os.path.lexists(f"{modules_dir}/{release}"):
            os.unlink(f"{modules_dir}/{release}")
        os.symlink(unpacked, f"{modules_dir}/{release}")


def local_cache_dir() -> str:
    """A procnetmon cache on the guest's own memory, not in the shared folder.

    Building BCC's header tree makes some 700 symlinks: over 9p, every one a
    round trip through an emulated CPU, that took 3 minutes of a 5.10
    guest's 5 (and the best part of CI's budget on a slower machine). The
    cache's files say nothing the results need.
    """
    return tempfile.mkdtemp(prefix="procnetmon-cache-")


def run_matrix_tests(out: str, label: str, backend: Optional[str], timeout: float, cache_dir: str,
                     tests: tuple = MATRIX_TESTS) -> dict:
    """pytest of the matrix module, with $PROCNETMON_BACKEND set; returns the run's record."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PROCNETMON_CACHE_DIR=cache_dir)
    env.pop("PROCNETMON_BACKEND", None)
    if backend:
        env["PROCNETMON_BACKEND"] = backend
    junit, log = f"{out}/{label}.xml", f"{out}/{label}.log"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-s", "-rA", f"--junitxml={junit}",
           *tests]
    started = time.monotonic()
    returncode = run_logged(cmd, env, log, timeout)
    return {"label": label, "backend": backend or "auto", "returncode": returncode,
            "seconds": round(time.monotonic() - started, 1), "log": log}


def guest_main(out: str, everything: bool, headers_root: Optional[str], timeout: float = RUN_TIMEOUT) -> int:
    """What runs in the guest (and natively): check, then the matrix module per backend; results in ``out``."""
    os.makedirs(out, exist_ok=True)
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    record = {"release": os.uname().release, "uptime_at_start": uptime, "runs": [], "missing": {}, "not_run": {}}

    ensure_modules(os.uname().release)
    cache_dir = local_cache_dir()
    check_started = time.monotonic()
    check_run = subprocess.run([sys.executable, "-m", "procnetmon", "--check"], cwd=ROOT, capture_output=True,
                               text=True, env=dict(os.environ, PROCNETMON_CACHE_DIR=cache_dir))
    record["check"] = check_run.stdout + check_run.stderr
    record["check_seconds"] = round(time.monotonic() - check_started, 1)
    # After --check, which must change nothing; procnetmon's runs mount it themselves.
    from procnetmon.kernel import mounts

    mounts.prepare()
    backends = offered_backends()
    record["offered"] = backends
    for name in BACKENDS:
        if name not in backends:
            record["missing"][name] = reasons_from_check(record["check"], name)
    if not backends:
        record["missing"]["auto"] = "no payload backend on this kernel"
    to_run = backends if everything else backends[:1]
    for name in backends[len(to_run):]:
        record["not_run"][name] = "CI subset; scripts/vmtest --all runs it"
    tests = FULL_MATRIX_TESTS if everything else MATRIX_TESTS
    for name in to_run:
        record["runs"].append(run_matrix_tests(out, name, name, timeout, cache_dir, tests))
        write_json(f"{out}/guest.json", record)
    if headers_root:
        link_headers(os.uname().release, headers_root)
        check_run = subprocess.run([sys.executable, "-m", "procnetmon", "--check"], cwd=ROOT, capture_output=True,
                                   text=True, env=dict(os.environ, PROCNETMON_CACHE_DIR=cache_dir))
        record["check_with_headers"] = check_run.stdout + check_run.stderr
        if backends:
            record["runs"].append(run_matrix_tests(out, f"{backends[0]}+headers", backends[0], timeout, cache_dir))
    record["seconds_in_guest"] = round(float(open("/proc/uptime").read().split()[0]) - uptime, 1)
    write_json(f"{out}/guest.json", record)
    shutil.rmtree(cache_dir, ignore_errors=True)
    return 0


# ---------------------------------------------------------------- on this machine

def guest_command(root: str, out: str, everything: bool, headers_root: Optional[str]) -> str:
    """The one shell line the guest runs: guest_main (``python -m testbed.vm guest``), its output kept in ``out``."""
    args = ["guest", "--out", out] + (["--all"] if everything else [])
    if headers_root:
        args += ["--headers", headers_root]
    return guest_line(root, out, args)


def guest_line(root: str, out: str, args: list[str]) -> str:
    python = f"{root}/.venv/bin/python"
    return (f"cd {shlex.quote(root)} && exec {shlex.quote(python)} -m testbed.vm "
            + " ".join(shlex.quote(a) for a in args) + f" > {shlex.quote(out)}/guest.log 2>&1")


# Directories the guest covers with empty file systems of its own.
GUEST_HIDDEN = ("/var/tmp", "/var/cache", "/run", "/tmp")


def vng_command(vng: str, kernel: Kernel, out: str, guest_cmd: str, cache: str = CACHE,
                root: str = ROOT) -> list[str]:
    # The guest's /var/cache is an empty tmpfs: the unpacked kernels come in read-only.
    extra = []
    if any(root == d or root.startswith(d + "/") for d in GUEST_HIDDEN):
        # A checkout there (a fresh clone in /var/tmp) would be an empty
        # directory in the guest: it comes in shared (vng's --overlay-rwdir
        # mounted nothing there); the guest writes no bytecode into it.
        extra = ["--rwdir", root]
    return [vng, "--disable-kvm", "--force-9p", "--rodir", f"{cache}/kernels", "--rwdir", out, *extra,
            "-r", kernel.vmlinuz, "--memory", "2G", "--cpus", str(GUEST_CPUS), "--exec", guest_cmd]


def install_boot_config(kernel: Kernel, boot: str = "/boot") -> None:
    """The guest sees this machine's /boot: procnetmon reads the kernel's configuration there."""
    dest = f"{boot}/config-{kernel.release}"
    if not os.path.exists(dest) or open(dest, "rb").read() != open(kernel.config, "rb").read():
        shutil.copyfile(kernel.config, dest)


def boot(vng: str, kernel: Kernel, out: str, guest_cmd: str, timeout: float):
    """Boot ``kernel`` to run ``guest_cmd``, QEMU's output in vng.log; (wall seconds, timed out, exit code)."""
    os.makedirs(out, exist_ok=True)
    install_boot_config(kernel)
    cmd = vng_command(vng, kernel, out, guest_cmd)
    env = dict(os.environ, PATH=f"{os.path.dirname(vng)}:{os.environ.get('PATH', '')}")
    started = time.monotonic()
    timed_out = False
    with open(f"{out}/vng.log", "w") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        RUNNING.add(proc.pid)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            RUNNING.discard(proc.pid)
    return time.monotonic() - started, timed_out or bool(STOPPED), proc.returncode


def boot_and_test(vng: str, kernel: Kernel, out: str, everything: bool, timeout: float = GUEST_TIMEOUT) -> dict:
    """Boot ``kernel``, run the guest side, return its guest.json (with host-side timings added)."""
    headers_root = kernel.root if (everything and kernel.headers) else None
    wall, timed_out, returncode = boot(vng, kernel, out, guest_command(ROOT, out, everything, headers_root),
                                       timeout)
    try:
        with open(f"{out}/guest.json") as f:
            guest = json.load(f)
    except (OSError, ValueError):
        guest = {"runs": [{"label": "boot", "returncode": "timeout" if timed_out else returncode,
                           "seconds": round(wall, 1), "log": f"{out}/guest.log"}]}
    guest["wall"] = round(wall, 1)
    guest["timed_out"] = timed_out
    return guest


def native_test(out: str, everything: bool) -> dict:
    started = time.monotonic()
    guest_main(out, everything, None)
    with open(f"{out}/guest.json") as f:
        guest = json.load(f)
    guest["wall"] = round(time.monotonic() - started, 1)
    return guest
