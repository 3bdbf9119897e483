"""Process trees on the real kernel: ``procnetmon -- COMMAND`` counts a
command and every short-lived process it starts, and ``-p PID --children``
the descendants of a running process, old and new; exact bytes, named rows,
COMMAND's exit status."""

from __future__ import annotations

import csv
import json
import os
import pty
import re
import select
import shlex
import signal
import subprocess
import sys
import time

from harness import TRAFFIC, TrafficProcess, procnetmon_cmd, run_procnetmon

from procnetmon.status import READY, is_ready

SEND, REPLY = 20_000, 3_000


def client_command(peer, port: int, name: str) -> str:
    """A shell command line: one short-lived client that moves SEND bytes out
    and REPLY bytes in, named ``name``, printing what it moved on stdout."""
    return (f"echo go | {shlex.quote(sys.executable)} {shlex.quote(TRAFFIC)} tcp-client "
            f"{peer.peer_v4} {port} --send {SEND} --expect {REPLY} --name {name} --exit")


def client_loop(peer, port: int, count: int, prefix: str, pause: float = 0.0) -> str:
    """Shell code that runs ``count`` clients one after another, named prefix1..prefixN."""
    wait = f"sleep {pause}; " if pause else ""
    return (f"i=0; while [ $i -lt {count} ]; do i=$((i+1)); "
            f"{wait}{client_command(peer, port, prefix + '$i')} || exit 9; done")


def server_for(peer, clients: int) -> TrafficProcess:
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=SEND, reply=REPLY,
                            connections=clients)
    server.go()
    return server


def truths(stdout: str) -> list:
    """What each client reported (the JSON objects among their output), in
    order. Two clients running at once may interleave their writes."""
    return [json.loads(found) for found in re.findall(r"\{[^{}]*\}", stdout)]


def records_in(stderr: str) -> str:
    """procnetmon's records in its standard error, without its status lines."""
    return "".join(line for line in stderr.splitlines(keepends=True) if not line.startswith("procnetmon:"))


