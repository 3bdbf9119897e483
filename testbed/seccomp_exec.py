"""Run a command under a system call allow list, as systemd's SystemCallFilter= would.

    python3 testbed/seccomp_exec.py --errno EPERM --allow-file FILE -- COMMAND [ARG...]

FILE lists the allowed system calls, one name a line (the test resolves the
unit's @groups with systemd-analyze); every other call fails with the errno
given, as with SystemCallErrorNumber=. The filter is built with libseccomp
(libseccomp2, which systemd itself links) through ctypes, loaded after
no_new_privs (as NoNewPrivileges=yes), and kept across the exec. Test
plumbing only: no part of procnetmon.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import os
import sys

SCMP_ACT_ALLOW = 0x7FFF0000
PR_SET_NO_NEW_PRIVS = 38


def scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


def load_filter(allowed: list[str], error: int) -> list[str]:
    """Install the filter on this process; return the names this
    architecture does not have (systemd skips those too)."""
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(scmp_act_errno(error))
    if not ctx:
        raise OSError("seccomp_init failed")
    unknown = []
    for name in allowed:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        # Negative: not a call of this architecture (or a pseudo-number).
        if number < 0 or lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 0) != 0:
            unknown.append(name)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    result = lib.seccomp_load(ctx)
    if result != 0:
        raise OSError(-result, "seccomp_load")
    return unknown


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--errno", default="EPERM")
    parser.add_argument("--allow-file", required=True)
    parser.add_argument("--umask", type=lambda v: int(v, 8))
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    with open(args.allow_file) as f:
        allowed = [line.strip() for line in f if line.strip()]
    if args.umask is not None:
        os.umask(args.umask)
    load_filter(allowed, getattr(errno, args.errno))
    sys.stdout.flush()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
