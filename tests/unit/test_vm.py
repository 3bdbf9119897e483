"""The kernel matrix's pure parts (testbed/vm.py): package choice, apt options, guest plan, result table."""

from __future__ import annotations

import os

import pytest

from testbed import vm

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
    assert vm.mirror_from_sources(SOURCES) == "http://mirror.example/debian"


def test_mirror_from_sources_skips_security_only_stanzas():
    text = SOURCES.split("\n\n")[1] + "\n\n" + SOURCES.split("\n\n")[0]
    assert vm.mirror_from_sources(text) == "http://mirror.example/debian"


def test_mirror_from_sources_without_a_mirror():
    with pytest.raises(vm.VMError):
        vm.mirror_from_sources("Types: deb\n")


def test_sources_list_names_each_suite():
    text = vm.sources_list("http://m/debian", ("bullseye", "bookworm-backports"), keyring="/k.gpg")
    assert text == ("deb [signed-by=/k.gpg] http://m/debian bullseye main\n"
                    "deb [signed-by=/k.gpg] http://m/debian bookworm-backports main\n")


def test_apt_options_touch_nothing_of_the_machines_own():
    opts = vm.apt_options("/c/apt")
    pairs = dict(opts[i + 1].split("=", 1) for i in range(0, len(opts), 2))
    assert pairs["Dir::Etc::sourcelist"] == "/c/apt/sources.list"
    assert pairs["Dir::Etc::sourceparts"] == "-"
    assert pairs["Dir::State::Lists"] == "/c/apt/lists"
    assert pairs["Dir::Cache"] == "/c/apt/cache"


@pytest.mark.parametrize("spec, names, want", [
    (vm.KERNELS[0], ["linux-image-5.10.0-9-amd64", "linux-image-5.10.0-32-amd64", "linux-image-5.10.0-32-rt-amd64",
                     "linux-image-5.10.0-32-amd64-dbg", "linux-image-5.10.0-28-amd64"],
     "linux-image-5.10.0-32-amd64"),
    (vm.KERNELS[1], ["linux-image-6.1.0-47-amd64-unsigned", "linux-image-6.1.0-50-amd64",
                     "linux-image-6.1.0-50-amd64-unsigned", "linux-image-6.1.0-9-amd64-unsigned"],
     "linux-image-6.1.0-50-amd64-unsigned"),
    (vm.KERNELS[2], ["linux-image-6.12.9+bpo-amd64", "linux-image-6.12.95+deb12-amd64",
                     "linux-image-6.12.95+deb12-amd64-unsigned", "linux-image-6.12.101+deb12-cloud-amd64",
                     "linux-image-6.12.41+deb12-amd64"],
     "linux-image-6.12.95+deb12-amd64"),
])
def test_newest_build_of_each_kernel(spec, names, want):
    assert vm.newest(names, spec.image) == want


def test_newest_of_nothing():
    assert vm.newest(["linux-image-4.19.0-1-amd64"], vm.KERNELS[0].image) is None


def test_headers_packages():
    assert vm.headers_packages("6.12.95+deb12-amd64") == [
        "linux-headers-6.12.95+deb12-amd64", "linux-headers-6.12.95+deb12-common"]
    assert vm.headers_packages("5.10.0-32-amd64") == ["linux-headers-5.10.0-32-amd64",
                                                      "linux-headers-5.10.0-32-common"]
    with pytest.raises(vm.VMError):
        vm.headers_packages("6.1.0-1-arm64")


def test_kernel_paths():
    k = vm.Kernel(vm.KERNELS[1], "6.1.0-50-amd64", "/c/kernels/6.1.0-50-amd64")
    assert k.vmlinuz == "/c/kernels/6.1.0-50-amd64/boot/vmlinuz-6.1.0-50-amd64"
    assert k.config == "/c/kernels/6.1.0-50-amd64/boot/config-6.1.0-50-amd64"
    assert k.modules == "/c/kernels/6.1.0-50-amd64/lib/modules/6.1.0-50-amd64"


# -- the guest --------------------------------------------------------------------


def test_guest_command_keeps_its_output_in_the_shared_folder():
    cmd = vm.guest_command("/w/vm", "/c/runs/x/6.1", False, None)
    assert cmd == ("cd /w/vm && exec /w/vm/.venv/bin/python -m testbed.vm guest --out /c/runs/x/6.1"
                   " > /c/runs/x/6.1/guest.log 2>&1")
    cmd = vm.guest_command("/w/vm", "/o", True, "/c/kernels/6.12")
    assert "guest --out /o --all --headers /c/kernels/6.12 >" in cmd


