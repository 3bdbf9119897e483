"""The curses screen on a real pseudo-terminal (no root needed): it draws,
reads keys, follows a resize, and gives the terminal back exactly as it was."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time

import pytest

from procnetmon.live import screen

CHILD = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {tests!r})
    from livefixtures import interval, proc
    from procnetmon.live import layout
    from procnetmon.live.model import ViewModel
    from procnetmon.live.screen import CursesScreen

    model = ViewModel()
    model.update(interval(proc(4242, "ptyproc", 1000)))
    s = CursesScreen()
    sizes = [s.size()]
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            h, w = s.size()
            s.draw(layout.frame(model, w, h, s.unicode))
            keys = s.keys()
            if "resize" in keys:
                sizes.append(s.size())
            if "q" in keys:
                break
            time.sleep(0.02)
    finally:
        s.close()
    with open({report!r}, "w") as f:
        json.dump(sizes, f)
""")


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def read_until(fd: int, wanted: bytes, timeout: float = 10) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{wanted!r} not drawn; got {seen[-400:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


@pytest.mark.parametrize("colour", ["", "1"])
def test_draws_follows_a_resize_and_restores_the_terminal(tmp_path, colour):
    leader, follower = pty.openpty()
    set_size(follower, 24, 80)
    before = termios.tcgetattr(follower)
    report = tmp_path / "sizes.json"
    code = CHILD.format(tests=os.path.dirname(__file__), report=str(report))
    # Exported LINES and COLUMNS must not pin the size: the terminal's own is the one.
    env = dict(os.environ, TERM="xterm-256color", LANG="C.UTF-8", LC_ALL="C.UTF-8", NO_COLOR=colour,
               LINES="50", COLUMNS="132")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=follower, stdout=follower, stderr=follower,
                             env=env, start_new_session=True,
                             preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    try:
        read_until(leader, b"ptyproc")
        set_size(follower, 20, 60)
        child.send_signal(signal.SIGWINCH)
        time.sleep(0.3)
        os.write(leader, b"q")
        assert child.wait(10) == 0
    finally:
        if child.poll() is None:
            child.kill()
        while select.select([leader], [], [], 0.1)[0]:
            try:
                if not os.read(leader, 65536):
                    break
            except OSError:
                break
        after = termios.tcgetattr(follower)
        os.close(leader)
        os.close(follower)
    assert json.loads(report.read_text()) == [[24, 80], [20, 60]]
    assert after == before


def test_key_names():
    import curses

    assert screen.key_name(curses.KEY_UP) == "up"
    assert screen.key_name("\n") == "enter"
    assert screen.key_name("\x1b") == "esc"
    assert screen.key_name("q") == "q"
    assert screen.key_name("\x01") is None  # Ctrl-A: ignored
    assert screen.key_name(curses.KEY_F1) is None


def test_no_color_is_honoured_when_set_to_anything():
    assert screen.colour_wanted({})
    assert screen.colour_wanted({"NO_COLOR": ""})
    assert not screen.colour_wanted({"NO_COLOR": "1"})


@pytest.mark.parametrize("term, ok", [("xterm-256color", True), ("vt100", True), ("dumb", False),
                                      ("no-such-terminal", False)])
def test_a_terminal_that_cannot_address_the_cursor_is_refused_up_front(monkeypatch, term, ok):
    code = ("import sys; from procnetmon.live import screen\n"
            "try:\n    screen.check_terminal(1)\nexcept screen.TerminalError as e:\n    print(e); sys.exit(3)\n")
    leader, follower = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-c", code], stdout=follower, stderr=subprocess.PIPE,
                              env=dict(os.environ, TERM=term), timeout=30)
    finally:
        os.close(follower)
        try:
            output = os.read(leader, 4096).decode() if select.select([leader], [], [], 0.5)[0] else ""
        except OSError:
            output = ""  # nothing was written: the follower's end is closed
        os.close(leader)
    assert done.returncode == (0 if ok else 3), (output, done.stderr)
    if not ok:
        assert f"TERM='{term}'" in output
