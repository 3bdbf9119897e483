"""The kernel matrix: real Debian kernels booted under QEMU, the e2e matrix run inside.

``scripts/vmtest`` is the entry point. This module fetches Debian's kernels
into a cache through a private apt configuration (the machine's own sources
stay as they are), boots each with virtme-ng (TCG: nested KVM hangs here),
and inside the guest runs tests/e2e/test_matrix.py once per payload backend
the kernel offers, plus wire mode. The guest sees this machine's root
filesystem read-only with throw-away overlays; results come back through a
shared directory.

Pure parts (picking the newest kernel, the apt options, the guest plan, the
result table) are unit-tested in tests/unit/test_vm.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("PROCNETMON_VM_CACHE", "/var/cache/procnetmon-vm")
SOURCES = "/etc/apt/sources.list.d/debian.sources"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SUITES = ("bullseye", "bookworm", "bookworm-backports")
PROGRAMS_LIST = os.path.join(ROOT, "scripts", "programs.txt")
VIRTME_NG = "virtme-ng"
BACKENDS = ("tracepoint", "fentry", "kprobe")  # procnetmon's payload backends, as --backend names them
MATRIX_TESTS = "tests/e2e/test_matrix.py"
# Hard limits, so that a hung guest or test cannot eat CI's time.
GUEST_TIMEOUT = 40 * 60  # one boot, all its runs
RUN_TIMEOUT = 20 * 60  # one pytest run of the matrix module in a guest
GUEST_CPUS = 2


@dataclass(frozen=True)
class KernelSpec:
    """One kernel series of the matrix: the Debian package pattern naming its newest build."""

    name: str  # short label: 5.10, 6.1, 6.12
    distro: str  # who ships it
    image: str  # regex over package names; group 1 is the build number to maximise
    headers: bool = False  # also fetch linux-headers and run once with them


KERNELS = (
    KernelSpec("5.10", "Debian 11", r"linux-image-5\.10\.0-(\d+)-amd64"),
    KernelSpec("6.1", "Debian 12", r"linux-image-6\.1\.0-(\d+)-amd64-unsigned"),
    KernelSpec("6.12", "Debian 13 (bookworm-backports build)", r"linux-image-6\.12\.(\d+)\+deb12-amd64",
               headers=True),
)


class VMError(Exception):
    """Something the matrix needs is missing or broke; the message says what."""


# ---------------------------------------------------------------- pure parts

def mirror_from_sources(text: str) -> str:
    """The Debian mirror's base URI (…/debian) from a deb822 sources file."""
    for stanza in re.split(r"\n\s*\n", text):
        uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
        suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
        if uris and suites and not any(s.endswith("-security") for s in suites.group(1).split()):
            return uris.group(1).rstrip("/")
    raise VMError(f"no Debian mirror (a stanza with URIs: and Suites:) in {SOURCES}")


def sources_list(mirror: str, suites=SUITES, keyring: str = KEYRING) -> str:
    return "".join(f"deb [signed-by={keyring}] {mirror} {suite} main\n" for suite in suites)


def apt_options(apt_dir: str) -> list[str]:
    """apt options that use only ``apt_dir``: the machine's own sources, lists and locks stay untouched."""
    return ["-o", f"Dir::Etc::sourcelist={apt_dir}/sources.list", "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={apt_dir}/lists", "-o", f"Dir::Cache={apt_dir}/cache",
            "-o", "Acquire::Languages=none", "-o", "APT::Get::List-Cleanup=0"]


def newest(names, pattern: str) -> Optional[str]:
    """The package name matching ``pattern`` in full with the highest build number."""
    best, best_key = None, None
    for name in names:
        m = re.fullmatch(pattern, name.strip())
        if m:
            key = int(m.group(1))
            if best_key is None or key > best_key:
                best, best_key = name.strip(), key
    return best


def headers_packages(release: str) -> list[str]:
    """Debian's header pair for a kernel release: the flavour's and the common one."""
    if not release.endswith("-amd64"):
        raise VMError(f"{release}: not an amd64 Debian kernel release")
    return [f"linux-headers-{release}", f"linux-headers-{release[:-len('-amd64')]}-common"]


