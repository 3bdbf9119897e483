"""The synthetic kernel header tree, built from fake uapi directories in tmp_path."""

from __future__ import annotations

import gzip
import os

import pytest

from procnetmon.kernel import headers
from procnetmon.kernel.headers import HeadersError

# -- autoconf.h ------------------------------------------------------------------


def test_autoconf_from_config():
    config = "\n".join([
        "#",
        "# Automatically generated file; DO NOT EDIT.",
        "CONFIG_BPF=y",
        "CONFIG_NET_SCH_FQ=m",
        'CONFIG_LOCALVERSION="-foo"',
        "CONFIG_NR_CPUS=64",
        "CONFIG_PHYSICAL_START=0x1000000",
        "# CONFIG_KPROBES is not set",
        "",
        "NOT_CONFIG=y",
        "  CONFIG_INDENTED=y",
    ])
    lines = headers.autoconf_from_config(config).splitlines()
    assert lines[0].startswith("/*")
    assert lines[1:] == [
        "#define CONFIG_BPF 1",
        "#define CONFIG_NET_SCH_FQ_MODULE 1",
        '#define CONFIG_LOCALVERSION "-foo"',
        "#define CONFIG_NR_CPUS 64",
        "#define CONFIG_PHYSICAL_START 0x1000000",
    ]


def test_autoconf_from_empty_config_is_only_the_comment():
    text = headers.autoconf_from_config("")
    assert text.endswith("\n")
    assert "#define" not in text


# -- the tree ---------------------------------------------------------------------


@pytest.fixture
def system(tmp_path):
    """Fake /usr/include/{linux,asm-generic,<triplet>/asm}."""
    uapi = tmp_path / "usr/include/linux"
    asm_generic = tmp_path / "usr/include/asm-generic"
    asm = tmp_path / "usr/include/arch/asm"
    for d in (uapi, asm_generic, asm):
        d.mkdir(parents=True)
    (uapi / "bpf.h").write_text("#define LIBC_BPF_H 1\n")
    (uapi / "types.h").write_text("/* uapi types */\n")
    (uapi / "if_ether.h").write_text("/* ether */\n")
    (uapi / "netfilter").mkdir()
    (asm_generic / "int-ll64.h").write_text("/* ll64 */\n")
    (asm / "types.h").write_text("/* asm types */\n")
    return dict(uapi_dir=str(uapi), asm_generic_dir=str(asm_generic), asm_dir=str(asm))


def build(tmp_path, system, release="6.18.44-foo", config_text="CONFIG_BPF=y\n") -> str:
    return headers.build_tree(str(tmp_path / "tree"), release=release, config_text=config_text, **system)


def test_build_tree_layout(tmp_path, system):
    root = build(tmp_path, system)
    assert root == str(tmp_path / "tree")
    inc = tmp_path / "tree/include"
    arch = headers._arch_name()

    # BCC brings its own bpf.h: the C library's must be an empty real file.
    bpf_h = inc / "uapi/linux/bpf.h"
    assert not bpf_h.is_symlink() and bpf_h.read_text() == ""

    for name in ("types.h", "if_ether.h", "netfilter"):
        link = inc / "uapi/linux" / name
        assert link.is_symlink()
        assert os.readlink(link) == os.path.join(system["uapi_dir"], name)
    assert os.readlink(inc / "uapi/asm-generic") == system["asm_generic_dir"]
    assert os.readlink(tmp_path / f"tree/arch/{arch}/include/uapi/asm") == system["asm_dir"]
    assert (tmp_path / f"tree/arch/{arch}/include/uapi/asm/types.h").read_text() == "/* asm types */\n"
    assert "#define PAGE_SIZE" in (tmp_path / f"tree/arch/{arch}/include/asm/page.h").read_text()

    assert (inc / "generated/autoconf.h").read_text().splitlines()[1:] == ["#define CONFIG_BPF 1"]
    assert (inc / "linux/log2.h").read_text() == ""
    assert (tmp_path / "tree" / headers.STAMP).read_text() == "6.18.44-foo\ngiven\n"
    # No temporary directory left next to the tree.
    assert sorted(os.listdir(tmp_path)) == ["tree", "usr"]


