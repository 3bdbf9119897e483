"""--live in a real terminal: the view runs in tmux, driven with send-keys and
read with capture-pane, over real probes and known traffic.

Each test starts one procnetmon in a tmux pane of its own server (a socket
of its own, so no other tmux is touched), as the other e2e tests run it
(this venv's Python, as root), with its stderr in a file for the
readiness line, and ``stty -a`` taken in the pane before and after.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time

import psutil
import pytest
from harness import TrafficProcess, json_lines_of, procnetmon_cmd, wait_for

from procnetmon.live import units
from procnetmon.status import is_ready

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (scripts/setup test installs it)")

SIZE = units.Units()  # the view's default units: SI


class Pane:
    """One tmux session running one command, with its own server."""

    def __init__(self, tmp_path, command: list[str], width: int = 100, height: int = 30, shell_setup: str = ""):
        self.socket = f"pnmlive{os.getpid()}"
        self._started: list[psutil.Process] = []  # the pane's shell and procnetmon, once seen
        self.tmp = tmp_path
        self.err = tmp_path / "stderr.txt"
        before, after, status = tmp_path / "stty-before", tmp_path / "stty-after", tmp_path / "status"
        script = (f"{shell_setup}cd {shlex.quote(os.getcwd())}; stty -a > {before}; "
                  f"{shlex.join(command)} 2> {self.err}; echo $? > {status}; echo EXIT=$(cat {status}); "
                  f"stty -a > {after}; exec sleep 600")
        self.before, self.after, self.status = before, after, status
        self.tmux("new-session", "-d", "-s", "live", "-x", str(width), "-y", str(height),
                  "env", "TERM=tmux-256color", "LANG=C.UTF-8", "LC_ALL=C.UTF-8", "sh", "-c", script)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], check=True,
                              capture_output=True, text=True, timeout=10).stdout

    def lines(self, history: bool = False) -> list[str]:
        extra = ["-S", "-"] if history else []
        return self.tmux("capture-pane", "-p", "-t", "live", *extra).split("\n")

    def screen(self) -> str:
        return "\n".join(self.lines())

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.tmux("send-keys", "-t", "live", key)
            time.sleep(0.05)  # one at a time, as typed

    def typed(self, text: str) -> None:
        self.tmux("send-keys", "-t", "live", "-l", text)

    def wait_for_screen(self, condition, what: str, timeout: float = 15):
        try:
            return wait_for(lambda: condition(self.lines()), timeout, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; the screen:\n{self.screen()}") from None

    def procnetmon(self) -> psutil.Process:
        shell = psutil.Process(int(self.tmux("display", "-p", "-t", "live", "#{pane_pid}").strip()))
        found = wait_for(lambda: next((p for p in shell.children() if "procnetmon" in " ".join(p.cmdline())), None),
                         10, "procnetmon in the pane")
        self._started += [shell, found]
        return found

    def wait_ready(self) -> None:
        def ready():
            return self.err.exists() and any(is_ready(line) for line in self.err.read_text().splitlines())
        wait_for(ready, 60, "procnetmon's probes attached")
        try:
            self.procnetmon()  # noted, for reap()
        except (AssertionError, psutil.Error, subprocess.SubprocessError):
            pass  # done already

    def terminal_settings(self, which) -> str:
        """``stty -a`` as taken in the pane, without the size (a test resizes the pane)."""
        return re.sub(r"rows \d+; columns \d+;", "", which.read_text())

    def exit_status(self) -> int:
        wait_for(lambda: self.status.exists() and self.status.read_text().strip(), 20, "procnetmon to end")
        return int(self.status.read_text())

    def sane(self) -> bool:
        """The terminal's settings after as before (its size aside: a test resizes the pane)."""
        wait_for(lambda: self.after.exists() and self.after.read_text(), 10, "stty -a after")
        return self.terminal_settings(self.before) == self.terminal_settings(self.after)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)

    def reap(self) -> None:
        """Kill what the pane started and still runs, even a procnetmon that a
        failed test left ignoring the hangup: a stray one would count on."""
        left = [p for p in self._started if p.is_running()]
        _gone, alive = psutil.wait_procs(left, timeout=2)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def pane_factory(tmp_path):
    panes = []

    def make(*args: str, **options):
        pane = Pane(tmp_path, procnetmon_cmd("--live", *args), **options)
        panes.append(pane)
        return pane

    yield make
    for pane in panes:
        pane.close()
        pane.reap()


