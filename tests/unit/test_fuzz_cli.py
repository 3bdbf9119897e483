"""Random command lines built from procnetmon's real flags and hostile values,
run in-process through main() (issue 14): whatever they are, the answer is
a documented status (0 or 2 here, nothing being measured) and at most a
usage message, never a traceback. Seeded, so a failure can be replayed."""

from __future__ import annotations

import contextlib
import io
import random

import pytest

from procnetmon import __main__ as entry
from procnetmon import cli

SEED = 14
RUNS = 600

VALUES = [
    "", " ", "0", "1", "-1", "5", "1.5", "10s", "500ms", "1m30s", "1h", "100ms", "99ms", "8760h", "8761h",
    "1e3", "nan", "inf", "-inf", "1" + "0" * 400, "9" * 5000, "0x10", "٣", "1,2,3", "1,,2,", "4194305",
    ",".join(str(p) for p in range(1, 4200)), "abc", "\x1b[31m", "a\nb", "\udcff", "lo", "eth0", "lo,eth0",
    "a" * 16, "..", "x/y", "-", "/dev/null", "/nonexistent/dir/f.csv", "json", "csv", "text", "wire",
    "payload", "bits", "bytes", "pid", "name", "total", "auto", "tracepoint", "--", "-t", "--json",
    "out>10MB", "proc:in+out>1MiB/s", "out>0", "out>=1", "in>1Mb", "*", "backup*", "[", "a/b",
]


def real_options():
    parser = cli.build_parser()
    options = []
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        takes_value = action.nargs != 0
        options.append((action.option_strings, takes_value, list(action.choices or [])))
    return options


OPTIONS = real_options()


TIMING = ["-t", "--time", "-n", "--count", "-c", "--continuous"]


def random_argv(rng: random.Random) -> list[str]:
    argv = []
    if rng.random() < 0.7:
        # Most lines say how long, so that they get past the basic rules and
        # their values are what is tested.
        flag = rng.choice(TIMING)
        if flag in ("-c", "--continuous"):
            argv.append(flag)
        else:
            argv += [flag, rng.choice(["5s", "3", "1"] + VALUES)]
    for _ in range(rng.randint(0, 4)):
        roll = rng.random()
        if roll < 0.05:
            argv.append(rng.choice(["--nope", "-z", "stray", "--json=1", "-pt", "-t5s", "--inter"]))
            continue
        names, takes_value, choices = rng.choice(OPTIONS)
        name = rng.choice(names)
        if not takes_value:
            argv.append(name)
            continue
        value = rng.choice(choices) if choices and rng.random() < 0.5 else rng.choice(VALUES)
        if name.startswith("--") and rng.random() < 0.2:
            argv.append(f"{name}={value}")
        else:
            argv += [name, value]
    return argv


def short(thing) -> str:
    text = repr(thing)
    return text if len(text) < 300 else text[:300] + "..."


@pytest.fixture
def no_measuring(monkeypatch):
    """run() is what attaches probes: here it only checks what it is given."""
    calls = []

    def fake_run(args, out, err, **_kw):
        calls.append(args)
        assert args.format in cli.FORMATS
        # What the engine and the kernel maps can take (a year, 10^9, 4096 PIDs).
        assert args.interval >= 0.1 or args.interval == args.time
        assert 0 < args.interval <= 365 * 86400
        assert args.time is None or 0 < args.time <= 365 * 86400
        assert args.count is None or 1 <= args.count <= 10**9
        assert args.top is None or 1 <= args.top <= 10**9
        assert args.pids is None or 1 <= len(args.pids) <= 4096
        return entry.ExitStatus.OK

    monkeypatch.setattr(entry, "run", fake_run)
    return calls


def test_random_command_lines_end_in_a_documented_status(no_measuring):
    rng = random.Random(SEED)
    statuses = {}
    for i in range(RUNS):
        argv = random_argv(rng)
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                status = entry.main(argv, stdout=out, stderr=err)
        except SystemExit as e:  # argparse's way out, taken as its status
            status = e.code
        except BaseException as e:  # noqa: B036 - any other escape is the failure looked for
            pytest.fail(f"run {i} {short(argv)} raised {short(e)}")
        assert status in (0, 2), (short(argv), status, err.getvalue())
        assert "Traceback" not in err.getvalue()
        if status == 2:
            assert "procnetmon: error:" in err.getvalue(), short(argv)
            assert err.getvalue().count("\n") <= 12, short(argv)  # a usage and one message
        statuses[status] = statuses.get(status, 0) + 1
    # The generator reaches both outcomes, so the test can fail either way.
    assert statuses.get(0, 0) > 20 and statuses.get(2, 0) > 100, statuses
