"""ProbeSpec (issue 21, item 2): the probes' settings as one value, resolved
once from the arguments, carried whole to the probes and, as JSON, to the
loader child of --serve; ``probe_for`` the one dispatch from spec to probe."""

from __future__ import annotations

import dataclasses
import json

import pytest

from procnetmon import cli, session
from procnetmon.interfaces import InterfaceKey
from procnetmon.probes import handoff, libbpf
from procnetmon.probes.fdprobe import FdProbe, LoadedBackend
from procnetmon.probes.loader import BccProbe, build_cflags
from procnetmon.probes.payload import PayloadProbe
from procnetmon.probes.spec import ProbeSpec, bcc_probe_for, probe_for
from procnetmon.probes.wire import WireProbe

# A value other than the default for every field. A new setting fails
# test_every_field_is_listed_here until it is added, and then travels
# through the round trip below with no other change.
NON_DEFAULT = {
    "mode": "wire",
    "pids": (12, 345),
    "interfaces": (InterfaceKey(4026531840, 1), InterfaceKey(4026532001, 7)),
    "include_loopback": True,
    "details": True,
    "backend": "kprobe",
    "cgroups": ("/system.slice", "/user.slice/user-1000.slice"),
    "cgroup_mount": "/sys/fs/cgroup/unified",
    "follow_children": True,
    "handoff": True,
    "verbose": True,
    "protocols": ("udp", "icmp"),
    "exclude_cgroups": ("/system.slice/backup.service",),
    "exclude_pid": 4242,
    "tcp_health": True,
    "remotes": ("198.18.0.0/15", "fd42::/16"),
    "exclude_remotes": ("198.18.7.0/24",),
    "remote_ports": ((443, 443), (8000, 8100)),
    "exclude_remote_ports": ((8080, 8080),),
    "local_ports": ((5432, 5432),),
    "exclude_local_ports": ((22, 22),),
}


def test_every_field_is_listed_here():
    assert {f.name for f in dataclasses.fields(ProbeSpec)} == set(NON_DEFAULT)


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_each_setting_survives_the_round_trip(name):
    spec = ProbeSpec(**{name: NON_DEFAULT[name]})
    back = ProbeSpec.from_json(spec.to_json())
    assert back == spec
    assert getattr(back, name) == NON_DEFAULT[name]
    assert type(getattr(back, name)) is type(NON_DEFAULT[name])


def test_a_full_spec_survives_the_round_trip_with_its_types():
    spec = ProbeSpec(**{**NON_DEFAULT, "handoff": False})
    back = ProbeSpec.from_json(spec.to_json())
    assert back == spec
    assert all(type(k) is InterfaceKey for k in back.interfaces)
    assert back.interfaces[1].ifindex == 7
    # Plain JSON: what the child reads on its standard input.
    assert json.loads(spec.to_json())["interfaces"] == [[4026531840, 1], [4026532001, 7]]


def test_the_default_and_the_empty_pid_list_are_told_apart():
    # None: every process; (): none yet (COMMAND's PID comes once it is forked).
    for pids in (None, ()):
        assert ProbeSpec.from_json(ProbeSpec(pids=pids).to_json()).pids == pids


