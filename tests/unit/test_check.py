"""--check's parsers and verdicts, fed canned /proc text and hand-made findings."""

from __future__ import annotations

import pytest
from btfblob import BtfBuilder

from procnetmon import cgroups
from procnetmon.kernel import check
from procnetmon.kernel.btf import BTF
from procnetmon.kernel.check import CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, Finding

STATUS = """\
Name:\tprocnetmon
Umask:\t0022
State:\tR (running)
Uid:\t0\t0\t0\t0
CapInh:\t0000000000000000
CapPrm:\t000001ffffffffff
CapEff:\t{eff}
CapBnd:\t000001ffffffffff
CapAmb:\t0000000000000000
"""


@pytest.mark.parametrize("eff, caps", [
    ("000001ffffffffff", (1 << 41) - 1),
    ("0000000000000000", 0),
    ("000000c000200000", (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYS_ADMIN)),
])
def test_effective_caps(tmp_path, eff, caps):
    status = tmp_path / "status"
    status.write_text(STATUS.format(eff=eff))
    assert check.effective_caps(str(status)) == caps


def test_effective_caps_without_the_line_or_the_file(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapPrm:\t000001ffffffffff\n")
    assert check.effective_caps(str(status)) == 0
    assert check.effective_caps(str(tmp_path / "absent")) == 0


@pytest.mark.parametrize("caps, allowed", [
    (1 << CAP_SYS_ADMIN, True),
    ((1 << CAP_BPF) | (1 << CAP_PERFMON), True),
    ((1 << 41) - 1, True),
    (1 << CAP_BPF, False),
    (1 << CAP_PERFMON, False),
    ((1 << CAP_SYS_ADMIN) - 1, False),  # every capability below CAP_SYS_ADMIN (e.g. NET_ADMIN)
    (0, False),
])
def test_has_bpf_privileges(caps, allowed):
    assert check.has_bpf_privileges(caps) is allowed


def test_capability_numbers_are_the_kernels():
    assert (CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF) == (21, 38, 39)


MOUNTS = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,nosuid,nodev,noexec,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
none /other cgroup2 rw 0 0
"""


def test_cgroup2_mount(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    assert cgroups.cgroup2_mount(str(mounts)) == "/sys/fs/cgroup/unified"


def test_cgroup2_mount_absent(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("\n".join(MOUNTS.splitlines()[:3]) + "\nshort line\n")
    assert cgroups.cgroup2_mount(str(mounts)) is None
    assert cgroups.cgroup2_mount(str(tmp_path / "absent")) is None


def test_cgroup2_mount_with_a_space_in_the_path(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("none /mnt/my\\040cgroup cgroup2 rw 0 0\n")
    assert cgroups.cgroup2_mount(str(mounts)) == "/mnt/my cgroup"


# -- verdicts ------------------------------------------------------------------------

from procnetmon.kernel import backends  # noqa: E402


def backend_finding(name, usable=True, gaps=(), detail="hooks"):
    b = backends.Backend(name, usable, detail, gaps=list(gaps))
    return Finding(f"backend {name}", usable, detail, required=False, backend=b)


TRACEPOINT = backend_finding("tracepoint")
FENTRY = backend_finding("fentry")
NO_KPROBE = backend_finding("kprobe", usable=False, detail="no kprobes")


def test_payload_backend_when_all_is_well():
    ok, backend = check.payload_backend([Finding("privileges", True, "fine"), TRACEPOINT, FENTRY, NO_KPROBE])
    assert ok
    assert backend == "tracepoint (the best this kernel offers)"


def test_required_failure_blocks_and_is_named():
    ok, reason = check.payload_backend([
        Finding("privileges", True, "fine"),
        Finding("tracepoints", False, "missing: sched_process_exit"),
        Finding("cgroup2", False, "not mounted", required=False),
        TRACEPOINT,
    ])
    assert not ok
    assert reason == "tracepoints: missing: sched_process_exit"


def test_every_required_failure_is_named():
    ok, reason = check.payload_backend([
        Finding("bcc", False, "not importable"),
        Finding("btf", False, "missing"),
    ])
    assert not ok
    assert reason == "bcc: not importable; btf: missing"


def test_optional_failure_does_not_block():
    ok, backend = check.payload_backend([
        Finding("privileges", True, "fine"),
        Finding("tracefs", False, "not mounted", required=False),
        NO_KPROBE, FENTRY,
    ])
    assert ok
    assert backend.startswith("fentry (")


def test_no_backend_names_every_reason():
    ok, reason = check.payload_backend([
        backend_finding("tracepoint", False, detail="no tracepoint sock:sock_send_length"), NO_KPROBE])
    assert not ok
    assert "tracepoint: no tracepoint sock:sock_send_length" in reason and "kprobe: no kprobes" in reason


def test_a_backend_that_would_miss_data_gives_way_and_says_why():
    partial = backend_finding("tracepoint", gaps=["sendfile"])
    ok, backend = check.payload_backend([partial, FENTRY, NO_KPROBE])
    assert ok and backend == "fentry (not tracepoint: it would miss data here)"
    ok, backend = check.payload_backend([partial, NO_KPROBE])
    assert ok and backend.startswith("tracepoint")


def test_forced_backend():
    assert check.payload_backend([TRACEPOINT, FENTRY], "fentry") == (True, "fentry (forced with --backend)")
    ok, reason = check.payload_backend([TRACEPOINT, FENTRY, NO_KPROBE], "kprobe")
    assert not ok and "kprobe backend is not available here: no kprobes" in reason


def test_no_findings_block():
    assert not check.payload_backend([])[0]


# -- BTF-based findings on a built blob ----------------------------------------------


def btf_with_tracepoints(*names) -> BTF:
    b = BtfBuilder()
    void_ptr = b.add_ptr(0)
    proto = b.add_func_proto(0, [("", void_ptr)])
    for name in names:
        b.add_typedef(f"btf_trace_{name}", b.add_ptr(proto))
    return BTF(b.to_bytes())


def test_tracepoints_found_in_btf():
    finding = check.check_tracepoints(btf_with_tracepoints(*check.HELPER_TRACEPOINTS))
    assert finding.ok
    assert finding.required


def test_missing_tracepoint_is_named_with_the_fix():
    t = btf_with_tracepoints("sock_recv_length")
    assert not check.tracepoint_available("sched_process_exit", t)
    assert check.tracepoint_available("sock_recv_length", t)
    finding = check.check_tracepoints(t)
    assert not finding.ok
    assert finding.detail.startswith("missing: sched_process_exit (")


def test_tracepoint_backend_names_the_missing_tracepoint():
    facts = backends.BtfFacts.from_btf(btf_with_tracepoints("sock_recv_length"))
    b = backends.tracepoint_backend(facts)
    assert not b.usable
    assert b.detail == "no tracepoint sock:sock_send_length (added in Linux 6.3)"
    facts = backends.BtfFacts.from_btf(btf_with_tracepoints(*backends.TRACEPOINTS))
    assert backends.tracepoint_backend(facts).usable
    assert not facts.has_sendpage and facts.functions["inet_sendmsg"] is None


def test_kprobe_backend_needs_the_required_functions(monkeypatch):
    monkeypatch.setattr(backends.os.path, "exists", lambda p: p == backends.KPROBE_PMU)
    if backends.os.uname().machine != "x86_64":
        pytest.skip("the kprobe backend reads x86-64 registers")
    b = backends.kprobe_backend({"inet_sendmsg", "inet_recvmsg"})
    assert not b.usable and b.detail.endswith("missing from kallsyms: tcp_splice_read")
    b = backends.kprobe_backend({"inet_sendmsg", "inet_recvmsg", "tcp_splice_read", "inet6_sendmsg"})
    assert b.usable and b.functions == ("inet_sendmsg", "inet6_sendmsg", "inet_recvmsg", "tcp_splice_read")


def test_kernel_symbols_are_text_symbols(tmp_path):
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffffffff81000000 T inet_sendmsg\nffffffff82000000 d socket_file_ops\n"
                        "ffffffffc0000000 t udpv6_sendmsg\t[ipv6]\n")
    assert backends.kernel_symbols(str(kallsyms)) == {"inet_sendmsg", "udpv6_sendmsg"}


def test_layout_without_btf():
    finding = check.check_layout(None)
    assert not finding.ok and finding.detail == "needs BTF"


def test_layout_names_the_missing_struct():
    finding = check.check_layout(btf_with_tracepoints())
    assert not finding.ok
    assert "no struct sock" in finding.detail


def test_wire_mode_is_blocked_by_its_own_needs_only():
    ok = [check.Finding("bcc", True, "x"), TRACEPOINT]
    no_cgroup = ok + [check.Finding("cgroup2", False, "not mounted", required=False)]
    assert check.payload_backend(no_cgroup)[0] is True
    ready, reason = check.wire_backend(no_cgroup)
    assert ready is False and "cgroup2: not mounted" in reason
    assert check.wire_backend(ok)[0] is True
    assert check.wire_backend([check.Finding("bcc", False, "missing")])[0] is False


# -- kernel config -------------------------------------------------------------------


def test_kernel_config_not_needed_with_real_headers(monkeypatch):
    monkeypatch.setattr(check.headers, "real_headers_dir", lambda release=None: "/lib/modules/x/build")
    finding = check.check_kernel_config()
    assert finding.ok and "not needed" in finding.detail


def test_kernel_config_found(monkeypatch, tmp_path):
    config = tmp_path / "config-6.12.9-amd64"
    config.write_text("CONFIG_BPF_SYSCALL=y\n")
    monkeypatch.setattr(check.headers, "real_headers_dir", lambda release=None: None)
    monkeypatch.setattr(check.headers, "config_candidates", lambda release=None: [str(tmp_path / "x.gz"), str(config)])
    finding = check.check_kernel_config()
    assert finding.ok and str(config) in finding.detail


def test_kernel_config_missing_blocks_payload_mode_and_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setattr(check.headers, "real_headers_dir", lambda release=None: None)
    monkeypatch.setattr(check.headers, "config_candidates",
                        lambda release=None: [str(tmp_path / "config.gz"), str(tmp_path / "config-x")])
    finding = check.check_kernel_config()
    assert not finding.ok and finding.required
    assert f"{tmp_path / 'config.gz'} is missing" in finding.detail
    assert f"{tmp_path / 'config-x'} is missing" in finding.detail
    assert "/boot/config-" in finding.fix
    ready, reason = check.payload_backend([finding])
    assert not ready and reason.startswith("kernel config: none readable")


def test_a_refused_attempt_says_which_program_was_refused_and_why(monkeypatch):
    from procnetmon.kernel import bpfsys

    tried = []

    def refuse(attach_type, btf_id):
        tried.append((attach_type, btf_id))
        return False, "loading failed: Operation not permitted"

    monkeypatch.setattr(bpfsys, "try_attach", refuse)
    facts = backends.BtfFacts({"sock_send_length": 7}, dict.fromkeys(backends.FUNCTIONS, 11), False)
    symbols = set(backends.FUNCTIONS)
    assert backends._typed_tracepoints(facts) == (
        False, "field reads through bpf_probe_read_kernel: a BTF-typed tracepoint program: "
               "loading failed: Operation not permitted")
    assert backends.fentry_backend(facts, symbols).detail == (
        "BPF trampolines refused: an fexit program: loading failed: Operation not permitted "
        "(needs CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, Linux 5.5+)")
    assert tried == [(bpfsys.BPF_TRACE_RAW_TP, 7), (bpfsys.BPF_TRACE_FEXIT, 11)]
    monkeypatch.setattr(bpfsys, "try_attach", lambda attach_type, btf_id: (True, ""))
    assert backends._typed_tracepoints(facts) == (True, "")
    assert backends.fentry_backend(facts, symbols).usable
