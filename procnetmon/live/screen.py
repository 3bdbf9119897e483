"""The terminal side of the live view: curses on one window, lines drawn only
where they changed, keys read without blocking, the terminal put back as it
was however the view ends.

``CursesScreen`` is the only user of curses in procnetmon. It keeps the
text of every line it drew and rewrites a line only when its text or style
differs; curses then sends the terminal only the cells that changed
(``noutrefresh`` + ``doupdate``, no clear per frame), so nothing flickers and
an idle screen costs nothing to refresh. A resize (KEY_RESIZE) forgets what
was drawn and draws the new size whole, once.

Colour is used where the terminal has it and ``NO_COLOR`` is not set
(https://no-color.org); every meaning also has a form without colour
(reverse video for the selection and the title, dim and the word
"exited" for exited processes), so a monochrome terminal loses nothing.
"""

from __future__ import annotations

import curses
import locale
import os
import termios
from typing import Optional, Sequence

from procnetmon.live import layout

# Key codes as the view model names them.
_KEY_NAMES = {
    curses.KEY_UP: "up", curses.KEY_DOWN: "down", curses.KEY_LEFT: "left", curses.KEY_RIGHT: "right",
    curses.KEY_PPAGE: "pgup", curses.KEY_NPAGE: "pgdn", curses.KEY_HOME: "home", curses.KEY_END: "end",
    curses.KEY_ENTER: "enter", curses.KEY_BACKSPACE: "backspace", curses.KEY_DC: "backspace",
    curses.KEY_RESIZE: "resize",
}
_CHAR_NAMES = {"\n": "enter", "\r": "enter", "\x1b": "esc", "\x7f": "backspace", "\x08": "backspace"}


def key_name(key) -> Optional[str]:
    """A key from ``get_wch`` (a str, or an int for a function key) as the model names it; None: ignored."""
    if isinstance(key, int):
        return _KEY_NAMES.get(key)
    if key in _CHAR_NAMES:
        return _CHAR_NAMES[key]
    return key if len(key) == 1 and key.isprintable() else None


def colour_wanted(env=None) -> bool:
    """No colour when NO_COLOR is set to anything but the empty string."""
    env = os.environ if env is None else env
    return not env.get("NO_COLOR")


class TerminalError(Exception):
    """The terminal cannot hold the view (an unknown $TERM, no terminal at all)."""


def check_terminal(fd: int = 1) -> None:
    """Raise TerminalError unless $TERM names a terminal that can address the
    cursor: asked of terminfo alone, before anything is attached or drawn."""
    term = os.environ.get("TERM", "")
    try:
        curses.setupterm(term or "unknown", fd)
    except curses.error as e:
        raise TerminalError(f"cannot use the terminal ({e}); TERM={term!r}") from None
    if curses.tigetstr("cup") is None:
        raise TerminalError(f"TERM={term!r} cannot move the cursor, which a full-screen view needs; "
                            "set TERM to your terminal's (e.g. xterm-256color), or use -c")


