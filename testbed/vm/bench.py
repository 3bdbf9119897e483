"""The benchmark in a guest (scripts/vmbench, ``testbed.vm --bench``).

bcc's tcptop, which the benchmark sets beside procnetmon, needs kprobes and the
kernel's headers: this machine's kernel has neither, Debian's 6.12 both once
its linux-headers are linked in (guest.link_headers). ``--bench`` boots that
kernel and runs ``python -m bench`` in it, with options for a slow TCG guest;
the report comes back through the shared folder and is copied to BENCH_OUTPUT.
Pure parts are unit-tested in tests/unit/test_vmbench.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from typing import Optional

from testbed.vm import guest
from testbed.vm.common import GUEST_CPUS, ROOT, run_logged, say, write_json
from testbed.vm.kernels import Kernel

BENCH_KERNEL = "6.12"  # the default: kprobes, BTF, procnetmon's tracepoints, and headers fetched (headers=True)
BENCH_TIMEOUT = 35 * 60  # the guest, boot to report
# TCP only (tcptop counts TCP alone), short runs, few repetitions: every
# instruction is emulated, and BCC compiles each tool's program at start.
BENCH_ARGS = ("--workloads", "tcp", "--reps", "2", "--seconds", "3", "--bpf-reps", "2", "--bpf-seconds", "3",
              "--timeout-scale", "5")
BENCH_REPORT = "benchmarks.md"  # in the run's folder
BENCH_OUTPUT = os.path.join(ROOT, "docs", "benchmarks-vm.md")


# bcc's tools compile against the kernel's headers, whose include/linux/bpf.h
# takes the size of the opaque uapi structs (bpf_rb_root, bpf_wq, ...). BCC
# forces its own copy of the uapi bpf.h in first, and an old BCC's copy lacks
# the newer ones: Debian 12's BCC 0.26 cannot compile tcptop against 6.12's
# headers (bcc issue #4575; Debian 13 ships a newer BCC). tcptop then gets a
# copy of the header tree in which those definitions, taken from the kernel's
# own uapi bpf.h, come first.
TCPTOP_HEADERS = "tcptop-headers"  # in the run's folder


def bpf_structs_needed(linux_bpf_h: str) -> list[str]:
    """The uapi structs include/linux/bpf.h takes the size or alignment of, in order."""
    names = re.findall(r"(?:sizeof|__alignof__)\(struct (bpf_\w+)\)", linux_bpf_h)
    return list(dict.fromkeys(names))


def opaque_structs(uapi_bpf_h: str) -> dict[str, str]:
    """The uapi bpf.h's ``struct bpf_x { ... } __attribute__((aligned(N)));`` definitions, by name."""
    return {m.group(1): m.group(0) for m in
            re.finditer(r"^struct (bpf_\w+) \{\n[^{}]*?\n\} __attribute__\(\(aligned\(\d+\)\)\);$", uapi_bpf_h,
                         re.M)}


def bpf_struct_shim(linux_bpf_h: str, uapi_bpf_h: str, bcc_defines) -> tuple[list[str], str]:
    """The structs BCC's own uapi bpf.h lacks that the kernel's bpf.h needs, and a
    header defining them (empty when none is missing). ``bcc_defines(name)``
    says whether BCC's copy has the struct."""
    defs = opaque_structs(uapi_bpf_h)
    missing = [n for n in bpf_structs_needed(linux_bpf_h) if n in defs and not bcc_defines(n)]
    if not missing:
        return [], ""
    body = "\n\n".join(defs[n] for n in missing)
    return missing, ("/* Made by testbed/vm/bench.py for bcc's tcptop: BCC's own copy of the uapi bpf.h\n"
                     " * lacks these, which include/linux/bpf.h takes the size of. Copied from\n"
                     " * this kernel's include/uapi/linux/bpf.h. */\n"
                     "#ifndef _VMBENCH_BPF_STRUCTS\n#define _VMBENCH_BPF_STRUCTS\n"
                     "#include <linux/types.h>\n\n" + body + "\n#endif\n")


def libbcc_defines():
    """Whether the running BCC's built-in uapi bpf.h defines a struct (read from libbcc's bytes)."""
    import bcc  # noqa: F401  (loads libbcc, whose path /proc/self/maps then shows)

    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "libbcc.so" in line}
    data = b"".join(open(p, "rb").read() for p in sorted(paths))
    return lambda name: f"struct {name} {{".encode() in data


