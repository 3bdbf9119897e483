"""scripts/programs.txt is the one list of external programs, and the matrix installs its tools first."""
import os
import re
import subprocess
from pathlib import Path

from testbed.vm import cli, common, guest, kernels

ROOT = Path(__file__).resolve().parents[2]
# A subprocess call or a which() whose program is a string literal.
CALL = re.compile(r'(?:\b(?:run|Popen|check_output|check_call|call|_run|run_logged)\(\s*\[?\s*|shutil\.which\(\s*)'
                  r'"([A-Za-z0-9_.+/-]+)"')
# Literals the scan finds that name no external program: procnetmon itself, a
# bench workload, and node_exporter's upstream name (tried only when Debian's is absent).
NOT_EXTERNAL = {"procnetmon", "floor", "node_exporter"}


def listed() -> dict[str, tuple[str, set]]:
    rows = {}
    for line in (ROOT / "scripts" / "programs.txt").read_text().splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            program, package, groups = fields
            rows.setdefault(program, (package, set(groups.split(","))))
    return rows


def started_programs() -> dict[str, str]:
    found = {}
    for top in ("tests", "bench", "testbed"):
        for path in (ROOT / top).rglob("*.py"):
            for m in CALL.finditer(path.read_text()):
                found.setdefault(os.path.basename(m.group(1)), str(path.relative_to(ROOT)))
    return found


def test_every_program_the_code_starts_is_listed_with_its_package():
    programs = listed()
    unlisted = {p: where for p, where in started_programs().items()
                if p not in programs and p not in NOT_EXTERNAL}
    assert not unlisted, f"add these to scripts/programs.txt: {unlisted}"


def test_the_scan_sees_the_calls_it_must():
    found = started_programs()
    assert {"ip", "bpftool", "depmod", "setpriv", "prometheus"} <= set(found)


def test_the_matrix_needs_kmod_busybox_and_qemu_from_the_same_list():
    tools = guest.programs_of("vm")
    assert tools["depmod"] == "kmod"
    assert tools["busybox"] == "busybox-static"
    assert tools["qemu-system-x86_64"] == "qemu-system-x86"


def test_setup_knows_each_group_and_installs_run_with_every_group():
    lib = ROOT / "scripts" / "lib.sh"
    out = subprocess.run(["bash", "-c", f'. "{lib}"; packages_of "{ROOT}" vm'],
                         capture_output=True, text=True, check=True).stdout.split()
    assert {"kmod", "busybox-static", "qemu-system-x86", "python3-bpfcc", "iproute2"} <= set(out)
    assert "iperf3" not in out
    programs = subprocess.run(["bash", "-c", f'. "{lib}"; programs_of "{ROOT}" test'],
                              capture_output=True, text=True, check=True).stdout.split()
    assert {"unshare", "mountpoint", "setpriv", "ip", "python3"} <= set(programs) and "-" not in programs


def test_the_matrix_installs_its_tools_before_it_fetches_a_kernel(monkeypatch):
    # Fetching a kernel runs depmod: on a fresh machine kmod must already be there.
    calls = []

    def ensure_tools(*_a, **_k):
        calls.append("ensure_tools")
        return "/nonexistent/vng"

    def fetch_all(*_a, **_k):
        calls.append("fetch_all")
        raise common.VMError("stop here")

    monkeypatch.setattr(guest, "ensure_tools", ensure_tools)
    monkeypatch.setattr(kernels, "fetch_all", fetch_all)
    assert cli.main(["--kernels", "5.10", "--fetch-only"]) == 1
    assert calls == ["ensure_tools", "fetch_all"]
