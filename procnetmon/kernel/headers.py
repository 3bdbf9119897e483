"""The kernel header tree BCC insists on, made up when the kernel ships none.

BCC compiles every program against ``/lib/modules/$(uname -r)/build`` (or
``$BCC_KERNEL_SOURCE``). procnetmon's programs include no kernel header and
read struct fields by BTF offset, so a small synthetic tree satisfies BCC:
the uapi headers of the C library's linux-libc-dev, a kconfig made from the
kernel's configuration (``/proc/config.gz``, else ``/boot/config-<release>``
as Debian ships it, else ``/lib/modules/<release>/config``), and the few
kernel-only names BCC's helpers use. BCC's helpers refuse to compile without
``CONFIG_BPF_SYSCALL``, so no configuration means no tree, said as such.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import os
import re
import shutil
import tempfile
from typing import Optional

from procnetmon.kernel import cache

SYSTEM_UAPI = "/usr/include/linux"
SYSTEM_ASM_GENERIC = "/usr/include/asm-generic"
PROC_CONFIG = "/proc/config.gz"
# v3: the kconfig comes from whichever configuration the kernel offers, and
# types.h has loff_t. Versioned, so that two procnetmon versions on one
# machine never rebuild each other's tree.
TREE_VERSION = 3
STAMP = f".procnetmon-tree-v{TREE_VERSION}"
MERGED_STAMP = ".procnetmon-merged-v1"
# What a finished tree holds (each file's digest, each link's target): a
# tree that no longer matches it (a file lost or changed, a link moved) is
# damaged, and is built again rather than failing every compile.
MANIFEST = ".procnetmon-manifest"


class HeadersError(Exception):
    """Neither real kernel headers nor the parts of a synthetic tree are available."""


class NoConfigError(HeadersError):
    """No kernel configuration is readable, so no synthetic tree can be built."""

    def __init__(self, tried: list[str]):
        self.tried = tried  # each place looked at, and why it did not do
        release = os.uname().release
        super().__init__("no kernel configuration to build the header tree from (" + "; ".join(tried) + "): "
                         f"install linux-headers-{release}, or copy the kernel's config to /boot/config-{release}")


def config_candidates(release: Optional[str] = None) -> list[str]:
    """Where a kernel keeps its configuration, most trusted first."""
    release = release or os.uname().release
    return [PROC_CONFIG, f"/boot/config-{release}", f"/lib/modules/{release}/config"]


def read_config(paths: Optional[list[str]] = None) -> tuple[str, str]:
    """The first readable kernel configuration of ``paths``: its text and its path.

    Raises NoConfigError naming each place and why it failed.
    """
    paths = paths if paths is not None else config_candidates()
    why = []
    for path in paths:
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                text = f.read()
        except FileNotFoundError:
            why.append(f"{path} is missing")
            continue
        except (OSError, EOFError) as e:
            why.append(f"{path}: {getattr(e, 'strerror', None) or e}")
            continue
        if "CONFIG_" not in text:
            why.append(f"{path} has no CONFIG_ line")
            continue
        return text, path
    raise NoConfigError(why)


def real_headers_dir(release: Optional[str] = None, modules_dir: str = "/lib/modules") -> Optional[str]:
    """The installed kernel header tree, when the distribution ships one.

    Debian splits it: ``build`` holds the generated headers (autoconf.h),
    ``source`` the rest. Both are needed, so a split tree is returned as
    ``source`` only when ``build`` completes it; see split_headers().
    """
    release = release or os.uname().release
    build, source = f"{modules_dir}/{release}/build", f"{modules_dir}/{release}/source"
    if _has(build, "include/linux/kconfig.h") and _has(build, "include/generated/autoconf.h"):
        return build
    if split_headers(release, modules_dir):
        return source
    return None


def _has(root: str, rel: str) -> bool:
    return os.path.isfile(os.path.join(root, rel))


def split_headers(release: Optional[str] = None, modules_dir: str = "/lib/modules") -> Optional[tuple[str, str]]:
    """(build, source) when the installed headers are split between the two, as Debian ships them."""
    release = release or os.uname().release
    build, source = f"{modules_dir}/{release}/build", f"{modules_dir}/{release}/source"
    if _has(source, "include/linux/kconfig.h") and _has(build, "include/generated/autoconf.h"):
        return build, source
    return None


def merge_split_tree(root: str, build: str, source: str, arch: Optional[str] = None) -> str:
    """One directory of links that joins Debian's split headers, and return it.

    With $BCC_KERNEL_SOURCE set, BCC looks for everything under one
    directory, but Debian keeps the generated headers in ``build`` and the
    rest in ``source``: link each of source's entries, and build's generated
    directories next to them.
    """
    arch = arch or _arch_name()
    tmp = _new_tmp(root)
    # BCC reads only include/ and arch/<arch>/include/ (see its kbuild_helper).
    for sub in ("include", f"arch/{arch}/include"):
        os.makedirs(os.path.join(tmp, sub))
        src_dir = os.path.join(source, sub)
        for name in sorted(os.listdir(src_dir)) if os.path.isdir(src_dir) else []:
            if name != "generated":
                _link(os.path.join(src_dir, name), os.path.join(tmp, sub, name))
        if os.path.isdir(os.path.join(build, sub, "generated")):
            _link(os.path.join(build, sub, "generated"), os.path.join(tmp, sub, "generated"))
    _write(f"{tmp}/{MERGED_STAMP}", f"{build}\n{source}\n")
    _seal(tmp)
    _install_tree(tmp, root, MERGED_STAMP)
    return root


def _arch_asm_dir() -> str:
    machine = os.uname().machine
    triplet = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(machine, f"{machine}-linux-gnu")
    return f"/usr/include/{triplet}/asm"


def _arch_name() -> str:
    return {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def autoconf_from_config(config_text: str) -> str:
    """``CONFIG_X=y`` lines as the ``#define``s of include/generated/autoconf.h."""
    out = ["/* made by procnetmon from the running kernel's config */"]
    for line in config_text.splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line)
        if not m:
            continue
        name, value = m.groups()
        if value == "y":
            out.append(f"#define {name} 1")
        elif value == "m":
            out.append(f"#define {name}_MODULE 1")
        else:
            out.append(f"#define {name} {value}")
    return "\n".join(out) + "\n"