def tcptop_header_tree(kernel: Kernel, out: str, bcc_defines=None) -> tuple[Optional[str], list[str]]:
    """A header tree tcptop can compile against ($BCC_KERNEL_SOURCE), when the
    kernel's own needs the shim; (None, []) when BCC's copy lacks nothing."""
    if not kernel.headers:
        return None, []
    from procnetmon.kernel import headers

    version = kernel.release[:-len("-amd64")] if kernel.release.endswith("-amd64") else kernel.release
    build, source = kernel.headers, f"{kernel.root}/usr/src/linux-headers-{version}-common"
    with open(f"{source}/include/linux/bpf.h") as f:
        linux_bpf_h = f.read()
    with open(f"{source}/include/uapi/linux/bpf.h") as f:
        uapi_bpf_h = f.read()
    missing, shim = bpf_struct_shim(linux_bpf_h, uapi_bpf_h, bcc_defines or libbcc_defines())
    if not missing:
        return None, []
    root = f"{out}/{TCPTOP_HEADERS}"
    headers.merge_split_tree(root, build, source, "x86")
    # include/linux: a directory of links, with bpf.h defining the missing structs first.
    linux = f"{root}/include/linux"
    os.unlink(linux)
    os.makedirs(linux)
    for name in os.listdir(f"{source}/include/linux"):
        os.symlink(f"{source}/include/linux/{name}", f"{linux}/{name}")
    os.unlink(f"{linux}/bpf.h")
    with open(f"{linux}/bpf.h", "w") as f:
        f.write(shim + f'#include "{source}/include/linux/bpf.h"\n')
    return root, missing


def bench_note(kernel: Kernel, command: str, cpus: int = GUEST_CPUS, tcptop_shim: tuple = ()) -> str:
    """The report's first paragraph: where it ran, why its absolute numbers mean nothing, what made it."""
    return (f"**Measured in a QEMU guest running Debian's {kernel.release} kernel ({kernel.spec.distro}), "
            f"{cpus} vCPUs, under TCG without KVM** (nested virtualization hangs on the build machine), so "
            "every guest instruction is emulated: absolute numbers (throughput, CPU, start-up times, ns per "
            "program run) are far below native ones and mean nothing; only the ratios within this run, against "
            "its own no-monitor runs and its own empty programs, compare. Made by `" + command + "`; "
            "docs/benchmarks.md has the native figures."
            + ("" if not tcptop_shim else
               " tcptop: this machine's BCC (Debian 12's 0.26) cannot compile it against this kernel's headers "
               "as they are (bcc issue #4575: BCC's built-in uapi bpf.h lacks struct "
               + ", ".join(tcptop_shim) + ", whose size include/linux/bpf.h takes; Debian 13 ships a newer "
               "BCC), so it compiled against a copy of them in which those definitions, taken from the "
               "kernel's own uapi bpf.h, come first."))


def bench_plan(kernel: Kernel, bench_args: list[str], command: str, out: str,
               tcptop_tree: Optional[str] = None, tcptop_shim: tuple = ()) -> dict:
    """What the guest is to do: link the kernel's headers, then run the benchmark (guest_bench_args)."""
    return {"release": kernel.release, "headers": kernel.root if kernel.headers else None,
            "bench_args": list(bench_args), "output": f"{out}/{BENCH_REPORT}",
            "note": bench_note(kernel, command, tcptop_shim=tuple(tcptop_shim)),
            "tcptop_headers": tcptop_tree, "tcptop_shim": list(tcptop_shim)}


TCPTOP = "/usr/sbin/tcptop-bpfcc"


def probed_functions(script: str) -> list[str]:
    """The kernel functions a bcc tool's program probes by name (BCC attaches
    ``kprobe__f`` and ``kretprobe__f`` to ``f`` by itself)."""
    return list(dict.fromkeys(re.findall(r"\bint k(?:ret)?probe__(\w+)\(", script)))


def without_probes_on(script: str, gone: set) -> tuple[str, list[str]]:
    """A bcc tool's script whose auto-attached probes on the functions ``gone``
    are renamed so that BCC no longer attaches them; and which were."""
    dropped = []

    def rename(m):
        if m.group(2) not in gone:
            return m.group(0)
        dropped.append(f"{m.group(1)} {m.group(2)}")
        return f"int unattached_{m.group(1)}__{m.group(2)}("

    return re.sub(r"\bint (kprobe|kretprobe)__(\w+)\(", rename, script), dropped


def kernel_functions(kallsyms: str) -> set:
    return {line.split()[2] for line in kallsyms.splitlines() if len(line.split()) >= 3}


def tcptop_for_this_kernel(out: str, script_path: str = TCPTOP, kallsyms_path: str = "/proc/kallsyms"):
    """(In the guest) tcptop as shipped when the kernel has every function it
    probes; else a copy in ``out`` without the probes on the missing ones
    (Debian 12's tcptop probes tcp_sendpage, which Linux 6.5 removed), and
    the probes left out."""
    with open(script_path) as f:
        script = f.read()
    with open(kallsyms_path) as f:
        present = kernel_functions(f.read())
    gone = {fn for fn in probed_functions(script) if fn not in present}
    if not gone:
        return None, []
    text, dropped = without_probes_on(script, gone)
    path = f"{out}/{os.path.basename(script_path)}"
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path, dropped


def guest_bench_args(plan: dict, tcptop: Optional[str] = None, dropped: tuple = ()) -> list[str]:
    """The benchmark's arguments in the guest: the plan's, the report's place and its note."""
    note = plan["note"]
    args = list(plan["bench_args"]) + ["--output", plan["output"]]
    if tcptop:
        args += ["--tcptop", tcptop]
        note += (" tcptop as Debian 12 ships it also probes a function this kernel no longer has ("
                 + ", ".join(dropped) + "; tcp_sendpage went in Linux 6.5) and cannot start: the run used a "
                 "copy without those probes, its others unchanged (upstream tcptop has since dropped them too).")
    return args + ["--note", note]


