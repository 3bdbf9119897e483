"""--serve as an attacker meets it: a loader child started from a directory
another user controls imports nothing planted there; idle and unfinished
clients cost no more than a bounded number of threads, and huge headers no
memory; loopback by default; a web config another user can change is not
obeyed, and the one root wrote gives HTTPS and basic auth; a user's many
long process names make a bounded number of series whose sums stay exact."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
from harness import DrainingListener

from testbed.netns import free_port

pytestmark = pytest.mark.root

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
PLANTS = ("json.py", "socket.py", "sitecustomize.py", "usercustomize.py", "procnetmon.py")


def _answers(port: int) -> bool:
    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    return True


def _start_daemon(port: int, *options: str, cwd: str = "/", answers=_answers):
    # The installed command, as root starts it: its own directory, not the
    # working directory, is first on its path.
    command = os.path.join(os.path.dirname(sys.executable), "procnetmon")
    daemon = subprocess.Popen([command, "--serve", str(port), "-q", *options], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and daemon.poll() is None:
        try:
            if answers(port):
                return daemon
        except OSError:
            pass
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
    listener = DrainingListener()
    client = tmp_path / "pnmshort"
    client.symlink_to(os.path.realpath(sys.executable))  # comm is the name it was run as
    port = free_port()
    daemon = _start_daemon(port, "--include-loopback")
    try:
        sizes = [777_777] + [1000] * 20
        for size in sizes:
            subprocess.run([str(client), "-I", "-c", CLIENT, str(listener.port), str(size)],
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


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_unfinished_requests_with_huge_headers_cost_little_memory():
    # Issue 20, item 6: ten unfinished requests took the daemon from 26 to
    # 371 MB. Each connection here offers 99 header lines of 60 KB, under
    # wsgiref's own limits, and never ends its headers.
    port = free_port()
    daemon = _start_daemon(port)
    clients = []
    try:
        before = _rss_kib(daemon.pid)
        line = b"X-Pad: " + b"p" * 60_000 + b"\r\n"
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            clients.append(s)
        answers = []
        for s in clients:
            try:
                for _ in range(99):
                    s.sendall(line)
            except OSError:
                pass  # answered and closed early: the point
        time.sleep(1)  # what the server was going to read, it has read
        grown = _rss_kib(daemon.pid) - before
        print(f"\nthe daemon grew by {grown} KiB")
        assert grown < 20 * 1024, f"the daemon grew by {grown} KiB"
        for s in clients:
            try:
                answers.append(s.recv(64))
            except OSError:
                answers.append(b"")
        assert all(a.startswith(b"HTTP/1.0 431") or a == b"" for a in answers), answers
        assert any(a.startswith(b"HTTP/1.0 431") for a in answers), answers
    finally:
        for s in clients:
            s.close()
        daemon.terminate()
        daemon.wait(timeout=30)


def _run_procnetmon(*options: str) -> subprocess.CompletedProcess:
    command = os.path.join(os.path.dirname(sys.executable), "procnetmon")
    return subprocess.run([command, *options], capture_output=True, text=True, timeout=60, cwd="/")


def _bcrypt(password: str) -> str:
    import warnings

    try:
        import bcrypt

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


def _web_files(directory: str, users: str = "") -> str:
    """A certificate and key made by openssl, and a web config naming them."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", f"{directory}/server.key", "-out", f"{directory}/server.crt"],
                   check=True, capture_output=True)
    os.chmod(f"{directory}/server.key", 0o600)
    config = f"{directory}/web.yml"
    with open(config, "w") as f:
        f.write(f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{users}")
    os.chmod(config, 0o644)
    return config


@pytest.fixture
def safe_dir():
    # Under /tmp (root-owned, sticky), made by root and 0755: nobody reaches it, cannot write it.
    directory = tempfile.mkdtemp(prefix="pnm-web-")
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _refused(result: subprocess.CompletedProcess, says: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result
    assert len(lines) == 1 and lines[0].startswith("procnetmon: error: --web-config:"), lines
    assert says in lines[0], lines


def test_a_web_config_another_user_wrote_is_refused(safe_dir):
    drop = os.path.join(safe_dir, "drop")
    os.mkdir(drop)
    os.chmod(drop, 0o777)
    planted = os.path.join(drop, "web.yml")
    # nobody writes a config that turns TLS and auth off, or names their own key.
    subprocess.run(NOBODY + ["sh", "-c", f"echo '' > {planted}; chmod 644 {planted}"], check=True)
    port = str(free_port())
    _refused(_run_procnetmon("--serve", port, "--web-config", planted), "belongs to uid 65534")
    # Root's own file, in a directory nobody can write in (and so replace it).
    own = os.path.join(drop, "root.yml")
    with open(own, "w") as f:
        f.write("")
    _refused(_run_procnetmon("--serve", port, "--web-config", own), "is writable by group or others")
    # Root's file that anyone may rewrite.
    loose = os.path.join(safe_dir, "loose.yml")
    with open(loose, "w") as f:
        f.write("")
    os.chmod(loose, 0o666)
    _refused(_run_procnetmon("--serve", port, "--web-config", loose), "is writable by group or others")
    # A safe config naming a key that nobody wrote.
    config = _web_files(safe_dir)
    subprocess.run(NOBODY + ["sh", "-c", f"cat > {drop}/server.key"], input=open(f"{safe_dir}/server.key").read(),
                   text=True, check=True)
    with open(config, "w") as f:
        f.write(f"tls_server_config:\n  cert_file: server.crt\n  key_file: {drop}/server.key\n")
    _refused(_run_procnetmon("--serve", port, "--web-config", config), "tls_server_config.key_file")


def test_https_and_basic_auth_from_the_web_config(safe_dir):
    import base64
    import ssl
    import urllib.error

    config = _web_files(safe_dir, f"basic_auth_users:\n  prometheus: '{_bcrypt('s3cret')}'\n")
    client = ssl.create_default_context(cafile=f"{safe_dir}/server.crt")

    def get(port, auth=None):
        request = urllib.request.Request(f"https://127.0.0.1:{port}/metrics")
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, context=client, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    port = free_port()
    daemon = _start_daemon(port, "--web-config", config, answers=lambda p: get(p)[0] == 401)
    try:
        assert get(port, "prometheus:wrong")[0] == 401
        code, body = get(port, "prometheus:s3cret")
        assert code == 200 and "procnetmon_build_info" in body
        with pytest.raises(OSError):  # plain HTTP gets no metrics
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


SHORT_CLIENT = r"""
import ctypes, socket, sys, time
# comm: the first 15 characters of argv[0] (which exec -a chose); psutil
# then reports the whole argv[0] as the process's name.
argv0 = open("/proc/self/cmdline", "rb").read().split(b"\0")[0]
ctypes.CDLL(None).prctl(15, argv0[:15], 0, 0, 0)
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"x" * int(sys.argv[2]))
s.close()
time.sleep(2)
"""


def test_many_long_names_of_one_user_make_bounded_series_and_exact_sums():
    # Issue 20, item 7: 300 short processes of one user left 1,803 series and
    # a 7.4 MB scrape, with name labels of 4,028 bytes.
    from cgrouptree import CgroupTree
    from prometheus_client.parser import text_string_to_metric_families

    listener = DrainingListener(backlog=512)
    tree = CgroupTree()
    jail = tree.full(tree.top)
    port = free_port()
    daemon = _start_daemon(port, "--include-loopback", "--cgroup", tree.top)
    sizes = [1000 + n for n in range(300)]
    try:
        def into_jail():
            with open(f"{jail}/cgroup.procs", "w") as f:
                f.write("0")

        for batch in range(0, 300, 50):
            clients = [subprocess.Popen(
                NOBODY + ["bash", "-c", 'exec -a "$0" python3 -I -c "$1" "$2" "$3"',
                          f"{n:03d}" + "x" * 3997, SHORT_CLIENT, str(listener.port), str(sizes[n])],
                preexec_fn=into_jail) for n in range(batch, batch + 50)]
            for c in clients:
                assert c.wait(timeout=60) == 0
        time.sleep(2.5)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        listener.close()
        tree.destroy()
    samples = [s for f in text_string_to_metric_families(body) if f.name == "procnetmon_payload_bytes"
               for s in f.samples]
    sets = {(s.labels["name"], s.labels["cgroup"], s.labels["container"]) for s in samples}
    print(f"\n{len(sets)} label sets, {len(body)} bytes of scrape")
    assert len(sets) <= 201, len(sets)  # the default --metrics-max-sets, and other
    assert ("other", "", "") in sets
    assert max(len(s.labels["name"]) for s in samples) <= 64
    assert any(name.startswith("000xxx") and len(name) == 64 for name, _, _ in sets), sets
    assert sum(s.value for s in samples if s.labels["direction"] == "out") == sum(sizes)
    assert len(body) < 512 * 1024, len(body)
