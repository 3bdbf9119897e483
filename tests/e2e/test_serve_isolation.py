"""--serve as an attacker meets it: a loader child started from a directory
another user controls imports nothing planted there; idle and unfinished
clients cost no more than a bounded number of threads; loopback by default."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.root

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
PLANTS = ("json.py", "socket.py", "sitecustomize.py", "usercustomize.py", "procnetmon.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_daemon(port: int, *options: str, cwd: str = "/"):
    # The installed command, as root starts it: its own directory, not the
    # working directory, is first on its path.
    command = os.path.join(os.path.dirname(sys.executable), "procnetmon")
    daemon = subprocess.Popen([command, "--serve", str(port), "-q", *options], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and daemon.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
            return daemon
        except OSError:
            time.sleep(0.5)
    daemon.kill()
    raise AssertionError(f"the daemon never answered: {daemon.stderr.read()}")


def test_modules_planted_in_the_working_directory_are_never_imported():
    # Under /tmp, not pytest's root-only tmp_path: nobody must reach it.
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="pnm-trap-"))
    trap = tmp_path / "trap"
    trap.mkdir(mode=0o777)
    os.chmod(trap, 0o777)
    marker = tmp_path / "marker"
    os.chmod(tmp_path, 0o755)
    for name in PLANTS:
        code = f"import os\nopen({str(marker)!r}, 'a').write('{name} uid=%d\\n' % os.getuid())\n"
        subprocess.run(NOBODY + ["sh", "-c", f"cat > {trap}/{name}"], input=code, text=True, check=True)
    port = free_port()
    daemon = _start_daemon(port, cwd=str(trap))
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "procnetmon" in body
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        planted = marker.read_text() if marker.exists() else ""
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert not planted, planted


def test_idle_and_unfinished_clients_are_bounded_and_timed_out():
    port = free_port()
    daemon = _start_daemon(port)
    idle = []
    try:
        threads_before = len(os.listdir(f"/proc/{daemon.pid}/task"))
        for n in range(50):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if n % 2:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
            idle.append(s)
        time.sleep(1)
        threads = len(os.listdir(f"/proc/{daemon.pid}/task"))
        assert threads <= threads_before + 16, (threads_before, threads)
        # Past the per-connection timeout the slots are free again for a scrape.
        time.sleep(11)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "procnetmon" in body
    finally:
        for s in idle:
            s.close()
        daemon.terminate()
        daemon.wait(timeout=30)


def test_the_default_address_is_loopback_only():
    port = free_port()
    daemon = _start_daemon(port)
    try:
        with open("/proc/net/tcp") as f:
            listening = [line.split()[1] for line in f if line.split()[3] == "0A"]
        assert f"0100007F:{port:04X}" in listening, listening
        assert f"00000000:{port:04X}" not in listening
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


CLIENT = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"x" * int(sys.argv[2]))
s.close()
"""


def test_processes_of_the_first_interval_are_counted(tmp_path):
    # Issue 19, item 7: /metrics answered before the probes were attached, so
    # clients started as soon as it answered went uncounted.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    received = []

    def drain():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while chunk := conn.recv(65536):
                    received.append(len(chunk))

    import threading

    threading.Thread(target=drain, daemon=True).start()
    client = tmp_path / "pnmshort"
    client.symlink_to(os.path.realpath(sys.executable))  # comm is the name it was run as
    port = free_port()
    daemon = _start_daemon(port, "--include-loopback")
    try:
        sizes = [777_777] + [1000] * 20
        for size in sizes:
            subprocess.run([str(client), "-I", "-c", CLIENT, str(listener.getsockname()[1]), str(size)],
                           check=True, timeout=30)
            time.sleep(0.37)
        time.sleep(2.5)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        listener.close()
    sent = sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("procnetmon_payload_bytes_total{") and 'name="pnmshort"' in line
               and 'direction="out"' in line)
    assert sent == sum(sizes), body