def test_vng_command_uses_tcg_and_9p_and_shares_the_kernels():
    k = vm.Kernel(vm.KERNELS[0], "5.10.0-32-amd64", "/c/kernels/5.10.0-32-amd64")
    cmd = vm.vng_command("/v/vng", k, "/o", "true", cache="/c")
    assert cmd[:3] == ["/v/vng", "--disable-kvm", "--force-9p"]
    assert cmd[cmd.index("--rodir") + 1] == "/c/kernels"
    assert cmd[cmd.index("--rwdir") + 1] == "/o"
    assert cmd[cmd.index("-r") + 1] == k.vmlinuz
    assert cmd[-2:] == ["--exec", "true"]


def test_reasons_from_check():
    text = "ok  btf  /sys/kernel/btf/vmlinux\n--  fentry   trampolines refused: EPERM\n--  kprobes  not set\n"
    assert vm.reasons_from_check(text, "fentry") == "--  fentry   trampolines refused: EPERM"
    assert vm.reasons_from_check(text, "kprobe") == "--  kprobes  not set"
    assert vm.reasons_from_check(text, "tracepoint") == "procnetmon --check does not offer it"


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

    vm.link_headers(release, str(unpacked), str(guest_modules))
    linked = guest_modules / release
    assert linked.is_dir() and not linked.is_symlink()
    assert (linked / "modules.dep").exists() and (linked / "kernel").is_dir()
    assert os.readlink(linked / "build") == f"{unpacked}/usr/src/linux-headers-{release}"
    assert os.readlink(linked / "source") == f"{unpacked}/usr/src/linux-headers-6.12.95+deb12-common"
    assert os.path.islink(mods / "build")  # the cache is untouched


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
    out = vm.parse_junit(JUNIT)
    assert out["payload"].passed == 1
    assert out["payload"].failed == ["test_payload[splice_from_socket]", "test_payload[udp_mmsg]"]
    assert out["wire"].passed == 1 and out["wire"].failed == []
    assert out["wire"].skipped == {"needs kernel tracepoints: missing sock_send_length": 2}


def test_rows_report_missing_and_unrun_backends_and_silent_runs():
    guest = {"runs": [{"label": "tracepoint", "seconds": 61.5, "returncode": 1},
                      {"label": "kprobe", "seconds": 3.0, "returncode": 2, "log": "/o/kprobe.log"}],
             "missing": {"fentry": "--  fentry  refused"}, "not_run": {"kprobe+x": "CI subset"}}
    rows = vm.rows_of("6.1", guest, {"tracepoint": JUNIT})
    assert [(r.backend, r.mode, r.passed, r.failed) for r in rows] == [
        ("tracepoint", "payload", 1, 2), ("tracepoint", "wire", 1, 0),
        ("kprobe", "-", 0, 1), ("fentry", "-", 0, 0), ("kprobe+x", "-", 0, 0)]
    assert "no results" in rows[2].note and "/o/kprobe.log" in rows[2].note
    assert rows[3].note == "missing: --  fentry  refused"
    assert rows[4].note == "not run: CI subset"
    assert vm.any_failed(rows)
    assert not vm.any_failed(rows[3:])


def test_format_table():
    rows = vm.rows_of("6.1", {"runs": [{"label": "tracepoint", "seconds": 61.5}],
                              "missing": {"fentry": "x"}}, {"tracepoint": JUNIT})
    text = vm.format_table(rows)
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
    vm.ensure_modules("5.10.0-32-amd64", str(modules), str(cache))
    assert os.readlink(modules / "5.10.0-32-amd64") == str(unpacked)
    vm.ensure_modules("5.10.0-32-amd64", str(modules), str(cache))  # already there: left alone
    assert os.readlink(modules / "5.10.0-32-amd64") == str(unpacked)


def test_a_hung_guest_is_killed_and_reported(monkeypatch, tmp_path):
    fake_vng = tmp_path / "vng"
    fake_vng.write_text("#!/bin/sh\nsleep 60\n")
    fake_vng.chmod(0o755)
    monkeypatch.setattr(vm, "install_boot_config", lambda kernel: None)
    k = vm.Kernel(vm.KERNELS[1], "6.1.0-50-amd64", str(tmp_path / "k"))
    guest = vm.boot_and_test(str(fake_vng), k, str(tmp_path / "out"), False, timeout=0.5)
    assert guest["timed_out"] is True and guest["wall"] < 30
    assert not vm.RUNNING
    rows = vm.rows_of("6.1", guest, {})
    assert rows[0].failed == 1 and "no results" in rows[0].note


def test_guests_booted_at_once_follow_the_cpus():
    assert vm.default_jobs(3, cpus=2) == 2
    assert vm.default_jobs(3, cpus=8) == 3
    assert vm.default_jobs(3, cpus=1) == 1
    assert vm.default_jobs(1, cpus=64) == 1
