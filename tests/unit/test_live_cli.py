"""--live on the command line: what it goes with, what it refuses, and the
terminal it needs, checked before anything is attached."""

from __future__ import annotations

import io
import os
import pty

import pytest

from procnetmon import __main__ as entry
from procnetmon import cli, session
from procnetmon.kernel import check


def parse(*argv: str):
    return cli.parse_args(list(argv))


def refused(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line
    return err


def test_live_needs_no_duration_and_streams():
    for flag in ("--live", "-l"):
        args = parse(flag)
        assert args.live and cli.is_streaming(args)
    assert not parse("-t", "1").live


@pytest.mark.parametrize("argv", [["-t", "10s"], ["-n", "5"], ["-c"], ["--json", "-o", "/tmp/x.json"],
                                  ["--csv", "-o", "/tmp/x.csv"], ["-o", "/tmp/x.txt"], ["--interval", "2s"],
                                  ["-p", "1", "--children"], ["--group-by", "name"], ["--mode", "wire"], ["-d"]])
def test_live_goes_with(argv):
    assert parse("--live", *argv).live


@pytest.mark.parametrize("argv, words", [
    (["--json"], "--json needs -o FILE with --live"),
    (["--csv"], "--csv needs -o FILE with --live"),
    (["--format", "json"], "--format needs -o FILE"),
    (["--format", "prometheus", "-o", "/tmp/m.prom"], "--format prometheus"),
    (["-o", "-"], "-o - would write records into the view"),
    (["--serve", "9101"], "--serve runs as a daemon and --live at a terminal"),
    (["--", "sleep", "1"], "-- COMMAND keeps the terminal for COMMAND"),
])
def test_live_refuses(capsys, argv, words):
    assert words in refused(capsys, "--live", *argv)


def test_details_are_counted_for_the_d_key_but_written_only_when_asked():
    assert session._wants_details(parse("--live"))
    assert not parse("--live").details
    assert not session._wants_details(parse("-t", "1"))


def test_live_refuses_a_stdout_that_is_not_a_terminal_before_anything_else(monkeypatch):
    entry._load_modules()
    monkeypatch.setattr(check, "has_bpf_privileges", lambda: False)  # would be the next error
    out, err = io.StringIO(), io.StringIO()
    assert entry.main(["--live"], stdout=out, stderr=err) == 2
    assert err.getvalue() == ("procnetmon: error: --live draws a full-screen view, and standard output is not "
                              "a terminal: run it in one, or use -c for a line per process per interval\n")
    assert out.getvalue() == ""


def test_live_refuses_a_stdin_that_is_not_a_terminal(monkeypatch):
    entry._load_modules()
    leader, follower = pty.openpty()
    try:
        with open(follower, "w", closefd=False) as terminal:
            monkeypatch.setattr("sys.stdin", io.StringIO())
            err = io.StringIO()
            assert entry.main(["--live"], stdout=terminal, stderr=err) == 2
            assert "reads its keys from standard input, which is not a terminal" in err.getvalue()
    finally:
        os.close(leader)
        os.close(follower)
