"""The benchmark in a guest (testbed/vm/bench.py, scripts/vmbench): its pure parts."""

from __future__ import annotations

import json
import os
import shlex

import pytest

from testbed.vm import bench, cli, guest, kernels

K612 = kernels.Kernel(kernels.KERNELS[2], "6.12.95+deb12-amd64", "/c/kernels/6.12.95+deb12-amd64")


def test_the_bench_kernel_is_the_one_fetched_with_headers():
    spec = next(k for k in kernels.KERNELS if k.name == bench.BENCH_KERNEL)
    assert spec.headers


def test_the_guest_runs_tcp_only_with_short_runs_and_patient_timeouts():
    args = list(bench.BENCH_ARGS)
    assert args[args.index("--workloads") + 1] == "tcp"
    assert float(args[args.index("--seconds") + 1]) <= 5
    assert float(args[args.index("--timeout-scale") + 1]) > 1


def test_the_note_names_the_kernel_tcg_and_the_command():
    note = bench.bench_note(K612, "sudo scripts/vmbench", cpus=2)
    assert "6.12.95+deb12-amd64" in note and "Debian 13" in note
    assert "TCG without KVM" in note and "2 vCPUs" in note
    assert "only the ratios within this run" in note
    assert "`sudo scripts/vmbench`" in note
    assert "\n" not in note  # one paragraph


def test_the_plan_links_the_headers_and_writes_the_report_in_the_run_folder():
    plan = bench.bench_plan(K612, ["--workloads", "tcp"], "sudo scripts/vmbench", "/c/runs/t/6.12")
    assert plan["headers"] is None  # no usr/src under /c/kernels here: nothing to link
    json.dumps(plan)  # it travels to the guest as JSON
    args = bench.guest_bench_args(plan)
    assert args[:2] == ["--workloads", "tcp"]
    assert args[args.index("--output") + 1] == "/c/runs/t/6.12/benchmarks.md"
    assert "TCG" in args[args.index("--note") + 1]
    assert "--tcptop" not in args


def test_the_plan_has_the_headers_when_they_were_fetched(tmp_path):
    (tmp_path / "usr/src/linux-headers-6.12.95+deb12-amd64").mkdir(parents=True)
    k = kernels.Kernel(kernels.KERNELS[2], "6.12.95+deb12-amd64", str(tmp_path))
    assert bench.bench_plan(k, [], "x", "/o")["headers"] == str(tmp_path)


def test_the_environment_lets_bcc_find_debians_split_headers_itself():
    env = bench.bench_environment({"BCC_KERNEL_SOURCE": "/somewhere", "PATH": "/usr/bin:/bin", "HOME": "/root"},
                               "/o")
    assert "BCC_KERNEL_SOURCE" not in env
    assert env["PROCNETMON_CACHE_DIR"] == "/o/procnetmon-cache"
    assert env["PATH"].split(":") == ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
    assert env["HOME"] == "/root"
    env = bench.bench_environment({"PATH": "/usr/sbin:/usr/bin:/sbin"}, "/o")
    assert env["PATH"] == "/usr/sbin:/usr/bin:/sbin"


def test_the_guest_line_runs_the_bench_side_with_its_log_in_the_shared_folder():
    cmd = bench.bench_guest_command("/w/main", "/c/runs/t/6.12")
    assert cmd == ("cd /w/main && exec /w/main/.venv/bin/python -m testbed.vm bench-guest --out /c/runs/t/6.12"
                   " > /c/runs/t/6.12/guest.log 2>&1")


def test_the_command_named_in_the_report():
    assert bench.bench_command(["--bench"]) == "sudo scripts/vmbench"
    cmd = bench.bench_command(["--bench", "--bench-args", "--reps 1 --seconds 3"])
    assert cmd == "sudo scripts/vmbench --bench-args '--reps 1 --seconds 3'"
    assert shlex.split(cmd)[-1] == "--reps 1 --seconds 3"


