"""The kernel matrix's pure parts (testbed/vm/): package choice, apt options, guest plan, result table."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.vm import cli, common, guest, kernels, results

SOURCES = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_mirror_from_sources_takes_the_main_archive():
    assert kernels.mirror_from_sources(SOURCES) == "http://mirror.example/debian"


def test_mirror_from_sources_skips_security_only_stanzas():
    text = SOURCES.split("\n\n")[1] + "\n\n" + SOURCES.split("\n\n")[0]
    assert kernels.mirror_from_sources(text) == "http://mirror.example/debian"


def test_mirror_from_sources_without_a_mirror():
    with pytest.raises(common.VMError):
        kernels.mirror_from_sources("Types: deb\n")


def test_sources_list_names_each_suite():
    text = kernels.sources_list("http://m/debian", ("bullseye", "bookworm-backports"), keyring="/k.gpg")
    assert text == ("deb [signed-by=/k.gpg] http://m/debian bullseye main\n"
                    "deb [signed-by=/k.gpg] http://m/debian bookworm-backports main\n")


def test_apt_options_touch_nothing_of_the_machines_own():
    opts = kernels.apt_options("/c/apt")
    pairs = dict(opts[i + 1].split("=", 1) for i in range(0, len(opts), 2))
    assert pairs["Dir::Etc::sourcelist"] == "/c/apt/sources.list"
    assert pairs["Dir::Etc::sourceparts"] == "-"
    assert pairs["Dir::State::Lists"] == "/c/apt/lists"
    assert pairs["Dir::Cache"] == "/c/apt/cache"


@pytest.mark.parametrize("spec, names, want", [
    (kernels.KERNELS[0], ["linux-image-5.10.0-9-amd64", "linux-image-5.10.0-32-amd64", "linux-image-5.10.0-32-rt-amd64",
                     "linux-image-5.10.0-32-amd64-dbg", "linux-image-5.10.0-28-amd64"],
     "linux-image-5.10.0-32-amd64"),
    (kernels.KERNELS[1], ["linux-image-6.1.0-47-amd64-unsigned", "linux-image-6.1.0-50-amd64",
                     "linux-image-6.1.0-50-amd64-unsigned", "linux-image-6.1.0-9-amd64-unsigned"],
     "linux-image-6.1.0-50-amd64-unsigned"),
    (kernels.KERNELS[2], ["linux-image-6.12.9+bpo-amd64", "linux-image-6.12.95+deb12-amd64",
                     "linux-image-6.12.95+deb12-amd64-unsigned", "linux-image-6.12.101+deb12-cloud-amd64",
                     "linux-image-6.12.41+deb12-amd64"],
     "linux-image-6.12.95+deb12-amd64"),
])
def test_newest_build_of_each_kernel(spec, names, want):
    assert kernels.newest(names, spec.image) == want


def test_newest_of_nothing():
    assert kernels.newest(["linux-image-4.19.0-1-amd64"], kernels.KERNELS[0].image) is None


def test_headers_packages():
    assert kernels.headers_packages("6.12.95+deb12-amd64") == [
        "linux-headers-6.12.95+deb12-amd64", "linux-headers-6.12.95+deb12-common"]
    assert kernels.headers_packages("5.10.0-32-amd64") == ["linux-headers-5.10.0-32-amd64",
                                                      "linux-headers-5.10.0-32-common"]
    with pytest.raises(common.VMError):
        kernels.headers_packages("6.1.0-1-arm64")


def test_kernel_paths():
    k = kernels.Kernel(kernels.KERNELS[1], "6.1.0-50-amd64", "/c/kernels/6.1.0-50-amd64")
    assert k.vmlinuz == "/c/kernels/6.1.0-50-amd64/boot/vmlinuz-6.1.0-50-amd64"
    assert k.config == "/c/kernels/6.1.0-50-amd64/boot/config-6.1.0-50-amd64"
    assert k.modules == "/c/kernels/6.1.0-50-amd64/lib/modules/6.1.0-50-amd64"


# -- the guest --------------------------------------------------------------------


def test_guest_command_keeps_its_output_in_the_shared_folder():
    cmd = guest.guest_command("/w/vm", "/c/runs/x/6.1", False, None)
    assert cmd == ("cd /w/vm && exec /w/vm/.venv/bin/python -m testbed.vm guest --out /c/runs/x/6.1"
                   " > /c/runs/x/6.1/guest.log 2>&1")
    cmd = guest.guest_command("/w/vm", "/o", True, "/c/kernels/6.12")
    assert "guest --out /o --all --headers /c/kernels/6.12 >" in cmd


def test_vng_command_uses_tcg_and_9p_and_shares_the_kernels():
    k = kernels.Kernel(kernels.KERNELS[0], "5.10.0-32-amd64", "/c/kernels/5.10.0-32-amd64")
    cmd = guest.vng_command("/v/vng", k, "/o", "true", cache="/c")
    assert cmd[:3] == ["/v/vng", "--disable-kvm", "--force-9p"]
    assert cmd[cmd.index("--rodir") + 1] == "/c/kernels"
    assert cmd[cmd.index("--rwdir") + 1] == "/o"
    assert cmd[cmd.index("-r") + 1] == k.vmlinuz
    assert cmd[-2:] == ["--exec", "true"]


def test_reasons_from_check():
    text = "ok  btf  /sys/kernel/btf/vmlinux\n--  fentry   trampolines refused: EPERM\n--  kprobes  not set\n"
    assert guest.reasons_from_check(text, "fentry") == "--  fentry   trampolines refused: EPERM"
    assert guest.reasons_from_check(text, "kprobe") == "--  kprobes  not set"
    assert guest.reasons_from_check(text, "tracepoint") == "procnetmon --check does not offer it"


def test_link_headers_replaces_the_modules_link(tmp_path):
    release = "6.12.95+deb12-amd64"
    unpacked = tmp_path / "k"
    mods = unpacked / "lib/modules" / release
    (mods / "kernel").mkdir(parents=True)
    (mods / "modules.dep").write_text("")
    os.symlink("/usr/src/linux-headers-" + release, mods / "build")  # the image package's dangling link
    guest_modules = tmp_path / "guest-modules"
    guest_modules.mkdir()
    os.symlink(mods, guest_modules / release)

    guest.link_headers(release, str(unpacked), str(guest_modules))
    linked = guest_modules / release
    assert linked.is_dir() and not linked.is_symlink()
    assert (linked / "modules.dep").exists() and (linked / "kernel").is_dir()
    assert os.readlink(linked / "build") == f"{unpacked}/usr/src/linux-headers-{release}"
    assert os.readlink(linked / "source") == f"{unpacked}/usr/src/linux-headers-6.12.95+deb12-common"
    assert os.path.islink(mods / "build")  # the cache is untouched


def test_the_guest_runs_the_first_offered_backend_and_says_why_the_others_are_missing(monkeypatch, tmp_path):
    check = "--  fentry   trampolines refused: EPERM\n--  kprobes  not set\n"
    runs = []
    monkeypatch.setattr(guest, "ensure_modules", lambda release: None)
    monkeypatch.setattr(guest, "offered_backends", lambda: ["tracepoint"])
    monkeypatch.setattr(guest.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stdout=check, stderr=""))
    from procnetmon.kernel import mounts
    monkeypatch.setattr(mounts, "prepare", lambda: None)

    def run_matrix_tests(out, label, backend, timeout, cache_dir, tests=guest.MATRIX_TESTS):
        runs.append((label, backend))
        assert tests == guest.MATRIX_TESTS  # the CI subset: the health module only with --all
        return {"label": label, "backend": backend, "returncode": 0, "seconds": 1.0, "log": f"{out}/{label}.log"}

    monkeypatch.setattr(guest, "run_matrix_tests", run_matrix_tests)
    assert guest.guest_main(str(tmp_path), False, None) == 0
    record = json.loads((tmp_path / "guest.json").read_text())
    assert runs == [("tracepoint", "tracepoint")]
    assert record["offered"] == ["tracepoint"]
    assert record["missing"] == {"fentry": "--  fentry   trampolines refused: EPERM", "kprobe": "--  kprobes  not set"}
    assert record["not_run"] == {} and record["check"] == check


def test_no_payload_backend_runs_nothing_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(guest, "ensure_modules", lambda release: None)
    monkeypatch.setattr(guest, "offered_backends", lambda: [])
    monkeypatch.setattr(guest.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, "", ""))
    from procnetmon.kernel import mounts
    monkeypatch.setattr(mounts, "prepare", lambda: None)
    monkeypatch.setattr(guest, "run_matrix_tests", lambda *a: pytest.fail("ran a backend that is not offered"))
    guest.guest_main(str(tmp_path), True, None)
    record = json.loads((tmp_path / "guest.json").read_text())
    assert record["runs"] == [] and record["missing"]["auto"] == "no payload backend on this kernel"
    assert set(record["missing"]) == {"auto", *guest.BACKENDS}


# -- results ----------------------------------------------------------------------

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="2" tests="6">
<testcase classname="tests.e2e.test_matrix" name="test_payload[tcp_ipv4]" time="1"/>
<testcase classname="tests.e2e.test_matrix" name="test_payload[splice_from_socket]" time="1">
  <failure message="AssertionError">x</failure></testcase>
<testcase classname="tests.e2e.test_matrix" name="test_payload[udp_mmsg]" time="1">
  <error message="fixture failed">x</error></testcase>
<testcase classname="tests.e2e.test_matrix" name="test_wire[tcp_ipv4]" time="1">
  <skipped type="pytest.skip" message="needs kernel tracepoints: missing sock_send_length">x</skipped></testcase>
<testcase classname="tests.e2e.test_matrix" name="test_wire[tcp_ipv6]" time="1">
  <skipped type="pytest.skip" message="needs kernel tracepoints: missing sock_send_length">x</skipped></testcase>
<testcase classname="tests.e2e.test_matrix" name="test_wire[udp_ipv4]" time="1"/>
</testsuite></testsuites>
"""


