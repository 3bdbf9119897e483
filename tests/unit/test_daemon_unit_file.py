"""contrib/procnetmon.service and its drop-ins, by value (issue 20, item 8).

Every directive of the unit is checked against what the README and the
unit's comments promise, the system call filter is resolved with systemd's
own group table, and systemd itself parses the files (``systemd-analyze
verify`` and ``security --offline``) where it is installed. What the unit
does when run is tests/e2e/test_daemon_unit.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from procnetmon.cli import build_parser
from procnetmon.kernel.cache import DEFAULT_CACHE_DIR
from testbed import systemd_unit as unit

# The [Service] section, last value of each directive (lists merged apart below).
SERVICE = {
    "Type": "simple",
    "ExecStart": "/usr/local/bin/procnetmon --serve ${LISTEN} --mode ${MODE} --quiet",
    "Restart": "on-failure",
    "RestartSec": "5s",
    "KillSignal": "SIGTERM",
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "LimitMEMLOCK": "infinity",
    "CacheDirectory": "procnetmon-daemon",
    "CacheDirectoryMode": "0700",
    "MemoryMax": "256M",
    "TasksMax": "32",
    "IPAddressDeny": "any",
    "IPAddressAllow": "localhost",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateIPC": "yes",
    "PrivateMounts": "yes",
    "ProtectControlGroups": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",
    "UMask": "0077",
}
ENVIRONMENT = {"LISTEN": "9101", "MODE": "payload",
               "PROCNETMON_CACHE_DIR": "/var/cache/private/procnetmon-daemon"}
PAYLOAD_CAPS = ["CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH"]
FILTER = ["@system-service bpf perf_event_open",
          "~ptrace process_vm_readv process_vm_writev process_madvise pidfd_getfd kcmp move_pages migrate_pages "
          "open_by_handle_at"]
# Calls that reach into another process (memory, descriptors) or past the
# mount namespace: none may pass the filter, in any variant.
MEMORY_ACCESS = {"ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd", "kcmp",
                 "move_pages", "migrate_pages", "open_by_handle_at"}
# Left out on purpose (the unit's comments say why): not to be added unnoticed.
ABSENT = {"ProtectKernelTunables", "ProtectProc", "PrivatePIDs", "MemoryDenyWriteExecute", "PrivateNetwork",
          "PrivateUsers", "User", "Group", "SupplementaryGroups"}


def test_every_directive_of_the_unit_has_its_value():
    sections = unit.read_assignments(unit.UNIT)
    assert set(sections) == {"Unit", "Service", "Install"}
    assert unit.last_values(sections["Unit"]) == {
        "Description": "procnetmon: per-process network bytes for Prometheus",
        "Documentation": "man:procnetmon(1)", "After": "network.target"}
    assert sections["Install"] == [("WantedBy", "multi-user.target")]
    service = sections["Service"]
    lists = {"Environment", "CapabilityBoundingSet", "AmbientCapabilities", "SystemCallFilter"}
    assert {k: v for k, v in unit.last_values(service).items() if k not in lists} == SERVICE
    assert unit.environment(service) == ENVIRONMENT
    assert unit.merged_list(service, "CapabilityBoundingSet") == PAYLOAD_CAPS
    assert unit.merged_list(service, "AmbientCapabilities") == PAYLOAD_CAPS
    assert [v for k, v in service if k == "SystemCallFilter"] == FILTER
    assert not ABSENT & {k for k, _ in service}


@pytest.mark.parametrize("dropin, added, mode", [
    (unit.WIRE_DROPIN, ["CAP_NET_ADMIN"], "wire"),
    (unit.CONNECTIONS_DROPIN, ["CAP_SYS_PTRACE"], "payload"),
], ids=["wire", "connections"])
def test_a_dropin_adds_one_capability_and_nothing_else(dropin, added, mode):
    sections = unit.read_assignments(dropin)
    assert set(sections) == {"Service"}
    settings = unit.service(dropin)
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        assert unit.merged_list(settings, key) == PAYLOAD_CAPS + added
    expected_keys = {"CapabilityBoundingSet", "AmbientCapabilities"} | ({"Environment"} if mode == "wire" else set())
    assert {k for k, _ in sections["Service"]} == expected_keys
    assert unit.environment(settings) == dict(ENVIRONMENT, MODE=mode)
    assert [v for k, v in settings if k == "SystemCallFilter"] == FILTER


@pytest.mark.parametrize("dropins, mode", [((), "payload"), ((unit.WIRE_DROPIN,), "wire")], ids=["payload", "wire"])
def test_exec_start_is_a_valid_command_line_listening_on_loopback(dropins, mode):
    words = unit.exec_start(unit.service(*dropins))
    assert words[0] == "/usr/local/bin/procnetmon"
    args = build_parser().parse_args(words[1:])
    assert args.serve == ("127.0.0.1", 9101)
    assert args.mode == mode and args.quiet


def test_the_daemons_cache_is_its_own():
    settings = unit.service()
    cache_dir = unit.last_values(settings)["CacheDirectory"]
    path = unit.environment(settings)["PROCNETMON_CACHE_DIR"]
    # DynamicUser puts CacheDirectory= under /var/cache/private; the name
    # beside it is a symbolic link, which procnetmon refuses as a cache.
    assert path == f"/var/cache/private/{cache_dir}"
    assert os.path.basename(DEFAULT_CACHE_DIR) != cache_dir and path != DEFAULT_CACHE_DIR


def test_the_filter_denies_every_call_that_reaches_into_another_process():
    deny = FILTER[1].lstrip("~").split()
    assert MEMORY_ACCESS <= set(deny)
    if not unit.systemd_analyze():
        pytest.skip("systemd-analyze absent: the listed expectation above is all that is checked")
    # The deny line is what keeps process_vm_writev out: @system-service has it.
    assert {"process_vm_writev", "process_vm_readv", "kcmp", "process_madvise"} <= unit.syscall_group(
        "@system-service")
    for dropins in ((), (unit.WIRE_DROPIN,), (unit.CONNECTIONS_DROPIN,)):
        allowed = unit.allowed_syscalls(unit.service(*dropins))
        assert not MEMORY_ACCESS & allowed
        assert {"bpf", "perf_event_open", "sendmsg", "recvmsg", "openat", "clone3", "execve"} <= allowed
        assert not {"mount", "init_module", "kexec_load", "reboot", "swapon"} & allowed


@pytest.fixture
def unit_dir():
    """The unit with its drop-ins beside it, where systemd-analyze finds them,
    ExecStart pointing at an executable that exists here."""
    if not unit.systemd_analyze():
        pytest.skip("needs systemd-analyze (systemd)")
    path = tempfile.mkdtemp(prefix="pnm-unitfile-")
    with open(unit.UNIT) as f:
        text = f.read().replace("/usr/local/bin/procnetmon", shutil.which("sh"))
    with open(os.path.join(path, "procnetmon.service"), "w") as f:
        f.write(text)
    os.mkdir(os.path.join(path, "procnetmon.service.d"))
    yield path
    shutil.rmtree(path)


def _add_dropins(unit_dir, *dropins):
    for dropin in dropins:
        shutil.copy(dropin, os.path.join(unit_dir, "procnetmon.service.d", os.path.basename(dropin)))


@pytest.mark.parametrize("dropins", [(), (unit.WIRE_DROPIN,), (unit.CONNECTIONS_DROPIN,),
                                     (unit.WIRE_DROPIN, unit.CONNECTIONS_DROPIN)],
                         ids=["payload", "wire", "connections", "wire+connections"])
def test_systemd_accepts_every_line(unit_dir, dropins):
    _add_dropins(unit_dir, *dropins)
    done = subprocess.run([unit.systemd_analyze(), "verify", "--man=no", os.path.join(unit_dir, "procnetmon.service")],
                          capture_output=True, text=True, timeout=60)
    # An unknown key or a bad value is only a warning: none is allowed.
    assert done.returncode == 0 and done.stderr == "", done.stderr


def _security(unit_dir) -> dict:
    done = subprocess.run([unit.systemd_analyze(), "security", "--offline=yes", "--json=short", "--no-pager",
                           os.path.join(unit_dir, "procnetmon.service")], capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and not done.stdout.startswith("["):
        pytest.skip(f"systemd-analyze security --offline: {done.stderr.strip()}")
    return {item["name"]: item for item in json.loads(done.stdout)}


@pytest.mark.parametrize("dropins, net_admin, ptrace", [
    ((), False, False),
    ((unit.WIRE_DROPIN,), True, False),
    ((unit.CONNECTIONS_DROPIN,), False, True),
], ids=["payload", "wire", "connections"])
def test_systemds_own_reading_of_the_privileges(unit_dir, dropins, net_admin, ptrace):
    """systemd's analysis of the merged unit, independent of the parser above."""
    _add_dropins(unit_dir, *dropins)
    found = _security(unit_dir)

    def granted(name):
        return not found[name]["set"]

    assert granted("CapabilityBoundingSet=~CAP_NET_ADMIN") == net_admin
    assert granted("CapabilityBoundingSet=~CAP_SYS_PTRACE") == ptrace
    for never in ("CapabilityBoundingSet=~CAP_SYS_ADMIN", "CapabilityBoundingSet=~CAP_SYS_MODULE",
                  "CapabilityBoundingSet=~CAP_SET(UID|GID|PCAP)", "CapabilityBoundingSet=~CAP_SYS_RAWIO",
                  "CapabilityBoundingSet=~CAP_KILL", "User=/DynamicUser=", "NoNewPrivileges=",
                  "SystemCallFilter=~@mount", "SystemCallFilter=~@module", "SystemCallFilter=~@raw-io",
                  "ProtectSystem=", "RestrictNamespaces=~user"):
        assert found[never]["set"], found[never]
    assert "localhost" in found["IPAddressDeny="]["description"]