def test_lists_are_kept_as_tuples_so_equal_specs_compare_equal():
    spec = ProbeSpec(pids=[1, 2], interfaces=[[5, 1]], cgroups=["/a"])
    assert spec == ProbeSpec(pids=(1, 2), interfaces=(InterfaceKey(5, 1),), cgroups=("/a",))
    assert hash(spec) == hash(ProbeSpec(pids=(1, 2), interfaces=(InterfaceKey(5, 1),), cgroups=("/a",)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.pids = (3,)


def test_with_pids_changes_the_targets_only():
    spec = ProbeSpec(**{**NON_DEFAULT, "handoff": False})
    moved = spec.with_pids([99])
    assert moved.pids == (99,)
    assert dataclasses.replace(moved, pids=spec.pids) == spec


@pytest.mark.parametrize("text", ['{"mode": "payload", "colour": "red"}', '[1, 2]', '{"mode": "udp"}'])
def test_what_is_not_a_spec_is_refused(text):
    with pytest.raises((ValueError, TypeError)):
        ProbeSpec.from_json(text)


def test_the_loader_child_cannot_be_asked_for_what_it_cannot_do():
    for name in ("details", "follow_children"):
        with pytest.raises(ValueError):
            ProbeSpec(handoff=True, **{name: True})


# -- probe_for: the one dispatch ----------------------------------------------------


@pytest.mark.parametrize("mode, handoff_, cls", [
    ("payload", False, PayloadProbe), ("wire", False, WireProbe),
    ("payload", True, FdProbe), ("wire", True, FdProbe),
])
def test_probe_for_picks_the_probe_of_the_mode_and_loader(mode, handoff_, cls):
    spec = ProbeSpec(mode=mode, pids=(1,), handoff=handoff_)
    probe = probe_for(spec)
    assert type(probe) is cls
    assert probe.spec is spec and probe.mode == mode
    assert probe.backend is None  # known once attached


@pytest.mark.parametrize("mode, cls", [("payload", PayloadProbe), ("wire", WireProbe)])
def test_bcc_probe_for_is_always_a_bcc_probe(mode, cls):
    # The loader child itself, and --ebpf, compile here whatever the spec says of handoff.
    assert type(bcc_probe_for(ProbeSpec(mode=mode, handoff=True))) is cls


def test_a_probe_refuses_a_spec_of_the_other_mode():
    with pytest.raises(ValueError):
        PayloadProbe(ProbeSpec(mode="wire"))
    with pytest.raises(ValueError):
        WireProbe(ProbeSpec(mode="payload"))


def test_fd_probe_sends_the_child_its_spec_and_names_the_backend_it_answers(monkeypatch):
    sent = []

    def attach_in_child(spec):
        sent.append(spec)
        return {"backend": "tracepoint", "label": "tracepoint backend, BTF-typed", "maps": {},
                "cgroup_ids": [3], "excluded_cgroup_ids": [9]}, []

    monkeypatch.setattr(handoff, "attach_in_child", attach_in_child)
    monkeypatch.setattr(libbpf, "load", lambda purpose: None)
    spec = ProbeSpec(mode="wire", pids=(7,), backend="tracepoint", handoff=True, verbose=True)
    probe = FdProbe(spec)
    probe.attach()
    # The child compiles in this process's stead, logging to a file: its
    # standard error is not the user's.
    assert sent == [dataclasses.replace(spec, handoff=False, verbose=False)]
    assert ProbeSpec.from_json(sent[0].to_json()) == sent[0]
    assert probe.backend == LoadedBackend("tracepoint", "tracepoint backend, BTF-typed")
    assert probe._cgroup_ids == {3} and probe._excluded_cgroup_ids == {9}
    probe.close()


# -- the -D flags follow the spec -------------------------------------------------------


@pytest.mark.parametrize("settings, flags", [
    ({}, ["-DEXCLUDE_LOOPBACK"]),
    ({"include_loopback": True}, []),
    ({"pids": (1,)}, ["-DFILTER_PIDS", "-DEXCLUDE_LOOPBACK"]),
    ({"pids": (1,), "follow_children": True}, ["-DFILTER_PIDS", "-DFOLLOW_CHILDREN", "-DEXCLUDE_LOOPBACK"]),
    ({"follow_children": True}, ["-DEXCLUDE_LOOPBACK"]),  # nothing to follow from without -p
    ({"interfaces": ((1, 2),)}, ["-DFILTER_IFACES"]),
    ({"details": True, "cgroups": ()}, ["-DEXCLUDE_LOOPBACK", "-DDETAILS", "-DFILTER_CGROUPS"]),
    ({"exclude_cgroups": ("/a",), "exclude_pid": 77}, ["-DEXCLUDE_LOOPBACK", "-DEXCLUDE_CGROUPS",
                                                        "-DEXCLUDE_TGID=77"]),
])
def test_build_cflags(settings, flags):
    assert build_cflags({"sk_buff__len": 112}, ProbeSpec(**settings)) == ["-DOFF_sk_buff__len=112"] + flags


def test_bcc_probe_without_a_mode_takes_any_spec():
    assert BccProbe(ProbeSpec(mode="wire")).spec.mode == "wire"


# -- resolved once from the arguments ------------------------------------------------------


@pytest.fixture
def resolve():
    return lambda *argv: session._probe_spec(cli.parse_args(list(argv)))


def test_the_arguments_become_one_spec(resolve):
    spec = resolve("-p", "1,2", "-i", "lo", "-d", "--backend", "tracepoint", "--mode", "wire", "-t", "1s")
    assert spec == ProbeSpec(mode="wire", pids=(1, 2), interfaces=spec.interfaces, include_loopback=True,
                             details=True, backend="tracepoint")
    assert len(spec.interfaces) == 1 and spec.interfaces[0].ifindex == 1


def test_a_daemon_loads_in_a_child_unless_it_needs_the_bcc_probes(resolve):
    assert resolve("--serve", "9000").handoff
    assert not resolve("--serve", "9000", "-d").handoff
    assert not resolve("--serve", "9000", "-p", "1", "--children").handoff
    assert not resolve("-t", "1s").handoff


def test_command_starts_with_no_pid_and_follows_its_children(resolve):
    spec = resolve("--", "true")
    assert (spec.pids, spec.follow_children) == ((), True)


@pytest.mark.parametrize("bad", [0, -5, "12; system(x)", 1.5j])
def test_the_pid_to_leave_out_is_a_positive_integer(bad):
    # It reaches the C as -DEXCLUDE_TGID=N: nothing but an integer may.
    with pytest.raises((ValueError, TypeError)):
        ProbeSpec(exclude_pid=bad)


def test_exclusions_are_resolved_into_the_spec(resolve, tmp_path, monkeypatch):
    import os

    from procnetmon import cgroups

    (tmp_path / "system.slice" / "backup.service").mkdir(parents=True)
    (tmp_path / "docker-" f"{'ab' * 32}.scope" / "inner").mkdir(parents=True)
    monkeypatch.setattr(cgroups, "cgroup2_mount", lambda *a: str(tmp_path))
    spec = resolve("--exclude-cgroup", "system.slice", "--exclude-cgroup", "docker://" + "ab" * 6,
                   "--exclude-cgroup", "backup.service", "--exclude-self", "-t", "1s")
    assert spec.exclude_cgroups == ("/system.slice", f"/docker-{'ab' * 32}.scope", "/system.slice/backup.service")
    assert spec.exclude_pid == os.getpid()
    assert spec.cgroups is None and spec.cgroup_mount == str(tmp_path)
    assert resolve("-t", "1s").exclude_cgroups is None and resolve("-t", "1s").exclude_pid is None
    with pytest.raises(session.BadRequest, match="no cgroup or container nope.service"):
        resolve("--exclude-cgroup", "nope.service", "-t", "1s")
    with pytest.raises(session.BadRequest):
        resolve("--exclude-cgroup", "docker://abc", "-t", "1s")  # too short a prefix to name one


class _Table(dict):
    """The part of a BCC table MapReader uses for the cgroup maps."""

    Key = Leaf = staticmethod(lambda v: v)


def test_the_reader_keeps_both_cgroup_maps_in_step_with_the_tree(tmp_path):
    from procnetmon.probes.reader import MapReader

    for d in ("keep/a", "skip/b"):
        (tmp_path / d).mkdir(parents=True)
    tables = {"target_cgroups": _Table(), "excluded_cgroups": _Table()}

    class Reader(MapReader):
        def _table(self, name):
            return tables[name]

    reader = Reader(ProbeSpec(cgroups=("/keep",), exclude_cgroups=("/skip",), cgroup_mount=str(tmp_path)))
    reader._refresh_cgroups()
    ino = {d: (tmp_path / d).stat().st_ino for d in ("keep", "keep/a", "skip", "skip/b")}
    assert set(tables["target_cgroups"]) == {ino["keep"], ino["keep/a"]}
    assert set(tables["excluded_cgroups"]) == {ino["skip"], ino["skip/b"]}
    (tmp_path / "skip/b").rmdir()
    (tmp_path / "skip/c").mkdir()
    reader._refresh_cgroups()
    assert set(tables["excluded_cgroups"]) == {ino["skip"], (tmp_path / "skip/c").stat().st_ino}
    # Without --cgroup, only the exclusions' map is there and kept.
    del tables["target_cgroups"]
    Reader(ProbeSpec(exclude_cgroups=("/skip",), cgroup_mount=str(tmp_path)))._refresh_cgroups()