def test_types_h_defines_the_kernel_names(tmp_path, system):
    build(tmp_path, system)
    text = (tmp_path / "tree/include/linux/types.h").read_text()
    assert "#include <uapi/linux/types.h>" in text
    for name, base in [("u8", "__u8"), ("u16", "__u16"), ("u32", "__u32"), ("u64", "__u64"),
                       ("s32", "__s32"), ("s64", "__s64")]:
        assert f"typedef {base} {name};" in text


def test_kconfig_h_includes_autoconf(tmp_path, system):
    build(tmp_path, system)
    text = (tmp_path / "tree/include/linux/kconfig.h").read_text()
    assert "#include <generated/autoconf.h>" in text


@pytest.mark.parametrize("release, code", [
    ("6.18.44-foo", (6 << 16) + (18 << 8) + 44),
    ("5.10.0-28-amd64", (5 << 16) + (10 << 8)),
    ("6.1", (6 << 16) + (1 << 8)),
    ("4.9.337", (4 << 16) + (9 << 8) + 255),  # the sublevel saturates at 255 as in the kernel
    ("weird", 0),
])
def test_version_h(tmp_path, system, release, code):
    build(tmp_path, system, release=release)
    text = (tmp_path / "tree/include/linux/version.h").read_text()
    assert f"#define LINUX_VERSION_CODE {code}\n" in text
    assert "#define KERNEL_VERSION(a, b, c)" in text


def test_rebuilding_replaces_the_tree(tmp_path, system):
    build(tmp_path, system, release="6.1.0", config_text="CONFIG_OLD=y\n")
    (tmp_path / "tree/leftover").write_text("x")
    os.unlink(os.path.join(system["uapi_dir"], "if_ether.h"))
    (tmp_path / "usr/include/linux/new.h").write_text("")

    build(tmp_path, system, release="6.18.44-foo", config_text="CONFIG_NEW=m\n")
    tree = tmp_path / "tree"
    assert not (tree / "leftover").exists()
    assert not os.path.lexists(tree / "include/uapi/linux/if_ether.h")
    assert (tree / "include/uapi/linux/new.h").is_symlink()
    assert (tree / "include/generated/autoconf.h").read_text().splitlines()[1:] == [
        "#define CONFIG_NEW_MODULE 1"]
    assert (tree / headers.STAMP).read_text() == "6.18.44-foo\ngiven\n"


@pytest.mark.parametrize("missing", ["uapi_dir", "asm_generic_dir", "asm_dir"])
def test_missing_system_dir_is_a_headers_error(tmp_path, system, missing):
    system[missing] = str(tmp_path / "absent")
    with pytest.raises(HeadersError) as e:
        build(tmp_path, system)
    assert str(tmp_path / "absent") in str(e.value)
    assert "apt-get install linux-libc-dev" in str(e.value)
    assert not (tmp_path / "tree").exists()


# -- ensure_headers ----------------------------------------------------------------


def test_real_headers_dir_of_an_absent_release():
    assert headers.real_headers_dir("0.0.0-procnetmon-no-such-release") is None


def test_ensure_headers_prefers_real_headers(monkeypatch, tmp_path):
    monkeypatch.setattr(headers, "real_headers_dir", lambda release=None: "/lib/modules/x/build")
    monkeypatch.setattr(headers, "build_tree", lambda *a, **k: pytest.fail("built a tree"))
    assert headers.ensure_headers(str(tmp_path)) == ("/lib/modules/x/build", False)
    assert os.listdir(tmp_path) == []


def test_ensure_headers_builds_once_and_reuses(monkeypatch, tmp_path, system):
    real_build = headers.build_tree
    calls = []

    def counting_build(root, *args, **kwargs):
        calls.append(root)
        return real_build(root, release="6.18.44-foo", config_text="", **system)

    monkeypatch.setattr(headers, "real_headers_dir", lambda release=None: None)
    monkeypatch.setattr(headers, "build_tree", counting_build)
    cache_dir = tmp_path / "cache"

    first = headers.ensure_headers(str(cache_dir))
    assert first == (str(cache_dir / f"headers-v{headers.TREE_VERSION}"), True)
    assert calls == [str(cache_dir / f"headers-v{headers.TREE_VERSION}")]
    assert (cache_dir / f"headers-v{headers.TREE_VERSION}" / headers.STAMP).is_file()

    assert headers.ensure_headers(str(cache_dir)) == first
    assert len(calls) == 1