@dataclass
class Kernel:
    """An unpacked kernel in the cache."""

    spec: KernelSpec
    release: str
    root: str  # the unpacked packages: boot/, lib/modules/<release>/, usr/src/

    @property
    def vmlinuz(self) -> str:
        return f"{self.root}/boot/vmlinuz-{self.release}"

    @property
    def config(self) -> str:
        return f"{self.root}/boot/config-{self.release}"

    @property
    def modules(self) -> str:
        return f"{self.root}/lib/modules/{self.release}"

    @property
    def headers(self) -> Optional[str]:
        path = f"{self.root}/usr/src/linux-headers-{self.release}"
        return path if os.path.isdir(path) else None


# ---------------------------------------------------------------- fetching

def say(*words) -> None:
    print("vmtest:", *words, file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise VMError(f"{' '.join(cmd[:3])}... failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done


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


def apt_update(cache: str = CACHE, max_age: float = 24 * 3600) -> str:
    """The private apt configuration, its lists refreshed once a day; returns its directory."""
    apt_dir = f"{cache}/apt"
    os.makedirs(f"{apt_dir}/lists/partial", exist_ok=True)
    os.makedirs(f"{apt_dir}/cache/archives/partial", exist_ok=True)
    with open(SOURCES) as f:
        wanted = sources_list(mirror_from_sources(f.read()))
    src = f"{apt_dir}/sources.list"
    stamp = f"{apt_dir}/updated"
    stale = not os.path.exists(stamp) or time.time() - os.path.getmtime(stamp) > max_age
    if not os.path.exists(src) or open(src).read() != wanted:
        with open(src, "w") as f:
            f.write(wanted)
        stale = True
    if stale:
        say("updating the private apt lists (", ", ".join(SUITES), ")")
        run(["apt-get", *apt_options(apt_dir), "update", "-qq"])
        with open(stamp, "w") as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    return apt_dir


def package_names(apt_dir: str, prefix: str) -> list[str]:
    return run(["apt-cache", *apt_options(apt_dir), "pkgnames", prefix]).stdout.split()


def download(apt_dir: str, packages: list[str], dest: str) -> list[str]:
    """The .deb files of ``packages`` in ``dest``, downloaded unless there already."""
    os.makedirs(dest, exist_ok=True)
    debs = []
    for pkg in packages:
        have = [n for n in os.listdir(dest) if n.startswith(pkg.replace("+", "%2b") + "_") or n.startswith(pkg + "_")]
        if not have:
            say("downloading", pkg)
            run(["apt-get", *apt_options(apt_dir), "download", pkg], cwd=dest)
            have = [n for n in os.listdir(dest) if n.startswith(pkg.replace("+", "%2b") + "_")
                    or n.startswith(pkg + "_")]
        if not have:
            raise VMError(f"apt-get download {pkg} left no .deb in {dest}")
        debs.append(os.path.join(dest, sorted(have)[-1]))
    return debs


def unpack(debs: list[str], root: str) -> None:
    tmp = root + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for deb in debs:
        run(["dpkg-deb", "-x", deb, tmp])
    shutil.rmtree(root, ignore_errors=True)
    os.rename(tmp, root)


def fetch_kernel(spec: KernelSpec, apt_dir: str, cache: str = CACHE) -> Kernel:
    """The newest build of ``spec`` unpacked in the cache, with modules.dep (and headers if wanted)."""
    image = newest(package_names(apt_dir, spec.image.split("\\")[0]), spec.image)
    if not image:
        raise VMError(f"no package matches {spec.image} in {', '.join(SUITES)}")
    release = re.sub(r"^linux-image-|-unsigned$", "", image)
    root = f"{cache}/kernels/{release}"
    kernel = Kernel(spec, release, root)
    stamp = f"{root}/.unpacked"
    want = [image] + (headers_packages(release) if spec.headers else [])
    if not os.path.exists(stamp) or open(stamp).read().split() != want:
        debs = download(apt_dir, want, f"{cache}/debs")
        say("unpacking", release)
        unpack(debs, root)
        # The package ships no modules.dep: without it modprobe finds nothing (veth).
        run(["depmod", "-b", root, release])
        with open(stamp, "w") as f:
            f.write("\n".join(want) + "\n")
    for path in (kernel.vmlinuz, kernel.config, kernel.modules):
        if not os.path.exists(path):
            raise VMError(f"{image}: {path} is missing after unpacking")
    return kernel


def fetch_all(specs=KERNELS, cache: str = CACHE) -> list[Kernel]:
    apt_dir = apt_update(cache)
    return [fetch_kernel(spec, apt_dir, cache) for spec in specs]




# Process groups of the guests (and native pytest runs) under way: killed with us, so that a
# timeout around scripts/vmtest leaves no QEMU behind.
RUNNING: set = set()
STOPPED: list = []  # the signal that stopped the matrix, once one has


def _kill_running(signum, _frame) -> None:
    """Kill every guest and test run; the table of what finished is still printed."""
    STOPPED.append(signum)
    for pgid in list(RUNNING):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- results

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


# ---------------------------------------------------------------- in the guest (or natively)

def reasons_from_check(check_text: str, backend: str) -> str:
    """The --check lines that speak of ``backend`` (the reason it is missing), or a plain word."""
    lines = [line.strip() for line in check_text.splitlines()]
    hits = [line for line in lines if f"backend {backend}" in line.lower() and not line.startswith(("payload", "wire"))]
    hits = hits or [line for line in lines if backend in line.lower()]
    return "; ".join(hits) if hits else "procnetmon --check does not offer it"


def offered_backends() -> tuple[list[str], str]:
    """The payload backends procnetmon offers on this kernel, best first, and where that came from."""
    from procnetmon.kernel import check

    usable = getattr(check, "usable_backends", None)
    if usable is None:
        return ["tracepoint"], "procnetmon has no check.usable_backends() yet: assumed tracepoint only"
    return list(usable()), "check.usable_backends()"


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


def local_cache_dir() -> str:
    """A procnetmon cache on the guest's own memory, not in the shared folder.

    Building BCC's header tree makes some 700 symlinks: over 9p, every one a
    round trip through an emulated CPU, that took 3 minutes of a 5.10
    guest's 5 (and the best part of CI's budget on a slower machine). The
    cache's files say nothing the results need.
    """
    return tempfile.mkdtemp(prefix="procnetmon-cache-")


def run_matrix_tests(out: str, label: str, backend: Optional[str], timeout: float, cache_dir: str) -> dict:
    """pytest of the matrix module, with $PROCNETMON_BACKEND set; returns the run's record."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PROCNETMON_CACHE_DIR=cache_dir)
    env.pop("PROCNETMON_BACKEND", None)
    if backend:
        env["PROCNETMON_BACKEND"] = backend
    junit, log = f"{out}/{label}.xml", f"{out}/{label}.log"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-s", "-rA", f"--junitxml={junit}",
           MATRIX_TESTS]
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
    backends, source = offered_backends()
    record["offered"], record["offered_from"] = backends, source
    for name in BACKENDS:
        if name not in backends:
            reason = reasons_from_check(record["check"], name)
            if source != "check.usable_backends()":
                reason = f"procnetmon has no {name} backend yet (--check: {reason})"
            record["missing"][name] = reason
    if not backends:
        record["missing"]["auto"] = "no payload backend on this kernel"
    to_run = backends if everything else backends[:1]
    for name in backends[len(to_run):]:
        record["not_run"][name] = "CI subset; scripts/vmtest --all runs it"
    for name in to_run:
        record["runs"].append(run_matrix_tests(out, name, name, timeout, cache_dir))
        _write_json(f"{out}/guest.json", record)
    if headers_root:
        link_headers(os.uname().release, headers_root)
        check_run = subprocess.run([sys.executable, "-m", "procnetmon", "--check"], cwd=ROOT, capture_output=True,
                                   text=True, env=dict(os.environ, PROCNETMON_CACHE_DIR=cache_dir))
        record["check_with_headers"] = check_run.stdout + check_run.stderr
        if backends:
            record["runs"].append(run_matrix_tests(out, f"{backends[0]}+headers", backends[0], timeout, cache_dir))
    record["seconds_in_guest"] = round(float(open("/proc/uptime").read().split()[0]) - uptime, 1)
    _write_json(f"{out}/guest.json", record)
    shutil.rmtree(cache_dir, ignore_errors=True)
    return 0


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


# ---------------------------------------------------------------- on this machine

def guest_command(root: str, out: str, everything: bool, headers_root: Optional[str]) -> str:
    """The one shell line the guest runs: the guest side of this module, its output kept in ``out``."""
    args = ["guest", "--out", out] + (["--all"] if everything else [])
    if headers_root:
        args += ["--headers", headers_root]
    return _guest_line(root, out, args)


def _guest_line(root: str, out: str, args: list[str]) -> str:
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


def junits_of(out: str, guest: dict) -> dict:
    texts = {}
    for run in guest.get("runs", []):
        path = f"{out}/{run['label']}.xml"
        if os.path.exists(path):
            with open(path) as f:
                texts[run["label"]] = f.read()
    return texts


# ---------------------------------------------------------------- the benchmark in a guest
#
# bcc's tcptop, which the benchmark sets beside procnetmon, needs kprobes and the
# kernel's headers: this machine's kernel has neither, Debian's 6.12 both once
# its linux-headers are linked in (link_headers). ``--bench`` boots that kernel
# and runs ``python -m bench`` in it, with options for a slow TCG guest; the
# report comes back through the shared folder and is copied to BENCH_OUTPUT.

BENCH_KERNEL = "6.12"  # the default: kprobes, BTF, procnetmon's tracepoints, and headers fetched (headers=True)
BENCH_TIMEOUT = 35 * 60  # the guest, boot to report
# TCP only (tcptop counts TCP alone), short runs, few repetitions: every
# instruction is emulated, and BCC compiles each tool's program at start.
BENCH_ARGS = ("--workloads", "tcp", "--reps", "2", "--seconds", "3", "--bpf-reps", "2", "--bpf-seconds", "3",
              "--timeout-scale", "5")
BENCH_REPORT = "benchmarks.md"  # in the run's folder
BENCH_OUTPUT = os.path.join(ROOT, "docs", "benchmarks-vm.md")


# bcc's tools compile against the kernel's headers, whose include/linux/bpf.h
# takes the size of the opaque uapi structs (bpf_rb_root, bpf_wq, ...). BCC
# forces its own copy of the uapi bpf.h in first, and an old BCC's copy lacks
# the newer ones: Debian 12's BCC 0.26 cannot compile tcptop against 6.12's
# headers (bcc issue #4575; Debian 13 ships a newer BCC). tcptop then gets a
# copy of the header tree in which those definitions, taken from the kernel's
# own uapi bpf.h, come first.
TCPTOP_HEADERS = "tcptop-headers"  # in the run's folder


def bpf_structs_needed(linux_bpf_h: str) -> list[str]:
    """The uapi structs include/linux/bpf.h takes the size or alignment of, in order."""
    names = re.findall(r"(?:sizeof|__alignof__)\(struct (bpf_\w+)\)", linux_bpf_h)
    return list(dict.fromkeys(names))


def opaque_structs(uapi_bpf_h: str) -> dict[str, str]:
    """The uapi bpf.h's ``struct bpf_x { ... } __attribute__((aligned(N)));`` definitions, by name."""
    return {m.group(1): m.group(0) for m in
            re.finditer(r"^struct (bpf_\w+) \{\n[^{}]*?\n\} __attribute__\(\(aligned\(\d+\)\)\);$", uapi_bpf_h,
                         re.M)}


def bpf_struct_shim(linux_bpf_h: str, uapi_bpf_h: str, bcc_defines) -> tuple[list[str], str]:
    """The structs BCC's own uapi bpf.h lacks that the kernel's bpf.h needs, and a
    header defining them (empty when none is missing). ``bcc_defines(name)``
    says whether BCC's copy has the struct."""
    defs = opaque_structs(uapi_bpf_h)
    missing = [n for n in bpf_structs_needed(linux_bpf_h) if n in defs and not bcc_defines(n)]
    if not missing:
        return [], ""
    body = "\n\n".join(defs[n] for n in missing)
    return missing, ("/* Made by testbed/vm.py for bcc's tcptop: BCC's own copy of the uapi bpf.h\n"
                     " * lacks these, which include/linux/bpf.h takes the size of. Copied from\n"
                     " * this kernel's include/uapi/linux/bpf.h. */\n"
                     "#ifndef _VMBENCH_BPF_STRUCTS\n#define _VMBENCH_BPF_STRUCTS\n"
                     "#include <linux/types.h>\n\n" + body + "\n#endif\n")


def libbcc_defines():
    """Whether the running BCC's built-in uapi bpf.h defines a struct (read from libbcc's bytes)."""
    import bcc  # noqa: F401  (loads libbcc, whose path /proc/self/maps then shows)

    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "libbcc.so" in line}
    data = b"".join(open(p, "rb").read() for p in sorted(paths))
    return lambda name: f"struct {name} {{".encode() in data


def tcptop_header_tree(kernel: Kernel, out: str, bcc_defines=None) -> tuple[Optional[str], list[str]]:
    """A header tree tcptop can compile against ($BCC_KERNEL_SOURCE), when the
    kernel's own needs the shim; (None, []) when BCC's copy lacks nothing."""
    if not kernel.headers:
        return None, []
    from procnetmon.kernel import headers

    version = kernel.release[:-len("-amd64")] if kernel.release.endswith("-amd64") else kernel.release
    build, source = kernel.headers, f"{kernel.root}/usr/src/linux-headers-{version}-common"
    with open(f"{source}/include/linux/bpf.h") as f:
        linux_bpf_h = f.read()
    with open(f"{source}/include/uapi/linux/bpf.h") as f:
        uapi_bpf_h = f.read()
    missing, shim = bpf_struct_shim(linux_bpf_h, uapi_bpf_h, bcc_defines or libbcc_defines())
    if not missing:
        return None, []
    root = f"{out}/{TCPTOP_HEADERS}"
    headers.merge_split_tree(root, build, source, "x86")
    # include/linux: a directory of links, with bpf.h defining the missing structs first.
    linux = f"{root}/include/linux"
    os.unlink(linux)
    os.makedirs(linux)
    for name in os.listdir(f"{source}/include/linux"):
        os.symlink(f"{source}/include/linux/{name}", f"{linux}/{name}")
    os.unlink(f"{linux}/bpf.h")
    with open(f"{linux}/bpf.h", "w") as f:
        f.write(shim + f'#include "{source}/include/linux/bpf.h"\n')
    return root, missing


def bench_note(kernel: Kernel, command: str, cpus: int = GUEST_CPUS, tcptop_shim: tuple = ()) -> str:
    """The report's first paragraph: where it ran, why its absolute numbers mean nothing, what made it."""
    return (f"**Measured in a QEMU guest running Debian's {kernel.release} kernel ({kernel.spec.distro}), "
            f"{cpus} vCPUs, under TCG without KVM** (nested virtualization hangs on the build machine), so "
            "every guest instruction is emulated: absolute numbers (throughput, CPU, start-up times, ns per "
            "program run) are far below native ones and mean nothing; only the ratios within this run, against "
            "its own no-monitor runs and its own empty programs, compare. Made by `" + command + "`; "
            "docs/benchmarks.md has the native figures."
            + ("" if not tcptop_shim else
               " tcptop: this machine's BCC (Debian 12's 0.26) cannot compile it against this kernel's headers "
               "as they are (bcc issue #4575: BCC's built-in uapi bpf.h lacks struct "
               + ", ".join(tcptop_shim) + ", whose size include/linux/bpf.h takes; Debian 13 ships a newer "
               "BCC), so it compiled against a copy of them in which those definitions, taken from the "
               "kernel's own uapi bpf.h, come first."))


def bench_plan(kernel: Kernel, bench_args: list[str], command: str, out: str,
               tcptop_tree: Optional[str] = None, tcptop_shim: tuple = ()) -> dict:
    """What the guest is to do: link the kernel's headers, then run the benchmark (guest_bench_args)."""
    return {"release": kernel.release, "headers": kernel.root if kernel.headers else None,
            "bench_args": list(bench_args), "output": f"{out}/{BENCH_REPORT}",
            "note": bench_note(kernel, command, tcptop_shim=tuple(tcptop_shim)),
            "tcptop_headers": tcptop_tree, "tcptop_shim": list(tcptop_shim)}


TCPTOP = "/usr/sbin/tcptop-bpfcc"


def probed_functions(script: str) -> list[str]:
    """The kernel functions a bcc tool's program probes by name (BCC attaches
    ``kprobe__f`` and ``kretprobe__f`` to ``f`` by itself)."""
    return list(dict.fromkeys(re.findall(r"\bint k(?:ret)?probe__(\w+)\(", script)))


def without_probes_on(script: str, gone: set) -> tuple[str, list[str]]:
    """A bcc tool's script whose auto-attached probes on the functions ``gone``
    are renamed so that BCC no longer attaches them; and which were."""
    dropped = []

    def rename(m):
        if m.group(2) not in gone:
            return m.group(0)
        dropped.append(f"{m.group(1)} {m.group(2)}")
        return f"int unattached_{m.group(1)}__{m.group(2)}("

    return re.sub(r"\bint (kprobe|kretprobe)__(\w+)\(", rename, script), dropped


def kernel_functions(kallsyms: str) -> set:
    return {line.split()[2] for line in kallsyms.splitlines() if len(line.split()) >= 3}


def tcptop_for_this_kernel(out: str, script_path: str = TCPTOP, kallsyms_path: str = "/proc/kallsyms"):
    """(In the guest) tcptop as shipped when the kernel has every function it
    probes; else a copy in ``out`` without the probes on the missing ones
    (Debian 12's tcptop probes tcp_sendpage, which Linux 6.5 removed), and
    the probes left out."""
    with open(script_path) as f:
        script = f.read()
    with open(kallsyms_path) as f:
        present = kernel_functions(f.read())
    gone = {fn for fn in probed_functions(script) if fn not in present}
    if not gone:
        return None, []
    text, dropped = without_probes_on(script, gone)
    path = f"{out}/{os.path.basename(script_path)}"
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path, dropped


def guest_bench_args(plan: dict, tcptop: Optional[str] = None, dropped: tuple = ()) -> list[str]:
    """The benchmark's arguments in the guest: the plan's, the report's place and its note."""
    note = plan["note"]
    args = list(plan["bench_args"]) + ["--output", plan["output"]]
    if tcptop:
        args += ["--tcptop", tcptop]
        note += (" tcptop as Debian 12 ships it also probes a function this kernel no longer has ("
                 + ", ".join(dropped) + "; tcp_sendpage went in Linux 6.5) and cannot start: the run used a "
                 "copy without those probes, its others unchanged (upstream tcptop has since dropped them too).")
    return args + ["--note", note]


def bench_environment(environ: dict, out: str, tcptop_headers: Optional[str] = None) -> dict:
    """The benchmark's environment in the guest.

    $BCC_KERNEL_SOURCE only for the shimmed tree (tcptop_header_tree), which
    only tcptop reads: procnetmon sets it in its own process, to a tree of
    its own. Otherwise none: given it, BCC takes every header from that one
    directory, but Debian splits them between /lib/modules/<release>/build
    (generated) and .../source, which BCC joins only when it looks there
    itself.
    """
    env = dict(environ, PYTHONDONTWRITEBYTECODE="1", PROCNETMON_CACHE_DIR=f"{out}/procnetmon-cache")
    env.pop("BCC_KERNEL_SOURCE", None)
    if tcptop_headers:
        env["BCC_KERNEL_SOURCE"] = tcptop_headers
    path = env.get("PATH", "").split(":")
    env["PATH"] = ":".join(path + [d for d in ("/usr/sbin", "/sbin") if d not in path])  # nethogs, tcptop
    return env


def bench_guest_main(out: str, timeout: float = BENCH_TIMEOUT - 3 * 60) -> int:
    """(Inside the guest) the plan of ``out``: headers linked, the benchmark run, bench.json written."""
    with open(f"{out}/bench-plan.json") as f:
        plan = json.load(f)
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    release = os.uname().release
    record = {"release": release, "uptime_at_start": uptime, "plan": plan}

    ensure_modules(release)
    from procnetmon.kernel import mounts

    mounts.prepare()
    if plan.get("headers"):
        link_headers(release, plan["headers"])
    record["build"] = os.path.realpath(f"/lib/modules/{release}/build")
    tcptop, dropped = tcptop_for_this_kernel(out)
    record["tcptop"], record["tcptop_dropped"] = tcptop, dropped
    started = time.monotonic()
    record["returncode"] = run_logged([sys.executable, "-m", "bench", *guest_bench_args(plan, tcptop, dropped)],
                                      bench_environment(os.environ, out, plan.get("tcptop_headers")),
                                      f"{out}/bench.log", timeout)
    record["seconds"] = round(time.monotonic() - started, 1)
    _write_json(f"{out}/bench.json", record)
    return 0 if record["returncode"] == 0 else 1


def bench_guest_command(root: str, out: str) -> str:
    return _guest_line(root, out, ["bench-guest", "--out", out])


def sections(markdown: str, titles: tuple[str, ...]) -> str:
    """The ``## title`` sections of a report named in ``titles``, in the report's order."""
    out, keep = [], False
    for line in markdown.splitlines():
        if line.startswith("## "):
            keep = line[3:].strip() in titles
        if keep:
            out.append(line)
    return "\n".join(out).strip() + "\n"


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return f"({path} is missing)\n"


def bench_in_guest(vng: str, kernel: Kernel, out: str, bench_args: list[str], command: str, output: str,
                   timeout: float = BENCH_TIMEOUT) -> int:
    """Boot ``kernel``, run the benchmark in it, copy its report to ``output``; 0 if there is a report."""
    os.makedirs(out, exist_ok=True)
    try:
        tree, shim = tcptop_header_tree(kernel, out)
    except (OSError, ImportError) as e:
        say(f"no header tree for tcptop ({e}): it compiles against the kernel's headers as they are")
        tree, shim = None, []
    if shim:
        say(f"tcptop compiles against {tree}: BCC's own uapi bpf.h lacks struct {', '.join(shim)}")
    _write_json(f"{out}/bench-plan.json", bench_plan(kernel, bench_args, command, out, tree, shim))
    say(f"booting {kernel.release} for the benchmark (at most {timeout / 60:.0f} minutes)")
    wall, timed_out, _ = boot(vng, kernel, out, bench_guest_command(ROOT, out), timeout)
    report = f"{out}/{BENCH_REPORT}"
    state = "killed after" if timed_out else "done in"
    if not os.path.exists(report):
        say(f"{kernel.release}: {state} {wall:.0f} s without a report; the end of {out}/bench.log:")
        print(tail(f"{out}/bench.log") if os.path.exists(f"{out}/bench.log") else tail(f"{out}/guest.log"),
              end="", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    shutil.copyfile(report, output)
    with open(report) as f:
        print(sections(f.read(), ("Results", "Cost per run, as a multiple of the floor")), end="")
    say(f"{kernel.release}: {state} {wall:.0f} s; report {report}, copied to {output}")
    return 0


def bench_command(argv: list[str]) -> str:
    """The command line that made a report, as the report names it."""
    rest = [a for a in argv if a != "--bench"]
    return " ".join(["sudo", "scripts/vmbench", *(shlex.quote(a) for a in rest)])


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
    guest = sub.add_parser("guest", help="(inside a guest) run the matrix module per backend")
    guest.add_argument("--out", required=True)
    guest.add_argument("--all", action="store_true")
    guest.add_argument("--headers", help="the unpacked kernel packages holding usr/src/linux-headers-*")
    bench_guest = sub.add_parser("bench-guest", help="(inside a guest) run the benchmark as bench-plan.json says")
    bench_guest.add_argument("--out", required=True)
    parser.add_argument("--all", action="store_true", help="every backend of every kernel, and the run with "
                                                           "real headers (default: each kernel's best backend)")
    parser.add_argument("--kernels", default=None,
                        help="which of " + ", ".join(k.name for k in KERNELS) + " to boot (comma-separated; "
                             f"default all, with --bench {BENCH_KERNEL})")
    parser.add_argument("--no-native", action="store_true", help="skip this machine's own kernel")
    parser.add_argument("--jobs", type=int, default=None,
                        help="guests booted at once (default: one per two CPUs of this machine, since each guest "
                             f"has {GUEST_CPUS} and emulating them keeps a CPU busy each)")
    parser.add_argument("--fetch-only", action="store_true", help="fetch and unpack the kernels, boot nothing")
    parser.add_argument("--bench", action="store_true",
                        help=f"run the benchmark (python -m bench) in one guest instead of the tests, and copy "
                             f"its report to --bench-output (default: kernel {BENCH_KERNEL}, where tcptop runs)")
    parser.add_argument("--bench-args", default=" ".join(BENCH_ARGS),
                        help="the benchmark's options in the guest (default: %(default)s)")
    parser.add_argument("--bench-output", default=BENCH_OUTPUT, help="where the report goes (default: %(default)s)")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    if args.command == "guest":
        return guest_main(args.out, args.all, args.headers)
    if args.command == "bench-guest":
        return bench_guest_main(args.out)
    if args.kernels is None:
        args.kernels = BENCH_KERNEL if args.bench else ",".join(k.name for k in KERNELS)

    wanted = [k for k in KERNELS if k.name in args.kernels.split(",")]
    if args.bench and len(wanted) != 1:
        parser.error("--bench boots one kernel: give --kernels one of " + ", ".join(k.name for k in KERNELS))
    signal.signal(signal.SIGTERM, _kill_running)
    signal.signal(signal.SIGINT, _kill_running)
    started = time.monotonic()
    try:
        vng = ensure_tools()
        kernels = fetch_all(wanted)
        if args.fetch_only:
            for k in kernels:
                print(f"{k.spec.name:6} {k.release:28} {k.root}" + ("  (+headers)" if k.headers else ""))
            return 0
    except VMError as e:
        print(f"vmtest: {e}", file=sys.stderr)
        return 1
    results_dir = f"{CACHE}/runs/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    os.makedirs(results_dir)
    say(f"results in {results_dir}")
    if args.bench:
        command = bench_command(argv if argv is not None else sys.argv[1:])
        return bench_in_guest(vng, kernels[0], f"{results_dir}/{kernels[0].spec.name}", shlex.split(args.bench_args),
                              command, args.bench_output)
    results = {}  # label -> (out dir, guest record)
    if not args.no_native:
        out = f"{results_dir}/native"
        say(f"running natively on {os.uname().release}")
        results[f"{os.uname().release} (native)"] = (out, native_test(out, args.all))

    def one(kernel):
        out = f"{results_dir}/{kernel.spec.name}"
        if STOPPED:
            return kernel, out, {"runs": [], "not_run": {"all": "the matrix was stopped (timeout) first"}}
        say(f"booting {kernel.release}")
        guest = boot_and_test(vng, kernel, out, args.all)
        say(f"{kernel.release} done in {guest['wall']:.0f} s")
        return kernel, out, guest

    jobs = args.jobs if args.jobs is not None else default_jobs(len(kernels))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for kernel, out, guest in pool.map(one, kernels):
            results[f"{kernel.spec.name} {kernel.release}"] = (out, guest)

    rows = []
    timings = []
    for label, (out, guest) in results.items():
        rows += rows_of(label, guest, junits_of(out, guest))
        if guest.get("timed_out"):
            rows.append(Row(label, "-", "-", failed=1, note=f"guest killed after {guest.get('wall', 0):.0f} s "
                                                            f"(limit {GUEST_TIMEOUT} s, or stopped); "
                                                            f"see {out}/*.log"))
        runs = ", ".join(f"{r['label']} {r['seconds']:.0f} s" for r in guest.get("runs", []))
        boot = guest.get("uptime_at_start")
        timings.append(f"{label}: wall {guest.get('wall', 0):.0f} s"
                       + (f", boot {boot:.0f} s" if boot is not None and "native" not in label else "")
                       + (f", --check {guest['check_seconds']:.0f} s" if "check_seconds" in guest else "")
                       + (f", runs: {runs}" if runs else "")
                       + (" (TIMED OUT)" if guest.get("timed_out") else ""))
    table = format_table(rows)
    summary = table + "\n" + "\n".join(timings) + f"\nmatrix wall time: {time.monotonic() - started:.0f} s\n"
    with open(f"{results_dir}/table.txt", "w") as f:
        f.write(summary)
    print(summary, end="")
    return 1 if any_failed(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