def test_parse_junit_by_mode():
    out = results.parse_junit(JUNIT)
    assert out["payload"].passed == 1
    assert out["payload"].failed == ["test_payload[splice_from_socket]", "test_payload[udp_mmsg]"]
    assert out["wire"].passed == 1 and out["wire"].failed == []
    assert out["wire"].skipped == {"needs kernel tracepoints: missing sock_send_length": 2}


def test_rows_report_missing_and_unrun_backends_and_silent_runs():
    record = {"runs": [{"label": "tracepoint", "seconds": 61.5, "returncode": 1},
                       {"label": "kprobe", "seconds": 3.0, "returncode": 2, "log": "/o/kprobe.log"}],
              "missing": {"fentry": "--  fentry  refused"}, "not_run": {"kprobe+x": "CI subset"}}
    rows = results.rows_of("6.1", record, {"tracepoint": JUNIT})
    assert [(r.backend, r.mode, r.passed, r.failed) for r in rows] == [
        ("tracepoint", "payload", 1, 2), ("tracepoint", "wire", 1, 0),
        ("kprobe", "-", 0, 1), ("fentry", "-", 0, 0), ("kprobe+x", "-", 0, 0)]
    assert "no results" in rows[2].note and "/o/kprobe.log" in rows[2].note
    assert rows[3].note == "missing: --  fentry  refused"
    assert rows[4].note == "not run: CI subset"
    assert results.any_failed(rows)
    assert not results.any_failed(rows[3:])