def test_ensure_headers_rebuilds_a_tree_without_stamp(monkeypatch, tmp_path, system):
    """A tree left half-made (no stamp) is not trusted."""
    calls = []
    monkeypatch.setattr(headers, "real_headers_dir", lambda release=None: None)
    monkeypatch.setattr(headers, "build_tree", lambda root, *a, **k: calls.append(root))
    tree = tmp_path / f"headers-v{headers.TREE_VERSION}"
    (tree / "include").mkdir(parents=True)
    assert headers.ensure_headers(str(tmp_path)) == (str(tree), True)
    assert calls == [str(tree)]



# -- the kernel configuration --------------------------------------------------------


def test_config_candidates_include_debians_boot_config():
    assert headers.config_candidates("6.12.9-amd64") == [
        "/proc/config.gz", "/boot/config-6.12.9-amd64", "/lib/modules/6.12.9-amd64/config"]


def test_read_config_takes_the_first_readable(tmp_path):
    gz = tmp_path / "config.gz"
    boot = tmp_path / "config-6.12"
    boot.write_text("CONFIG_BPF_SYSCALL=y\n")
    assert headers.read_config([str(gz), str(boot)]) == ("CONFIG_BPF_SYSCALL=y\n", str(boot))
    with gzip.open(gz, "wt") as f:
        f.write("CONFIG_FROM_PROC=y\n")
    assert headers.read_config([str(gz), str(boot)]) == ("CONFIG_FROM_PROC=y\n", str(gz))


def test_read_config_says_why_each_place_failed(tmp_path):
    empty = tmp_path / "config-empty"
    empty.write_text("# nothing\n")
    broken_gz = tmp_path / "config.gz"
    broken_gz.write_text("not gzip")
    with pytest.raises(headers.NoConfigError) as e:
        headers.read_config([str(tmp_path / "absent"), str(empty), str(broken_gz)])
    assert e.value.tried[0] == f"{tmp_path / 'absent'} is missing"
    assert e.value.tried[1] == f"{empty} has no CONFIG_ line"
    assert e.value.tried[2].startswith(f"{broken_gz}: ")
    assert "no kernel configuration" in str(e.value)
    assert "/boot/config-" in str(e.value) and "linux-headers-" in str(e.value)
    assert isinstance(e.value, HeadersError)


def test_build_tree_reads_the_config_and_records_where_from(monkeypatch, tmp_path, system):
    boot = tmp_path / "config-x"
    boot.write_text("CONFIG_BPF_SYSCALL=y\n")
    monkeypatch.setattr(headers, "config_candidates", lambda release=None: [str(tmp_path / "no.gz"), str(boot)])
    root = headers.build_tree(str(tmp_path / "tree"), release="6.12.9-amd64", **system)
    assert "#define CONFIG_BPF_SYSCALL 1" in (tmp_path / "tree/include/generated/autoconf.h").read_text()
    assert headers.tree_config_source(root) == str(boot)


def test_build_tree_without_config_builds_nothing(monkeypatch, tmp_path, system):
    monkeypatch.setattr(headers, "config_candidates", lambda release=None: [str(tmp_path / "no.gz")])
    with pytest.raises(headers.NoConfigError):
        headers.build_tree(str(tmp_path / "tree"), release="6.12.9-amd64", **system)
    assert not (tmp_path / "tree").exists()


# -- why a compile failed ------------------------------------------------------------


def test_compile_failure_cause_names_a_tree_without_config(tmp_path, system):
    root = build(tmp_path, system, config_text="")
    cause = headers.compile_failure_cause(root)
    assert cause.startswith("CONFIG_BPF_SYSCALL is undefined: the header tree")
    assert "has no kernel configuration" in cause
    assert "tracepoint" not in cause


