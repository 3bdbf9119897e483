"""Command line of procnetmon: the argparse parser, its argument types and
the rules that join options together.

Only the standard library is imported here, so that argparse-manpage can load
this file on its own (``pyfile=procnetmon/cli.py:function=build_parser``) and
the unit tests run without BCC or root.  ``validate`` must be called after
``parse_args``; the rest of the program reads the namespace it leaves behind.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import Optional

try:
    from procnetmon import __version__, endpoints, thresholds
    from procnetmon.probes import PROTOCOL_CLASSES
except ImportError:  # loaded as a lone file by argparse-manpage, package not importable
    __version__ = "unknown"
    thresholds = None  # type: ignore[assignment]  # only the help texts are read then
    endpoints = None  # type: ignore[assignment]
    # As probes.PROTOCOL_CLASSES (tests/unit/test_cli.py holds them equal).
    PROTOCOL_CLASSES = ("tcp", "udp", "udplite", "icmp", "icmpv6", "raw", "sctp", "mptcp", "packet", "other")

PROG = "procnetmon"

DEFAULT_INTERVAL = 1.0  # seconds
MIN_INTERVAL = 0.1  # seconds; shorter intervals cost more than they tell

# The kernel's IFNAMSIZ is 16 including the terminating NUL.
IFNAME_MAX = 15
# The highest PID Linux can hand out (PID_MAX_LIMIT on 64-bit).
PID_MAX = 4194304
# How many PIDs -p takes: the size of the kernel's PID filter map (MAX_PIDS
# in bpf/common.h). Refused here, before anything is attached.
MAX_PIDS = 4096
# The longest -t and --interval: a year. Longer ones overflow the timers
# they end up in, and nobody samples for longer in one run.
MAX_DURATION = 365 * 24 * 3600.0
# The largest -n and --top.
MAX_COUNT = 1_000_000_000
# --exclude-name: a glob matches a name (comm, or the executable's file
# name), never a path; at most NAME_MAX characters, and at most this many.
GLOB_MAX = 255
MAX_EXCLUDES = 1024
# Label sets of the metrics (output/prometheus.py): past the cap, further sets
# fold into name="other", so a user who starts processes under many names
# cannot grow the scrape without bound.
DEFAULT_MAX_SETS = 200
MAX_SETS = 100_000

FORMATS = ("text", "json", "csv", "prometheus")
SORT_KEYS = ("pid", "name", "in", "out", "total")
UNITS = ("bits", "bytes")
MODES = ("payload", "wire")
GROUP_BY = ("pid", "name", "cgroup")
# Where the socket-call hooks attach, best first; "auto" takes the best the
# kernel offers (procnetmon --check says which).
BACKENDS = ("auto", "tracepoint", "kprobe", "fentry")
BACKEND_ENV = "PROCNETMON_BACKEND"

DESCRIPTION = """\
Measure how many bytes each process sends and receives over the network.
eBPF probes (loaded through BCC) count, in the kernel and filtered there by
PID and interface, the bytes of every socket call (payload mode) or of every
IP packet of each process's sockets (wire mode), whatever the protocol (TCP,
UDP, UDP-Lite, ICMP, raw IP, SCTP, MPTCP, AF_PACKET; never local IPC), and
procnetmon prints per-process totals (also by protocol), rates, peaks and
TCP/UDP connection counts as a table, JSON or CSV, or in a full-screen view
redrawn every interval (--live).
Connection counts are the sockets a process holds at the end of a record:
tcp_connections counts TCP sockets in every state, listening ones
included (as ss -a does); tcp_listening counts the listening ones alone.
Needs root (sudo where it is installed), or CAP_BPF, CAP_PERFMON and
CAP_DAC_READ_SEARCH (to read tracefs; wire mode also CAP_NET_ADMIN;
without CAP_SYS_PTRACE other processes' connection counts are unknown;
mounting tracefs when it is not mounted needs CAP_SYS_ADMIN).
contrib/procnetmon.service runs --serve with just that. --check says what
is missing."""

EXAMPLES = """\
examples:
  procnetmon -p 1234,5678 -t 60s --json          # one JSON document after 60 s
  procnetmon -t 10s                               # every process, a table after 10 s
  procnetmon -p 1234 -i eth0 --interval 1s -c     # a line per second until Ctrl-C
  procnetmon -t 60s --csv -o /var/log/net.csv     # cron: appends rows, header only once
  procnetmon -p "$(pgrep -d, nginx)" -t 5s --json | jq '.processes[] | select(.bytes_out > 1e6)'
  procnetmon -- make -j4                          # make and all it starts; table on stderr at the end
  procnetmon --json -o run.json -- ./ci-step.sh   # exits with the step's status
  procnetmon -p 1234 --children -t 60s            # 1234 and its descendants, new ones too
  procnetmon --exit-over 'out>0' -- ./test.sh     # CI: status 4 if the test talked
  procnetmon -t 60s --exclude-name 'backup*'      # every process but the backup agent
  procnetmon --live                               # a full-screen view, every second, until q
  procnetmon -t 30s --tcp-health -d               # retransmits, drops, connects and RTT too
  procnetmon -t 60s --remote 10.2.0.0/16 --remote-port 5432   # who talks to that network's PostgreSQL
  procnetmon --check                              # what this kernel offers"""