def row_of(lines: list[str], pid: int) -> list[str]:
    """The cells of the table row of ``pid`` (split at blanks), or []."""
    for line in lines:
        cells = line.split()
        if cells and cells[0] == str(pid):
            return cells
    return []


def total_cell(lines, pid) -> str:
    """The TOTAL column of ``pid``'s row at 100 columns: after PID NAME IN OUT (each rate two words), the
    sparkline (blank or one word), PEAK."""
    line = next(line for line in lines if line.split()[:1] == [str(pid)])
    heading = next(h for h in lines if h.split()[:2] == ["PID", "NAME"])
    end = heading.index("TOTAL") + len("TOTAL")
    return line[end - 9:end].strip()


def summary_rows(pane: Pane) -> dict[int, str]:
    lines = pane.lines(history=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("procnetmon summary"))
    rows = {}
    for line in lines[start + 2:]:
        cells = line.split()
        if cells and cells[0].isdigit():
            rows[int(cells[0])] = line
    return rows


def exchange(peer, name: str, send: int, reply: int) -> tuple[TrafficProcess, TrafficProcess]:
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=send, reply=reply, hold=True)
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=send, expect=reply, name=name, hold=True)
    return server, client


def test_known_traffic_sorting_pages_resize_and_q(peer, pane_factory):
    small_server, small = exchange(peer, "lv-a-small", 20_000, 3_000)
    big_server, big = exchange(peer, "lv-z-big", 400_000, 50_000)
    procs = [small_server, small, big_server, big]
    try:
        pane = pane_factory("-p", f"{small.pid},{big.pid}")
        pane.wait_ready()
        truth = {}
        for p in procs:
            p.go()
        for client in (small, big):
            truth[client.pid] = client.result()
        for server in (small_server, big_server):
            server.result()
        expected = {pid: units.size(t["tcp_in"] + t["tcp_out"], SIZE) for pid, t in truth.items()}
        assert truth[big.pid]["tcp_out"] == 400_000

        # Each process on its own row, with its own total.
        pane.wait_for_screen(lambda lines: all(row_of(lines, pid) and total_cell(lines, pid) == shown
                                               for pid, shown in expected.items()), "both totals")
        lines = pane.lines()
        assert "payload mode" in lines[0]
        assert row_of(lines, big.pid)[1] == "lv-z-big" and row_of(lines, small.pid)[1] == "lv-a-small"

        def order(lines):
            return [pid for pid in (int(line.split()[0]) for line in lines[3:-1] if line.split()[:1] != []
                                    and line.split()[0].isdigit()) if pid in truth]

        # Sorting: by total (big first), by name (a first), reversed.
        pane.keys("t")
        pane.wait_for_screen(lambda lines: "sort: total v" in lines[0] and order(lines) == [big.pid, small.pid],
                             "sorted by total")
        pane.keys("n")
        pane.wait_for_screen(lambda lines: "sort: name v" in lines[0] and order(lines) == [small.pid, big.pid],
                             "sorted by name")
        pane.keys("i")
        pane.wait_for_screen(lambda lines: "sort: name ^" in lines[0] and order(lines) == [big.pid, small.pid],
                             "sorted by name, reversed")

        # The filter, then the detail page: exact bytes.
        pane.keys("/")
        pane.typed("z-big")
        pane.keys("Enter")
        pane.wait_for_screen(lambda lines: order(lines) == [big.pid] and "filter: z-big" in lines[1], "the filter")
        pane.keys("Enter")
        t = truth[big.pid]
        pane.wait_for_screen(lambda lines: any(f"PID {big.pid}  lv-z-big  (alive)" in line for line in lines)
                             and any(line.split()[:5] == ["total", str(t["tcp_in"]), "B", str(t["tcp_out"]), "B"]
                                     for line in lines), "the detail page with exact bytes")
        # Its sockets: the one connection, to the server's port.
        pane.keys("d")
        pane.wait_for_screen(lambda lines: any(line.split()[:1] == ["tcp"]
                                               and f"{peer.peer_v4}:{big_server.port}" in line
                                               and "ESTABLISHED" in line for line in lines), "its connection")
        pane.keys("Escape")
        time.sleep(0.2)  # Esc alone: the key, not the start of a sequence
        pane.keys("Escape")
        pane.wait_for_screen(lambda lines: len(order(lines)) == 2 and "filter" not in lines[1], "the whole table")

        # A resize redraws the whole screen at the new size, nothing of the old one left.
        pane.tmux("resize-window", "-t", "live", "-x", "60", "-y", "20")

        def redrawn(lines):
            lines = lines[:20]
            return (lines[0].startswith(" procnetmon") and lines[2].split() == ["PID", "NAME", "IN", "OUT", "TOTAL",
                                                                               "TCP", "UDP"]
                    and total_cell(lines, big.pid) == expected[big.pid])

        pane.wait_for_screen(redrawn, "the 60x20 screen")
        lines = pane.lines()[:20]
        assert all(len(line) <= 60 for line in lines)
        assert lines[-1].startswith(" q quit")
        rows = [line for line in lines[3:-1] if line.strip()]
        assert sorted(int(r.split()[0]) for r in rows) == sorted(truth)  # nothing but the two rows
        for row in rows:
            assert re.fullmatch(r" *\d+ lv-[az]-(small|big) +[\d.]+ \S+ +[\d.]+ \S+ +[\d.]+ \S*B +\d+ +\d+", row), row
        for stale in ("LAST MIN", "PEAK", "procnetmon summary"):
            assert stale not in "\n".join(lines)

        pane.keys("q")
        assert pane.exit_status() == 0
        assert pane.sane()
        rows = summary_rows(pane)
        assert set(rows) == set(truth)
        assert " lv-z-big " in rows[big.pid]
    finally:
        for p in procs:
            p.finish()


