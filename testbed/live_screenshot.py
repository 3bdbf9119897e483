"""The README's picture of the live view (docs/live.png): scripts/live-screenshot.

    python -m testbed.live_screenshot capture OUT.ansi   # procnetmon's venv, as root
    python -m testbed.live_screenshot render IN.ansi OUT.png   # a venv with Pillow

``capture`` starts a few processes named like services that move known
rates over loopback (one of them exits part-way), runs ``procnetmon --live``
on them in a 100x30 tmux pane, and after 40 s writes what the pane shows,
with its colours (``tmux capture-pane -e -p``). ``render`` draws that text
in DejaVu Sans Mono (Debian's fonts-dejavu-core) with Pillow, which only
this tool needs: it is no dependency of procnetmon.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time

WIDTH, HEIGHT = 100, 30
FONT_DIR = "/usr/share/fonts/truetype/dejavu"

# name, bytes a second at the peak, seconds before it exits (None: it stays)
SERVICES = (("nginx", 1_500_000, None), ("curl", 600_000, None), ("postgres", 120_000, None),
            ("redis-server", 40_000, None), ("sshd", 2_000, None), ("apt-get", 900_000, 12.0))

SENDER = r"""
import ctypes, math, socket, sys, time
name, rate, port, life = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)
s = socket.create_connection(("127.0.0.1", port))
sys.stdin.readline()  # go
start = time.monotonic()
chunk = b"x" * 4096
phase = hash(name) % 7
while life <= 0 or time.monotonic() - start < life:
    t = time.monotonic() - start
    want = rate * (0.55 + 0.45 * math.sin(t / 3 + phase)) / 10
    sent = 0
    while sent < want:
        sent += s.send(chunk[: int(min(len(chunk), want - sent)) or 1])
    time.sleep(0.1)
