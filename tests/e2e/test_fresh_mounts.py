"""A machine as it boots: no tracefs, no debugfs. procnetmon mounts what it
needs itself, through mount(2), says so, and --check changes nothing.

Each test runs procnetmon in a private mount namespace of its own where
tracefs and debugfs are unmounted, so the rest of the suite is untouched.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root

UNMOUNT = ("for m in /sys/kernel/debug/tracing /sys/kernel/tracing /sys/kernel/debug; do "
           "while mountpoint -q $m; do umount -l $m || exit 99; done; done; ")
PROCNETMON = f"{shlex.quote(sys.executable)} -m procnetmon"


def in_fresh_namespace(script: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", UNMOUNT + script],
                          capture_output=True, text=True, timeout=timeout, **kw)


def test_a_run_mounts_tracefs_itself_and_says_so():
    done = in_fresh_namespace(f"{PROCNETMON} -t 1s --json; echo status=$?; "
                              "mountpoint -q /sys/kernel/tracing && echo tracefs-mounted")
    assert "status=0" in done.stdout, done.stderr
    document = json.loads(done.stdout.split("status=")[0])
    assert document["type"] == "summary"
    assert "tracefs-mounted" in done.stdout
    said = [line for line in done.stderr.splitlines() if "mounted tracefs" in line]
    assert len(said) == 1 and "/sys/kernel/tracing" in said[0], done.stderr
    assert "error" not in done.stderr


def test_quiet_says_nothing_of_the_mount():
    done = in_fresh_namespace(f"{PROCNETMON} -q -t 1s --json >/dev/null; echo status=$?")
    assert "status=0" in done.stdout, done.stderr
    assert done.stderr == ""


def test_check_reports_and_changes_nothing():
    done = in_fresh_namespace(f"{PROCNETMON} --check; mountpoint -q /sys/kernel/tracing || echo still-unmounted")
    assert "still-unmounted" in done.stdout, done.stdout
    line = next(line for line in done.stdout.splitlines() if " tracefs " in line)
    assert "not mounted" in line and "a run mounts it" in line


def test_without_cap_sys_admin_it_stops_before_compiling_and_names_the_fix():
    # CAP_BPF and CAP_PERFMON load programs; mount(2) needs CAP_SYS_ADMIN.
    drop = ("setpriv --inh-caps=-all,+bpf,+perfmon,+dac_override --ambient-caps=-all,+bpf,+perfmon,+dac_override "
            "--bounding-set=-all,+bpf,+perfmon,+dac_override")
    done = in_fresh_namespace(f"{drop} {PROCNETMON} -t 1s --json; echo status=$?", timeout=30)
    assert "status=3" in done.stdout, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "tracefs" in lines[0] and "mount -t tracefs tracefs /sys/kernel/tracing" in lines[0]
    assert "CAP_SYS_ADMIN" in lines[0]


def test_a_failed_compile_starts_with_its_cause_and_names_its_log(tmp_path):
    # A tracefs without tracepoint formats: an empty tmpfs where it belongs.
    cache = tmp_path / "cache"
    done = in_fresh_namespace(
        "mount -t tmpfs -o mode=0755 fake /sys/kernel/tracing && mkdir /sys/kernel/tracing/events && "
        f"PROCNETMON_CACHE_DIR={shlex.quote(str(cache))} {PROCNETMON} -q -t 1s --json; echo status=$?")
    assert "status=3" in done.stdout, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "could not read the format of tracepoint" in lines[0]
    log = lines[0].split("the compiler's output is in ")[1].split(" ")[0]
    assert log.startswith(str(cache))
    with open(log) as f:
        assert "incomplete definition of type 'struct tracepoint__" in f.read()
    assert oct(__import__("os").stat(log).st_mode & 0o777) == "0o600"


def test_a_closed_stderr_pipe_does_not_abort_the_compile(tmp_path):
    # stderr's reader is gone before the compiler speaks: LLVM aborted with 134.
    out = tmp_path / "out.json"
    done = subprocess.run(["bash", "-c", f"{PROCNETMON} -t 1s --json 2>&1 >{shlex.quote(str(out))} | "
                                         "(exec 0<&-; true); echo status=${PIPESTATUS[0]}"],
                          capture_output=True, text=True, timeout=120)
    assert "status=0" in done.stdout, done
    assert json.loads(out.read_text())["type"] == "summary"
