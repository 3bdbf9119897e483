"""The command line: argument types, defaults, dest names and every rule of
validate(), run through parse_args like a user would."""

import argparse

import pytest

from procnetmon import cli


def parse(capsys, *argv):
    """Parse and validate ``argv``; return the namespace."""
    parser = cli.build_parser()
    return cli.validate(parser.parse_args(list(argv)), parser)


def refused(capsys, *argv) -> str:
    """Parse ``argv``, expect a usage error (status 2); return stderr."""
    with pytest.raises(SystemExit) as exit_info:
        parse(capsys, *argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# --------------------------------------------------------------------------
# PIDs and interfaces


def test_pids_keep_order_drop_duplicates_tolerate_spaces():
    assert cli.parse_pids(" 12, 5 ,12,7,5") == [12, 5, 7]
    assert cli.parse_pids("1234,") == [1234]  # pgrep -d, style trailing comma


@pytest.mark.parametrize("bad", ["abc", "0", "-3", "1.5", "+4", "1e3", "٣"])
def test_bad_pid_is_named(bad):
    with pytest.raises(argparse.ArgumentTypeError) as err:
        cli.parse_pids(f"12,{bad}")
    assert f"invalid PID {bad!r} in '12,{bad}'" in str(err.value)
    assert "-p 1234,5678" in str(err.value)


def test_pid_above_linux_limit_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="at most 4194304"):
        cli.parse_pids("4194305")


def test_empty_pid_list_hints_at_pgrep(capsys):
    err = refused(capsys, "-p", "", "-t", "1s")
    assert "no PID in ''" in err and "pgrep" in err


def test_pid_error_through_parser(capsys):
    err = refused(capsys, "-p", "12,abc", "-t", "1s")
    assert "argument -p/--pids: invalid PID 'abc' in '12,abc': PIDs are positive integers, e.g. -p 1234,5678" in err


def test_interfaces_list():
    assert cli.parse_interfaces("eth0, wlan0,eth0,lo") == ["eth0", "wlan0", "lo"]
    assert cli.parse_interfaces("a" * 15) == ["a" * 15]


def test_interfaces_of_other_namespaces():
    assert cli.parse_interfaces("eth0,blue/veth1,pid:1234/eth0") == ["eth0", "blue/veth1", "pid:1234/eth0"]
    assert cli.parse_interfaces("a" * 40 + "/" + "b" * 15) == ["a" * 40 + "/" + "b" * 15]


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("a" * 16, "at most 15"),
        ("ns/eth0/1", "'/'"),
        ("/eth0", "namespace name before the '/'"),
        ("pid:x/eth0", "pid:PID/IFACE needs a PID"),
        ("pid:0/eth0", "pid:PID/IFACE needs a PID"),
        ("ns/", "empty"),
        ("my ns/eth0", "whitespace"),
        ("eth0:1", "':'"),
        ("my if", "whitespace"),
        ("", "empty"),
        ("..", "'..'"),
    ],
)
def test_bad_interface_is_named(bad, reason):
    text = f"eth0,{bad}"
    with pytest.raises(argparse.ArgumentTypeError) as err:
        cli.parse_interfaces(text)
    assert f"invalid interface name {bad.strip()!r}" in str(err.value)
    assert reason in str(err.value) and "-i eth0,wlan0" in str(err.value)


# --------------------------------------------------------------------------
# Defaults and dest names


def test_defaults_and_dest_names(capsys):
    args = parse(capsys, "-t", "10s")
    expected = dict(
        pids=None, interfaces=None, time=10.0, interval=1.0, continuous=False,
        count=None, aggregate=False, details=False, format="text", output=None,
        no_header=False, include_loopback=False, units="bits", sort="total",
        top=None, quiet=False, mode="payload", check=False, ebpf=False,
    )
    assert {key: getattr(args, key) for key in expected} == expected
    assert cli.is_streaming(args) is False


