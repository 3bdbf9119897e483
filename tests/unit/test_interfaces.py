"""Interface names resolved in procnetmon's own network namespace."""

from __future__ import annotations

import os

import pytest

from procnetmon import interfaces
from procnetmon.interfaces import InterfaceKey, UnknownInterface

FAKE = {1: "lo", 2: "eth0", 7: "wg0"}


def test_loopback_resolves_to_index_1_in_our_namespace():
    keys = interfaces.resolve(["lo"])
    assert keys == [InterfaceKey(os.stat("/proc/self/ns/net").st_ino, 1)]
    assert keys[0].netns > 0


def test_resolve_keeps_order_and_uses_the_namespace_inode(monkeypatch):
    monkeypatch.setattr(interfaces, "interface_names", lambda: dict(FAKE))
    monkeypatch.setattr(interfaces, "own_netns_inode", lambda: 4026531840)
    assert interfaces.resolve(["wg0", "lo"]) == [(4026531840, 7), (4026531840, 1)]
    assert interfaces.resolve([]) == []


def test_unknown_interface_lists_the_known_names(monkeypatch):
    monkeypatch.setattr(interfaces, "interface_names", lambda: dict(FAKE))
    with pytest.raises(UnknownInterface) as e:
        interfaces.resolve(["lo", "eth9"])
    assert e.value.name == "eth9"
    assert e.value.known == ["eth0", "lo", "wg0"]
    assert str(e.value) == "no interface named 'eth9'; this host has: eth0, lo, wg0"
    assert isinstance(e.value, ValueError)  # so argparse type functions report it


def test_unknown_interface_on_this_host():
    with pytest.raises(UnknownInterface) as e:
        interfaces.resolve(["procnetmon-no-such-if"])
    assert "lo" in e.value.known
    assert "lo" in str(e.value)


@pytest.mark.parametrize("names, expected", [
    (["lo"], True),
    (["eth0", "lo"], True),
    (["eth0"], False),
    ([], False),
    (["LO"], False),
])
def test_names_include_loopback(monkeypatch, names, expected):
    monkeypatch.setattr(interfaces, "interface_names", lambda: dict(FAKE))
    assert interfaces.names_include_loopback(names) is expected


def test_loopback_found_by_index_not_by_name(monkeypatch):
    monkeypatch.setattr(interfaces, "interface_names", lambda: {1: "loopback0", 2: "lo"})
    assert interfaces.names_include_loopback(["loopback0"])
    assert not interfaces.names_include_loopback(["lo"])


def test_names_include_loopback_on_this_host():
    assert interfaces.names_include_loopback(["lo"])


def test_names_of_other_namespaces_resolve_there(monkeypatch):
    """NETNS/IFACE and pid:PID/IFACE key on that namespace's inode and index."""
    paths = {"/run/netns/blue": (4026532001, {1: "lo", 5: "veth1"}),
             "/proc/42/ns/net": (4026532002, {1: "lo", 3: "eth0"})}
    monkeypatch.setattr(interfaces, "interface_names", lambda: dict(FAKE))
    monkeypatch.setattr(interfaces, "own_netns_inode", lambda: 4026531840)
    monkeypatch.setattr(interfaces, "netns_inode", lambda path: paths[path][0])
    monkeypatch.setattr(interfaces, "names_in_netns", lambda path: dict(paths[path][1]))
    assert interfaces.resolve(["eth0", "blue/veth1", "pid:42/eth0", "blue/lo"]) == [
        (4026531840, 2), (4026532001, 5), (4026532002, 3), (4026532001, 1)]
    with pytest.raises(UnknownInterface) as e:
        interfaces.resolve(["blue/eth0"])
    assert str(e.value) == "no interface named 'blue/eth0'; network namespace 'blue' has: lo, veth1"


def test_a_namespace_that_does_not_exist_is_named():
    with pytest.raises(UnknownInterface) as e:
        interfaces.resolve(["procnetmon-no-such-ns/eth0"])
    assert "no network namespace 'procnetmon-no-such-ns'" in str(e.value)
    assert "/run/netns" in str(e.value)


@pytest.mark.parametrize("names, expected", [(["blue/lo"], True), (["blue/eth0"], False), (["pid:1/lo"], True)])
def test_loopback_of_another_namespace(monkeypatch, names, expected):
    monkeypatch.setattr(interfaces, "interface_names", lambda: dict(FAKE))
    assert interfaces.names_include_loopback(names) is expected