def _version_code(release: str) -> int:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        return 0
    major, minor, patch = (int(x or 0) for x in m.groups())
    return (major << 16) + (minor << 8) + min(patch, 255)


_TYPES_H = """\
#ifndef _PROCNETMON_LINUX_TYPES_H
#define _PROCNETMON_LINUX_TYPES_H
#include <uapi/linux/types.h>
typedef __u8 u8;
typedef __s8 s8;
typedef __u16 u16;
typedef __s16 s16;
typedef __u32 u32;
typedef __s32 s32;
typedef __u64 u64;
typedef __s64 s64;
typedef _Bool bool;
enum { false = 0, true = 1 };
typedef unsigned long size_t;
typedef unsigned long uintptr_t;
typedef int pid_t;
typedef long long loff_t;
#endif
"""

_KCONFIG_H = """\
#ifndef _PROCNETMON_KCONFIG_H
#define _PROCNETMON_KCONFIG_H
#include <generated/autoconf.h>
#define IS_ENABLED(option) 0
#endif
"""


def _new_tmp(root: str) -> str:
    """An empty directory beside ``root`` under a name nobody can guess, to build a tree in."""
    os.makedirs(os.path.dirname(root), mode=0o755, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(root), prefix=os.path.basename(root) + ".tmp-")
    os.chmod(tmp, 0o755)
    return tmp


