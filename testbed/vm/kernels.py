"""Debian's kernels for the matrix: the newest build of each series, fetched and unpacked into the cache.

Fetching goes through a private apt configuration under the cache (the
machine's own sources, lists and locks stay as they are). The pure parts
(picking the newest build, the apt options) are unit-tested in tests/unit/test_vm.py.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from typing import Optional

from testbed.vm.common import CACHE, VMError, run, say

SOURCES = "/etc/apt/sources.list.d/debian.sources"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SUITES = ("bullseye", "bookworm", "bookworm-backports")


@dataclass(frozen=True)
class KernelSpec:
    """One kernel series of the matrix: the Debian package pattern naming its newest build."""

    name: str  # short label: 5.10, 6.1, 6.12
    distro: str  # who ships it
    image: str  # regex over package names; group 1 is the build number to maximise
    headers: bool = False  # also fetch linux-headers and run once with them


KERNELS = (
    KernelSpec("5.10", "Debian 11", r"linux-image-5\.10\.0-(\d+)-amd64"),
    KernelSpec("6.1", "Debian 12", r"linux-image-6\.1\.0-(\d+)-amd64-unsigned"),
    KernelSpec("6.12", "Debian 13 (bookworm-backports build)", r"linux-image-6\.12\.(\d+)\+deb12-amd64",
               headers=True),
)


def mirror_from_sources(text: str) -> str:
    """The Debian mirror's base URI (…/debian) from a deb822 sources file."""
    for stanza in re.split(r"\n\s*\n", text):
        uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
        suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
        if uris and suites and not any(s.endswith("-security") for s in suites.group(1).split()):
            return uris.group(1).rstrip("/")
    raise VMError(f"no Debian mirror (a stanza with URIs: and Suites:) in {SOURCES}")


def sources_list(mirror: str, suites=SUITES, keyring: str = KEYRING) -> str:
    return "".join(f"deb [signed-by={keyring}] {mirror} {suite} main\n" for suite in suites)


def apt_options(apt_dir: str) -> list[str]:
    """apt options that use only ``apt_dir``: the machine's own sources, lists and locks stay untouched."""
    return ["-o", f"Dir::Etc::sourcelist={apt_dir}/sources.list", "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={apt_dir}/lists", "-o", f"Dir::Cache={apt_dir}/cache",
            "-o", "Acquire::Languages=none", "-o", "APT::Get::List-Cleanup=0"]


def newest(names, pattern: str) -> Optional[str]:
    """The package name matching ``pattern`` in full with the highest build number."""
    best, best_key = None, None
    for name in names:
        m = re.fullmatch(pattern, name.strip())
        if m:
            key = int(m.group(1))
            if best_key is None or key > best_key:
                best, best_key = name.strip(), key
    return best


def headers_packages(release: str) -> list[str]:
    """Debian's header pair for a kernel release: the flavour's and the common one."""
    if not release.endswith("-amd64"):
        raise VMError(f"{release}: not an amd64 Debian kernel release")
    return [f"linux-headers-{release}", f"linux-headers-{release[:-len('-amd64')]}-common"]


@dataclass
class Kernel:
    """An unpacked kernel in the cache."""

    spec: KernelSpec
    release: str
    root: str  # the unpacked packages: boot/, lib/modules/<release>/, usr/src/

    @property
    def vmlinuz(self) -> str:
        return f"{self.root}/boot/vmlinuz-{self.release}"

    @property
    def config(self) -> str:
        return f"{self.root}/boot/config-{self.release}"

    @property
    def modules(self) -> str:
        return f"{self.root}/lib/modules/{self.release}"

    @property
    def headers(self) -> Optional[str]:
        path = f"{self.root}/usr/src/linux-headers-{self.release}"
        return path if os.path.isdir(path) else None


# ---------------------------------------------------------------- fetching

def apt_update(cache: str = CACHE, max_age: float = 24 * 3600) -> str:
    """The private apt configuration, its lists refreshed once a day; returns its directory."""
    apt_dir = f"{cache}/apt"
    os.makedirs(f"{apt_dir}/lists/partial", exist_ok=True)
    os.makedirs(f"{apt_dir}/cache/archives/partial", exist_ok=True)
    with open(SOURCES) as f:
        wanted = sources_list(mirror_from_sources(f.read()))
    src = f"{apt_dir}/sources.list"
    stamp = f"{apt_dir}/updated"
    stale = not os.path.exists(stamp) or time.time() - os.path.getmtime(stamp) > max_age
    if not os.path.exists(src) or open(src).read() != wanted:
        with open(src, "w") as f:
            f.write(wanted)
        stale = True
    if stale:
        say("updating the private apt lists (", ", ".join(SUITES), ")")
        run(["apt-get", *apt_options(apt_dir), "update", "-qq"])
        with open(stamp, "w") as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    return apt_dir


def package_names(apt_dir: str, prefix: str) -> list[str]:
    return run(["apt-cache", *apt_options(apt_dir), "pkgnames", prefix]).stdout.split()


def download(apt_dir: str, packages: list[str], dest: str) -> list[str]:
    """The .deb files of ``packages`` in ``dest``, downloaded unless there already."""
    os.makedirs(dest, exist_ok=True)
    debs = []
    for pkg in packages:
        have = [n for n in os.listdir(dest) if n.startswith(pkg.replace("+", "%2b") + "_") or n.startswith(pkg + "_")]
        if not have:
            say("downloading", pkg)
            run(["apt-get", *apt_options(apt_dir), "download", pkg], cwd=dest)
            have = [n for n in os.listdir(dest) if n.startswith(pkg.replace("+", "%2b") + "_")
                    or n.startswith(pkg + "_")]
        if not have:
            raise VMError(f"apt-get download {pkg} left no .deb in {dest}")
        debs.append(os.path.join(dest, sorted(have)[-1]))
    return debs


def unpack(debs: list[str], root: str) -> None:
    tmp = root + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for deb in debs:
        run(["dpkg-deb", "-x", deb, tmp])
    shutil.rmtree(root, ignore_errors=True)
    os.rename(tmp, root)


def fetch_kernel(spec: KernelSpec, apt_dir: str, cache: str = CACHE) -> Kernel:
    """The newest build of ``spec`` unpacked in the cache, with modules.dep (and headers if wanted)."""
    image = newest(package_names(apt_dir, spec.image.split("\\")[0]), spec.image)
    if not image:
        raise VMError(f"no package matches {spec.image} in {', '.join(SUITES)}")
    release = re.sub(r"^linux-image-|-unsigned$", "", image)
    root = f"{cache}/kernels/{release}"
    kernel = Kernel(spec, release, root)
    stamp = f"{root}/.unpacked"
    want = [image] + (headers_packages(release) if spec.headers else [])
    if not os.path.exists(stamp) or open(stamp).read().split() != want:
        debs = download(apt_dir, want, f"{cache}/debs")
        say("unpacking", release)
        unpack(debs, root)
        # The package ships no modules.dep: without it modprobe finds nothing (veth).
        run(["depmod", "-b", root, release])
        with open(stamp, "w") as f:
            f.write("\n".join(want) + "\n")
    for path in (kernel.vmlinuz, kernel.config, kernel.modules):
        if not os.path.exists(path):
            raise VMError(f"{image}: {path} is missing after unpacking")
    return kernel


def fetch_all(specs=KERNELS, cache: str = CACHE) -> list[Kernel]:
    apt_dir = apt_update(cache)
    return [fetch_kernel(spec, apt_dir, cache) for spec in specs]
