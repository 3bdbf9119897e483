"""The traffic: iperf3 between this namespace and the peer's, and how each run is scored.

One iperf3 server runs inside the peer namespace for the whole benchmark, so
its PID is known before any client starts (procnetmon -p watches it). Each
workload is one bounded iperf3 client run from the root namespace to the
peer's address, and nowhere else.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from bench.netns import Peer

PORT = 5201


class IperfServer:
    """``iperf3 -s`` in the peer namespace, answering one client after another."""

    def __init__(self, peer: Peer, cpu: Optional[int] = None):
        cmd = [*peer.exec_prefix(), "iperf3", "-s", "-B", peer.peer_addr, "-p", str(PORT)]
        if cpu is not None:
            cmd += ["-A", str(cpu)]
        # Its reports are not needed (clients get theirs with -J) and, block
        # buffered into a pipe, cannot even tell when it is listening: ss can.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 10
        while not self._listening(peer):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("iperf3 server did not start listening within 10 s")
            time.sleep(0.05)

    @staticmethod
    def _listening(peer: Peer) -> bool:
        out = subprocess.run([*peer.exec_prefix(), "ss", "-Hltn", f"sport = :{PORT}"],
                             capture_output=True, text=True).stdout
        return bool(out.strip())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Outcome:
    """One client run: the score, and what else iperf3 said about it."""

    value: float  # the workload's unit per second, higher is better
    details: dict = field(default_factory=dict)


@dataclass
class Workload:
    """One kind of traffic, scored by a single number (higher is better)."""

    name: str
    title: str
    unit: str  # of ``value``, for tables
    scale: float  # value / scale is shown in ``unit``
    client_args: tuple[str, ...]

    def run(self, peer: Peer, seconds: float, cpu: Optional[int] = None) -> Outcome:
        cmd = ["iperf3", "-c", peer.peer_addr, "-p", str(PORT), "-t", f"{seconds:g}", "-J", *self.client_args]
        if cpu is not None:
            cmd += ["-A", str(cpu)]
        # The server takes a moment to go back to listening after a test; a
        # client that finds it busy is retried once rather than scored.
        for attempt in (1, 2):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 20)
            try:
                report = json.loads(done.stdout)
            except json.JSONDecodeError:
                report = {"error": done.stderr.strip() or done.stdout.strip()[:200]}
            if done.returncode == 0 and "error" not in report:
                return self.score(report)
            print(f"bench: iperf3 {self.name} attempt {attempt} failed: {report.get('error')}", file=sys.stderr)
            time.sleep(1)
        raise RuntimeError(f"iperf3 {self.name} failed twice: {report.get('error')}")

    def score(self, report: dict) -> Outcome:
        raise NotImplementedError


class TcpStream(Workload):
    def __init__(self):
        super().__init__("tcp", "TCP, 1 stream", "Gbit/s", 1e9, ())

    def score(self, report: dict) -> Outcome:
        received = report["end"]["sum_received"]
        sent = report["end"]["sum_sent"]
        return Outcome(received["bits_per_second"],
                       {"retransmits": sent.get("retransmits"), "seconds": received["seconds"]})


class UdpSmall(Workload):
    """64-byte datagrams as fast as the client can send them (-b 0): a packet-rate test."""

    def __init__(self):
        super().__init__("udp", "UDP, 64 B datagrams", "kpkt/s", 1e3, ("-u", "-b", "0", "-l", "64"))

    def score(self, report: dict) -> Outcome:
        end = report["end"]
        # "sum" carries the receiver's view: packets = datagrams the client
        # numbered, lost_packets = those the server never read.
        rx = end.get("sum_received", end["sum"])
        received = rx["packets"] - rx["lost_packets"]
        sent_pps = end.get("sum_sent", rx)["packets"] / rx["seconds"]
        return Outcome(received / rx["seconds"],
                       {"sent_pps": sent_pps, "lost_percent": rx["lost_percent"], "seconds": rx["seconds"]})


WORKLOADS = (TcpStream(), UdpSmall())