class CursesScreen:
    """The whole terminal as one curses window."""

    def __init__(self, colour: Optional[bool] = None):
        self._fd = 0
        self._saved: Optional[list] = None
        self._lines: list[Optional[tuple]] = []
        self._size = (0, 0)
        self.window: Optional[curses.window] = None
        self._open(colour_wanted() if colour is None else colour)

    def _open(self, colour: bool) -> None:
        locale.setlocale(locale.LC_CTYPE, "")  # ncurses writes UTF-8 only when the locale says so
        self.unicode = locale.getpreferredencoding(False).lower().replace("-", "") == "utf8"
        try:
            self._saved = termios.tcgetattr(self._fd)
        except termios.error:
            self._saved = None
        # Esc is a key here, not the start of a sequence to wait a second for.
        os.environ.setdefault("ESCDELAY", "25")
        # The size from the terminal itself, always: exported LINES and COLUMNS
        # (pytest's, a script's) would pin it, and a resize would be drawn at
        # the old size, over itself. (curses.use_env(False) takes terminfo's size.)
        for name in ("LINES", "COLUMNS"):
            os.environ.pop(name, None)
        try:
            window = curses.initscr()
        except curses.error as e:
            raise TerminalError(f"cannot use the terminal ({e}); TERM={os.environ.get('TERM', '')!r}") from None
        self.window = window
        try:
            curses.noecho()
            curses.cbreak()  # keys at once; Ctrl-C still sends SIGINT
            window.keypad(True)
            window.nodelay(True)
            try:
                curses.curs_set(0)
            except curses.error:
                pass  # a terminal that cannot hide the cursor
            self.attrs = self._attributes(colour and curses.has_colors())
        except BaseException:
            self.close()
            raise
        self._size = window.getmaxyx()

    def _attributes(self, colour: bool) -> dict[str, int]:
        a = {layout.NORMAL: curses.A_NORMAL, layout.TITLE: curses.A_REVERSE, layout.HEADING: curses.A_BOLD,
             layout.SORTED: curses.A_BOLD | curses.A_UNDERLINE, layout.SELECTED: curses.A_REVERSE,
             layout.EXITED: curses.A_DIM, layout.EXITED_SELECTED: curses.A_REVERSE | curses.A_DIM,
             layout.SPARK: curses.A_NORMAL, layout.STATUS: curses.A_NORMAL,
             layout.PAUSED: curses.A_REVERSE | curses.A_BOLD, layout.PROMPT: curses.A_BOLD}
        if colour:
            curses.start_color()
            try:
                curses.use_default_colors()
                background = -1
            except curses.error:
                background = curses.COLOR_BLACK
            curses.init_pair(1, curses.COLOR_GREEN, background)
            curses.init_pair(2, curses.COLOR_BLACK, curses.COLOR_CYAN)
            curses.init_pair(3, curses.COLOR_BLACK, curses.COLOR_YELLOW)
            curses.init_pair(4, curses.COLOR_CYAN, background)
            a[layout.SPARK] = curses.color_pair(1)
            a[layout.TITLE] = curses.color_pair(2)
            a[layout.PAUSED] = curses.color_pair(3) | curses.A_BOLD
            a[layout.STATUS] = curses.color_pair(4)
        return a

    @property
    def input_fd(self) -> int:
        return self._fd

    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self._size

    def keys(self) -> list[str]:
        """Every key typed since the last call, by name ("resize" after a resize)."""
        out: list[str] = []
        while self.window is not None:
            try:
                key = self.window.get_wch()
            except curses.error:
                break  # nothing more typed
            name = key_name(key)
            if name == "resize":
                self._resized()
            if name is not None:
                out.append(name)
        return out

    def _resized(self) -> None:
        assert self.window is not None
        curses.update_lines_cols()
        self._size = self.window.getmaxyx()
        self._lines = []
        self.window.clear()  # once, for the new size: what was drawn is forgotten

    def draw(self, lines: Sequence[layout.Line]) -> None:
        """Write the lines whose text or style changed, then update the terminal once."""
        window = self.window
        if window is None:
            return
        height, width = self._size
        if len(self._lines) != height:
            self._lines = [None] * height
        for y, line in enumerate(lines[:height]):
            if self._lines[y] == line:
                continue
            self._lines[y] = line
            x = 0
            for text, style in line:
                if y == height - 1 and x + layout.cell_width(text) >= width:
                    # The bottom right cell: writing it would scroll a terminal without
                    # automatic margins away; leave it blank.
                    text = layout.fit(text, width - 1 - x)
                try:
                    window.addstr(y, x, text if self.unicode else _ascii(text), self.attrs.get(style, 0))
                except curses.error:
                    pass  # cut at the window's edge
                x += layout.cell_width(text)
        window.noutrefresh()
        curses.doupdate()

    def close(self) -> None:
        """Put the terminal back as it was (twice is harmless)."""
        if self.window is not None:
            self.window = None
            try:
                curses.endwin()
            except curses.error:
                pass
        if self._saved is not None:
            try:
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            except termios.error:
                pass  # the terminal is gone (SIGHUP)
            self._saved = None


def _ascii(text: str) -> str:
    """Text for a terminal whose locale is not UTF-8: each cell of a character
    it cannot show becomes "?", so that the columns stay where they are."""
    if text.isascii():
        return text
    return "".join(c if c.isascii() else "?" * layout.cell_width(c) for c in text)