MAN_SHORT_DESCRIPTION = "per-process network bytes, rates and connections from eBPF probes"

DURATION_EXAMPLES = "e.g. 500ms, 10s, 1.5s, 5m, 1h, 1m30s, or bare seconds like 10"

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
# Units in decreasing order, each at most once: "1h30m", "1m30s", "2s500ms".
_DURATION_RE = re.compile(
    rf"(?:(?P<h>{_NUMBER})h)?(?:(?P<m>{_NUMBER})m(?!s))?"
    rf"(?:(?P<s>{_NUMBER})s)?(?:(?P<ms>{_NUMBER})ms)?"
)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _shown(text: str) -> str:
    """``text`` quoted for an error message, cut short when it is long (a
    list of thousands of PIDs, a number of thousands of digits)."""
    if len(text) <= 60:
        return repr(text)
    return f"{text[:40]!r}... ({len(text)} characters)"


# --------------------------------------------------------------------------
# Argument types: each turns one command-line string into a value or raises
# ArgumentTypeError with a message that shows what to write instead.


def parse_duration(text: str) -> float:
    """Return the seconds in a duration such as ``500ms``, ``60s``, ``1m30s``
    or a bare number of seconds.  Zero, negative and malformed values fail."""
    compact = "".join(text.split()).lower()
    seconds = _duration_seconds(compact)
    if seconds is None and compact.startswith("-"):
        seconds = -1.0  # reported as "not more than zero" below
    if seconds is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {_shown(text)}: write a number with a unit, {DURATION_EXAMPLES}"
        )
    if seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {_shown(text)}: it must be more than zero, {DURATION_EXAMPLES}"
        )
    if seconds > MAX_DURATION:
        raise argparse.ArgumentTypeError(
            f"invalid duration {_shown(text)}: the longest is a year (8760h), {DURATION_EXAMPLES}"
        )
    return seconds


def _duration_seconds(compact: str) -> Optional[float]:
    """Seconds in a whitespace-free, lower-case duration, or None if malformed."""
    if re.fullmatch(_NUMBER, compact):
        return float(compact)  # may be inf (400 digits): refused as too long
    match = _DURATION_RE.fullmatch(compact)
    if not compact or match is None:
        return None
    seconds = sum(
        float(value) * _UNIT_SECONDS[unit]
        for unit, value in match.groupdict().items()
        if value is not None
    )
    return None if math.isnan(seconds) else seconds


def parse_interval(text: str) -> float:
    """A duration of at least ``MIN_INTERVAL`` seconds (for ``--interval``)."""
    seconds = parse_duration(text)
    if seconds < MIN_INTERVAL:
        raise argparse.ArgumentTypeError(
            f"interval {_shown(text)} is too short: the shortest is 100ms, e.g. --interval 1s"
        )
    return seconds


def parse_pids(text: str) -> list[int]:
    """A comma-separated list of PIDs; spaces and empty items are tolerated,
    duplicates dropped, order kept."""
    pids: list[int] = []
    seen: set[int] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue  # "1,2," and the like: harmless
        if not item.isdigit() or not item.isascii() or int(item) == 0:
            raise argparse.ArgumentTypeError(
                f"invalid PID {_shown(item)} in {_shown(text)}: PIDs are positive integers, e.g. -p 1234,5678"
            )
        pid = int(item)
        if pid > PID_MAX:
            raise argparse.ArgumentTypeError(
                f"invalid PID {_shown(item)} in {_shown(text)}: Linux PIDs are at most {PID_MAX}"
            )
        if pid not in seen:
            seen.add(pid)
            pids.append(pid)
            if len(pids) > MAX_PIDS:
                raise argparse.ArgumentTypeError(
                    f"too many PIDs: at most {MAX_PIDS} can be measured at once "
                    "(leave out -p to measure every process)"
                )
    if not pids:
        # Typically $(pgrep ...) that matched nothing.
        raise argparse.ArgumentTypeError(
            f"no PID in {_shown(text)}: give at least one, e.g. -p 1234,5678 "
            "(if it came from pgrep, nothing matched)"
        )
    return pids


def parse_interfaces(text: str) -> list[str]:
    """A comma-separated list of interface names, each IFACE (this network
    namespace), NETNS/IFACE (a namespace of ``ip netns``) or pid:PID/IFACE
    (the namespace of process PID); checked for syntax only (whether they
    exist is the engine's business)."""
    names: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        namespace, ifname = item.split("/", 1) if "/" in item else (None, item)
        problem = _netns_problem(namespace) if namespace is not None else None
        problem = problem or _ifname_problem(ifname)
        if problem:
            raise argparse.ArgumentTypeError(
                f"invalid interface name {_shown(item)} in {_shown(text)}: {problem}, "
                "e.g. -i eth0,wlan0 or -i NETNS/eth0"
            )
        if item not in names:
            names.append(item)
    return names


