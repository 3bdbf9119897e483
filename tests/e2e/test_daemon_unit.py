"""contrib/procnetmon.service, run as the unit runs it (issue 20, item 8).

systemd is not PID 1 here, so testbed.systemd_unit applies what decides the
daemon's privileges itself: nobody stands in for the dynamic user, with
exactly the unit's ambient capabilities (setpriv), no_new_privs, its system
call filter (libseccomp, the @groups resolved by systemd-analyze) and its
umask; its cache is laid out as systemd lays out a DynamicUser's
CacheDirectory=; its MemoryMax= and TasksMax= become a memory and a pids
cgroup. With that the daemon must measure exactly, each capability must be
needed, and a local attacker holding what the unit grants must not reach
root's memory or the network's configuration."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
from harness import TrafficProcess, by_pid, wait_for

from testbed import systemd_unit as unit

NOBODY = unit.NOBODY
DROPINS = {"payload": (), "wire": (unit.WIRE_DROPIN,), "payload+connections": (unit.CONNECTIONS_DROPIN,)}

pytestmark = pytest.mark.skipif(not shutil.which("setpriv") or not unit.systemd_analyze(),
                                reason="needs setpriv (util-linux) and systemd-analyze (systemd)")


@pytest.fixture(autouse=True)
def tracefs_mounted():
    """The daemon may not mount tracefs (no CAP_SYS_ADMIN): on a real
    machine systemd's sys-kernel-tracing.mount has, which the suite's fresh
    state has not."""
    from procnetmon.kernel import mounts

    mounts.prepare()


@pytest.fixture
def place():
    """A directory nobody can reach (under /tmp: pytest's tmp_path is not)."""
    path = tempfile.mkdtemp(prefix="pnm-unit-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def daemon_cache(place: str) -> str:
    """The daemon's cache as systemd lays it out for a DynamicUser, seen
    from inside the unit: /var/cache/private is an empty root-owned tmpfs
    (mode 0755) holding the unit's directory, which belongs to the dynamic
    user, mode CacheDirectoryMode=. The path is the one the unit's
    PROCNETMON_CACHE_DIR names, under ``place``."""
    settings = unit.service()
    values = unit.last_values(settings)
    path = unit.environment(settings)["PROCNETMON_CACHE_DIR"]
    assert path == os.path.join("/var/cache/private", values["CacheDirectory"])
    for parent in ("var", "var/cache", "var/cache/private"):
        os.mkdir(os.path.join(place, parent), 0o755)
    cache = place + path
    os.mkdir(cache, int(values["CacheDirectoryMode"], 8))
    os.chown(cache, NOBODY, NOBODY)
    return cache


def as_the_unit(command: list[str], place: str, *dropins: str, without: tuple[str, ...] = (),
                cache: str = "") -> list[str]:
    allow = os.path.join(place, "allowed-syscalls")
    unit.write_allow_file(allow, *dropins)
    env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/nonexistent"]
    if cache:
        env.append(f"PROCNETMON_CACHE_DIR={cache}")
    return unit.sandboxed(env + command, *dropins, allow_file=allow, without=without, python=INSTALLED["python"])


INSTALLED = {"python": sys.executable}


@pytest.fixture(scope="module", autouse=True)
def installed():
    """procnetmon as installed, readable by nobody (the checkout may not be)."""
    top = tempfile.mkdtemp(prefix="pnm-install-")
    os.chmod(top, 0o755)
    INSTALLED["python"] = unit.readable_install(top)
    yield INSTALLED["python"]
    INSTALLED["python"] = sys.executable
    shutil.rmtree(top, ignore_errors=True)


def procnetmon(*args: str) -> list[str]:
    return [INSTALLED["python"], "-I", "-m", "procnetmon", *args]


@pytest.mark.parametrize("variant", sorted(DROPINS))
def test_the_unit_measures_exactly_with_only_what_it_grants(peer, place, variant):
    mode = "wire" if "wire" in variant else "payload"
    assert unit.exec_start(unit.service(*DROPINS[variant]))[-3:] == ["--mode", mode, "--quiet"]
    cache = daemon_cache(place)
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=120_000, reply=900)
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=120_000, expect=900, hold=True)
    cmd = as_the_unit(procnetmon("-p", f"{server.pid},{client.pid}", "-t", "4s", "--json", "--mode", mode),
                      place, *DROPINS[variant], cache=cache)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        line = proc.stderr.readline()
        assert "probes attached" in line, line + proc.stderr.read()
        server.go()
        client.go()
        truth = {"server": server.result(), "client": client.result()}
        out, err = proc.communicate(timeout=60)
    finally:
        server.finish()
        client.finish()
    assert proc.returncode == 0, err
    rows = by_pid(json.loads(out))
    if mode == "payload":
        assert rows[client.pid]["bytes_out"] == truth["client"]["tcp_out"] == 120_000
        assert rows[server.pid]["bytes_in"] == truth["server"]["tcp_in"]
    else:
        assert rows[client.pid]["bytes_out"] > 120_000
    if variant.endswith("+connections"):
        # CAP_SYS_PTRACE: the held connection of another user's process is seen.
        assert rows[client.pid]["tcp_connections"] == 1
    else:
        assert rows[client.pid]["tcp_connections"] is None
        assert "CAP_SYS_PTRACE" in err
    # The cache passed the trust check and was filled, privately.
    (build,) = os.listdir(cache)
    assert os.stat(os.path.join(cache, build)).st_uid == NOBODY
    assert os.stat(os.path.join(cache, build)).st_mode & 0o077 == 0


