"""The filters on the remote end and the ports (--remote, --remote-port,
--local-port and their --exclude- forms): parsing, the keys and values the
kernel's maps get (bpf/remote.h), the semantics the one lookup gives, and
bad values (one line, status 2, nothing attached)."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import pathlib
import random

import pytest

from procnetmon import __main__ as entry
from procnetmon import cli, endpoints, session
from procnetmon.probes.loader import build_cflags
from procnetmon.probes.spec import ProbeSpec

V4_MAPPED = bytes(10) + b"\xff\xff"


# -- parsing -------------------------------------------------------------------------------


def parse(*argv):
    return cli.parse_args([*argv, "-t", "1s"])


def test_each_option_repeats_and_takes_lists():
    args = parse("--remote", "198.18.0.0/15,fd42::/16", "--remote", "203.0.113.9", "--exclude-remote",
                 "198.18.7.1/24", "--remote-port", "443,8000-8100", "--exclude-remote-port", "8080",
                 "--local-port", "5432", "--exclude-local-port", "22,0-10")
    assert args.remotes == ["198.18.0.0/15", "fd42::/16", "203.0.113.9/32"]
    assert args.exclude_remotes == ["198.18.7.0/24"]  # host bits dropped
    assert args.remote_ports == [(443, 443), (8000, 8100)]
    assert args.exclude_remote_ports == [(8080, 8080)]
    assert args.local_ports == [(5432, 5432)]
    assert args.exclude_local_ports == [(22, 22), (0, 10)]


def test_not_given_is_none_and_reaches_the_spec_as_none():
    spec = session._probe_spec(parse())
    assert spec.remotes is None and spec.local_ports is None and not spec.filters_ends()


def test_the_options_become_spec_fields():
    spec = session._probe_spec(parse("--remote", "10.0.0.0/8", "--exclude-local-port", "22"))
    assert spec.remotes == ("10.0.0.0/8",)
    assert spec.exclude_local_ports == ((22, 22),)
    assert spec.filters_ends() and spec.filters_remote()
    assert not session._probe_spec(parse("--local-port", "22")).filters_remote()


def test_the_cli_limit_is_the_kernels():
    assert cli.MAX_REMOTE_CIDRS == endpoints.MAX_REMOTE_CIDRS
    with open(pathlib.Path(__file__).resolve().parents[2] / "bpf" / "remote.h") as f:
        assert f"#define MAX_REMOTE_CIDRS {endpoints.MAX_REMOTE_CIDRS}" in f.read()


def run_main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = entry.main(argv, stdout=out, stderr=err)
    return status, err.getvalue()


@pytest.fixture
def reached(monkeypatch):
    calls = []

    def fake_run(args, out, err, **_kw):
        calls.append(args)
        return entry.ExitStatus.OK

    monkeypatch.setattr(entry, "run", fake_run)
    return calls


@pytest.mark.parametrize("argv, says", [
    (["--remote", "1.2.3.0/33"], "invalid address or CIDR '1.2.3.0/33'"),
    (["--remote", "300.1.1.1"], "invalid address or CIDR"),
    (["--remote", "example.com"], "invalid address or CIDR"),
    (["--remote", "fe80::1%eth0"], "invalid address or CIDR"),
    (["--remote", ""], "no address"),
    (["--remote", ",,"], "no address"),
    (["--exclude-remote", "10.0.0.0/8/8"], "invalid address or CIDR"),
    (["--remote-port", "65536"], "ports are at most 65535"),
    (["--local-port", "9-3"], "lower port"),
    (["--remote-port", "-1"], "not a port"),
    (["--remote-port", "80-"], "not a port"),
    (["--exclude-local-port", "http"], "not a port"),
    (["--remote-port", ""], "no port"),
    (["--remote-port", "9" * 40], "not a port"),
    (["--remote"], "expected one argument"),
    (["--remote", ",".join(f"10.{i // 256}.{i % 256}.0/24" for i in range(1000)),
      "--exclude-remote", ",".join(f"11.0.{i}.0/24" for i in range(25))], "too many CIDRs"),
])
def test_bad_values_are_one_line_and_status_2(reached, argv, says):
    status, err = run_main([*argv, "-t", "1s"])
    assert status == 2 and not reached
    assert says in err and err.count("\n") == 1, err


def test_1024_cidrs_are_taken(reached):
    status, err = run_main(["--remote", ",".join(f"10.{i // 256}.{i % 256}.0/24" for i in range(1024)), "-t", "1s"])
    assert status == 0, err
    assert len(reached[0].remotes) == 1024


PIECES = ["10", "0", "255", "256", ".", "/", ":", "::", "-", ",", "1.2.3.4", "fd42::1", "ffff", "/32", "/129",
          "/0", "65535", "65536", "%", " ", "\x00", "\udcff", "é", "٣", "x", "99999999999999"]


def test_random_values_parse_or_fail_in_one_line(reached):
    rng = random.Random(23)
    options = ["--remote", "--exclude-remote", "--remote-port", "--exclude-remote-port", "--local-port",
               "--exclude-local-port"]
    outcomes = {0: 0, 2: 0}
    for _ in range(600):
        option = rng.choice(options)
        value = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6)))
        before = len(reached)
        status, err = run_main([f"{option}={value}", "-t", "1s"])
        assert status in (0, 2), (option, value, err)
        outcomes[status] += 1
        if status == 2:
            assert len(reached) == before
            assert err.count("\n") == 1 and "Traceback" not in err, (option, value, err)
        else:
            args = reached[-1]
            # What was taken is what the kernel can be given.
            spec = session._probe_spec(args)
            assert spec.filters_ends()
    assert outcomes[0] > 20 and outcomes[2] > 20, outcomes


# -- what the maps hold ------------------------------------------------------------------


def test_an_ipv4_key_is_v4_mapped_with_96_more_bits():
    assert endpoints.trie_key(ipaddress.ip_network("198.18.3.0/24")) == (120, V4_MAPPED + bytes([198, 18, 3, 0]))
    assert endpoints.trie_key(ipaddress.ip_network("0.0.0.0/0")) == (96, V4_MAPPED + bytes(4))
    assert endpoints.trie_key(ipaddress.ip_network("fd42::/16")) == (16, b"\xfd\x42" + bytes(14))


def test_a_plain_address_is_one_host():
    assert str(endpoints.parse_network("2001:db8::7")) == "2001:db8::7/128"
    assert endpoints.trie_key(endpoints.parse_network("203.0.113.9"))[0] == 128


def test_an_include_inside_an_exclude_is_left_out():
    entries = endpoints.trie_entries(["10.1.0.0/16", "10.0.0.0/8"], ["10.1.0.0/16", "10.0.0.0/9"])
    values = {(p, a[12:]): v for p, a, v in entries}
    assert values == {(96 + 9, bytes([10, 0, 0, 0])): endpoints.REMOTE_EXCLUDE,
                      (96 + 16, bytes([10, 1, 0, 0])): endpoints.REMOTE_EXCLUDE,
                      (96 + 8, bytes([10, 0, 0, 0])): endpoints.REMOTE_INCLUDE}


@pytest.mark.parametrize("includes, excludes, address, counted", [
    (["10.0.0.0/8"], None, "10.2.3.4", True),
    (["10.0.0.0/8"], None, "11.2.3.4", False),
    (["10.0.0.0/8", "fd42::/16"], None, "fd42::9", True),
    (["10.0.0.0/8"], ["10.2.0.0/16"], "10.2.3.4", False),
    (["10.0.0.0/8"], ["10.2.0.0/16"], "10.3.3.4", True),
    # Excludes subtract, also from a longer include inside them.
    (["10.2.3.0/24"], ["10.0.0.0/8"], "10.2.3.4", False),
    (None, ["10.0.0.0/8"], "10.2.3.4", False),
    (None, ["10.0.0.0/8"], "192.0.2.1", True),
    (None, ["10.0.0.0/8"], "2001:db8::1", True),
    (["::ffff:0:0/96"], None, "192.0.2.1", True),  # IPv4 lives under ::ffff:0:0/96
    (["2001:db8::/32"], None, "192.0.2.1", False),
    (["198.18.0.1"], None, "198.18.0.1", True),
    (["198.18.0.1"], None, "198.18.0.2", False),
])
def test_one_longest_prefix_lookup_gives_the_semantics(includes, excludes, address, counted):
    entries = endpoints.trie_entries(includes, excludes)
    assert endpoints.remote_counted(entries, address, includes is not None) is counted


def test_port_bitmap_includes_then_excludes():
    words = endpoints.port_words([(8000, 8100), (443, 443)], [(8080, 8080)])
    assert len(words) == 1024 and all(0 <= w < 1 << 64 for w in words)
    counted = {p for p in range(65536) if endpoints.port_counted(words, p)}
    assert counted == {443} | set(range(8000, 8101)) - {8080}


def test_port_bitmap_with_excludes_only_counts_the_rest():
    words = endpoints.port_words(None, [(0, 1023)])
    assert not any(endpoints.port_counted(words, p) for p in (0, 22, 1023))
    assert all(endpoints.port_counted(words, p) for p in (1024, 65535))


# -- the -D flags and the spec -------------------------------------------------------------


@pytest.mark.parametrize("settings, flags", [
    ({}, []),
    ({"remotes": ("10.0.0.0/8",)}, ["-DFILTER_REMOTE", "-DMAX_REMOTE_CIDRS=1024", "-DREMOTE_INCLUDES"]),
    ({"exclude_remotes": ("10.0.0.0/8",)}, ["-DFILTER_REMOTE", "-DMAX_REMOTE_CIDRS=1024"]),
    ({"exclude_remote_ports": ((1, 2),)}, ["-DFILTER_RPORT"]),
    ({"local_ports": ((1, 2),)}, ["-DFILTER_LPORT"]),
])
def test_a_filter_is_compiled_in_only_when_given(settings, flags):
    base = ["-DOFF_X=1", "-DEXCLUDE_LOOPBACK"]
    assert build_cflags({"X": 1}, ProbeSpec(**settings)) == base + flags


@pytest.mark.parametrize("bad", [
    {"remotes": ()},
    {"remotes": "10.0.0.0/8"},
    {"remotes": ("10.0.0.0/8); system(x",)},
    {"exclude_remotes": ("not an address",)},
    {"remote_ports": ((5, 3),)},
    {"local_ports": ((0, 65536),)},
    {"exclude_local_ports": ((-1, 3),)},
    {"remote_ports": ()},
    {"remotes": tuple(f"10.0.{i // 256}.{i % 256}" for i in range(1025))},
])
def test_a_spec_from_json_is_checked(bad):
    # The loader child of --serve reads its spec as JSON: checked there too.
    with pytest.raises((ValueError, TypeError)):
        ProbeSpec(**bad)


def test_the_spec_normalises_what_it_is_given():
    spec = ProbeSpec(remotes=["198.18.1.7/24"], local_ports=[[22, 22]])
    assert spec.remotes == ("198.18.1.0/24",) and spec.local_ports == ((22, 22),)
    assert ProbeSpec.from_json(spec.to_json()) == spec


def test_the_status_line_says_which_ends_are_counted():
    args = parse("--remote", "10.0.0.0/8,fd42::/16,198.18.0.0/15,203.0.113.0/24", "--exclude-remote", "10.1.0.0/16",
                 "--exclude-local-port", "22,6000-6010")
    assert session._describe_ends(args) == (" (remote 10.0.0.0/8, fd42::/16, 198.18.0.0/15 and 1 more but "
                                            "10.1.0.0/16; local port any but 22, 6000-6010)")
    assert session._describe_ends(parse()) == ""
    assert session._describe_ends(parse("--remote-port", "443")) == " (remote port 443)"