def test_an_exited_process_then_sigterm(peer, pane_factory):
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=50_000, reply=0, hold=True)
    quiet = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=50_000, name="lv-quiet")
    try:
        # Every process (the machine's others too): the filter finds ours.
        pane = pane_factory(width=100, height=30)
        pane.wait_ready()
        pane.keys("/")
        pane.typed("lv-quiet")
        pane.keys("Enter")
        server.go()
        quiet.go()
        sent = quiet.result()["tcp_out"]
        server.result()
        pane.wait_for_screen(lambda lines: row_of(lines, quiet.pid)[1:2] == ["lv-quiet"]
                             and total_cell(lines, quiet.pid) == units.size(sent, SIZE), "its row")
        # It goes quiet first, then exits: the records cannot say so, the view finds out.
        time.sleep(1.5)
        quiet.finish()
        pane.wait_for_screen(lambda lines: row_of(lines, quiet.pid)[2:3] == ["exited"], "the exited row")
        assert "(1 exited)" in pane.lines()[1]

        procnetmon = pane.procnetmon()
        procnetmon.send_signal(signal.SIGTERM)
        assert pane.exit_status() == 0
        assert pane.sane()
        rows = summary_rows(pane)
        assert "lv-quiet (exited)" in rows[quiet.pid]
    finally:
        server.finish()
        quiet.finish()


def test_sighup_ends_the_view_and_the_file_keeps_every_record(pane_factory, tmp_path):
    records = tmp_path / "records.json"
    # The shell outlives the hangup (it ignores SIGHUP) to note the status; so the
    # SIGHUP that a dying shell's terminal sends its foreground job is sent here.
    pane = pane_factory("--json", "-o", str(records), "--include-loopback", shell_setup="trap '' HUP; ")
    pane.wait_ready()
    wait_for(lambda: len(json_lines_of(records)) >= 2, 15, "two interval records in the file")
    procnetmon = pane.procnetmon()
    pane.close()  # the terminal goes away
    procnetmon.send_signal(signal.SIGHUP)
    assert pane.exit_status() == 0  # the table had nowhere to go: as after | head, not an error
    lines = json_lines_of(records)
    assert lines[-1]["type"] == "summary" and {r["type"] for r in lines[:-1]} == {"interval"}
    assert all("connections" not in p for r in lines for p in r["processes"])  # no -d: no sockets
    assert "error" not in pane.err.read_text()


def test_an_error_while_live_gives_the_terminal_back_first(pane_factory):
    pane = pane_factory("-o", "/dev/full", "--include-loopback")  # the first record cannot be written
    assert pane.exit_status() == 1
    assert pane.sane()
    errors = [line for line in pane.err.read_text().splitlines() if "error" in line]
    assert errors == ["procnetmon: error: cannot write to /dev/full: No space left on device"]
    assert "Traceback" not in "\n".join(pane.lines(history=True))