@pytest.mark.parametrize("mode, dropped, what", [
    ("payload", "CAP_BPF", "CAP_BPF"),
    ("payload", "CAP_PERFMON", "CAP_PERFMON"),
    ("payload", "CAP_DAC_READ_SEARCH", "only root may read it: run as root, or with CAP_DAC_READ_SEARCH"),
    ("wire", "CAP_NET_ADMIN", "CAP_NET_ADMIN"),
])
def test_each_capability_of_the_unit_is_needed(place, mode, dropped, what):
    dropins = DROPINS[mode]
    assert dropped in unit.merged_list(unit.service(*dropins), "AmbientCapabilities")
    done = subprocess.run(as_the_unit(procnetmon("-p", "1", "-t", "0.5s", "--mode", mode), place, *dropins,
                                      without=(dropped,), cache=daemon_cache(place)),
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 3, done.stderr
    assert what in done.stderr and "Traceback" not in done.stderr


VICTIM = r"""
import ctypes, os, sys
secret = ctypes.create_string_buffer(b"secret!", 7)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
print(os.getpid(), ctypes.addressof(secret), fd, flush=True)
sys.stdin.readline()
print(secret.raw.decode("ascii", "replace"), os.fstat(fd).st_size, flush=True)
"""

ATTACKER = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid, address, target_fd = (int(a) for a in sys.argv[1:4])

class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

def outcome(result):
    return result if result >= 0 else errno.errorcode[ctypes.get_errno()]

payload = ctypes.create_string_buffer(b"PWNED!!", 7)
mine, theirs = iovec(ctypes.addressof(payload), 7), iovec(address, 7)
got = {}
for call in ("process_vm_writev", "process_vm_readv"):
    fn = getattr(libc, call)
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(iovec), ctypes.c_ulong, ctypes.POINTER(iovec), ctypes.c_ulong,
                   ctypes.c_ulong]
    got[call] = outcome(fn(pid, ctypes.byref(mine), 1, ctypes.byref(theirs), 1, 0))
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
got["ptrace"] = outcome(libc.ptrace(0x4206, pid, None, None))  # PTRACE_SEIZE
libc.syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long]
pidfd = os.pidfd_open(pid)
fd = libc.syscall(438, pidfd, target_fd, 0)  # pidfd_getfd
got["pidfd_getfd"] = outcome(fd)
if fd >= 0:
    os.write(fd, b"PWNED")
try:
    os.close(os.open(f"/proc/{pid}/mem", os.O_RDWR))
    got["/proc/PID/mem"] = "opened"
except OSError as e:
    got["/proc/PID/mem"] = errno.errorcode[e.errno]