PROTOCOL_HELP_NAMES = ", ".join(PROTOCOL_CLASSES)


def parse_protocols(text: str) -> Optional[list[str]]:
    """A comma-separated list of protocol classes (probes.PROTOCOL_CLASSES),
    or ``all``; None stands for all of them."""
    wanted: list[str] = []
    for item in (part.strip().lower() for part in text.split(",")):
        if item == "all":
            return None
        if item not in PROTOCOL_CLASSES:
            raise argparse.ArgumentTypeError(
                f"unknown protocol {_shown(item)} in {_shown(text)}: choose from {PROTOCOL_HELP_NAMES} or all, "
                "e.g. --protocol tcp,udp"
            )
        if item not in wanted:
            wanted.append(item)
    return wanted


# --remote and --exclude-remote together: the size of the kernel's trie
# (MAX_REMOTE_CIDRS in bpf/remote.h; endpoints.MAX_REMOTE_CIDRS, held equal by a unit test).
MAX_REMOTE_CIDRS = 1024


def parse_remotes(text: str) -> list[str]:
    """A comma-separated list of CIDRs or addresses, v4 or v6 (--remote,
    --exclude-remote), each normalised (198.18.1.7/24 is 198.18.1.0/24)."""
    items = [part.strip() for part in text.split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError(
            f"no address in {_shown(text)}: give a CIDR or an address, e.g. --remote 10.0.0.0/8")
    out: list[str] = []
    for item in filter(None, items):
        try:
            network = str(endpoints.parse_network(item))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid address or CIDR {_shown(item)} in {_shown(text)}: write an address or "
                "ADDRESS/PREFIX, v4 or v6, e.g. 198.51.100.7, 10.0.0.0/8 or 2001:db8::/32") from None
        if network not in out:
            out.append(network)
    return out


def parse_port_ranges(text: str) -> list[tuple[int, int]]:
    """A comma-separated list of ports and ranges P-Q, 0 to 65535 (the port options)."""
    items = [part.strip() for part in text.split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError(f"no port in {_shown(text)}: give a port or a range, e.g. 443 or 8000-8100")
    out: list[tuple[int, int]] = []
    for item in filter(None, items):
        try:
            pair = endpoints.parse_port_range(item)
        except ValueError as e:
            raise argparse.ArgumentTypeError(
                f"invalid port {_shown(item)} in {_shown(text)}: {e}, e.g. 443 or 8000-8100") from None
        if pair not in out:
            out.append(pair)
    return out


def _ifname_problem(name: str) -> Optional[str]:
    """Why the kernel would refuse ``name`` as an interface name (dev_valid_name)."""
    if not name:
        return "names cannot be empty"
    if len(name) > IFNAME_MAX:
        return f"names have at most {IFNAME_MAX} characters"
    if name in (".", ".."):
        return "'.' and '..' are not interface names"
    if any(c == "/" or c == ":" or c.isspace() for c in name):
        return "names contain no '/', ':' or whitespace"
    return None


def _netns_problem(namespace: str) -> Optional[str]:
    """Why NETNS of NETNS/IFACE cannot name a network namespace."""
    if namespace.startswith("pid:"):
        pid = namespace[4:]
        if not (pid.isdigit() and pid.isascii() and 0 < int(pid) <= PID_MAX):
            return "pid:PID/IFACE needs a PID, e.g. pid:1234/eth0"
        return None
    if not namespace:
        return "NETNS/IFACE needs a namespace name before the '/' (from ip netns)"
    if namespace in (".", "..") or any(c.isspace() for c in namespace):
        return "a namespace name (from ip netns) is not '.', '..' and has no whitespace"
    return None


def parse_name_glob(text: str) -> str:
    """An --exclude-name glob (fnmatch: *, ?, [...]) that can match a
    process name or an executable's file name."""
    if not text:
        raise argparse.ArgumentTypeError(
            "invalid name pattern '': give a name or a glob, e.g. --exclude-name 'backup*'")
    if "/" in text:
        raise argparse.ArgumentTypeError(
            f"invalid name pattern {_shown(text)}: it matches a process name or the file name of its "
            "executable, never a path (no '/'), e.g. --exclude-name rsync")
    if len(text) > GLOB_MAX:
        raise argparse.ArgumentTypeError(f"invalid name pattern {_shown(text)}: at most {GLOB_MAX} characters")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"invalid name pattern {_shown(text)}: it contains a NUL")
    return text


