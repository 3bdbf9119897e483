"""The README's commands as a fresh machine and a hostile user see them.

A fresh clone runs the README's first command in a fresh-boot state, and
$PROCNETMON_VENV, which chooses what the scripts execute as root, cannot be
pointed at a venv that another user controls.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
# A run of the README's first command on an empty machine: a venv from PyPI, then 2 s of sampling.
CLONE_TIMEOUT = 420


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROCNETMON_", "SUDO_", "PYTEST_", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


@pytest.fixture
def attacker_venv():
    """A venv-shaped directory that nobody made, whose programs leave a mark when root runs them."""
    home = tempfile.mkdtemp(prefix=f"procnetmon-attacker-{os.getpid()}-")
    os.chmod(home, 0o755)
    os.chown(home, NOBODY, NOBODY)
    venv = os.path.join(home, "venv")
    mark = os.path.join(home, "ran-as-root")
    payload = f"#!/bin/sh\nid -u > {mark}\n"
    subprocess.run([*AS_NOBODY, "sh", "-c",
                    f'mkdir -p {venv}/bin && for p in python procnetmon; do '
                    f'printf "%s" "$0" > {venv}/bin/$p; chmod 755 {venv}/bin/$p; done', payload],
                   check=True)
    yield venv, mark
    subprocess.run(["rm", "-rf", home], check=True)


def run_script(*args, env, timeout=300):
    return subprocess.run([str(ROOT / "scripts" / "procnetmon"), *args], capture_output=True, text=True,
                          env=env, cwd="/", timeout=timeout)


def test_a_venv_another_user_owns_is_refused(attacker_venv):
    venv, mark = attacker_venv
    done = run_script("--version", env=clean_env(PROCNETMON_VENV=venv))
    assert not os.path.exists(mark), "root ran the attacker's program"
    assert done.returncode != 0
    assert "refusing PROCNETMON_VENV" in done.stderr and "65534" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_venv_others_can_write_is_refused(attacker_venv, tmp_path):
    venv, mark = attacker_venv
    shared = tmp_path / "shared-venv"
    subprocess.run(["cp", "-a", venv, str(shared)], check=True)
    subprocess.run(["chown", "-R", "0:0", str(shared)], check=True)
    os.chmod(shared / "bin", 0o777)
    done = run_script("--version", env=clean_env(PROCNETMON_VENV=str(shared)))
    assert not os.path.exists(mark)
    assert done.returncode != 0 and "writable by group or others" in done.stderr


def test_under_sudo_the_venv_variable_is_ignored(attacker_venv):
    venv, mark = attacker_venv
    done = run_script("--version", env=clean_env(PROCNETMON_VENV=venv, SUDO_UID="1000", SUDO_GID="1000",
                                                 SUDO_USER="someone"))
    assert not os.path.exists(mark)
    assert done.returncode == 0, done.stderr
    assert "procnetmon" in done.stdout


def test_a_root_owned_venv_is_used():
    venv = ROOT / ".venv"
    mode = os.stat(venv).st_mode
    if os.stat(venv).st_uid != 0 or mode & (stat.S_IWGRP | stat.S_IWOTH):
        pytest.skip(f"{venv} is not root-owned and private to root here")
    done = run_script("--version", env=clean_env(PROCNETMON_VENV=str(venv)))
    assert done.returncode == 0, done.stderr


def test_the_readme_first_command_from_a_fresh_clone_in_a_fresh_boot(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", head], check=True)
    started = time.monotonic()
    done = subprocess.run([str(clone / "scripts" / "fresh"), str(clone / "scripts" / "procnetmon"),
                           "-t", "2s", "--json"], capture_output=True, text=True, cwd=str(clone),
                          env=clean_env(), stdin=subprocess.DEVNULL, timeout=CLONE_TIMEOUT)
    took = time.monotonic() - started
    assert done.returncode == 0, f"status {done.returncode} after {took:.0f} s: {done.stderr[-2000:]}"
    document = json.loads(done.stdout)
    assert document["schema"] == "procnetmon/1" and document["type"] == "summary"
    assert (clone / ".venv" / "bin" / "procnetmon").exists()