REPORT = """# procnetmon benchmarks

note

## Machine

| a | b |

## Results

| results |

- tcptop: not measured here.

## Targets

| targets |

## Cost per run, as a multiple of the floor

| floor |

## In-kernel cost of every program

| bpf |
"""


def test_sections_picks_the_named_ones_in_order():
    text = bench.sections(REPORT, ("Cost per run, as a multiple of the floor", "Results"))
    assert text.splitlines() == ["## Results", "", "| results |", "", "- tcptop: not measured here.", "",
                                 "## Cost per run, as a multiple of the floor", "", "| floor |"]


def test_bench_needs_exactly_one_kernel(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--bench", "--kernels", "6.1,6.12", "--fetch-only"])
    assert "--bench boots one kernel" in capsys.readouterr().err


def test_a_guest_without_a_report_fails_and_shows_the_log(monkeypatch, tmp_path, capsys):
    out = tmp_path / "out"

    def fake_boot(vng, kernel, out_dir, guest_cmd, timeout):
        assert "bench-guest" in guest_cmd
        with open(os.path.join(out_dir, "bench.log"), "w") as f:
            f.write("bench: error: iperf3 tcp failed twice\n")
        return 12.0, False, 0

    monkeypatch.setattr(guest, "boot", fake_boot)
    rc = bench.bench_in_guest("/v/vng", K612, str(out), ["--reps", "1"], "sudo scripts/vmbench",
                           str(tmp_path / "docs/benchmarks-vm.md"))
    assert rc == 1
    assert "iperf3 tcp failed twice" in capsys.readouterr().err
    assert not (tmp_path / "docs/benchmarks-vm.md").exists()
    plan = json.loads((out / "bench-plan.json").read_text())
    assert plan["bench_args"][:2] == ["--reps", "1"]


def test_a_report_is_copied_and_its_tables_printed(monkeypatch, tmp_path, capsys):
    def fake_boot(vng, kernel, out_dir, guest_cmd, timeout):
        with open(os.path.join(out_dir, bench.BENCH_REPORT), "w") as f:
            f.write(REPORT)
        return 600.0, False, 0

    monkeypatch.setattr(guest, "boot", fake_boot)
    output = tmp_path / "docs/benchmarks-vm.md"
    assert bench.bench_in_guest("/v/vng", K612, str(tmp_path / "out"), [], "c", str(output)) == 0
    assert output.read_text() == REPORT
    printed = capsys.readouterr().out
    assert "| results |" in printed and "| floor |" in printed and "| bpf |" not in printed


# -- tcptop's header tree -----------------------------------------------------------

LINUX_BPF_H = """\
static inline u32 btf_field_type_size(enum btf_field_type type)
{
	switch (type) {
	case BPF_SPIN_LOCK:
		return sizeof(struct bpf_spin_lock);
	case BPF_WORKQUEUE:
		return sizeof(struct bpf_wq);
	case BPF_RB_ROOT:
		return sizeof(struct bpf_rb_root);
	case BPF_KPTR_REF:
		return sizeof(u64);
	}
}
static inline u32 btf_field_type_align(enum btf_field_type type)
{
	return __alignof__(struct bpf_wq) + __alignof__(struct bpf_refcount);
}
"""

UAPI_BPF_H = """\
struct bpf_spin_lock {
	__u32	val;
};

struct bpf_wq {
	__u64 __opaque[2];
} __attribute__((aligned(8)));

struct bpf_rb_root {
	__u64 __opaque[2];
} __attribute__((aligned(8)));

struct bpf_refcount {
	__u32 __opaque[1];
} __attribute__((aligned(4)));

struct bpf_iter_num {
	__u64 __opaque[1];
} __attribute__((aligned(8)));
"""


def test_the_structs_the_kernels_bpf_h_takes_the_size_of():
    assert bench.bpf_structs_needed(LINUX_BPF_H) == ["bpf_spin_lock", "bpf_wq", "bpf_rb_root", "bpf_refcount"]


def test_the_opaque_uapi_structs():
    defs = bench.opaque_structs(UAPI_BPF_H)
    assert list(defs) == ["bpf_wq", "bpf_rb_root", "bpf_refcount", "bpf_iter_num"]
    assert defs["bpf_refcount"] == "struct bpf_refcount {\n\t__u32 __opaque[1];\n} __attribute__((aligned(4)));"


def test_the_shim_defines_only_what_bccs_copy_lacks():
    missing, shim = bench.bpf_struct_shim(LINUX_BPF_H, UAPI_BPF_H, lambda name: name == "bpf_rb_root")
    assert missing == ["bpf_wq", "bpf_refcount"]
    assert "struct bpf_wq {" in shim and "struct bpf_refcount {" in shim
    assert "bpf_rb_root" not in shim and "bpf_iter_num" not in shim
    assert shim.index("#include <linux/types.h>") < shim.index("struct bpf_wq")


def test_no_shim_when_bcc_has_them_all():
    assert bench.bpf_struct_shim(LINUX_BPF_H, UAPI_BPF_H, lambda name: True) == ([], "")


def _fake_headers(root, release="6.12.95+deb12-amd64"):
    build = root / f"usr/src/linux-headers-{release}"
    source = root / "usr/src/linux-headers-6.12.95+deb12-common"
    (build / "include/generated").mkdir(parents=True)
    (build / "arch/x86/include/generated").mkdir(parents=True)
    (source / "include/linux").mkdir(parents=True)
    (source / "include/uapi/linux").mkdir(parents=True)
    (source / "arch/x86/include/asm").mkdir(parents=True)
    (source / "include/linux/bpf.h").write_text(LINUX_BPF_H)
    (source / "include/linux/kconfig.h").write_text("")
    (source / "include/uapi/linux/bpf.h").write_text(UAPI_BPF_H)
    return kernels.Kernel(kernels.KERNELS[2], release, str(root)), source


def test_tcptops_tree_links_everything_but_a_bpf_h_that_defines_the_missing_structs_first(tmp_path):
    kernel, source = _fake_headers(tmp_path / "k")
    tree, missing = bench.tcptop_header_tree(kernel, str(tmp_path / "out"), lambda name: name == "bpf_wq")
    assert tree == str(tmp_path / "out" / bench.TCPTOP_HEADERS)
    assert missing == ["bpf_rb_root", "bpf_refcount"]
    linux = tmp_path / "out" / bench.TCPTOP_HEADERS / "include/linux"
    assert linux.is_dir() and not linux.is_symlink()
    assert os.readlink(linux / "kconfig.h") == str(source / "include/linux/kconfig.h")
    shim = (linux / "bpf.h").read_text()
    assert not (linux / "bpf.h").is_symlink()
    assert shim.rstrip().endswith(f'#include "{source}/include/linux/bpf.h"')
    assert shim.index("struct bpf_rb_root {") < shim.index("#include \"")
    gen = tmp_path / "out" / bench.TCPTOP_HEADERS / "include/generated"
    assert os.readlink(gen) == str(tmp_path / "k/usr/src/linux-headers-6.12.95+deb12-amd64/include/generated")


def test_no_tree_when_nothing_is_missing_or_there_are_no_headers(tmp_path):
    kernel, _ = _fake_headers(tmp_path / "k")
    assert bench.tcptop_header_tree(kernel, str(tmp_path / "out"), lambda name: True) == (None, [])
    assert not (tmp_path / "out" / bench.TCPTOP_HEADERS).exists()
    assert bench.tcptop_header_tree(K612, str(tmp_path / "out"), lambda name: False) == (None, [])


def test_the_note_and_the_plan_say_when_tcptop_got_the_shim():
    note = bench.bench_note(K612, "c", tcptop_shim=("bpf_wq", "bpf_refcount"))
    assert "bpf_wq, bpf_refcount" in note and "#4575" in note
    assert "#4575" not in bench.bench_note(K612, "c")
    plan = bench.bench_plan(K612, [], "c", "/o", "/o/tcptop-headers", ["bpf_wq"])
    assert plan["tcptop_headers"] == "/o/tcptop-headers" and plan["tcptop_shim"] == ["bpf_wq"]
    assert "bpf_wq" in bench.guest_bench_args(plan)[-1]


def test_only_the_shimmed_tree_becomes_bcc_kernel_source():
    env = bench.bench_environment({"BCC_KERNEL_SOURCE": "/x", "PATH": "/bin"}, "/o", "/o/tcptop-headers")
    assert env["BCC_KERNEL_SOURCE"] == "/o/tcptop-headers"


# -- tcptop's probes ----------------------------------------------------------------

TCPTOP_SCRIPT = """#! /usr/bin/python3
bpf_text = \"\"\"
int kprobe__tcp_sendmsg(struct pt_regs *ctx, struct sock *sk)
{ return 0; }
int kretprobe__tcp_sendmsg(struct pt_regs *ctx)
{ return 0; }
int kretprobe__tcp_sendpage(struct pt_regs *ctx)
{ return tcp_sendstat(size); }
int kprobe__tcp_sendpage(struct pt_regs *ctx, struct sock *sk,
    struct page *page, int offset, size_t size)
{ return 0; }
int kprobe__tcp_cleanup_rbuf(struct pt_regs *ctx, struct sock *sk, int copied)
{ return 0; }
\"\"\"
"""

KALLSYMS = """ffffffff90b325c0 T tcp_sendmsg
ffffffff90b327b0 T tcp_cleanup_rbuf
ffffffffc0a01000 t veth_xmit	[veth]
"""


def test_the_functions_a_tool_probes():
    assert bench.probed_functions(TCPTOP_SCRIPT) == ["tcp_sendmsg", "tcp_sendpage", "tcp_cleanup_rbuf"]
    assert bench.kernel_functions(KALLSYMS) == {"tcp_sendmsg", "tcp_cleanup_rbuf", "veth_xmit"}


def test_probes_on_gone_functions_are_renamed_away_and_the_rest_kept():
    text, dropped = bench.without_probes_on(TCPTOP_SCRIPT, {"tcp_sendpage"})
    assert dropped == ["kretprobe tcp_sendpage", "kprobe tcp_sendpage"]
    assert bench.probed_functions(text) == ["tcp_sendmsg", "tcp_cleanup_rbuf"]
    assert "int unattached_kprobe__tcp_sendpage(struct pt_regs *ctx, struct sock *sk," in text
    assert text.replace("unattached_", "") == TCPTOP_SCRIPT


def test_tcptop_is_copied_only_when_the_kernel_lacks_a_probed_function(tmp_path):
    script, kallsyms = tmp_path / "tcptop-bpfcc", tmp_path / "kallsyms"
    script.write_text(TCPTOP_SCRIPT)
    kallsyms.write_text(KALLSYMS)
    out = tmp_path / "out"
    out.mkdir()
    path, dropped = bench.tcptop_for_this_kernel(str(out), str(script), str(kallsyms))
    assert path == str(out / "tcptop-bpfcc") and os.access(path, os.X_OK)
    assert dropped == ["kretprobe tcp_sendpage", "kprobe tcp_sendpage"]
    assert "unattached_kprobe__tcp_sendpage" in (out / "tcptop-bpfcc").read_text()
    kallsyms.write_text(KALLSYMS + "ffffffff90b32000 T tcp_sendpage\n")
    assert bench.tcptop_for_this_kernel(str(tmp_path / "elsewhere"), str(script), str(kallsyms)) == (None, [])


def test_the_guest_runs_the_copy_and_the_note_says_so():
    plan = bench.bench_plan(K612, ["--reps", "1"], "c", "/o")
    args = bench.guest_bench_args(plan, "/o/tcptop-bpfcc", ["kprobe tcp_sendpage"])
    assert args[args.index("--tcptop") + 1] == "/o/tcptop-bpfcc"
    assert args[-2] == "--note" and "kprobe tcp_sendpage" in args[-1] and "Linux 6.5" in args[-1]
    assert args[-1].startswith(plan["note"])