print(json.dumps(got))
"""


@pytest.mark.parametrize("variant", sorted(DROPINS))
def test_what_the_unit_grants_does_not_reach_roots_memory(place, variant):
    """The attack of issue 20: nobody, holding exactly what the unit grants
    (with each drop-in), writes into a root process's memory or takes its
    descriptors. Every route must fail, and root's process be unchanged."""
    victim = subprocess.Popen([sys.executable, "-c", VICTIM, os.path.join(place, "roots-file")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pid, address, fd = victim.stdout.readline().split()
        attack = subprocess.run(as_the_unit([INSTALLED["python"], "-I", "-c", ATTACKER, pid, address, fd], place,
                                            *DROPINS[variant]),
                                capture_output=True, text=True, timeout=60, cwd="/")
        victim.stdin.write("\n")
        victim.stdin.flush()
        after = victim.stdout.readline().split()
    finally:
        victim.kill()
        victim.wait()
    assert attack.returncode == 0, attack.stderr
    got = json.loads(attack.stdout)
    assert after == ["secret!", "0"], (after, got)
    assert got == {"process_vm_writev": "EPERM", "process_vm_readv": "EPERM", "ptrace": "EPERM",
                   "pidfd_getfd": "EPERM", "/proc/PID/mem": "EACCES"}


@pytest.mark.parametrize("variant, allowed", [("payload", False), ("payload+connections", False), ("wire", True)])
def test_only_the_wire_dropin_can_change_the_network(place, variant, allowed):
    """Payload mode keeps no CAP_NET_ADMIN: in a namespace of the test's own,
    nobody with what the payload unit grants cannot add an address or a
    route; with the wire drop-in it can (which is what that drop-in costs)."""
    netns = f"pnmunit{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        results = []
        for change in (["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"],
                       ["ip", "route", "add", "198.51.100.0/24", "dev", "lo"]):
            done = subprocess.run(["ip", "netns", "exec", netns] + as_the_unit(change, place, *DROPINS[variant]),
                                  capture_output=True, text=True, timeout=30)
            results.append((done.returncode == 0, done.stderr.strip()))
        routes = subprocess.run(["ip", "netns", "exec", netns, "ip", "route", "show", "198.51.100.0/24"],
                                capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    assert [ok for ok, _ in results] == [allowed, allowed], results
    assert bool(routes.strip()) == allowed
    if not allowed:
        assert all("Operation not permitted" in why for _, why in results), results


def test_the_units_cache_is_trusted_only_as_named(place):
    """The unit names /var/cache/private/procnetmon-daemon, not the symbolic
    link %C/procnetmon-daemon systemd makes beside it: procnetmon refuses a
    cache that is a link. And root's CLI refuses the daemon's directory (it
    belongs to the daemon's user), so neither can feed the other's compile."""
    cache = daemon_cache(place)
    values = unit.last_values(unit.service())
    link = os.path.join(place, "var/cache", values["CacheDirectory"])
    os.symlink(os.path.join("private", values["CacheDirectory"]), link)
    through_link = subprocess.run(as_the_unit(procnetmon("-p", "1", "-t", "0.1s"), place, cache=link),
                                  capture_output=True, text=True, timeout=120, cwd="/")
    assert through_link.returncode == 3 and "symbolic link" in through_link.stderr, through_link.stderr
    roots = subprocess.run(procnetmon("-p", "1", "-t", "0.1s"), capture_output=True, text=True, timeout=120,
                           cwd="/", env=dict(os.environ, PROCNETMON_CACHE_DIR=cache))
    assert roots.returncode == 3 and f"belongs to uid {NOBODY}" in roots.stderr, roots.stderr
    assert os.listdir(cache) == []


def _bytes(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


@contextlib.contextmanager
def limited_cgroup(memory_max: int, tasks_max: int):
    """A cgroup with the unit's memory and task limits: cgroup v2 where it
    has the memory and pids controllers, else v1's (this machine's hybrid
    layout). Yields the file to write a PID into and a function for the peak
    memory in bytes."""
    name = f"pnm-unit-{os.getpid()}"
    v2 = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
    try:
        controllers = open(os.path.join(v2, "cgroup.controllers")).read().split()
    except OSError:
        controllers = []
    made = []
    try:
        if {"memory", "pids"} <= set(controllers):
            group = os.path.join(v2, name)
            os.mkdir(group)
            made.append(group)
            open(os.path.join(group, "memory.max"), "w").write(str(memory_max))
            open(os.path.join(group, "pids.max"), "w").write(str(tasks_max))
            procs = [os.path.join(group, "cgroup.procs")]
            peak_file = os.path.join(group, "memory.peak")
        elif os.path.isdir("/sys/fs/cgroup/memory") and os.path.isdir("/sys/fs/cgroup/pids"):
            memory, pids = (os.path.join("/sys/fs/cgroup", c, name) for c in ("memory", "pids"))
            for group in (memory, pids):
                os.mkdir(group)
                made.append(group)
            open(os.path.join(memory, "memory.limit_in_bytes"), "w").write(str(memory_max))
            open(os.path.join(pids, "pids.max"), "w").write(str(tasks_max))
            procs = [os.path.join(memory, "cgroup.procs"), os.path.join(pids, "cgroup.procs")]
            peak_file = os.path.join(memory, "memory.max_usage_in_bytes")
        else:
            pytest.skip("needs a memory and a pids cgroup controller (v1 or v2)")
        yield procs, lambda: int(open(peak_file).read())
    finally:
        for group in reversed(made):
            for _ in range(50):
                try:
                    os.rmdir(group)
                    break
                except OSError:
                    time.sleep(0.1)


def test_the_daemon_serves_within_the_units_limits(peer, place):
    """ExecStart as the unit says it (LISTEN on a free port), as the unit's
    user, under its filter, in a cgroup holding MemoryMax= and TasksMax=:
    it answers, counts another user's traffic, leaves out the connection
    counts it cannot read, and never comes near its limits."""
    settings = unit.service()
    values = unit.last_values(settings)
    memory_max, tasks_max = _bytes(values["MemoryMax"]), int(values["TasksMax"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    words = unit.exec_start(settings)
    assert words[:3] == ["/usr/local/bin/procnetmon", "--serve", "9101"]
    command = procnetmon(*words[1:])
    command[command.index("9101")] = str(port)
    cache = daemon_cache(place)
    with limited_cgroup(memory_max, tasks_max) as (procs, peak):
        joined = "".join(f"echo $$ > {p}; " for p in procs)
        daemon = subprocess.Popen(["sh", "-c", joined + 'exec "$@"', "sh",
                                   *as_the_unit(command, place, cache=cache)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd="/")
        try:
            def scrape():
                try:
                    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                except OSError:
                    assert daemon.poll() is None, daemon.stderr.read()
                    return ""
            wait_for(scrape, timeout=90, what="the daemon's first answer")
            server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=50_000, reply=100)
            client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=50_000, expect=100, hold=True,
                                    name="pnmunitc")
            try:
                server.go()
                client.go()
                client.result()
                wait_for(lambda: 'name="pnmunitc"' in scrape(), timeout=30, what="the client's bytes")
                # Sockets are counted every 10 intervals: after the next
                # count the client's label set has no count (unknown).
                def count_left_out() -> str:
                    body = scrape()
                    return "" if "procnetmon_connections{" in _client_lines(body) else body
                body = wait_for(count_left_out, timeout=30, what="the client's connection count to be left out")
            finally:
                server.finish()
                client.finish()
            assert daemon.poll() is None, daemon.stderr.read()
        finally:
            daemon.terminate()
            err = daemon.communicate(timeout=30)[1]
        peak_bytes = peak()
    assert daemon.returncode == 0, err
    assert "Traceback" not in err
    assert err.count("are unknown") == 1 and "CAP_SYS_PTRACE" in err, err
    sent = [line for line in _client_lines(body).splitlines()
            if line.startswith("procnetmon_payload_bytes_total{") and 'direction="out"' in line]
    assert sum(float(line.split()[-1]) for line in sent) == 50_000, body
    # Measured: 96-105 MiB at the loader's peak (a cold page cache), 28 MiB after.
    assert peak_bytes < memory_max * 3 / 4, f"peak {peak_bytes >> 20} MiB of {memory_max >> 20} MiB"


def _client_lines(body: str) -> str:
    return "\n".join(line for line in body.splitlines() if 'name="pnmunitc"' in line)