def test_compile_failure_cause_names_a_config_without_bpf(tmp_path, system):
    root = build(tmp_path, system, config_text="# CONFIG_BPF_SYSCALL is not set\nCONFIG_NET=y\n")
    assert "CONFIG_BPF_SYSCALL is not set in the kernel configuration given" in headers.compile_failure_cause(root)


def test_compile_failure_cause_with_a_good_tree_points_at_the_compiler(tmp_path, system):
    root = build(tmp_path, system, config_text="CONFIG_BPF_SYSCALL=y\n")
    assert "compiling against procnetmon's header tree" in headers.compile_failure_cause(root)


def test_compile_failure_cause_for_real_headers(tmp_path):
    real = tmp_path / "build"
    (real / "include/linux").mkdir(parents=True)
    assert "no include/generated/autoconf.h" in headers.compile_failure_cause(str(real))
    (real / "include/generated").mkdir()
    (real / "include/generated/autoconf.h").write_text("#define CONFIG_BPF_SYSCALL 1\n")
    assert "kernel headers in" in headers.compile_failure_cause(str(real))


# -- real headers, whole or split as Debian ships them -------------------------------------


def make_modules(tmp_path, release, *, split: bool):
    """/lib/modules/<release>/{build,source} as a distribution installs them."""
    arch = headers._arch_name()
    common = tmp_path / "usr/src/common"
    flavour = tmp_path / "usr/src/flavour"
    for d in ("include/linux", f"arch/{arch}/include/asm", f"arch/{arch}/include/uapi"):
        (common / d).mkdir(parents=True)
    (common / "include/linux/kconfig.h").write_text("/* kconfig */\n")
    for d in ("include/generated", f"arch/{arch}/include/generated/asm"):
        (flavour / d).mkdir(parents=True)
    (flavour / "include/generated/autoconf.h").write_text("#define CONFIG_BPF_SYSCALL 1\n")
    mods = tmp_path / "lib/modules" / release
    mods.mkdir(parents=True)
    if split:
        os.symlink(flavour, mods / "build")
        os.symlink(common, mods / "source")
    else:
        os.rename(flavour / "include/generated", common / "include/generated")
        os.symlink(common, mods / "build")
    return str(tmp_path / "lib/modules"), str(flavour), str(common)


def test_real_headers_whole(tmp_path):
    modules, _flavour, common = make_modules(tmp_path, "6.1.0-1-amd64", split=False)
    assert headers.real_headers_dir("6.1.0-1-amd64", modules) == f"{modules}/6.1.0-1-amd64/build"
    assert headers.split_headers("6.1.0-1-amd64", modules) is None


def test_real_headers_split(tmp_path):
    modules, _flavour, _common = make_modules(tmp_path, "6.12.9-amd64", split=True)
    rel = f"{modules}/6.12.9-amd64"
    assert headers.real_headers_dir("6.12.9-amd64", modules) == f"{rel}/source"
    assert headers.split_headers("6.12.9-amd64", modules) == (f"{rel}/build", f"{rel}/source")


def test_a_build_link_without_its_headers_is_no_headers(tmp_path):
    """The image package's own build link, dangling until linux-headers is installed."""
    mods = tmp_path / "lib/modules/6.12.9-amd64"
    mods.mkdir(parents=True)
    os.symlink("/nonexistent/linux-headers-6.12.9-amd64", mods / "build")
    assert headers.real_headers_dir("6.12.9-amd64", str(tmp_path / "lib/modules")) is None


def test_merge_split_tree_joins_generated_headers(tmp_path):
    modules, flavour, common = make_modules(tmp_path, "6.12.9-amd64", split=True)
    arch = headers._arch_name()
    root = headers.merge_split_tree(str(tmp_path / "joined"), flavour, common)
    joined = tmp_path / "joined"
    assert root == str(joined)
    assert (joined / "include/linux/kconfig.h").read_text() == "/* kconfig */\n"
    assert (joined / "include/generated/autoconf.h").is_file()
    assert (joined / f"arch/{arch}/include/generated/asm").is_dir()
    assert (joined / f"arch/{arch}/include/uapi").is_dir()
    assert headers.tree_config_source(root) is None  # real headers, not procnetmon's tree