def test_every_option_reaches_its_dest(capsys):
    args = parse(
        capsys, "-p", "1,2", "-i", "eth0", "-n", "3", "--interval", "500ms", "-a", "-d",
        "-o", "/tmp/x", "--no-header", "--include-loopback", "--units", "bytes",
        "--sort", "name", "--top", "5", "-q", "--mode", "payload",
    )
    assert (args.pids, args.interfaces, args.count, args.interval) == ([1, 2], ["eth0"], 3, 0.5)
    assert args.aggregate and args.details and args.no_header and args.include_loopback
    assert (args.output, args.units, args.sort, args.top, args.mode) == ("/tmp/x", "bytes", "name", 5, "payload")
    assert args.quiet


@pytest.mark.parametrize(
    "argv, fmt",
    [
        (["-j"], "json"),
        (["--json"], "json"),
        (["--csv"], "csv"),
        (["--format", "csv"], "csv"),
        (["--format", "json", "--json"], "json"),  # agreeing options are fine
        ([], "text"),
    ],
)
def test_output_format(capsys, argv, fmt):
    assert parse(capsys, "-t", "1s", *argv).format == fmt


def test_design_examples_parse(capsys):
    examples = [
        ["-p", "1234,5678", "-t", "60s", "--json"],
        ["-t", "10s"],
        ["-p", "1234", "-i", "eth0", "--interval", "1s", "-c"],
        ["-t", "60s", "--csv", "-o", "/var/log/net.csv"],
        ["-p", "1234,5678", "-t", "5s", "--json"],
        ["--check"],
    ]
    results = [parse(capsys, *argv) for argv in examples]
    assert [cli.is_streaming(a) for a in results] == [False, False, True, False, False, False]
    assert results[0].format == "json" and results[3].format == "csv"
    assert results[5].check is True


def test_epilog_shows_the_examples():
    help_text = cli.build_parser().format_help()
    assert "examples:" in help_text
    assert "  procnetmon -p 1234 -i eth0 --interval 1s -c     # a line per second until Ctrl-C" in help_text
    assert "--ebpf" not in help_text  # hidden


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("procnetmon ")


# --------------------------------------------------------------------------
# Streaming


@pytest.mark.parametrize(
    "argv, streaming",
    [
        (["-t", "10s"], False),
        (["-t", "10s", "--interval", "1s"], True),  # explicit, even if equal to the default
        (["-c"], True),
        (["-c", "--interval", "2s"], True),
        (["-n", "5"], True),
    ],
)
def test_is_streaming(capsys, argv, streaming):
    args = parse(capsys, *argv)
    assert cli.is_streaming(args) is streaming


# --------------------------------------------------------------------------
# validate() rules: status 2 and a message that says what to write


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-t", "1s", "--json", "--csv"], "choose one output format: --json, --csv or --format"),
        (["-t", "1s", "--csv", "--format", "text"], "choose one output format"),
        (["-c", "-n", "3"], "use one of them"),
        (["-c", "-t", "5s"], "-c runs until stopped; drop -t, or use -t alone"),
        (["-n", "3", "-t", "5s"], "drop -t, or use -t alone"),
        ([], "say how long to sample: -t 10s (one summary), -c (until Ctrl-C) or -n 5 (five intervals)"),
        (["--json"], "say how long to sample"),
        (["-t", "1s", "--interval", "2s"], "use a shorter --interval or a longer -t"),
        (["-t", "1s", "--top", "3", "--json"], "--top limits the text table; drop --top, or drop --json"),
        (["-t", "1s", "--top", "3", "--csv"], "drop --csv"),
        (["--check", "--ebpf"], "choose one of --check or --ebpf"),
        (["-t", "0"], "more than zero"),
        (["--interval", "10ms", "-c"], "shortest is 100ms"),
        (["-n", "0"], "whole number of 1 or more"),
        (["-t", "1s", "--top", "x"], "whole number of 1 or more"),
        (["-t", "1s", "--sort", "size"], "invalid choice: 'size'"),
        (["-t", "1s", "--units", "bauds"], "invalid choice: 'bauds'"),
    ],
)
def test_rule_violations(capsys, argv, message):
    err = refused(capsys, *argv)
    assert message in err
    assert err.startswith("procnetmon: error: ") and err.count("\n") == 1, err


def test_interval_equal_to_time_is_fine(capsys):
    args = parse(capsys, "-t", "2s", "--interval", "2s")
    assert (args.time, args.interval) == (2.0, 2.0)