def run_command(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(procnetmon_cmd(*args), capture_output=True, text=True, timeout=timeout)


def test_command_and_fifty_short_lived_clients_exactly(peer, tmp_path):
    clients = 50
    server = server_for(peer, clients)
    out = tmp_path / "run.json"
    try:
        run = run_command("--json", "-o", str(out), "--", "sh", "-c", client_loop(peer, server.port, clients, "c"))
        served = server.result(30)
    finally:
        server.finish()
    assert run.returncode == 0, run.stderr
    truth = truths(run.stdout)  # COMMAND kept its standard output
    assert len(truth) == clients
    assert all((t["tcp_out"], t["tcp_in"]) == (SEND, REPLY) for t in truth)
    assert served == {"tcp_in": clients * SEND, "tcp_out": clients * REPLY, "udp_in": 0, "udp_out": 0}

    doc = json.loads(out.read_text())
    assert doc["type"] == "summary"
    shell, *rows = doc["processes"]
    assert (shell["name"], shell["cmdline"].split()[:2], shell["alive"]) == ("sh", ["sh", "-c"], False)
    assert (shell["bytes_in"], shell["bytes_out"]) == (0, 0)
    by_name = {row["name"]: row for row in rows}
    assert len(rows) == clients  # none else moved a byte (the echo subshells did not)
    assert sorted(by_name) == sorted(f"c{i}" for i in range(1, clients + 1))
    for row in rows:
        assert (row["bytes_out"], row["bytes_in"]) == (SEND, REPLY), row
        assert row["tcp"] == {"bytes_in": REPLY, "bytes_out": SEND}
        assert row["udp"] == {"bytes_in": 0, "bytes_out": 0}
        assert row["alive"] is False
    assert len({row["pid"] for row in rows} | {shell["pid"]}) == clients + 1
    agg = doc["aggregated"]
    assert (agg["bytes_out"], agg["bytes_in"]) == (clients * SEND, clients * REPLY)


def test_records_go_to_stderr_and_exit_status_is_commands(peer):
    server = server_for(peer, 1)
    try:
        run = run_command("--json", "-a", "--", "sh", "-c",
                          f"echo started; {client_command(peer, server.port, 'one')}; exit 3")
    finally:
        server.finish()
    assert run.returncode == 3, run.stderr
    assert run.stdout.splitlines()[0] == "started"
    assert len(truths(run.stdout)) == 1
    doc = json.loads(records_in(run.stderr))
    rows = {row["name"]: row for row in doc["processes"]}
    assert (rows["one"]["bytes_out"], rows["one"]["bytes_in"]) == (SEND, REPLY)
    assert doc["aggregated"]["bytes_out"] == SEND


def test_command_killed_by_a_signal_is_128_plus_n():
    run = run_command("-q", "--csv", "--", "sh", "-c", "kill -TERM $$")
    assert run.returncode == 128 + signal.SIGTERM, run.stderr
    rows = list(csv.DictReader(run.stderr.splitlines()))
    assert [(r["type"], r["name"], r["alive"]) for r in rows] == [("summary", "sh", "false")]


def test_sigterm_to_procnetmon_reaches_command_and_the_summary_is_written():
    proc = subprocess.Popen(procnetmon_cmd("--json", "--", "sleep", "60"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 30
        while not is_ready(line) and time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 1)[0]:
                line = proc.stderr.readline()
        assert "probes attached" in line
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)  # from a terminal this reaches COMMAND, not us
        time.sleep(0.3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    doc = json.loads(err)
    assert [(p["name"], p["alive"]) for p in doc["processes"]] == [("sleep", False)]
    assert out == ""


def test_streaming_csv_until_command_ends(peer, tmp_path):
    clients = 5
    server = server_for(peer, clients)
    out = tmp_path / "run.csv"
    try:
        run = run_command("-c", "--interval", "200ms", "--csv", "-o", str(out), "--",
                          "sh", "-c", client_loop(peer, server.port, clients, "s", pause=0.3))
    finally:
        server.finish()
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(out.read_text().splitlines()))
    intervals = [r for r in rows if r["type"] == "interval"]
    summary = {r["name"]: r for r in rows if r["type"] == "summary"}
    assert sum(1 for r in intervals if r["name"] == "sh") >= 5  # the shell has a row in every record
    for i in range(1, clients + 1):
        name = f"s{i}"
        streamed = sum(int(r["bytes_out"]) for r in intervals if r["name"] == name)
        assert streamed == int(summary[name]["bytes_out"]) == SEND
        assert int(summary[name]["bytes_in"]) == REPLY


def test_time_ends_sampling_first_and_command_keeps_running():
    started = time.monotonic()
    run = run_command("-t", "500ms", "--json", "--", "sh", "-c", "sleep 2; exit 5")
    assert run.returncode == 5, run.stderr
    assert time.monotonic() - started >= 2
    doc = json.loads(records_in(run.stderr))
    assert doc["duration_s"] < 1.5
    assert "waiting for sh" in run.stderr


def test_command_not_found_is_127_before_anything_is_attached():
    run = run_command("-q", "--", "procnetmon-no-such-command")
    assert run.returncode == 127
    assert run.stderr.strip() == "procnetmon: error: cannot run 'procnetmon-no-such-command': command not found"


def test_wire_mode_counts_and_names_short_lived_clients(peer):
    clients = 5
    server = server_for(peer, clients)
    try:
        run = run_command("--mode", "wire", "--json", "--", "sh", "-c",
                          client_loop(peer, server.port, clients, "w"))
    finally:
        server.finish()
    assert run.returncode == 0, run.stderr
    doc = json.loads(records_in(run.stderr))
    rows = {row["name"]: row for row in doc["processes"][1:]}
    assert sorted(rows) == sorted(f"w{i}" for i in range(1, clients + 1))
    for row in rows.values():
        # IP packets carry headers, handshakes and ACKs as well.
        assert row["bytes_out"] > SEND and row["bytes_in"] > REPLY


def test_children_of_a_running_shell_old_and_new(peer, tmp_path):
    clients = 10
    server = server_for(peer, clients + 1)
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    # "pre" is forked before procnetmon starts: it waits in open() on the
    # FIFO, then runs a client. The others are forked after sampling began.
    pre = (f"{shlex.quote(sys.executable)} {shlex.quote(TRAFFIC)} tcp-client {peer.peer_v4} {server.port} "
           f"--send {SEND} --expect {REPLY} --name pre --exit < {fifo} &")
    script = f"{pre} read x; {client_loop(peer, server.port, clients, 'k')}; wait; read y"
    shell = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines: list = []

    def while_running(proc):
        with open(fifo, "w") as f:
            f.write("go\n")
        shell.stdin.write("go\n")
        shell.stdin.flush()
        text = ""
        while len(truths(text)) < clients + 1:
            if not select.select([shell.stdout], [], [], 60)[0]:
                break
            line = shell.stdout.readline()
            if not line:
                break
            text += line
        lines.extend(truths(text))
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)

    try:
        time.sleep(0.3)  # the shell has forked "pre"
        run = run_procnetmon("-p", str(shell.pid), "--children", "-c", "--json", while_running=while_running)
    finally:
        shell.stdin.write("done\n")
        shell.stdin.close()
        shell.wait(10)
        server.finish()
    assert run.returncode == 0, run.stderr
    assert len(lines) == clients + 1
    summary = run.json_lines()[-1]
    assert summary["type"] == "summary"
    first, *rows = summary["processes"]
    assert (first["pid"], first["name"], first["alive"]) == (shell.pid, "sh", True)
    by_name = {row["name"]: row for row in rows}
    assert sorted(by_name) == sorted(["pre"] + [f"k{i}" for i in range(1, clients + 1)])
    for row in rows:
        assert (row["bytes_out"], row["bytes_in"]) == (SEND, REPLY), row
    assert summary["aggregated"]["bytes_out"] == (clients + 1) * SEND


