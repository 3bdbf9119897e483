"""Peer hosts, traffic processes and procnetmon runs for the end-to-end tests.

A peer is a network namespace joined to this host by a veth pair, with
addresses from the benchmarking range (testbed.netns checks they are unused)
and the ULA prefix fd42:6e6d::/48. Everything
created is removed again, also when a test fails.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from procnetmon.status import is_ready
from testbed.netns import free_subnet, sh

HERE = os.path.dirname(os.path.abspath(__file__))
TRAFFIC = os.path.join(HERE, "traffic.py")
V4_POOL = ipaddress.ip_network("198.18.0.0/16")  # the benchmark draws from 198.19.0.0/16
V6_PREFIX = "fd42:6e6d"


@dataclass
class Peer:
    """A namespace host reachable over a veth pair."""

    index: int
    netns: str
    host_if: str
    peer_if: str
    host_v4: str
    peer_v4: str
    host_v6: str
    peer_v6: str

    @classmethod
    def create(cls, index: int) -> "Peer":
        tag = f"{os.getpid() % 100000}x{index}"
        netns, host_if, peer_if = f"pnm{tag}", f"pnmh{tag}", f"pnmp{tag}"
        net = free_subnet(V4_POOL)
        v6 = f"{V6_PREFIX}:{os.getpid() % 0xffff:x}:{index:x}"
        host_v6, peer_v6 = (str(ipaddress.ip_address(f"{v6}::{n}")) for n in (1, 2))
        peer = cls(index, netns, host_if, peer_if, str(net[1]), str(net[2]), host_v6, peer_v6)
        try:
            sh("ip", "netns", "add", netns)
            sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if)
            sh("ip", "link", "set", peer_if, "netns", netns)
            ns = ("ip", "-n", netns)
            # A quiet link: the veth counters are the tests' truth, so nothing
            # but the processes' packets may cross it. No link-local address
            # (hence no router solicitations, no DAD, no MLD reports for it),
            # no DAD, and neighbours fixed (no ARP, no neighbour solicitation):
            # those packets, counted by the veth and owned by no process, made
            # wire-mode reconciliation miss by up to 1.07%.
            sh("ip", "link", "set", "dev", host_if, "addrgenmode", "none")
            sh(*ns, "link", "set", "dev", peer_if, "addrgenmode", "none")
            sh("ip", "addr", "add", f"{peer.host_v4}/30", "dev", host_if)
            sh("ip", "-6", "addr", "add", f"{peer.host_v6}/64", "dev", host_if, "nodad")
            sh(*ns, "addr", "add", f"{peer.peer_v4}/30", "dev", peer_if)
            sh(*ns, "-6", "addr", "add", f"{peer.peer_v6}/64", "dev", peer_if, "nodad")
            host_mac, peer_mac = mac_of(host_if), mac_of(peer_if, netns)
            for addr in (peer.peer_v4, peer.peer_v6):
                sh("ip", "neigh", "replace", addr, "lladdr", peer_mac, "dev", host_if, "nud", "permanent")
            for addr in (peer.host_v4, peer.host_v6):
                sh(*ns, "neigh", "replace", addr, "lladdr", host_mac, "dev", peer_if, "nud", "permanent")
            sh("ip", "link", "set", host_if, "up")
            sh(*ns, "link", "set", peer_if, "up")
            sh(*ns, "link", "set", "lo", "up")
        except Exception:
            peer.destroy()
            raise
        return peer

    def destroy(self) -> None:
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.netns, check=False)


@dataclass
class NetnsPair:
    """Two namespace hosts joined by their own veth pair, apart from this host's
    network: a test whose processes are the only ones in a namespace can take
    that namespace's own counters (nstat) as the kernel's truth."""

    client_ns: str
    server_ns: str
    client_if: str
    server_if: str
    client_v4: str
    server_v4: str
    client_v6: str
    server_v6: str

    @classmethod
    def create(cls, index: int) -> "NetnsPair":
        tag = f"{os.getpid() % 100000}y{index}"
        net = free_subnet(V4_POOL)
        v6 = f"{V6_PREFIX}:{os.getpid() % 0xffff:x}:{0x100 + index:x}"
        pair = cls(f"pnmc{tag}", f"pnms{tag}", f"pnmc{tag}", f"pnms{tag}", str(net[1]), str(net[2]),
                   str(ipaddress.ip_address(f"{v6}::1")), str(ipaddress.ip_address(f"{v6}::2")))
        try:
            for ns in (pair.client_ns, pair.server_ns):
                sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", pair.client_if, "netns", pair.client_ns, "type", "veth",
               "peer", "name", pair.server_if, "netns", pair.server_ns)
            for ns, dev, addr, addr6 in ((pair.client_ns, pair.client_if, pair.client_v4, pair.client_v6),
                                         (pair.server_ns, pair.server_if, pair.server_v4, pair.server_v6)):
                sh("ip", "-n", ns, "link", "set", "dev", dev, "addrgenmode", "none")
                sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
                sh("ip", "-n", ns, "-6", "addr", "add", f"{addr6}/64", "dev", dev, "nodad")
                sh("ip", "-n", ns, "link", "set", dev, "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
        except Exception:
            pair.destroy()
            raise
        return pair

    def destroy(self) -> None:
        for ns in (self.client_ns, self.server_ns):
            sh("ip", "netns", "del", ns, check=False)


class DrainingListener:
    """A loopback TCP listener that reads, in a thread, every byte sent to it, and counts them."""

    def __init__(self, backlog: int = 64):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(backlog)
        self.port = self.listener.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with conn:
                while chunk := conn.recv(65536):
                    self.received += len(chunk)

    def close(self) -> None:
        self.listener.close()


def mac_of(dev: str, netns: Optional[str] = None) -> str:
    where = ["-n", netns] if netns else []
    return json.loads(sh("ip", *where, "-j", "link", "show", "dev", dev))[0]["address"]


class Forked:
    """A process a Zygote forked: what TrafficProcess uses of a Popen, for a process not our child."""

    def __init__(self, pid: int, stdin, stdout, args: list):
        self.pid, self.stdin, self.stdout, self.args = pid, stdin, stdout, args
        self.returncode: Optional[int] = None
        self._pidfd = os.pidfd_open(pid)  # readable once the process has exited

    def wait(self, timeout: Optional[float] = None) -> int:
        ready, _, _ = select.select([self._pidfd], [], [], timeout)
        if not ready:
            raise subprocess.TimeoutExpired(self.args, timeout)
        self.returncode = 0  # the zygote's to reap; the exit status is not ours to see
        return 0

    def poll(self) -> Optional[int]:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass


class Zygote:
    """One traffic.py that forks the traffic processes: fast where starting Python is slow (VMs)."""

    def __init__(self):
        self._ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([sys.executable, TRAFFIC, "zygote", str(theirs.fileno())],
                                     pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        self._lock = threading.Lock()  # one request and its answer at a time

    def spawn(self, argv: list, netns: Optional[str]) -> Forked:
        with self._lock:
            return self._spawn(argv, netns)

    def _spawn(self, argv: list, netns: Optional[str]) -> Forked:
        child_in, to_child = os.pipe()
        from_child, child_out = os.pipe()
        try:
            socket.send_fds(self._ctl, [json.dumps({"argv": argv, "netns": netns}).encode()],
                            [child_in, child_out])
            pid = int(self._ctl.recv(64))
        finally:
            os.close(child_in)
            os.close(child_out)
        return Forked(pid, os.fdopen(to_child, "w"), os.fdopen(from_child, "r"), argv)

    def close(self) -> None:
        self._ctl.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class TrafficProcess:
    """One traffic.py process, optionally inside a peer's namespace (forked by ``zygote`` if given)."""

    def __init__(self, role: str, addr: str, port: int = 0, *, netns: Optional[str] = None,
                 wait: bool = True, zygote: Optional[Zygote] = None, **opts):
        argv = [role, addr, str(port)]
        for key, value in opts.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value not in (None, False):
                argv += [flag, str(value)]
        self.role = role
        if zygote is not None:
            self.proc = zygote.spawn(argv, netns)
        else:
            cmd = [sys.executable, TRAFFIC] + argv
            if netns:
                # ip netns exec execs the command: the PID stays the traffic process's.
                cmd = ["ip", "netns", "exec", netns] + cmd
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.port = 0
        if wait:
            self.wait_ready(10)

    def wait_ready(self, timeout: float) -> None:
        """Wait for ``ready <port>`` (many processes can be started first, then waited for)."""
        line = self._readline(timeout)
        if not line.startswith("ready"):
            raise RuntimeError(f"{self.role} did not start: {line!r}")
        self.port = int(line.split()[1])

    def _readline(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError("traffic process did not answer in time")
        return self.proc.stdout.readline()

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 15) -> dict:
        return json.loads(self._readline(timeout))

    def finish(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("exit\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)

    def json_lines(self) -> list:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def procnetmon_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "procnetmon", *args]


def run_procnetmon(*args: str, during: Optional[Callable[[], None]] = None, timeout: float = 60,
                   after_start: Optional[Callable[[subprocess.Popen], None]] = None,
                   while_running: Optional[Callable[[subprocess.Popen], None]] = None,
                   attach_timeout: float = 30) -> Run:
    """Run procnetmon; once its probes are attached, call ``during`` (drive the
    traffic), or ``while_running`` with the procnetmon process."""
    proc = subprocess.Popen(procnetmon_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines = []
    deadline = time.monotonic() + attach_timeout
    attached = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 1)
        if ready:
            line = proc.stderr.readline()
            if not line:
                break
            err_lines.append(line)
            if is_ready(line):
                attached = True
                break
    if not attached:
        proc.kill()
        out, err = proc.communicate()
        return Run(proc.returncode, out, "".join(err_lines) + err)
    if during is not None:
        during()
    if while_running is not None:
        while_running(proc)
    if after_start is not None:
        after_start(proc)
    out, err = proc.communicate(timeout=timeout)
    return Run(proc.returncode, out, "".join(err_lines) + err)


def wait_for(condition: Callable[[], object], timeout: float = 15, what: str = "a condition") -> object:
    """Poll ``condition`` until it is true (and return it): tests wait for
    what they need, never for a guessed time, which a busy machine outlasts."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def when_silent(read: Callable[[], object], what: str = "the veth to fall silent") -> object:
    """What ``read`` (an interface's counters) gives once two reads 0.2 s
    apart agree: nothing is crossing any more (a connection's teardown)."""
    previous: dict = {}

    def settled():
        now = read()
        done = now == previous.get("stats")
        previous["stats"] = now
        time.sleep(0.2)
        return done

    wait_for(settled, what=what)
    return previous["stats"]


def json_lines_of(path) -> list:
    """The complete JSON lines written to ``path`` so far."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n") and line.strip()]


def by_pid(document: dict) -> dict:
    return {p["pid"]: p for p in document["processes"]}


ETHERNET_HEADER = 14


def ip_bytes(before: dict, after: dict, direction: str) -> int:
    """IP-layer bytes an interface counted between two snapshots: its byte
    counter less the Ethernet header of every packet it counted."""
    nbytes = after[f"{direction}_bytes"] - before[f"{direction}_bytes"]
    packets = after[f"{direction}_packets"] - before[f"{direction}_packets"]
    return nbytes - ETHERNET_HEADER * packets


def measure_exchange(procs: dict, *args: str, pids: Optional[list] = None, wait_exit: tuple = ()):
    """Run procnetmon on the processes' PIDs (or ``pids``) while they move their bytes.

    ``procs`` maps a name to a TrafficProcess; ``args`` are procnetmon's
    options besides -p. Returns procnetmon's Run and the truth each process
    reported, by name. The processes are finished whatever happens.
    """
    truth: dict = {}

    def during():
        for p in procs.values():
            p.go()
        for name, p in procs.items():
            truth[name] = p.result()
        for name in wait_exit:
            procs[name].proc.wait(5)

    pids = pids if pids is not None else [p.pid for p in procs.values()]
    try:
        run = run_procnetmon("-p", ",".join(str(p) for p in pids), *args, during=during)
    finally:
        for p in procs.values():
            p.finish()
    assert run.returncode == 0, run.stderr
    return run, truth