def parse_exit_over(text: str):
    """An --exit-over SPEC (procnetmon/thresholds.py has the grammar)."""
    try:
        return thresholds.parse(text)
    except thresholds.BadThreshold as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_listen(text: str) -> tuple[str, int]:
    """``[ADDR:]PORT`` for --serve: "9101", ":9101", "127.0.0.1:9101", "[::1]:9101".
    Without an address, loopback only: listening on every address is asked
    for by name (0.0.0.0:9101, [::]:9101), so metrics that hold every user's
    command names are not offered to the network by default."""
    addr, sep, port = text.rpartition(":")
    bracketed = addr.startswith("[") and addr.endswith("]")
    if bracketed:
        addr = addr[1:-1]
    if not port.isdigit() or not 0 < int(port) < 65536 or (":" in addr and not bracketed):
        raise argparse.ArgumentTypeError(
            f"invalid listen address {text!r}: write [ADDR:]PORT, e.g. 9101, 127.0.0.1:9101 or [::1]:9101"
        )
    return addr or "127.0.0.1", int(port)


def parse_max_sets(text: str) -> int:
    """``--metrics-max-sets``: from 1 to ``MAX_SETS``."""
    value = positive_int(text)
    if value > MAX_SETS:
        raise argparse.ArgumentTypeError(f"invalid number {_shown(text)}: the largest is {MAX_SETS}")
    return value


def positive_int(text: str) -> int:
    """An integer from 1 to ``MAX_COUNT`` (for ``--count`` and ``--top``)."""
    stripped = text.strip()
    # Checked before int(): a number of thousands of digits is refused by
    # length, not by Python's digit limit.
    if not (stripped.isascii() and stripped.isdigit()) or len(stripped) > 12:
        value = 0 if not (stripped.isascii() and stripped.isdigit()) else MAX_COUNT + 1
    else:
        value = int(stripped)
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"invalid number {_shown(text)}: give a whole number of 1 or more, e.g. 5"
        )
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(
            f"invalid number {_shown(text)}: the largest is {MAX_COUNT}"
        )
    return value


# --------------------------------------------------------------------------
# Actions that remember which option was written, for validate().


