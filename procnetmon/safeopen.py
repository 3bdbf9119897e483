"""Opening and replacing output files so that a root run cannot be turned
against the machine: the one helper every output path goes through.

A path is safe to write when nobody but root and the invoking user can
change what it names:

* every directory on the way belongs to one of them and is not writable by
  group or others, unless it is sticky (/tmp), where others cannot rename
  or remove what is not theirs;
* symbolic links on the way are followed only when one of them owns the
  link (its target is then checked the same way); the file itself is never
  a symbolic link (O_NOFOLLOW);
* an existing file belongs to one of them, is not writable by group or
  others and has no second hard link (in a sticky directory another user
  could have linked a root-only file there); a file that does not exist is
  created with O_EXCL, so nothing planted between the look and the open is
  opened instead.

Under sudo (SUDO_UID set, euid 0) all of it runs in a forked child that has
dropped to the invoking user and passes the open descriptor back over a
socketpair (SCM_RIGHTS): a user allowed only ``sudo procnetmon`` writes no
file they could not write themselves. Standard library only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import stat
import struct
import tempfile
from typing import Callable, Optional

from procnetmon.invoker import Credentials, become, invoking_user, trusted_owners

APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_SYMLINKS = 40  # as the kernel's own path walk (ELOOP beyond)


class UnsafePath(PermissionError):
    """The path could be changed by someone other than root and the invoking
    user; ``strerror`` says which part and why, in one line."""

    def __init__(self, reason: str, path: str):
        super().__init__(errno.EACCES, f"refused: {reason}", path)


# -- the checks ---------------------------------------------------------------


def _check_directory(path: str, st: os.stat_result, trusted: frozenset[int]) -> None:
    if st.st_uid not in trusted:
        raise UnsafePath(f"{path} belongs to uid {st.st_uid}", path)
    # Sticky: others may add names, but cannot rename or remove the owner's
    # or ours; what is opened there is checked by owner after the open.
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise UnsafePath(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})", path)


def _check_file(path: str, st: os.stat_result, trusted: frozenset[int]) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{path} is a symbolic link", path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if st.st_uid not in trusted:
        raise UnsafePath(f"{path} belongs to uid {st.st_uid}", path)
    # Devices and FIFOs carry no content of their own to protect (/dev/null,
    # a pipe to a reader): only their owner matters.
    if stat.S_ISREG(st.st_mode):
        if st.st_mode & 0o022:
            raise UnsafePath(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})",
                             path)
        if st.st_nlink > 1:
            raise UnsafePath(f"{path} has {st.st_nlink} hard links", path)


def resolve_parent(path: str, trusted: frozenset[int]) -> tuple[str, str]:
    """(the directory of ``path`` with every symbolic link resolved, the
    file's name), having checked each directory and link on the way.

    The walk is done here rather than by the kernel so that each step can
    be looked at; ``..`` is taken after the links before it are resolved,
    as the kernel does, not lexically."""
    absolute = path if path.startswith("/") else os.path.join(os.getcwd(), path)
    head, name = absolute.rsplit("/", 1)
    if name in ("", ".", ".."):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    _check_directory("/", os.lstat("/"), trusted)
    pending = [part for part in head.split("/") if part]
    resolved = "/"
    links = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, part)
        st = os.lstat(candidate)
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in trusted:
                raise UnsafePath(f"{candidate} is a symbolic link belonging to uid {st.st_uid}", path)
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = "/"
            pending[0:0] = [p for p in target.split("/") if p]
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), candidate)
        _check_directory(candidate, st, trusted)
        resolved = candidate
    return resolved, name


def _lstat_or_none(path: str) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


# -- what runs as the invoking user ----------------------------------------------


def _open_append(path: str, trusted: frozenset[int], mode: int) -> int:
    directory, name = resolve_parent(path, trusted)
    full = os.path.join(directory, name)
    for _ in range(3):  # the file came or went between the look and the open
        before = _lstat_or_none(full)
        if before is not None:
            _check_file(full, before, trusted)  # before opening: another user's FIFO could block us
        flags = APPEND_FLAGS | (0 if before is not None else os.O_CREAT | os.O_EXCL)
        try:
            fd = os.open(full, flags, mode)
        except FileExistsError:
            continue
        except FileNotFoundError:
            if before is None:
                raise
            continue
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafePath(f"{full} is a symbolic link", path) from None
            raise
        try:
            after = os.fstat(fd)
            if before is not None and (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
                raise UnsafePath(f"{full} was replaced while it was opened", path)
            _check_file(full, after, trusted)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise UnsafePath(f"{full} kept changing while it was opened", path)


def _check_replaceable(path: str, trusted: frozenset[int]) -> tuple[str, str, Optional[os.stat_result]]:
    """(directory, name, the file's lstat or None) of a file that may be replaced."""
    directory, name = resolve_parent(path, trusted)
    existing = _lstat_or_none(os.path.join(directory, name))
    if existing is not None:
        _check_file(os.path.join(directory, name), existing, trusted)
        if not stat.S_ISREG(existing.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), directory)
    return directory, name, existing


def _replace(path: str, data: bytes, trusted: frozenset[int], new_mode: int) -> None:
    directory, name, existing = _check_replaceable(path, trusted)
    # A random name made with O_EXCL (and O_NOFOLLOW), not FILE.<pid>: nothing
    # another user planted can be opened, and a reader of the directory
    # never sees half a file. The suffix keeps node_exporter (*.prom) off it.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if existing is not None:
            os.fchmod(fd, stat.S_IMODE(existing.st_mode) & 0o777)
            if os.geteuid() == 0:
                os.fchown(fd, existing.st_uid, existing.st_gid)
        else:
            os.fchmod(fd, new_mode)
        os.close(fd)
        fd = -1
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -- the public helpers -------------------------------------------------------------


def open_append(path: str, mode: int = 0o600) -> int:
    """A descriptor appending to ``path`` (created with ``mode`` if new),
    opened as the invoking user under sudo. UnsafePath or OSError."""
    credentials = invoking_user()
    trusted = trusted_owners(credentials)
    if credentials is None:
        return _open_append(os.fspath(path), trusted, mode)
    return as_user(credentials, lambda: _open_append(os.fspath(path), trusted, mode))


class Replacer:
    """Replaces one file whole, again and again (the textfile): each time
    through a random temporary in its directory renamed over it, the path
    checked again. The file keeps its mode (and, as root, its owner and
    group); a new one gets ``new_mode``.

    Under sudo the writing is done by one helper, forked here (before the
    probes are compiled, while the process is small) and turned into the
    invoking user, that takes each exposition over a socket: here a fork
    per rewrite of a 300 MB process cost 47 ms, a round trip to the helper
    0.3 ms. Creating the
    Replacer checks the path (UnsafePath or OSError), so that a target that
    cannot be written is a usage error before anything is attached."""

    def __init__(self, path: str, new_mode: int = 0o644):
        self.path = os.fspath(path)
        self.new_mode = new_mode
        credentials = invoking_user()
        self._trusted = trusted_owners(credentials)
        self._sock: Optional[socket.socket] = None
        self._pid = 0
        self._credentials = credentials
        if credentials is None:
            _check_replaceable(self.path, self._trusted)
            return
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child leaves through os._exit
            parent_end.close()
            self._serve(credentials, child_end)
        child_end.close()
        self._sock, self._pid = parent_end, pid
        try:
            _raise_unless_ok(_read_frame(parent_end), credentials)
        except BaseException:
            self.close()
            raise

    def replace(self, data: bytes) -> None:
        if self._sock is None:
            if self._credentials is not None:
                raise OSError(errno.EBADF, "the textfile is closed", self.path)
            _replace(self.path, data, self._trusted, self.new_mode)
            return
        _write_frame(self._sock, data)
        _raise_unless_ok(_read_frame(self._sock), self._credentials)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()  # the helper reads end-of-file and leaves
            self._sock = None
            _reap(self._pid)

    def _serve(self, credentials: Credentials, sock: socket.socket) -> None:
        try:
            _enter_child(credentials, sock)
            reply = _run(lambda: _check_replaceable(self.path, self._trusted))
            while True:
                _write_frame(sock, reply)
                data = _read_frame(sock)
                if data is None:
                    break
                reply = _run(lambda: _replace(self.path, data, self._trusted, self.new_mode))
        finally:
            os._exit(0)


def replace_file(path: str, data: bytes, new_mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` once (see Replacer)."""
    replacer = Replacer(path, new_mode)
    try:
        replacer.replace(data)
    finally:
        replacer.close()


# -- the child ---------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_FRAME = struct.Struct("!Q")


def as_user(credentials: Credentials, action: Callable[[], Optional[int]]) -> Optional[int]:
    """Run ``action`` in a forked child that has dropped to ``credentials``
    for good; return the descriptor it returned (received with SCM_RIGHTS),
    or raise the OSError it raised."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child leaves through os._exit
        parent_end.close()
        try:
            _enter_child(credentials, child_end)
            fds: list[int] = []

            def act() -> None:
                fd = action()
                if fd is not None:
                    fds.append(fd)

            socket.send_fds(child_end, [_run(act)], fds)
        finally:
            os._exit(0)
    child_end.close()
    try:
        message, fds, _, _ = socket.recv_fds(parent_end, 4096, 1)
    finally:
        parent_end.close()
        _reap(pid)
    if message != b"ok":
        for fd in fds:
            os.close(fd)
    _raise_unless_ok(message, credentials)
    return fds[0] if fds else None


def _enter_child(credentials: Credentials, sock: socket.socket) -> None:
    """Make this forked child the invoking user, holding nothing of root's."""
    parent = os.getppid()
    # Only the standard streams and the socket stay open: not root's BPF
    # maps and programs, nor other outputs.
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 65536)
    # A Ctrl-C at the terminal reaches the whole process group: the run
    # goes on to its summary, and so must this helper. It ends when
    # procnetmon closes the socket or dies (below).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)
    become(credentials)
    # Set after the change of user, which clears it: if procnetmon dies
    # (a signal while a FIFO waits for its reader), so does this child.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _run(action: Callable[[], object]) -> bytes:
    """``action()``'s outcome as a reply: b"ok", or its OSError in words."""
    try:
        action()
    except OSError as e:
        kind = "unsafe" if isinstance(e, UnsafePath) else "os"
        text = "\0".join([kind, str(e.errno or 0), e.strerror or "", os.fsdecode(e.filename or "")])
        return text.encode("utf-8", "backslashreplace")
    return b"ok"


def _raise_unless_ok(message: Optional[bytes], credentials: Optional[Credentials]) -> None:
    if message == b"ok":
        return
    parts = (message or b"").decode("utf-8", "replace").split("\0")
    if len(parts) != 4:
        uid = credentials.uid if credentials is not None else os.geteuid()
        raise OSError(errno.EIO, f"the helper acting as uid {uid} ended without an answer")
    kind, number, reason, filename = parts
    if kind == "unsafe":
        raise UnsafePath(reason.removeprefix("refused: "), filename)
    raise OSError(int(number) if number.isdigit() else errno.EIO, reason, filename or None)


def _write_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_FRAME.pack(len(data)) + data)


def _read_frame(sock: socket.socket) -> Optional[bytes]:
    """One length-prefixed message; None at end-of-file."""
    head = _read_exactly(sock, _FRAME.size)
    if head is None:
        return None
    return _read_exactly(sock, _FRAME.unpack(head)[0])


def _read_exactly(sock: socket.socket, size: int) -> Optional[bytes]:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _reap(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:
            continue
