"""Fixtures for the real-probe tests: a kernel able to run them, and peer hosts.

These tests load BPF programs on the running kernel. They are skipped only
when a capability or kernel feature is missing, and the reason names it.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Peer

from procnetmon.kernel import check


def _missing_feature() -> str:
    if not check.has_bpf_privileges():
        return "CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN) to load BPF programs: run the tests as root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC's Python module (python3-bpfcc)"
    btf_finding, btf = check.check_btf()
    if not btf_finding.ok:
        return f"kernel BTF: {btf_finding.detail}"
    tracepoints = check.check_tracepoints(btf)
    if not tracepoints.ok:
        return f"kernel tracepoints: {tracepoints.detail}"
    # $PROCNETMON_BACKEND picks the backend every procnetmon of the tests uses.
    wanted = os.environ.get("PROCNETMON_BACKEND", "auto") or "auto"
    ready, why = check.payload_backend(check.check_backends(btf), wanted)
    if not ready:
        return f"a probe backend: {why}"
    return ""


def pytest_collection_modifyitems(config, items):
    missing = _missing_feature()
    for item in items:
        if "tests/e2e" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.root)
            if missing:
                item.add_marker(pytest.mark.skip(reason=f"needs {missing}"))


@pytest.fixture
def peer():
    p = Peer.create(0)
    yield p
    p.destroy()


@pytest.fixture
def second_peer():
    p = Peer.create(1)
    yield p
    p.destroy()