def test_ensure_headers_joins_split_headers_once(monkeypatch, tmp_path):
    modules, flavour, common = make_modules(tmp_path, "6.12.9-amd64", split=True)
    monkeypatch.setattr(headers, "real_headers_dir", lambda release=None: common)
    monkeypatch.setattr(headers, "split_headers", lambda release=None: (flavour, common))
    monkeypatch.setattr(headers, "build_tree", lambda *a, **k: pytest.fail("built a synthetic tree"))
    cache_dir = tmp_path / "cache"
    assert headers.ensure_headers(str(cache_dir)) == (str(cache_dir / "headers-joined"), False)
    stamp = cache_dir / "headers-joined" / headers.MERGED_STAMP
    before = stamp.stat().st_mtime_ns
    assert headers.ensure_headers(str(cache_dir)) == (str(cache_dir / "headers-joined"), False)
    assert stamp.stat().st_mtime_ns == before


def test_a_tree_built_meanwhile_by_another_procnetmon_is_kept(tmp_path, system):
    """Two procnetmon on a cold cache both build the tree: the second must not
    pull the first's from under its compiler (issue 14, item 13: a flaky
    e2e run failed with 'kconfig.h file not found')."""
    build(tmp_path, system, release="6.1.0", config_text="CONFIG_X=y\n")
    tree = tmp_path / "tree"
    before = os.stat(tree).st_ino
    kconfig = open(tree / "include/linux/kconfig.h")  # a compiler reading it
    build(tmp_path, system, release="6.1.0", config_text="CONFIG_X=y\n")
    assert os.stat(tree).st_ino == before
    assert (tree / "include/linux/kconfig.h").exists()
    kconfig.close()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_procnetmons_started_together_build_the_tree_once(monkeypatch, tmp_path):
    """One builds, the others wait for it and use its tree: none replaces a
    tree another is compiling with."""
    import threading
    import time as _time

    calls = []

    def slow_build(root, *a, **k):
        calls.append(root)
        _time.sleep(0.2)
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, headers.STAMP), "w") as f:
            f.write("x\n")
        headers._seal(root)

    monkeypatch.setattr(headers, "real_headers_dir", lambda release=None: None)
    monkeypatch.setattr(headers, "build_tree", slow_build)
    got = []
    threads = [threading.Thread(target=lambda: got.append(headers.ensure_headers(str(tmp_path))))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(got) == 4 and len(set(got)) == 1


def _built_tree(monkeypatch, cache_dir):
    monkeypatch.setattr(headers, "real_headers_dir", lambda release=None: None)
    monkeypatch.setattr(headers, "read_config", lambda paths: ("CONFIG_BPF_SYSCALL=y\n", "given"))
    root, synthetic = headers.ensure_headers(str(cache_dir))
    assert synthetic and headers.is_whole(root, headers.STAMP)
    return root


@pytest.mark.parametrize("damage", ["file lost", "file changed", "link moved", "manifest lost"])
def test_a_damaged_tree_is_built_again(monkeypatch, tmp_path, damage):
    """Issue 20, item 5: a damaged cache failed every compile until a person deleted it."""
    root = _built_tree(monkeypatch, tmp_path)
    kconfig = os.path.join(root, "include/linux/kconfig.h")
    if damage == "file lost":
        os.unlink(kconfig)
    elif damage == "file changed":
        with open(kconfig, "a") as f:
            f.write("#error planted\n")
    elif damage == "link moved":
        link = os.path.join(root, "include/uapi/linux/if.h")
        os.unlink(link)
        os.symlink("/etc/passwd", link)
    else:
        os.unlink(os.path.join(root, headers.MANIFEST))
    assert not headers.is_whole(root, headers.STAMP)
    again, _ = headers.ensure_headers(str(tmp_path))
    assert again == root and headers.is_whole(root, headers.STAMP)
    with open(kconfig) as f:
        assert "#error planted" not in f.read()
    assert os.readlink(os.path.join(root, "include/uapi/linux/if.h")) == "/usr/include/linux/if.h"


def test_a_whole_tree_is_kept(monkeypatch, tmp_path):
    root = _built_tree(monkeypatch, tmp_path)
    before = os.stat(root).st_ino
    headers.ensure_headers(str(tmp_path))
    assert os.stat(root).st_ino == before