class _FormatAction(argparse.Action):
    """Store the output format and remember every option that chose one,
    so that ``--json --csv`` can be refused with a useful message."""

    def __init__(self, option_strings, dest, const=None, nargs=None, **kwargs):
        if const is not None:  # -j/--json, --csv: a flag with a fixed format
            nargs = 0
        super().__init__(option_strings, dest, nargs=nargs, const=const, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        fmt = self.const if self.const is not None else values
        chosen = list(getattr(namespace, "format_options", None) or [])
        chosen.append((option_string, fmt))
        namespace.format_options = chosen
        setattr(namespace, self.dest, fmt)


class _StoreGiven(argparse.Action):
    """Store the value and set ``<dest>_given`` so validate() can tell an
    explicit ``--interval 1s`` from the default."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


# --------------------------------------------------------------------------
# The parser.


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: a cron job's mail or a
    pipeline's log holds the error, not ten lines of usage before it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of procnetmon (also read by argparse-manpage)."""
    parser = _Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Read by argparse-manpage for the NAME line of the man page.
    parser.man_short_description = MAN_SHORT_DESCRIPTION
    parser.set_defaults(format_options=[], interval_given=False)
    _add_selection_options(parser)
    _add_timing_options(parser)
    _add_output_options(parser)
    _add_other_options(parser)
    _add_command_argument(parser)
    return parser


def _add_selection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what to measure")
    group.add_argument(
        "-p", "--pids", metavar="PIDS", type=parse_pids, default=None,
        help="comma-separated PIDs to measure, e.g. 1234,5678, at most 4096 "
        "(default: every process); "
        "a PID that does not exist is an error, one that exits during the run is "
        "reported as not alive",
    )
    group.add_argument(
        "--children", action="store_true",
        help="with -p: also measure every descendant of the PIDs, those running now and "
        "those they start while sampling, however short-lived (the kernel adds each "
        "to the PID filter when it is forked); each is a row once it has moved bytes",
    )
    group.add_argument(
        "-i", "--interface", metavar="IFACES", dest="interfaces",
        type=parse_interfaces, default=None,
        help="comma-separated interfaces to count, e.g. eth0,wlan0 "
        "(default: every interface but loopback); naming lo counts loopback. "
        "An interface of another network namespace is NETNS/IFACE, NETNS a name "
        "that ip netns lists (/run/netns/NETNS), or pid:PID/IFACE, the namespace "
        "of process PID (a container's eth0: pid:1234/eth0)",
    )
    group.add_argument(
        "--include-loopback", action="store_true", dest="include_loopback",
        help="also count loopback traffic, which is left out by default because "
        "it is not bandwidth on any wire",
    )
    group.add_argument(
        "--cgroup", metavar="PATH", action="append", dest="cgroups", default=None,
        help="count only processes in the cgroup v2 PATH or any cgroup below it, decided in "
        "the kernel; PATH is a directory under the cgroup2 mount, absolute or relative to it "
        "(e.g. system.slice/nginx.service); repeat for several",
    )
    group.add_argument(
        "--protocol", metavar="LIST", dest="protocols", type=parse_protocols, default=None,
        help=f"comma-separated protocols to count, decided in the kernel: {PROTOCOL_HELP_NAMES}, "
        "or all (the default). icmp holds ping sockets and raw ICMP sockets, raw the raw IP "
        "sockets of any other protocol, packet AF_PACKET sockets, other any other protocol "
        "on an inet socket; local IPC (AF_UNIX, netlink) is never network traffic",
    )
    group.add_argument(
        "--exclude-name", metavar="GLOB", action="append", dest="exclude_names", default=None,
        type=parse_name_glob,
        help="leave out processes whose name (comm) or executable's file name matches GLOB "
        "(fnmatch: *, ?, [...]; case matters), with all their bytes; repeat for several. "
        "Decided in user space when a process is first identified (and again after it execs; "
        "once left out it stays out): the kernel knows only the first 15 bytes of a name, "
        "and a name changes at exec",
    )
    group.add_argument(
        "--exclude-cgroup", metavar="PATH", action="append", dest="exclude_cgroups", default=None,
        help="leave out processes in the cgroup v2 PATH or any cgroup below it (also those made "
        "while sampling), decided in the kernel; PATH as for --cgroup, or a container or unit as "
        "the container field names it (docker://ID, lxc://NAME, nginx.service); repeat for several",
    )
    group.add_argument(
        "--exclude-self", action="store_true", dest="exclude_self",
        help="leave out procnetmon's own traffic (every thread of it: the metrics of --serve), "
        "decided in the kernel, and any process procnetmon started other than -- COMMAND",
    )
    _add_end_filter_options(parser)
    group.add_argument(
        "--mode", choices=MODES, default="payload",
        help="payload: bytes the process's socket calls sent and received; "
        "wire: bytes of its sockets' IP packets on the interface, IP and transport headers, "
        "retransmissions and ACKs included (default: %(default)s)",
    )
    group.add_argument(
        "--tcp-health", action="store_true", dest="tcp_health",
        help="also report each process's TCP health, credited to the socket's owner: "
        "retransmitted segments and bytes, drops by the kernel's reason (5.17+; before, "
        "tcp_drop() where kprobes reach it), connect attempts, successes, failures (refused, "
        "timed out, unreachable) and latency, resets sent and received, and the smoothed RTT "
        "of its connections; per connection too with -d. Follows -p, --children and --cgroup, "
        "on every interface (-i does not narrow it). Its hooks fire on retransmits, drops, "
        "resets and TCP state changes, never per packet; without this flag none is attached",
    )


def _add_end_filter_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "whom it talks to",
        "Filters on the remote end and the ports, decided in the kernel for every socket call "
        "(payload mode: the socket's addresses once connected, else each datagram's) or packet "
        "(wire mode: its own headers). Each takes a comma-separated list and can be repeated; "
        "the includes of one kind add up, then its excludes subtract, and the kinds must all pass. "
        "Traffic whose remote end is not known (AF_PACKET sockets) is left out by a remote filter, "
        "and protocols without ports (ICMP, raw IP) by a port filter.",
    )
    cidr_help = ("v4 or v6, an address or ADDRESS/PREFIX (IPv4 is also matched by an IPv6 prefix of "
                 "::ffff:0:0/96, and so by ::/0); at most 1024 in all")
    group.add_argument(
        "--remote", metavar="CIDRS", action="extend", dest="remotes", default=None, type=parse_remotes,
        help=f"count only traffic with these remote hosts or networks, {cidr_help}",
    )
    group.add_argument(
        "--exclude-remote", metavar="CIDRS", action="extend", dest="exclude_remotes", default=None,
        type=parse_remotes, help="leave out traffic with these remote hosts or networks",
    )
    group.add_argument(
        "--remote-port", metavar="PORTS", action="extend", dest="remote_ports", default=None,
        type=parse_port_ranges, help="count only traffic with these remote ports or ranges P-Q, e.g. 443,8000-8100",
    )
    group.add_argument(
        "--exclude-remote-port", metavar="PORTS", action="extend", dest="exclude_remote_ports", default=None,
        type=parse_port_ranges, help="leave out traffic with these remote ports or ranges",
    )
    group.add_argument(
        "--local-port", metavar="PORTS", action="extend", dest="local_ports", default=None,
        type=parse_port_ranges,
        help="count only traffic of sockets on these local ports or ranges (a service's listener: "
        "the connections it accepted)",
    )
    group.add_argument(
        "--exclude-local-port", metavar="PORTS", action="extend", dest="exclude_local_ports", default=None,
        type=parse_port_ranges, help="leave out traffic of sockets on these local ports or ranges",
    )


