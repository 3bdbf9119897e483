"""Bad values of --exit-over, --exclude-name and --exclude-cgroup, random and
hostile: each is one line on stderr and status 2, before anything is
attached (run() is never reached); good ones reach run() parsed."""

from __future__ import annotations

import contextlib
import io
import random

import pytest

from procnetmon import __main__ as entry
from procnetmon import session
from procnetmon.thresholds import Threshold

SEED = 23
RUNS = 400
PIECES = ["proc", "all", "zone", ":", "in", "out", "total", "+", ">", ">=", "<", "=", "0", "1", "10", ".5",
          "1.2.3", "-3", "9" * 40, "B", "kB", "KB", "Mb", "MiB", "gib", "TiB", "XB", "/s", "/h", "/", " ",
          "\\x00", "\x1b[2J", "\n", "\udcff", "é", "٣", "e9"]


def random_spec(rng: random.Random) -> str:
    if rng.random() < 0.3:  # mostly well-formed, with one part changed
        parts = [rng.choice(["", "proc:", "all:", "zone:"]), rng.choice(["in", "out", "in+out", "total", "x"]),
                 rng.choice([">", ">=", "<"]), rng.choice(["0", "10", "1.5", "-1", "1e3"]),
                 rng.choice(["", "B", "kB", "MB", "MiB", "Mb", "XB"]), rng.choice(["", "/s", "/m"])]
        return "".join(parts)
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 8)))


@pytest.fixture
def reached(monkeypatch):
    calls = []

    def fake_run(args, out, err, **_kw):
        calls.append(args)
        assert all(isinstance(t, Threshold) for t in args.exit_over or [])
        return entry.ExitStatus.OK

    monkeypatch.setattr(entry, "run", fake_run)
    return calls


def run_main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = entry.main(argv, stdout=out, stderr=err)
    return status, err.getvalue()


def test_random_thresholds_and_names_parse_or_fail_in_one_line(reached):
    rng = random.Random(SEED)
    outcomes = {0: 0, 2: 0}
    for i in range(RUNS):
        option = rng.choice(["--exit-over", "--exclude-name"])
        value = random_spec(rng) if option == "--exit-over" else rng.choice(
            ["backup*", "", "a/b", "x" * 300, "[", "?", "*", "\x00", "rsync", "\udcff", "-t"])
        before = len(reached)
        status, err = run_main(["-t", "1s", f"{option}={value}"])
        assert status in (0, 2), (option, value, status, err)
        assert "Traceback" not in err
        if status == 2:
            assert err.count("\n") == 1 and err.startswith("procnetmon: error: argument " + option), (value, err)
            assert len(reached) == before  # refused before anything would be attached
        outcomes[status] += 1
    assert outcomes[0] > 50 and outcomes[2] > 100, outcomes


@pytest.mark.parametrize("argv", [
    ["--exit-over", "out>10Mb"], ["--exit-over", "out"], ["--exit-over", ""], ["--exit-over=--"],
    ["--exit-over", "out>" + "9" * 5000], ["--exclude-name", "/usr/bin/rsync"], ["--exclude-name", ""],
])
def test_bad_values_are_one_line_and_status_2(reached, argv):
    status, err = run_main(["-t", "1s"] + argv)
    assert status == 2 and err.count("\n") == 1 and not reached, err
    assert len(err) < 400


def test_a_cgroup_or_container_that_is_not_there_is_refused_before_attaching(monkeypatch, tmp_path):
    from procnetmon import cgroups

    monkeypatch.setattr(cgroups, "cgroup2_mount", lambda *a: str(tmp_path))
    attached = []
    monkeypatch.setattr(session, "probe_for", lambda spec: attached.append(spec))
    for value in ["nope", "docker://" + "f" * 64, "../../etc", "lxc://\x1b[2J"]:
        with pytest.raises(session.BadRequest) as e:
            session._probe_spec(entry.cli.parse_args(["-t", "1s", "--exclude-cgroup", value]))
        assert "no cgroup or container" in str(e.value) and "\n" not in str(e.value)
    assert attached == []
