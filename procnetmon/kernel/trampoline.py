"""Whether this kernel attaches BPF trampolines (fentry/fexit), found by trying.

A kernel can have BTF and the trampoline code and still refuse: without
ftrace direct calls, or under a security policy, loading or attaching a
tracing program fails. Only an attempt tells, so this loads the smallest
fexit program there is (``return 0``) on one kernel function and attaches
it for an instant, through the bpf(2) system call itself: no compiler, no
BCC, a millisecond.
"""

from __future__ import annotations

from procnetmon.kernel import bpfsys


def probe_fexit(btf_func_id: int) -> tuple[bool, str]:
    """(True, "") if an fexit program attaches to the function with BTF id
    ``btf_func_id``, else (False, why)."""
    ok, why = bpfsys.try_attach(bpfsys.BPF_TRACE_FEXIT, btf_func_id)
    return ok, "" if ok else f"an fexit program: {why}"


def probe_btf_tracepoint(btf_typedef_id: int) -> tuple[bool, str]:
    """(True, "") if a BTF-typed raw tracepoint program (tp_btf) attaches to
    the tracepoint whose ``btf_trace_<name>`` typedef has id ``btf_typedef_id``."""
    ok, why = bpfsys.try_attach(bpfsys.BPF_TRACE_RAW_TP, btf_typedef_id)
    return ok, "" if ok else f"a BTF-typed tracepoint program: {why}"