def _add_timing_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "how long",
        "Give one of -t, -c or -n. -t alone prints one summary at the end;\n"
        "-c, -n, or -t with --interval also print a record every interval.\n"
        "With -- COMMAND or --live none is needed: sampling ends when COMMAND\n"
        "ends, or when q is pressed.",
    )
    group.add_argument(
        "-t", "--time", metavar="DURATION", type=parse_duration, default=None,
        help=f"sample for DURATION, then print the summary ({DURATION_EXAMPLES}; "
        "at most a year); with -- COMMAND at most that long: COMMAND keeps running "
        "when DURATION ends first",
    )
    group.add_argument(
        "-c", "--continuous", action="store_true",
        help="print a record every interval until Ctrl-C or SIGTERM (with -- COMMAND: "
        "until COMMAND ends), then the summary",
    )
    group.add_argument(
        "-n", "--count", metavar="N", type=positive_int, default=None,
        help="print N interval records, then the summary (N from 1 to 1000000000)",
    )
    group.add_argument(
        "--exit-over", metavar="SPEC", action="append", dest="exit_over", default=None,
        type=parse_exit_over,
        help="stop as soon as SPEC is crossed: write the record that crossed it (and the summary), "
        "then exit with status 4; with -- COMMAND, COMMAND and the processes below it get SIGTERM "
        "(SIGKILL 10 s later) and are waited for. SPEC is [proc:]WHAT>AMOUNT: WHAT is in, out, in+out or total, AMOUNT "
        "bytes (B, kB, MB, GB, TB; KiB, MiB, GiB, TiB) since the start, or with /s the rate of "
        "one --interval; proc: each process on its own, else all together "
        f"({thresholds.EXAMPLES if thresholds else 'e.g. out>10MB'}); checked every interval; "
        "repeat for several (the first crossed ends the run)",
    )
    group.add_argument(
        "-l", "--live", action="store_true",
        help="a full-screen view for a terminal, redrawn every interval until q, Ctrl-C or SIGTERM "
        "(or -t, -n): a row per process with its rate now, a sparkline of the last minute, its peak, "
        "total and sockets; keys sort (r rate, t total, k peak, n name, i reverse), select "
        "(Up, Down), open a process (Enter) or its sockets (d), filter by name (/), pause (p), "
        "switch units (u: bits or bytes, SI or IEC); ? lists them. Then the summary table is "
        "printed as -t prints it; -o FILE gets every record meanwhile, as -c writes them. "
        "Standard input and output must be a terminal",
    )
    group.add_argument(
        "--interval", metavar="DURATION", type=parse_interval,
        default=DEFAULT_INTERVAL, action=_StoreGiven,
        help="length of one interval, which is also the window of the peak rates "
        "(default: 1s, at least 100ms, at most a year)",
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "-j", "--json", dest="format", action=_FormatAction, const="json",
        default="text",
        help="JSON: one document at the end, or one line per record when streaming",
    )
    group.add_argument(
        "--csv", dest="format", action=_FormatAction, const="csv", default="text",
        help="CSV: one row per process per record, columns in a fixed order "
        "starting timestamp,type,pid,name",
    )
    group.add_argument(
        "--format", dest="format", action=_FormatAction, choices=FORMATS, default="text",
        help="output format: text, json, csv, or prometheus (the metrics of --serve in the "
        "text exposition format; with -o the file is replaced atomically after every record, "
        "for node_exporter's textfile collector) (default: text)",
    )
    group.add_argument(
        "-o", "--output", metavar="FILE", default=None,
        help="append to FILE instead of writing to standard output ('-' is standard output); "
        "refused when a user other than root and you can change FILE or a directory above it; "
        "under sudo opened as the user who ran sudo",
    )
    group.add_argument(
        "--no-header", action="store_true", dest="no_header",
        help="leave out the CSV header row and the column headings of the table",
    )
    group.add_argument(
        "--group-by", choices=GROUP_BY, default="pid", dest="group_by",
        help="one row per process (pid), per process name, or per cgroup; totals, rates "
        "and peaks are those of the folded rows (default: %(default)s)",
    )
    group.add_argument(
        "-a", "--aggregate", action="store_true",
        help="add a TOTAL row over all processes (JSON always carries \"aggregated\")",
    )
    group.add_argument(
        "-d", "--details", action="store_true",
        help="list every connection of each process: protocol, addresses, state, bytes; "
        "each socket has its own row (one closed during the record as CLOSED), "
        "and a process's rows add up to its totals",
    )
    group.add_argument(
        "--units", choices=UNITS, default="bits",
        help="rates in the table as Kbps/Mbps (bits) or KB/s, MB/s (bytes); "
        "KB, MB and GB are powers of 1000 (default: %(default)s)",
    )
    group.add_argument(
        "--sort", choices=SORT_KEYS, default="total",
        help="order of the table rows: pid and name ascending, in, out and total "
        "bytes descending (default: %(default)s)",
    )
    group.add_argument(
        "--top", metavar="N", type=positive_int, default=None,
        help="show only the first N rows of the table",
    )
    group.add_argument(
        "-q", "--quiet", action="store_true",
        help="no progress or status messages on standard error",
    )
    group.add_argument(
        "--verbose", action="store_true",
        help="print the compiler's output on standard error; without it, a failed compile names the log "
             "file that holds it",
    )


