"""A command started by a caller holding ambient capabilities gets none."""

import os
import shutil
import subprocess
import sys

import pytest

SNIPPET = """
from procnetmon.launch import Command
c = Command(["grep", "CapAmb", "/proc/self/status"])
c.start(); c.release(); raise SystemExit(c.wait())
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs CAP_SETPCAP (root) and setpriv to grant ambient capabilities")
def test_ambient_capabilities_are_not_passed_to_the_command():
    out = subprocess.run(
        ["setpriv", "--inh-caps", "+net_raw", "--ambient-caps", "+net_raw", sys.executable, "-c", SNIPPET],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["CapAmb:", "0000000000000000"]