def bench_environment(environ: dict, out: str, tcptop_headers: Optional[str] = None) -> dict:
    """The benchmark's environment in the guest.

    $BCC_KERNEL_SOURCE only for the shimmed tree (tcptop_header_tree), which
    only tcptop reads: procnetmon sets it in its own process, to a tree of
    its own. Otherwise none: given it, BCC takes every header from that one
    directory, but Debian splits them between /lib/modules/<release>/build
    (generated) and .../source, which BCC joins only when it looks there
    itself.
    """
    env = dict(environ, PYTHONDONTWRITEBYTECODE="1", PROCNETMON_CACHE_DIR=f"{out}/procnetmon-cache")
    env.pop("BCC_KERNEL_SOURCE", None)
    if tcptop_headers:
        env["BCC_KERNEL_SOURCE"] = tcptop_headers
    path = env.get("PATH", "").split(":")
    env["PATH"] = ":".join(path + [d for d in ("/usr/sbin", "/sbin") if d not in path])  # nethogs, tcptop
    return env


def bench_guest_main(out: str, timeout: float = BENCH_TIMEOUT - 3 * 60) -> int:
    """(Inside the guest) the plan of ``out``: headers linked, the benchmark run, bench.json written."""
    with open(f"{out}/bench-plan.json") as f:
        plan = json.load(f)
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    release = os.uname().release
    record = {"release": release, "uptime_at_start": uptime, "plan": plan}

    guest.ensure_modules(release)
    from procnetmon.kernel import mounts

    mounts.prepare()
    if plan.get("headers"):
        guest.link_headers(release, plan["headers"])
    record["build"] = os.path.realpath(f"/lib/modules/{release}/build")
    tcptop, dropped = tcptop_for_this_kernel(out)
    record["tcptop"], record["tcptop_dropped"] = tcptop, dropped
    started = time.monotonic()
    record["returncode"] = run_logged([sys.executable, "-m", "bench", *guest_bench_args(plan, tcptop, dropped)],
                                      bench_environment(os.environ, out, plan.get("tcptop_headers")),
                                      f"{out}/bench.log", timeout)
    record["seconds"] = round(time.monotonic() - started, 1)
    write_json(f"{out}/bench.json", record)
    return 0 if record["returncode"] == 0 else 1


def bench_guest_command(root: str, out: str) -> str:
    return guest.guest_line(root, out, ["bench-guest", "--out", out])


def sections(markdown: str, titles: tuple[str, ...]) -> str:
    """The ``## title`` sections of a report named in ``titles``, in the report's order."""
    out, keep = [], False
    for line in markdown.splitlines():
        if line.startswith("## "):
            keep = line[3:].strip() in titles
        if keep:
            out.append(line)
    return "\n".join(out).strip() + "\n"


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return f"({path} is missing)\n"


def bench_in_guest(vng: str, kernel: Kernel, out: str, bench_args: list[str], command: str, output: str,
                   timeout: float = BENCH_TIMEOUT) -> int:
    """Boot ``kernel``, run the benchmark in it, copy its report to ``output``; 0 if there is a report."""
    os.makedirs(out, exist_ok=True)
    try:
        tree, shim = tcptop_header_tree(kernel, out)
    except (OSError, ImportError) as e:
        say(f"no header tree for tcptop ({e}): it compiles against the kernel's headers as they are")
        tree, shim = None, []
    if shim:
        say(f"tcptop compiles against {tree}: BCC's own uapi bpf.h lacks struct {', '.join(shim)}")
    write_json(f"{out}/bench-plan.json", bench_plan(kernel, bench_args, command, out, tree, shim))
    say(f"booting {kernel.release} for the benchmark (at most {timeout / 60:.0f} minutes)")
    wall, timed_out, _ = guest.boot(vng, kernel, out, bench_guest_command(ROOT, out), timeout)
    report = f"{out}/{BENCH_REPORT}"
    state = "killed after" if timed_out else "done in"
    if not os.path.exists(report):
        say(f"{kernel.release}: {state} {wall:.0f} s without a report; the end of {out}/bench.log:")
        print(tail(f"{out}/bench.log") if os.path.exists(f"{out}/bench.log") else tail(f"{out}/guest.log"),
              end="", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    shutil.copyfile(report, output)
    with open(report) as f:
        print(sections(f.read(), ("Results", "Cost per run, as a multiple of the floor")), end="")
    say(f"{kernel.release}: {state} {wall:.0f} s; report {report}, copied to {output}")
    return 0


def bench_command(argv: list[str]) -> str:
    """The command line that made a report, as the report names it."""
    rest = [a for a in argv if a != "--bench"]
    return " ".join(["sudo", "scripts/vmbench", *(shlex.quote(a) for a in rest)])
