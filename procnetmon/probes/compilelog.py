"""Where the compiler's own words go while BCC compiles, and the one line that says why it failed.

BCC's embedded clang writes its diagnostics straight to file descriptor 2.
Left there, a failed compile buries its cause under forty lines, and a
stderr whose reader has gone (``2>&1 | head``) makes LLVM abort the whole
program, even for the warnings of a compile that succeeds. So during the
compile descriptor 2 points at a private log file (mode 0600, a random name
in the root-owned cache), kept only when the compile failed.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator, Optional

from procnetmon.kernel import cache, mounts

_TRACEPOINT_STRUCT = re.compile(r"incomplete definition of type 'struct tracepoint__(\w+?)__(\w+)'")
_MISSING_FILE = re.compile(r"fatal error: '([^']+)' file not found")
_ERROR = re.compile(r"error: (.*)")


class CompileLog:
    def __init__(self) -> None:
        self.path: Optional[str] = None

    def text(self) -> str:
        if self.path is None:
            return ""
        try:
            with open(self.path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


@contextlib.contextmanager
def captured(verbose: bool = False) -> Iterator[CompileLog]:
    """Descriptor 2 into a log file for the duration (unless ``verbose``);
    the file is removed unless the body raised."""
    log = CompileLog()
    if verbose:
        yield log
        return
    root = cache.cache_root()
    try:
        os.makedirs(root, mode=0o755, exist_ok=True)
        fd, log.path = tempfile.mkstemp(prefix="compile-", suffix=".log", dir=root)
    except OSError:
        # No log file: the diagnostics are dropped rather than left on a
        # descriptor that may abort the program.
        fd, log.path = os.open(os.devnull, os.O_WRONLY), None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield log
    except BaseException:
        os.dup2(saved, 2)
        os.close(saved)
        raise
    os.dup2(saved, 2)
    os.close(saved)
    if log.path is not None:
        with contextlib.suppress(OSError):
            os.unlink(log.path)
        log.path = None


def cause(output: str) -> Optional[str]:
    """The compile's cause in one clause, read from the compiler's output; None when it names none."""
    m = _TRACEPOINT_STRUCT.search(output)
    if m:
        category, event = m.groups()
        where = "tracefs is not mounted" if mounts.missing() else "it is not in tracefs"
        return (f"BCC could not read the format of tracepoint {category}:{event} ({where}; "
                f"{mounts.TRACEFS_INTERFACE.fix})")
    m = _MISSING_FILE.search(output)
    if m:
        return f"the header tree has no {m.group(1)}: it does not match this kernel or this BCC"
    m = _ERROR.search(output)
    return m.group(1).strip() if m else None