def _add_other_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("metrics")
    group.add_argument(
        "--serve", metavar="[ADDR:]PORT", type=parse_listen, default=None,
        help="run until stopped and serve Prometheus metrics on http://ADDR:PORT/metrics "
        "(ADDR defaults to 127.0.0.1; give 0.0.0.0 to listen on every IPv4 address); at most 16 "
        "connections at once, each closed after 10 s, requests of at most 8 KiB of headers; "
        "records are not printed",
    )
    group.add_argument(
        "--web-config", metavar="FILE", dest="web_config", default=None,
        help="TLS and basic auth for --serve, from a YAML file in node_exporter's web config format "
        "(tls_server_config: cert_file, key_file; basic_auth_users: bcrypt hashes); the file "
        "and the TLS files must be writable by root alone",
    )
    group.add_argument(
        "--metrics-pid", action="store_true", dest="metrics_pid",
        help="add a pid label to the metrics (one series per process: mind the cardinality)",
    )
    group.add_argument(
        "--metrics-max-sets", metavar="N", type=parse_max_sets, dest="metrics_max_sets",
        default=DEFAULT_MAX_SETS,
        help=f"at most N label sets in the metrics (default {DEFAULT_MAX_SETS}); the bytes and sockets "
        "of further ones add to name=\"other\"",
    )
    parser.add_argument(
        "--check", action="store_true",
        help="report what the running kernel offers and which probes would be used, then exit",
    )
    parser.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)
    # Hidden: forces a probe backend, so that the tests can run each one the
    # kernel offers. $PROCNETMON_BACKEND sets the default.
    parser.add_argument(
        "--backend", choices=BACKENDS, default=_default_backend(), help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}",
    )


def _add_command_argument(parser: argparse.ArgumentParser) -> None:
    # Only shown here: parse_args() takes COMMAND from after the first "--"
    # itself, so that nothing before it is mistaken for a command.
    group = parser.add_argument_group("measuring a command")
    group.add_argument(
        "command", nargs="*", metavar="-- COMMAND",
        help="start COMMAND [ARGS...] and measure it and every process it starts, "
        "however short-lived, until COMMAND ends; then print the summary and exit with "
        "COMMAND's exit status (128 + N when signal N killed it; 127 when it cannot be "
        "found). COMMAND keeps standard input, output and error, the environment and "
        "the working directory; under sudo it runs as the invoking user (SUDO_UID, "
        "SUDO_GID and that user's groups). The records go to standard error, or to -o "
        "FILE. Ctrl-C reaches COMMAND as without procnetmon, and procnetmon still "
        "writes the summary; SIGTERM and SIGHUP sent to procnetmon are passed on to "
        "COMMAND. -t or -n may end sampling first: the summary is written then, "
        "COMMAND keeps running unmeasured, and procnetmon still waits for it "
        "and exits with its status",
    )


def _default_backend() -> str:
    return os.environ.get(BACKEND_ENV, "").strip() or "auto"