def test_format_table():
    rows = results.rows_of("6.1", {"runs": [{"label": "tracepoint", "seconds": 61.5}],
                              "missing": {"fentry": "x"}}, {"tracepoint": JUNIT})
    text = results.format_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["kernel", "backend", "mode", "passed", "failed", "skipped", "(reason)", "time"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split()[:5] == ["6.1", "tracepoint", "payload", "1", "2"]
    assert "2 (needs kernel tracepoints: missing sock_send_length)" in lines[3]
    assert "62 s" in lines[2] or "61 s" in lines[2]
    assert "missing: x" in lines[4]
    assert lines[-1].startswith("failed: 6.1 tracepoint test_payload[splice_from_socket]")


def test_ensure_modules_links_the_unpacked_modules(tmp_path):
    cache = tmp_path / "cache"
    unpacked = cache / "kernels/5.10.0-32-amd64/lib/modules/5.10.0-32-amd64"
    unpacked.mkdir(parents=True)
    (unpacked / "modules.dep").write_text("")
    modules = tmp_path / "modules"
    modules.mkdir()
    os.symlink("/nowhere", modules / "5.10.0-32-amd64")  # what virtme-ng left when it saw no modules
    guest.ensure_modules("5.10.0-32-amd64", str(modules), str(cache))
    assert os.readlink(modules / "5.10.0-32-amd64") == str(unpacked)
    guest.ensure_modules("5.10.0-32-amd64", str(modules), str(cache))  # already there: left alone
    assert os.readlink(modules / "5.10.0-32-amd64") == str(unpacked)


def test_a_hung_guest_is_killed_and_reported(monkeypatch, tmp_path):
    fake_vng = tmp_path / "vng"
    fake_vng.write_text("#!/bin/sh\nsleep 60\n")
    fake_vng.chmod(0o755)
    monkeypatch.setattr(guest, "install_boot_config", lambda kernel: None)
    k = kernels.Kernel(kernels.KERNELS[1], "6.1.0-50-amd64", str(tmp_path / "k"))
    record = guest.boot_and_test(str(fake_vng), k, str(tmp_path / "out"), False, timeout=0.5)
    assert record["timed_out"] is True and record["wall"] < 30
    assert not common.RUNNING
    rows = results.rows_of("6.1", record, {})
    assert rows[0].failed == 1 and "no results" in rows[0].note


def test_guests_booted_at_once_follow_the_cpus():
    assert cli.default_jobs(3, cpus=2) == 2
    assert cli.default_jobs(3, cpus=8) == 3
    assert cli.default_jobs(3, cpus=1) == 1
    assert cli.default_jobs(1, cpus=64) == 1


def test_the_summary_has_the_table_the_timings_and_a_killed_guest(tmp_path):
    native, killed = tmp_path / "native", tmp_path / "6.1"
    native.mkdir()
    (native / "tracepoint.xml").write_text(JUNIT)
    runs = {"6.12.0 (native)": (str(native), {"runs": [{"label": "tracepoint", "seconds": 61.5}], "wall": 70.2,
                                              "uptime_at_start": 1.0, "check_seconds": 2.4}),
            "6.1 6.1.0-50-amd64": (str(killed), {"runs": [], "wall": 2400.3, "timed_out": True,
                                                 "uptime_at_start": 30.2})}
    rows, text = results.matrix_summary(runs, 2471.6, 2400)
    assert results.any_failed(rows)
    assert text.endswith("\n6.12.0 (native): wall 70 s, --check 2 s, runs: tracepoint 62 s\n"
                         "6.1 6.1.0-50-amd64: wall 2400 s, boot 30 s (TIMED OUT)\n"
                         "matrix wall time: 2472 s\n")
    assert text.startswith(results.format_table(rows))
    assert f"guest killed after 2400 s (limit 2400 s, or stopped); see {killed}/*.log" in text


# -- the package's shape ------------------------------------------------------------

# Each part imports only those on lower layers: no cycle can appear.
LAYERS = {"common": 0, "kernels": 1, "results": 1, "guest": 2, "bench": 3, "cli": 4, "__main__": 5}


def test_each_part_of_the_package_imports_only_the_parts_below_it():
    package = Path(__file__).resolve().parents[2] / "testbed" / "vm"
    assert {p.stem for p in package.glob("*.py")} == set(LAYERS) | {"__init__"}
    for name, layer in LAYERS.items():
        tree = ast.parse((package / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("testbed.vm"):
                parts = [node.module.rsplit(".", 1)[1]] if node.module != "testbed.vm" else \
                    [a.name for a in node.names]
                for part in parts:
                    assert LAYERS[part] < layer, f"{name} imports {part}"


def test_python_m_testbed_vm_is_the_command_line():
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "testbed.vm", "--help"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: vmtest ")
    assert "The kernel matrix: real Debian kernels booted under QEMU" in done.stdout
