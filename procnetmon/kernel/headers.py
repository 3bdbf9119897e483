"""The kernel header tree BCC insists on, made up when the kernel ships none.

BCC compiles every program against ``/lib/modules/$(uname -r)/build`` (or
``$BCC_KERNEL_SOURCE``). procnetmon's programs include no kernel header and
read struct fields by BTF offset, so a small synthetic tree satisfies BCC:
the uapi headers of the C library's linux-libc-dev, a kconfig made from
``/proc/config.gz``, and the few kernel-only names BCC's helpers use.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
from typing import Optional

from procnetmon.kernel import cache

SYSTEM_UAPI = "/usr/include/linux"
SYSTEM_ASM_GENERIC = "/usr/include/asm-generic"
PROC_CONFIG = "/proc/config.gz"
TREE_VERSION = 2  # bumped whenever the tree's content changes
STAMP = f".procnetmon-tree-v{TREE_VERSION}"


class HeadersError(Exception):
    """Neither real kernel headers nor the parts of a synthetic tree are available."""


def real_headers_dir(release: Optional[str] = None) -> Optional[str]:
    """The installed kernel header tree, when the distribution ships one."""
    release = release or os.uname().release
    for name in ("build", "source"):
        path = f"/lib/modules/{release}/{name}"
        if os.path.isfile(os.path.join(path, "include/linux/kconfig.h")):
            return path
    return None


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


def _read_config() -> str:
    try:
        with gzip.open(PROC_CONFIG, "rt") as f:
            return f.read()
    except OSError:
        return ""  # without a config the programs still compile: they test no CONFIG_


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


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


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
    if config_text is None:
        config_text = _read_config()
    tmp = f"{root}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
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
    _write(f"{tmp}/{STAMP}", release + "\n")

    shutil.rmtree(root, ignore_errors=True)
    os.rename(tmp, root)
    return root


def ensure_headers(cache_dir: Optional[str] = None) -> tuple[str, bool]:
    """A header directory BCC can use, and whether it is synthetic.

    Real headers win when installed. Otherwise the synthetic tree is built
    once per kernel build in the cache directory and reused.
    """
    real = real_headers_dir()
    if real:
        return real, False
    # Versioned, so that two procnetmon versions on one machine never rebuild
    # each other's tree.
    root = os.path.join(cache_dir or cache.kernel_cache_dir(), f"headers-v{TREE_VERSION}")
    if not os.path.isfile(os.path.join(root, STAMP)):
        build_tree(root)
    return root, True
