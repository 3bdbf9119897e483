"""cgroup v2 paths: the container or unit each names, /proc/PID/cgroup, --cgroup paths."""

import os

import pytest

from procnetmon import cgroups
from procnetmon.cgroups import Workload, parse_path

ID = "3f9a2b1c" * 8  # 64 hex digits
ID2 = "0123456789abcdef" * 4
UID = "6c1a8e2f-4b3d-4e5f-9a7b-1c2d3e4f5a6b"


@pytest.mark.parametrize("path, expected", [
    # Docker: systemd and cgroupfs drivers, and docker in docker
    (f"/system.slice/docker-{ID}.scope", Workload(f"docker://{ID}")),
    (f"/docker/{ID}", Workload(f"docker://{ID}")),
    (f"/docker/{ID}/docker/{ID2}", Workload(f"docker://{ID2}")),
    (f"/pnmtest-1a2b/docker-{ID}.scope", Workload(f"docker://{ID}")),
    # a container running systemd: the container, not its units
    (f"/system.slice/docker-{ID}.scope/system.slice/nginx.service", Workload(f"docker://{ID}")),
    # Kubernetes, systemd driver (containerd, CRI-O, docker), pod slices only
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
     f"{UID.replace('-', '_')}.slice/cri-containerd-{ID}.scope", Workload(f"containerd://{ID}", UID)),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
     f"crio-{ID}.scope", Workload(f"cri-o://{ID}", UID)),
    (f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/docker-{ID}.scope",
     Workload(f"docker://{ID}", UID)),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice",
     Workload(None, UID)),
    # Kubernetes, cgroupfs driver: the runtime is not in the path
    (f"/kubepods/burstable/pod{UID}/{ID}", Workload(ID, UID)),
    (f"/kubepods/pod{UID}/{ID}", Workload(ID, UID)),
    # Podman: rootful, rootless, with its cgroup namespace subdirectory; conmon is a unit
    (f"/machine.slice/libpod-{ID}.scope", Workload(f"podman://{ID}")),
    (f"/machine.slice/libpod-{ID}.scope/container", Workload(f"podman://{ID}")),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope",
     Workload(f"podman://{ID}")),
    (f"/machine.slice/libpod-conmon-{ID}.scope", Workload(f"libpod-conmon-{ID}.scope")),
    # LXC / LXD / Incus
    ("/lxc.payload.web01", Workload("lxc://web01")),
    ("/lxc.payload.web01/system.slice/nginx.service", Workload("lxc://web01")),
    ("/lxc/db", Workload("lxc://db")),
    ("/lxc.monitor.web01", Workload()),
    # systemd units: the innermost service or scope
    ("/system.slice/nginx.service", Workload("nginx.service")),
    ("/user.slice/user-1000.slice/user@1000.service/init.scope", Workload("init.scope")),
    ("/user.slice/user-1000.slice/user@1000.service", Workload("user@1000.service")),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service", Workload("dbus.service")),
    ("/user.slice/user-1000.slice/session-3.scope", Workload("session-3.scope")),
    ("/system.slice/system-getty.slice/getty@tty1.service", Workload("getty@tty1.service")),
    ("/machine.slice/systemd-nspawn@box.service/payload", Workload("systemd-nspawn@box.service")),
    ("/init.scope", Workload("init.scope")),
    ("/pnmtest-1a2b/system.slice/foo.service", Workload("foo.service")),
    # nothing to name
    ("/", Workload()),
    ("", Workload()),
    (None, Workload()),
    ("/system.slice", Workload()),
    ("/user.slice/user-1000.slice", Workload()),
    ("/process_api/5b50395a07fc0d22bd1ce13efea5991d", Workload()),
    (f"/{ID}", Workload()),  # a bare id without a runtime or pod around it
    ("/docker/notanid", Workload()),
])
def test_parse_path(path, expected):
    assert parse_path(path) == expected
    assert cgroups.container_of(path) == expected.container


@pytest.mark.parametrize("text, expected", [
    ("0::/system.slice/nginx.service\n", "/system.slice/nginx.service"),
    ("12:pids:/user.slice\n4:memory:/x\n0::/user.slice/user-0.slice/session-1.scope\n",
     "/user.slice/user-0.slice/session-1.scope"),
    ("0::/\n", "/"),
    ("0::/gone.scope (deleted)\n", "/gone.scope"),
    ("4:memory:/only-v1\n", None),
    ("", None),
])
def test_parse_proc_cgroup(text, expected):
    assert cgroups.parse_proc_cgroup(text) == expected


@pytest.mark.parametrize("arg, expected", [
    ("/sys/fs/cgroup/system.slice", "/system.slice"),
    ("/sys/fs/cgroup/system.slice/", "/system.slice"),
    ("/sys/fs/cgroup", "/"),
    ("system.slice/nginx.service", "/system.slice/nginx.service"),
    ("/system.slice", "/system.slice"),  # as /proc/PID/cgroup writes it
    ("../etc", None),
    ("a/../../x", None),
])
def test_relative_path(arg, expected):
    assert cgroups.relative_path(arg, "/sys/fs/cgroup") == expected


def test_names_remembered_and_walked(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    names = cgroups.CgroupNames(str(tmp_path))
    ino_b = os.stat(tmp_path / "a" / "b").st_ino
    names.remember("/a/b")
    os.rmdir(tmp_path / "a" / "b")
    assert names.path_of(ino_b) == "/a/b"  # remembered, though removed
    assert names.path_of(os.stat(tmp_path / "c").st_ino) == "/c"  # found by a walk
    assert names.path_of(1) is None
    ids = dict(cgroups.walk_ids(str(tmp_path), "/a"))
    assert ids == {os.stat(tmp_path / "a").st_ino: "/a"}