# --------------------------------------------------------------------------
# Rules between options.


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Enforce the rules that join options; on a violation call
    ``parser.error`` (exit status 2) with a message that says what to write."""
    for action in parser._actions:
        # argparse drops a lone "--" given as a value (--top=--) and stores
        # an empty list, never calling the option's type.
        value = getattr(args, action.dest, None)
        # A repeatable option collects it as one more item: [[]].
        repeated = isinstance(action, argparse._AppendAction) and isinstance(value, list) and [] in value
        if (action.type is not None and action.nargs is None and value == []) or repeated:
            parser.error(f"argument {'/'.join(action.option_strings)}: expected a value, e.g. "
                         f"{action.option_strings[-1]}={action.metavar or 'VALUE'}")
    if args.time is not None and not args.interval_given and args.interval > args.time:
        # The default interval only sets the peak resolution: a short -t
        # (say -t 500ms) narrows it rather than being refused.
        args.interval = args.time
    for message in _violations(args):
        parser.error(message)
    return args


def _violations(args: argparse.Namespace):
    """Yield the message of each broken rule, the most basic first."""
    formats = {fmt for _, fmt in args.format_options}
    if len(formats) > 1:
        written = " ".join(opt for opt, _ in args.format_options)
        yield f"choose one output format: --json, --csv or --format (got {written})"
    if args.check and args.ebpf:
        yield "choose one of --check or --ebpf"
    if args.backend not in BACKENDS:
        yield (f"unknown probe backend {args.backend!r} (from ${BACKEND_ENV}): "
               f"use one of {', '.join(BACKENDS)}")
    if args.check or args.ebpf:
        return  # they print and exit: nothing else matters
    yield from _command_violations(args)
    yield from _live_violations(args)
    yield from _duration_violations(args)
    if args.serve is not None and (args.format_options or args.output not in (None, "-")):
        yield "--serve exposes the metrics over HTTP and prints no records; drop --json/--csv/--format/-o"
    if args.web_config is not None and args.serve is None:
        yield "--web-config sets up --serve's TLS and basic auth: add --serve [ADDR:]PORT, or drop --web-config"
    for option, given in (("--exclude-name", args.exclude_names), ("--exclude-cgroup", args.exclude_cgroups),
                          ("--exit-over", args.exit_over)):
        if given is not None and len(given) > MAX_EXCLUDES:
            yield f"too many {option} options: at most {MAX_EXCLUDES}"
    cidrs = len(args.remotes or ()) + len(args.exclude_remotes or ())
    if cidrs > MAX_REMOTE_CIDRS:
        yield f"too many CIDRs in --remote and --exclude-remote: {cidrs}, at most {MAX_REMOTE_CIDRS}"
    if args.top is not None and args.format != "text":
        yield f"--top limits the text table; drop --top, or drop --{args.format}"


def _command_violations(args: argparse.Namespace):
    command = getattr(args, "command", None)
    if command:
        if args.pids is not None:
            yield ("-p measures running processes and -- COMMAND the one it starts: "
                   "use one of them (-p PIDS --children follows running processes' children)")
        if args.output == "-":
            yield ("-o - would mix the records into COMMAND's standard output: they go to "
                   "standard error by default, or give -o FILE")
        if getattr(args, "serve", None) is not None:
            yield "--serve runs until stopped and -- COMMAND until COMMAND ends: use one of them"
    elif args.children and args.pids is None:
        yield ("--children follows the descendants of the -p PIDS: add -p "
               "(without -p every process is measured already)")


def _live_violations(args: argparse.Namespace):
    if not getattr(args, "live", False):
        return
    if args.format == "prometheus":
        yield "--live shows the records and --format prometheus makes metrics of them: use one of them"
    elif args.output == "-":
        yield "--live draws on standard output: -o - would write records into the view; give -o FILE"
    elif args.output is None and args.format != "text":
        chosen = " ".join(opt for opt, _ in args.format_options)
        yield (f"--live draws on standard output and prints the summary table there: "
               f"{chosen} needs -o FILE with --live (the records go there while the view runs)")
    if args.serve is not None:
        yield "--serve runs as a daemon and --live at a terminal: use one of them"
    if getattr(args, "command", None):
        yield ("-- COMMAND keeps the terminal for COMMAND and --live takes it for the view: "
               "use one of them (-p PIDS --children --live follows running processes)")


def _duration_violations(args: argparse.Namespace):
    if args.continuous and args.count is not None:
        yield "-c runs until stopped and -n stops after N intervals; use one of them"
    if args.continuous and args.time is not None:
        yield "-c runs until stopped; drop -t, or use -t alone"
    if args.count is not None and args.time is not None:
        yield "-n already sets the duration (N intervals); drop -t, or use -t alone"
    if (args.time is None and not args.continuous and args.count is None and args.serve is None
            and not getattr(args, "command", None) and not getattr(args, "live", False)):
        yield (
            "say how long to sample: -t 10s (one summary), -c (until Ctrl-C) "
            "or -n 5 (five intervals)"
        )
    if args.time is not None and args.interval > args.time:
        yield (
            f"--interval ({_seconds(args.interval)}) is longer than -t ({_seconds(args.time)}); "
            "use a shorter --interval or a longer -t"
        )


def _seconds(value: float) -> str:
    return f"{value:g}s"


def is_streaming(args: argparse.Namespace) -> bool:
    """Whether a record is printed every interval (before the final summary):
    with -c, with -n, or with -t or -- COMMAND and an explicit --interval;
    with --live, for the view (and -o FILE)."""
    return bool(
        getattr(args, "serve", None) is not None
        or getattr(args, "live", False)
        or args.continuous
        or args.count is not None
        or ((args.time is not None or getattr(args, "command", None)) and args.interval_given)
    )


def split_command(argv: list[str]) -> tuple[list[str], Optional[list[str]]]:
    """procnetmon's own arguments, and COMMAND: what follows the first ``--``
    (None without one, [] when nothing follows it)."""
    if "--" not in argv:
        return list(argv), None
    at = argv.index("--")
    return list(argv[:at]), list(argv[at + 1:])


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parse and validate ``argv`` (default: ``sys.argv[1:]``)."""
    import sys

    parser = build_parser()
    own, command = split_command(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(own)
    if args.command:
        parser.error(f"unexpected argument {args.command[0]!r}: to measure a command, "
                     f"put -- before it, e.g. {PROG} -- {args.command[0]}")
    if command is not None and not command:
        parser.error(f"nothing to run after --: give a command, e.g. {PROG} -- curl -sO URL")
    args.command = command
    return validate(args, parser)
