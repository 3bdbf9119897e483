"""procnetmon's metrics read by the real servers, started by the test from
Debian's packages: a Prometheus server scraping ``procnetmon --serve`` every
second, and node_exporter serving ``--format prometheus``'s textfile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from harness import TrafficProcess, procnetmon_cmd, run_procnetmon
from prometheus_client.parser import text_string_to_metric_families

from testbed.netns import free_port

PROMETHEUS = shutil.which("prometheus")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
FAMILY = "procnetmon_payload_bytes_total"


def http_get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Prometheus:
    def __init__(self, tmp_path, target: str):
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: procnetmon\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        self.log = open(tmp_path / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: "Ready" in http_get(f"http://127.0.0.1:{self.port}/-/ready"), 60, "prometheus ready")

    def query(self, expr: str, at: float = None) -> list:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        doc = json.loads(http_get(f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(params)))
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def close(self):
        stop(self.proc)
        self.log.close()


def selector(name: str, direction: str) -> str:
    return f'{FAMILY}{{name="{name}",direction="{direction}",protocol="tcp"}}'


@pytest.mark.skipif(not PROMETHEUS, reason="needs Debian's prometheus package")
def test_prometheus_increase_matches_the_bytes_moved(peer, tmp_path):
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=300_000, reply=7_000,
                            name="pnmproms")
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=300_000, expect=7_000,
                            name="pnmpromc")
    port = free_port()
    serve = subprocess.Popen(procnetmon_cmd("--serve", f"127.0.0.1:{port}", "-p", f"{server.pid},{client.pid}"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prometheus = None
    try:
        wait_until(lambda: 'name="pnmpromc"' in http_get(f"http://127.0.0.1:{port}/metrics"), 60,
                   "procnetmon --serve")
        prometheus = Prometheus(tmp_path, f"127.0.0.1:{port}")
        # The series exist, at 0, before any byte moves: increase() starts from them.
        wait_until(lambda: prometheus.query(selector("pnmpromc", "out")), 30, "a first scrape")
        server.go()
        client.go()
        truth = {"client": client.result(), "server": server.result()}

        def settled():
            # The last three scrapes agree: the counter has its final value.
            rows = prometheus.query(selector("pnmpromc", "out") + "[4s]")
            values = [v for _, v in rows[0]["values"]] if rows else []
            return rows[0]["values"] if len(values) >= 3 and len(set(values[-3:])) == 1 and \
                float(values[-1]) > 0 else None

        samples = wait_until(settled, 30, "the counter to settle")
        # Evaluated at the last scrape, over a window that starts before the
        # traffic (where the counter was 0): increase() has nothing to extrapolate.
        at = float(samples[-1][0])
        window = int(at - serve_started(serve)) + 5
        for name, direction, expected in (("pnmpromc", "out", truth["client"]["tcp_out"]),
                                          ("pnmpromc", "in", truth["client"]["tcp_in"]),
                                          ("pnmproms", "in", truth["server"]["tcp_in"]),
                                          ("pnmproms", "out", truth["server"]["tcp_out"])):
            result = prometheus.query(f"increase({selector(name, direction)}[{window}s])", at=at)
            assert len(result) == 1, result
            assert float(result[0]["value"][1]) == expected, (name, direction, result)
        assert truth["client"]["tcp_out"] == 300_000
        up = prometheus.query('up{job="procnetmon"}')
        assert up[0]["value"][1] == "1"
    finally:
        if prometheus:
            prometheus.close()
        stop(serve)
        server.finish()
        client.finish()
    assert serve.returncode == 0, serve.stderr.read()


def serve_started(proc: subprocess.Popen) -> float:
    with open(f"/proc/{proc.pid}/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not NODE_EXPORTER, reason="needs Debian's prometheus-node-exporter package")
def test_node_exporter_serves_the_textfile(peer, tmp_path):
    directory = tmp_path / "textfile"
    directory.mkdir()
    path = directory / "procnetmon.prom"
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=150_000, name="pnmtxts")
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=150_000, name="pnmtxtc")
    truth = {}

    def during():
        server.go()
        client.go()
        truth["client"] = client.result()
        truth["server"] = server.result()

    try:
        run = run_procnetmon("-p", f"{server.pid},{client.pid}", "-t", "3s", "--format", "prometheus",
                             "-o", str(path), during=during)
    finally:
        server.finish()
        client.finish()
    assert run.returncode == 0, run.stderr
    assert os.listdir(directory) == ["procnetmon.prom"]
    port = free_port()
    help_text = subprocess.run([NODE_EXPORTER, "--help"], capture_output=True, text=True).stdout + \
        subprocess.run([NODE_EXPORTER, "--help"], capture_output=True, text=True).stderr
    args = [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--collector.textfile",
            f"--collector.textfile.directory={directory}"]
    if "--collector.disable-defaults" in help_text:
        args.insert(1, "--collector.disable-defaults")
    exporter = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        text = wait_until(lambda: http_get(f"http://127.0.0.1:{port}/metrics"), 30, "node_exporter")
    finally:
        stop(exporter)
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[(s.name, s.labels.get("name"), s.labels.get("direction"), s.labels.get("protocol"))] = s.value
            if s.name == "node_textfile_scrape_error":
                assert s.value == 0
    assert values[(FAMILY, "pnmtxtc", "out", "tcp")] == truth["client"]["tcp_out"] == 150_000
    assert values[(FAMILY, "pnmtxts", "in", "tcp")] == truth["server"]["tcp_in"]


@pytest.mark.parametrize("mode", ["payload", "wire"])
def test_serve_with_a_cgroup_filter(peer, mode):
    """--serve loads the probes in a child and reads them through libbpf: the
    filters and both modes work there as in a plain run."""
    from cgrouptree import CgroupTree

    tree = CgroupTree()
    server = client = other = serve = None
    try:
        docker, ident = tree.docker()
        server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, connections=2, expect=80_000,
                                name="pnmsrvs")
        client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=80_000, name="pnmsrvc")
        other = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=80_000, name="pnmsrvo")
        tree.move(client.pid, docker)
        port = free_port()
        serve = subprocess.Popen(procnetmon_cmd("--serve", f"127.0.0.1:{port}", "--cgroup", tree.top,
                                                "--mode", mode, "--interval", "500ms"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The endpoint is up before the probes are: a first sample means they are attached.
        wait_until(lambda: "procnetmon_last_sample_timestamp_seconds" in
                   http_get(f"http://127.0.0.1:{port}/metrics"), 60, "procnetmon --serve")
        for p in (server, client, other):
            p.go()
        truth = client.result()
        server.result()
        other.result()
        family = f"procnetmon_{mode}_bytes_total"

        def counted():
            values = {}
            for f in text_string_to_metric_families(http_get(f"http://127.0.0.1:{port}/metrics")):
                for s in f.samples:
                    if s.name == family:
                        values[(s.labels["name"], s.labels["direction"], s.labels["protocol"],
                                s.labels["container"])] = s.value
            return values if values.get(("pnmsrvc", "out", "tcp", f"docker://{ident}"), 0) >= 80_000 else None

        values = wait_until(counted, 20, "the client's bytes")
        assert {name for name, *_ in values} == {"pnmsrvc"}  # the server and the other client are outside
        sent = values[("pnmsrvc", "out", "tcp", f"docker://{ident}")]
        if mode == "payload":
            time.sleep(1.5)  # a later interval adds nothing
            assert counted()[("pnmsrvc", "out", "tcp", f"docker://{ident}")] == sent == truth["tcp_out"]
        else:
            assert sent > truth["tcp_out"]
    finally:
        if serve:
            stop(serve)
        for p in (server, client, other):
            if p:
                p.finish()
        tree.destroy()
    assert serve.returncode == 0, serve.stderr.read()