def _write(path: str, text: str) -> None:
    """A new file of the tree (in a directory made for it, so O_EXCL: nothing is followed)."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def manifest_of(root: str) -> str:
    """A digest of everything in the tree ``root``, links by their targets (not followed)."""
    entries = []
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            rel = os.path.relpath(path, root)
            if rel == MANIFEST:
                continue
            if os.path.islink(path):
                entries.append(f"L {rel} {os.readlink(path)}")
            elif name in files:
                with open(path, "rb") as f:
                    entries.append(f"F {rel} {hashlib.sha256(f.read()).hexdigest()}")
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()


def _seal(tmp: str) -> None:
    _write(os.path.join(tmp, MANIFEST), manifest_of(tmp) + "\n")


def is_whole(root: str, stamp: str, want: Optional[str] = None) -> bool:
    """Whether ``root`` is a finished tree (its ``stamp`` holding ``want``, when
    given) that still matches its manifest."""
    found = _read(os.path.join(root, stamp))
    if found is None or (want is not None and found != want):
        return False
    sealed = _read(os.path.join(root, MANIFEST))
    try:
        return sealed == manifest_of(root) + "\n"
    except OSError:
        return False


def _link(target: str, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)


def build_tree(root: str, release: Optional[str] = None, config_text: Optional[str] = None,
               uapi_dir: str = SYSTEM_UAPI, asm_generic_dir: str = SYSTEM_ASM_GENERIC,
               asm_dir: Optional[str] = None) -> str:
    """Build the synthetic tree in ``root`` (replacing what is there) and return ``root``."""
    release = release or os.uname().release
    asm_dir = asm_dir or _arch_asm_dir()
    for needed in (uapi_dir, asm_generic_dir, asm_dir):
        if not os.path.isdir(needed):
            raise HeadersError(f"{needed} is missing: install the C library's kernel headers "
                               "(Debian/Ubuntu: apt-get install linux-libc-dev)")
    config_source = "given"
    if config_text is None:
        config_text, config_source = read_config(config_candidates(release))
    tmp = _new_tmp(root)
    arch = _arch_name()

    _write(f"{tmp}/include/generated/autoconf.h", autoconf_from_config(config_text))
    _write(f"{tmp}/include/linux/kconfig.h", _KCONFIG_H)
    _write(f"{tmp}/include/linux/types.h", _TYPES_H)
    code = _version_code(release)
    _write(f"{tmp}/include/linux/version.h",
           f"#define LINUX_VERSION_CODE {code}\n"
           "#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))\n")
    _write(f"{tmp}/include/linux/log2.h", "")
    _write(f"{tmp}/arch/{arch}/include/asm/page.h",
           "#define PAGE_SHIFT 12\n#define PAGE_SIZE (1UL << PAGE_SHIFT)\n")
    for name in sorted(os.listdir(uapi_dir)):
        dest = f"{tmp}/include/uapi/linux/{name}"
        if name == "bpf.h":
            # BCC brings its own bpf.h; the C library's copy clashes with it.
            _write(dest, "")
        else:
            _link(os.path.join(uapi_dir, name), dest)
    _link(asm_generic_dir, f"{tmp}/include/uapi/asm-generic")
    _link(asm_dir, f"{tmp}/arch/{arch}/include/uapi/asm")
    _write(f"{tmp}/{STAMP}", f"{release}\n{config_source}\n")
    _seal(tmp)
    _install_tree(tmp, root, STAMP)
    return root


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _install_tree(tmp: str, root: str, stamp: str) -> None:
    """Put the finished tree ``tmp`` at ``root``.

    Several procnetmon may start at once on a cold cache and each build a
    tree; one may already compile against ``root`` while another finishes.
    So a tree at ``root`` with the same stamp is kept (``tmp`` is dropped),
    and a different one is renamed aside before it is removed, never
    removed in place: no compiler ever finds ``root`` half gone.
    """
    wanted = _read(os.path.join(tmp, stamp))
    if os.path.isdir(root) and is_whole(root, stamp, wanted):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    aside = tempfile.mkdtemp(dir=os.path.dirname(root), prefix=os.path.basename(root) + ".old-")
    try:
        os.rename(root, os.path.join(aside, "tree"))
    except FileNotFoundError:
        pass
    try:
        os.rename(tmp, root)
    except OSError:
        # Another procnetmon put its tree there in between: use that one.
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)


def ensure_headers(cache_dir: Optional[str] = None) -> tuple[str, bool]:
    """A header directory BCC can use, and whether it is synthetic.

    Real headers win when installed (split ones joined by links in the
    cache). Otherwise the synthetic tree is built once per kernel build in
    the cache directory and reused.
    """
    real = real_headers_dir()
    if real:
        split = split_headers()
        if not split:
            return real, False
        root = os.path.join(cache_dir or cache.kernel_cache_dir(), "headers-joined")
        want = "{}\n{}\n".format(*split)
        if not _merged_for(root, want):
            with _building(root):
                if not _merged_for(root, want):  # another procnetmon may have joined them
                    merge_split_tree(root, *split)
        return root, False
    root = os.path.join(cache_dir or cache.kernel_cache_dir(), f"headers-v{TREE_VERSION}")
    if not is_whole(root, STAMP):
        with _building(root):
            if not is_whole(root, STAMP):  # another procnetmon may have made it
                build_tree(root)
    return root, True


def _merged_for(root: str, want: str) -> bool:
    """Whether ``root`` joins the split headers ``want`` names."""
    return is_whole(root, MERGED_STAMP, want)


@contextlib.contextmanager
def _building(root: str):
    """Hold the lock on ``root``'s tree while it is (re)made: procnetmons
    started together (cron jobs, a payload and a wire run) must not replace
    the tree under one that is compiling with it."""
    os.makedirs(os.path.dirname(root), exist_ok=True)
    fd = os.open(root + ".lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def tree_config_source(header_dir: str) -> Optional[str]:
    """The configuration a synthetic tree was built from (None for real headers or no tree)."""
    try:
        with open(os.path.join(header_dir, STAMP)) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    return lines[1] if len(lines) > 1 else ""


def compile_failure_cause(header_dir: str) -> str:
    """Why BCC may have failed to compile against ``header_dir``, as one clause.

    BCC prints the compiler's own errors and raises only "Failed to compile";
    the usual causes lie in the header tree, so name what it holds.
    """
    source = tree_config_source(header_dir)
    if source is None:
        if not os.path.isfile(os.path.join(header_dir, "include/generated/autoconf.h")):
            return (f"the kernel headers in {header_dir} have no include/generated/autoconf.h "
                    "(CONFIG_BPF_SYSCALL is undefined without it): install the headers package "
                    "that matches the running kernel")
        return f"compiling against the kernel headers in {header_dir} failed"
    try:
        with open(os.path.join(header_dir, "include/generated/autoconf.h")) as f:
            autoconf = f.read()
    except OSError:
        autoconf = ""
    if "#define CONFIG_BPF_SYSCALL 1" not in autoconf:
        if "#define CONFIG_" not in autoconf:
            return (f"CONFIG_BPF_SYSCALL is undefined: the header tree {header_dir} has no kernel configuration; "
                    f"remove it and run again to rebuild it from {', '.join(config_candidates())}")
        return f"CONFIG_BPF_SYSCALL is not set in the kernel configuration {source}: this kernel cannot run BPF"
    return (f"compiling against procnetmon's header tree {header_dir} (configuration from {source}) failed")