"""

SINK = r"""
import ctypes, selectors, socket, sys
ctypes.CDLL(None).prctl(15, b"rsync", 0, 0, 0)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(16)
print(listener.getsockname()[1], flush=True)
sel = selectors.DefaultSelector()
sel.register(listener, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is listener:
            conn, _ = listener.accept()
            sel.register(conn, selectors.EVENT_READ)
        elif not key.fileobj.recv(65536):
            sel.unregister(key.fileobj)
            key.fileobj.close()
"""


def capture(out_path: str, seconds: float = 40.0) -> None:
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    port = int(sink.stdout.readline())
    senders = [subprocess.Popen([sys.executable, "-c", SENDER, name, str(rate), str(port), str(life or 0)],
                                stdin=subprocess.PIPE, text=True) for name, rate, life in SERVICES]
    pids = ",".join(str(p.pid) for p in [sink] + senders)
    server = f"pnmshot{os.getpid()}"
    tmux = ["tmux", "-L", server, "-f", "/dev/null"]
    command = [sys.executable, "-m", "procnetmon", "--live", "--include-loopback", "-p", pids]
    try:
        subprocess.run(tmux + ["new-session", "-d", "-s", "shot", "-x", str(WIDTH), "-y", str(HEIGHT),
                               "env", "TERM=tmux-256color", "LANG=C.UTF-8", "LC_ALL=C.UTF-8", "sh", "-c",
                               f"{shlex.join(command)} 2>/dev/null; sleep 600"], check=True)
        time.sleep(3)  # the probes compile
        for p in senders:
            p.stdin.write("go\n")
            p.stdin.flush()
        time.sleep(seconds)
        ansi = subprocess.run(tmux + ["capture-pane", "-e", "-p", "-t", "shot"], check=True,
                              capture_output=True, text=True).stdout
        with open(out_path, "w") as f:
            f.write(ansi)
        subprocess.run(tmux + ["send-keys", "-t", "shot", "q"], check=True)
        time.sleep(1)
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)
        for p in senders + [sink]:
            p.kill()
            p.wait()


# -- ANSI to PNG ------------------------------------------------------------------------

BACKGROUND, FOREGROUND = (24, 26, 30), (208, 212, 218)
PALETTE = [(24, 26, 30), (224, 108, 117), (152, 195, 121), (229, 192, 123), (97, 175, 239), (198, 120, 221),
           (86, 182, 194), (208, 212, 218), (92, 99, 112), (240, 130, 140), (170, 215, 140), (240, 210, 140),
           (120, 190, 250), (215, 140, 235), (110, 200, 210), (255, 255, 255)]


def _colour_256(n: int) -> tuple[int, int, int]:
    if n < 16:
        return PALETTE[n]
    if n < 232:
        n -= 16
        levels = (0, 95, 135, 175, 215, 255)
        return levels[n // 36], levels[n // 6 % 6], levels[n % 6]
    grey = 8 + 10 * (n - 232)
    return grey, grey, grey


def parse(ansi: str) -> list[list[tuple[str, dict]]]:
    """Rows of (character, attributes) from text with SGR escape sequences."""
    rows = []
    state: dict = {}
    for line in ansi.split("\n")[:HEIGHT]:
        cells: list[tuple[str, dict]] = []
        for token in re.split(r"(\x1b\[[0-9;]*m)", line):
            if token.startswith("\x1b["):
                state = _sgr(state, token[2:-1])
            else:
                cells += [(c, dict(state)) for c in token if c != "\x1b"]
        rows.append(cells)
    return rows


def _sgr(state: dict, params: str) -> dict:
    state = dict(state)
    codes = [int(p) if p else 0 for p in params.split(";")] if params else [0]
    i = 0
    while i < len(codes):
        c = codes[i]
        if c == 0:
            state = {}
        elif c in (1, 2, 4, 7):
            state[{1: "bold", 2: "dim", 4: "underline", 7: "reverse"}[c]] = True
        elif c == 22:
            state.pop("bold", None)
            state.pop("dim", None)
        elif c in (24, 27):
            state.pop({24: "underline", 27: "reverse"}[c], None)
        elif 30 <= c <= 37 or 90 <= c <= 97:
            state["fg"] = PALETTE[c - 30 if c < 90 else c - 90 + 8]
        elif 40 <= c <= 47 or 100 <= c <= 107:
            state["bg"] = PALETTE[c - 40 if c < 100 else c - 100 + 8]
        elif c in (39, 49):
            state.pop("fg" if c == 39 else "bg", None)
        elif c in (38, 48) and i + 2 < len(codes) and codes[i + 1] == 5:
            state["fg" if c == 38 else "bg"] = _colour_256(codes[i + 2])
            i += 2
        elif c in (38, 48) and i + 4 < len(codes) and codes[i + 1] == 2:
            state["fg" if c == 38 else "bg"] = tuple(codes[i + 2:i + 5])
            i += 4
        i += 1
    return state


def render(in_path: str, out_path: str, size: int = 15) -> None:
    from PIL import Image, ImageDraw, ImageFont

    regular = ImageFont.truetype(f"{FONT_DIR}/DejaVuSansMono.ttf", size)
    bold = ImageFont.truetype(f"{FONT_DIR}/DejaVuSansMono-Bold.ttf", size)
    cell_w = round(regular.getlength("M"))
    ascent, descent = regular.getmetrics()
    cell_h = ascent + descent + 2
    pad = 12
    with open(in_path) as f:
        rows = parse(f.read())
    image = Image.new("RGB", (2 * pad + WIDTH * cell_w, 2 * pad + HEIGHT * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for y, cells in enumerate(rows):
        for x, (char, a) in enumerate(cells[:WIDTH]):
            fg, bg = a.get("fg", FOREGROUND), a.get("bg", BACKGROUND)
            if a.get("reverse"):
                fg, bg = bg, fg
            if a.get("dim"):
                fg = tuple((f + b) // 2 for f, b in zip(fg, bg))
            left, top = pad + x * cell_w, pad + y * cell_h
            if bg != BACKGROUND:
                draw.rectangle([left, top, left + cell_w - 1, top + cell_h - 1], fill=bg)
            if "\u2581" <= char <= "\u2588":  # block elements: drawn as boxes, whatever the font
                eighths, room = ord(char) - 0x2580, cell_h - 3  # a gap between rows, as the eye expects
                draw.rectangle([left, top + cell_h - 1 - room * eighths // 8, left + cell_w - 2, top + cell_h - 1],
                               fill=fg)
            elif char != " ":
                draw.text((left, top + 1), char, font=bold if a.get("bold") else regular, fill=fg)
            if a.get("underline"):
                draw.line([left, top + cell_h - 2, left + cell_w - 1, top + cell_h - 2], fill=fg)
    image.save(out_path, optimize=True)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "capture":
        capture(argv[1])
    elif len(argv) == 3 and argv[0] == "render":
        render(argv[1], argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
