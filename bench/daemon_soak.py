"""What ``procnetmon --serve`` costs as a daemon: resident memory over a long
run with process churn, and CPU with many live processes holding sockets.

    sudo .venv/bin/python -m bench.daemon_soak churn --duration 3600     # the 1-hour soak
    sudo .venv/bin/python -m bench.daemon_soak many --procs 1000 --duration 120

churn: a process is started every 100 ms (bash, which connects to a local
sink, writes --bytes bytes and exits), inside a cgroup the soak makes, and
``procnetmon --serve --cgroup`` watches that cgroup. The daemon's VmRSS and
CPU time are sampled every 10 s; at the end its counters must equal the
bytes the processes wrote, exactly.

many: --procs bash processes each hold a TCP connection to the sink and
write one byte a second (no fork per write: ``read -t 1`` waits), or with
--idle one byte at the start only; the daemon's CPU over --duration is
reported as a share of one core.

Traffic stays on loopback. Prints one JSON document; everything made is
removed at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from bench import procstat
from procnetmon.cgroups import cgroup2_mount
from testbed.netns import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Sink:
    """A loopback TCP server that reads and drops everything, counting it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.lock = threading.Lock()
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn):
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self.lock:
                    self.received += len(data)


def daemon_cpu(pid: int) -> float:
    """The daemon's own user + system time. Not its waited-for children's (procstat.cpu_seconds' default):
    the loader child that compiles and attaches the probes (probes/handoff) would count in them, and the soak
    measures the running daemon."""
    return procstat.cpu_seconds(pid, children=False)


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def start_daemon(cgroup: str, interval: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "procnetmon", "--serve", f"127.0.0.1:{port}",
                             "--include-loopback", "--cgroup", cgroup, "--interval", interval],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180  # compiling takes long on a loaded machine
    while time.monotonic() < deadline:
        try:
            if "procnetmon_last_sample_timestamp_seconds" in metrics(port):
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"procnetmon --serve failed: {proc.stderr.read()}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("procnetmon --serve did not start in 180 s")


def counter(text: str, name: str, direction: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("procnetmon_payload_bytes_total{") and f'name="{name}"' in line \
                and f'direction="{direction}"' in line and 'protocol="tcp"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def churn(args, cgroup_dir: str, cgroup: str) -> dict:
    sink = Sink()
    daemon, port = start_daemon(cgroup, "1s")
    script = f'exec 3<>/dev/tcp/127.0.0.1/{sink.port} && printf "%{args.bytes}s" >&3'
    samples = []
    spawned = failed = 0
    start = time.monotonic()
    cpu0 = daemon_cpu(daemon.pid)
    next_sample = start
    children = []
    try:
        while time.monotonic() - start < args.duration:
            now = time.monotonic()
            if now >= next_sample:
                samples.append({"t": round(now - start, 1), "rss_mib": round(procstat.rss_mib(daemon.pid), 2),
                                "cpu_s": round(daemon_cpu(daemon.pid) - cpu0, 2)})
                next_sample += 10
            # Spawned from a small shim already in the cgroup, so the bash
            # processes start there and the soak itself stays outside.
            child = subprocess.Popen(["bash", "-c", f'echo $$ > {cgroup_dir}/cgroup.procs && {script}'])
            children.append(child)
            spawned += 1
            still = []
            for c in children:
                if c.poll() is None:
                    still.append(c)
                elif c.returncode:
                    failed += 1
            children = still
            time.sleep(max(0.0, start + spawned * args.spawn_interval - time.monotonic()))
        for c in children:
            c.wait(10)
            failed += 1 if c.returncode else 0
        time.sleep(3)  # two more intervals
        text = metrics(port)
        end = time.monotonic()
        samples.append({"t": round(end - start, 1), "rss_mib": round(procstat.rss_mib(daemon.pid), 2),
                        "cpu_s": round(daemon_cpu(daemon.pid) - cpu0, 2)})
    finally:
        daemon.terminate()
        daemon.wait(30)
        sink.stop = True
    counted = counter(text, "bash", "out")
    expected = (spawned - failed) * args.bytes
    rss = [s["rss_mib"] for s in samples]
    return {"kind": "churn", "duration_s": args.duration, "processes": spawned, "failed": failed,
            "bytes_expected": expected, "bytes_counted": counted, "sink_received": sink.received,
            "exact": counted == expected,
            "rss_mib_first": rss[0], "rss_mib_max": max(rss), "rss_mib_last": rss[-1],
            "cpu_percent_of_one_core": round(100 * samples[-1]["cpu_s"] / (end - start), 2),
            "daemon_status": daemon.returncode, "samples": samples}


def many(args, cgroup_dir: str, cgroup: str) -> dict:
    sink = Sink()
    # --idle: one byte at the start (so the daemon knows them), then the
    # socket is only held; else a byte every second.
    write = "printf x >&3; read -u 3" if args.idle else "while :; do printf x >&3; read -t 1 -u 3; done"
    script = f'echo $$ > {cgroup_dir}/cgroup.procs && exec 3<>/dev/tcp/127.0.0.1/{sink.port} && {write}'

    procs = []
    # The daemon first, so that it counts every process's first byte: the
    # processes are all known to it (and, with --idle, then only hold).
    daemon, port = start_daemon(cgroup, "1s")
    try:
        for _ in range(args.procs):
            procs.append(subprocess.Popen(["bash", "-c", script], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        time.sleep(5)
        alive = sum(1 for p in procs if p.poll() is None)
        time.sleep(10)  # past start-up: every process identified once
        cpu0, t0 = daemon_cpu(daemon.pid), time.monotonic()
        time.sleep(args.duration)
        cpu1, t1 = daemon_cpu(daemon.pid), time.monotonic()
        rss = procstat.rss_mib(daemon.pid)
        series = sum(1 for line in metrics(port).splitlines()
                     if line.startswith("procnetmon_payload_bytes_total{"))
    finally:
        daemon.terminate()
        daemon.wait(30)
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        sink.stop = True
    return {"kind": "many", "processes": args.procs, "idle": args.idle, "alive_at_start": alive,
            "duration_s": round(t1 - t0, 1),
            "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 2), "rss_mib": round(rss, 2),
            "series": series}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.daemon_soak", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    c = sub.add_parser("churn", help="a process every 100 ms; memory over time")
    c.add_argument("--duration", type=float, default=3600)
    c.add_argument("--spawn-interval", type=float, default=0.1)
    c.add_argument("--bytes", type=int, default=1000)
    m = sub.add_parser("many", help="N live processes with sockets; CPU")
    m.add_argument("--procs", type=int, default=1000)
    m.add_argument("--duration", type=float, default=120)
    m.add_argument("--idle", action="store_true", help="hold the sockets without writing after the first byte")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the daemon, the processes and the cgroup go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    mount = cgroup2_mount()
    if mount is None:
        raise SystemExit("needs cgroup v2")
    cgroup = f"/pnmsoak-{os.getpid()}"
    cgroup_dir = mount + cgroup
    os.mkdir(cgroup_dir)
    try:
        result = churn(args, cgroup_dir, cgroup) if args.kind == "churn" else many(args, cgroup_dir, cgroup)
    finally:
        try:
            with open(cgroup_dir + "/cgroup.procs") as f:
                for pid in f.read().split():
                    try:
                        with open(mount + "/cgroup.procs", "w") as root:
                            root.write(pid)
                    except OSError:
                        pass
            os.rmdir(cgroup_dir)
        except OSError:
            pass
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
