"""The benchmark in a guest (testbed/vm.py --bench, scripts/vmbench): its pure parts."""

from __future__ import annotations

import json
import os
import shlex

import pytest

from testbed import vm

K612 = vm.Kernel(vm.KERNELS[2], "6.12.95+deb12-amd64", "/c/kernels/6.12.95+deb12-amd64")


def test_the_bench_kernel_is_the_one_fetched_with_headers():
    spec = next(k for k in vm.KERNELS if k.name == vm.BENCH_KERNEL)
    assert spec.headers


def test_the_guest_runs_tcp_only_with_short_runs_and_patient_timeouts():
    args = list(vm.BENCH_ARGS)
    assert args[args.index("--workloads") + 1] == "tcp"
    assert float(args[args.index("--seconds") + 1]) <= 5
    assert float(args[args.index("--timeout-scale") + 1]) > 1


def test_the_note_names_the_kernel_tcg_and_the_command():
    note = vm.bench_note(K612, "sudo scripts/vmbench", cpus=2)
    assert "6.12.95+deb12-amd64" in note and "Debian 13" in note
    assert "TCG without KVM" in note and "2 vCPUs" in note
    assert "only the ratios within this run" in note
    assert "`sudo scripts/vmbench`" in note
    assert "\n" not in note  # one paragraph


def test_the_plan_links_the_headers_and_writes_the_report_in_the_run_folder():
    plan = vm.bench_plan(K612, ["--workloads", "tcp"], "sudo scripts/vmbench", "/c/runs/t/6.12")
    assert plan["headers"] is None  # no usr/src under /c/kernels here: nothing to link
    args = plan["bench_args"]
    assert args[:2] == ["--workloads", "tcp"]
    assert args[args.index("--output") + 1] == "/c/runs/t/6.12/benchmarks.md"
    assert "TCG" in args[args.index("--note") + 1]
    json.dumps(plan)  # it travels to the guest as JSON


def test_the_plan_has_the_headers_when_they_were_fetched(tmp_path):
    (tmp_path / "usr/src/linux-headers-6.12.95+deb12-amd64").mkdir(parents=True)
    k = vm.Kernel(vm.KERNELS[2], "6.12.95+deb12-amd64", str(tmp_path))
    assert vm.bench_plan(k, [], "x", "/o")["headers"] == str(tmp_path)


def test_the_environment_lets_bcc_find_debians_split_headers_itself():
    env = vm.bench_environment({"BCC_KERNEL_SOURCE": "/somewhere", "PATH": "/usr/bin:/bin", "HOME": "/root"},
                               "/o")
    assert "BCC_KERNEL_SOURCE" not in env
    assert env["PROCNETMON_CACHE_DIR"] == "/o/procnetmon-cache"
    assert env["PATH"].split(":") == ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
    assert env["HOME"] == "/root"
    env = vm.bench_environment({"PATH": "/usr/sbin:/usr/bin:/sbin"}, "/o")
    assert env["PATH"] == "/usr/sbin:/usr/bin:/sbin"


def test_the_guest_line_runs_the_bench_side_with_its_log_in_the_shared_folder():
    cmd = vm.bench_guest_command("/w/main", "/c/runs/t/6.12")
    assert cmd == ("cd /w/main && exec /w/main/.venv/bin/python -m testbed.vm bench-guest --out /c/runs/t/6.12"
                   " > /c/runs/t/6.12/guest.log 2>&1")


def test_the_command_named_in_the_report():
    assert vm.bench_command(["--bench"]) == "sudo scripts/vmbench"
    cmd = vm.bench_command(["--bench", "--bench-args", "--reps 1 --seconds 3"])
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
    text = vm.sections(REPORT, ("Cost per run, as a multiple of the floor", "Results"))
    assert text.splitlines() == ["## Results", "", "| results |", "", "- tcptop: not measured here.", "",
                                 "## Cost per run, as a multiple of the floor", "", "| floor |"]


def test_bench_needs_exactly_one_kernel(capsys):
    with pytest.raises(SystemExit):
        vm.main(["--bench", "--kernels", "6.1,6.12", "--fetch-only"])
    assert "--bench boots one kernel" in capsys.readouterr().err


def test_a_guest_without_a_report_fails_and_shows_the_log(monkeypatch, tmp_path, capsys):
    out = tmp_path / "out"

    def fake_boot(vng, kernel, out_dir, guest_cmd, timeout):
        assert "bench-guest" in guest_cmd
        with open(os.path.join(out_dir, "bench.log"), "w") as f:
            f.write("bench: error: iperf3 tcp failed twice\n")
        return 12.0, False, 0

    monkeypatch.setattr(vm, "boot", fake_boot)
    rc = vm.bench_in_guest("/v/vng", K612, str(out), ["--reps", "1"], "sudo scripts/vmbench",
                           str(tmp_path / "docs/benchmarks-vm.md"))
    assert rc == 1
    assert "iperf3 tcp failed twice" in capsys.readouterr().err
    assert not (tmp_path / "docs/benchmarks-vm.md").exists()
    plan = json.loads((out / "bench-plan.json").read_text())
    assert plan["bench_args"][:2] == ["--reps", "1"]


def test_a_report_is_copied_and_its_tables_printed(monkeypatch, tmp_path, capsys):
    def fake_boot(vng, kernel, out_dir, guest_cmd, timeout):
        with open(os.path.join(out_dir, vm.BENCH_REPORT), "w") as f:
            f.write(REPORT)
        return 600.0, False, 0

    monkeypatch.setattr(vm, "boot", fake_boot)
    output = tmp_path / "docs/benchmarks-vm.md"
    assert vm.bench_in_guest("/v/vng", K612, str(tmp_path / "out"), [], "c", str(output)) == 0
    assert output.read_text() == REPORT
    printed = capsys.readouterr().out
    assert "| results |" in printed and "| floor |" in printed and "| bpf |" not in printed