def test_under_sudo_command_runs_as_the_invoking_user_where_it_was_started(tmp_path):
    # As sudo leaves it: SUDO_UID/SUDO_GID name who ran "sudo procnetmon".
    nobody = 65534
    env = dict(os.environ, SUDO_UID=str(nobody), SUDO_GID=str(nobody), SUDO_USER="nobody",
               PROCNETMON_TEST_MARK="kept")
    os.chmod(tmp_path, 0o755)
    run = subprocess.run(procnetmon_cmd("-q", "--json", "--", "sh", "-c",
                                        'id -u; id -g; pwd; echo "$PROCNETMON_TEST_MARK"'),
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [str(nobody), str(nobody), str(tmp_path), "kept"]
    assert json.loads(run.stderr)["processes"][0]["name"] == "sh"


def test_ctrl_c_at_a_terminal_reaches_command_and_the_summary_follows():
    # procnetmon in the foreground of a terminal of its own; ^C typed there.
    script = 'trap "kill $!; echo interrupted; exit 7" INT; sleep 30 & wait'
    pid, master = pty.fork()
    if pid == 0:
        os.execv(sys.executable, procnetmon_cmd("--json", "--", "sh", "-c", script))
    output = b""
    try:
        deadline = time.monotonic() + 60
        while READY.encode() not in output and time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                output += os.read(master, 65536)
        assert b"probes attached" in output, output
        time.sleep(0.5)
        os.write(master, b"\x03")
        while True:
            if not select.select([master], [], [], 30)[0]:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last user has gone
                break
            if not chunk:
                break
            output += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
    text = output.decode().replace("\r\n", "\n")
    assert os.waitstatus_to_exitcode(status) == 7, text  # COMMAND's status: it got the ^C, we did not die
    assert "interrupted" in text
    doc = json.loads(text[text.index("\n{") + 1:])
    assert [(p["name"], p["alive"]) for p in doc["processes"]][0] == ("sh", False)


def test_unwritable_records_are_status_1_and_command_is_still_waited_for(tmp_path):
    marker = tmp_path / "ended"
    started = time.monotonic()
    run = run_command("-q", "-t", "300ms", "--json", "-o", "/dev/full", "--",
                      "sh", "-c", f"sleep 1.5; touch {marker}; exit 4")
    assert run.returncode == 1
    assert "cannot write to /dev/full" in run.stderr
    assert marker.exists() and time.monotonic() - started >= 1.5
