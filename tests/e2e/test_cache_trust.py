"""A kernel cache another user can change is refused before anything is
compiled from it (issue 20, item 5): root would paste what it holds into
the BPF program it loads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.root

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def run(cache: str, *env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PROCNETMON_CACHE_DIR=cache)
    env.pop("SUDO_UID", None)
    for pair in env_extra:
        key, value = pair.split("=", 1)
        env[key] = value
    return subprocess.run([sys.executable, "-m", "procnetmon", "-q", "-t", "1s", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def shared_tmp():
    top = tempfile.mkdtemp(prefix="pnm-cache-")
    os.chmod(top, 0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def test_a_cache_owned_by_another_user_is_refused(shared_tmp):
    cache = os.path.join(shared_tmp, "cache")
    os.mkdir(cache)
    os.chown(cache, 65534, 65534)
    subprocess.run(NOBODY + ["mkdir", os.path.join(cache, "planted")], check=True)
    done = run(cache)
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1 and "belongs to uid 65534" in done.stderr


def test_a_world_writable_cache_is_refused(shared_tmp):
    cache = os.path.join(shared_tmp, "cache")
    os.mkdir(cache)
    os.chmod(cache, 0o777)
    done = run(cache)
    assert done.returncode == 3 and "writable by group or others" in done.stderr, done.stderr


def test_under_sudo_the_environment_does_not_choose_the_cache(shared_tmp):
    cache = os.path.join(shared_tmp, "cache")
    os.mkdir(cache)
    os.chmod(cache, 0o777)
    done = run(cache, "SUDO_UID=65534", "SUDO_GID=65534")
    assert done.returncode == 0, done.stderr
    assert os.listdir(cache) == []