@pytest.mark.parametrize("flag", ["--check", "--ebpf"])
def test_check_and_ebpf_need_no_duration(capsys, flag):
    args = parse(capsys, flag)
    assert getattr(args, flag[2:]) is True
    assert args.time is None and not args.continuous and args.count is None


def test_parse_args_helper_validates(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["-c", "-t", "1s"])
    assert "-c runs until stopped" in capsys.readouterr().err
    assert cli.parse_args(["-n", "2"]).count == 2


def test_cli_imports_only_the_standard_library():
    import subprocess
    import sys

    # In a fresh interpreter: importing the CLI must not pull in bcc or psutil.
    code = (
        "import sys, procnetmon.cli; "
        "bad = sorted(m for m in ('bcc', 'psutil', 'procnetmon.engine') if m in sys.modules); "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_short_time_narrows_the_default_interval():
    args = cli.parse_args(["-t", "500ms"])
    assert args.interval == 0.5


def test_short_time_keeps_an_explicit_interval_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["-t", "500ms", "--interval", "1s"])
    assert e.value.code == 2
    assert "longer than -t" in capsys.readouterr().err



# --------------------------------------------------------------------------
# Ranges: refused while parsing, before anything is attached (issue 14, 7 and 8)


def test_more_pids_than_the_kernel_map_holds_are_refused(capsys):
    many = ",".join(str(p) for p in range(1, cli.MAX_PIDS + 2))
    err = refused(capsys, "-p", many, "-t", "1s")
    assert f"at most {cli.MAX_PIDS}" in err
    assert len(cli.parse_pids(",".join(str(p) for p in range(1, cli.MAX_PIDS + 1)))) == cli.MAX_PIDS
    # Duplicates do not count against the limit.
    assert cli.parse_pids(",".join(["7"] * (cli.MAX_PIDS + 10))) == [7]


def test_pid_limit_matches_the_bpf_map():
    import os
    import re
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    with open(os.path.join(root, "bpf", "common.h")) as f:
        size = int(re.search(r"#define MAX_PIDS (\d+)", f.read()).group(1))
    assert cli.MAX_PIDS == size


@pytest.mark.parametrize("argv, message", [
    (["-t", "1" + "0" * 400], "the longest is a year"),
    (["-t", "1" + "0" * 20 + "h"], "the longest is a year"),
    (["-t", "367d"], "invalid duration"),
    (["--interval", "10000000000", "-n", "1"], "the longest is a year"),
    (["-t", "8761h"], "the longest is a year"),
    (["-n", "1" + "0" * 5000], "the largest is 1000000000"),
    (["-n", "1000000001"], "the largest is 1000000000"),
    (["-t", "1s", "--top", "99999999999999"], "the largest is 1000000000"),
])
def test_values_out_of_range_are_usage_errors(capsys, argv, message):
    err = refused(capsys, *argv)
    assert message in err
    assert "Traceback" not in err


def test_longest_values_are_accepted(capsys):
    assert parse(capsys, "-t", "8760h").time == cli.MAX_DURATION
    assert parse(capsys, "-n", "1000000000", "--interval", "8760h").count == cli.MAX_COUNT


@pytest.mark.parametrize("argv", [["-c", "--top=--"], ["-c", "-n=--"], ["--interval=--", "-c"]])
def test_a_lone_double_dash_as_a_value_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(argv)
    assert e.value.code == 2
    assert "expected a value" in capsys.readouterr().err


def test_protocol_list_is_parsed_and_checked():
    from procnetmon import cli, probes

    assert cli.parse_protocols("tcp, ICMP,tcp") == ["tcp", "icmp"]
    assert cli.parse_protocols("udp,all") is None
    for bad in ("", "tcp,,udp", "quic", "tcp;udp"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.parse_protocols(bad)
    assert cli.PROTOCOL_CLASSES == probes.PROTOCOL_CLASSES


def test_protocol_option_reaches_the_probe_spec():
    from procnetmon import session

    args = cli.build_parser().parse_args(["-t", "1s", "--protocol", "icmp,packet"])
    assert args.protocols == ["icmp", "packet"]
    spec = session._probe_spec(args)
    assert spec.protocols == ("icmp", "packet") and spec.class_mask() == (1 << 3) | (1 << 8)
