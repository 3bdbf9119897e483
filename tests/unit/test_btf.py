"""The BTF parser on blobs built by tests/unit/btfblob.py, the offset cache, and
one check against the running kernel's own BTF."""

from __future__ import annotations

import json
import os
import struct

import pytest
from btfblob import BtfBuilder, blob_with_fields

from procnetmon.kernel import btf as btfmod
from procnetmon.kernel import layout
from procnetmon.kernel.btf import BTF, BTFError


def sock_like() -> BtfBuilder:
    """A miniature ``struct sock`` shaped like the kernel's.

        struct sock_common {
            union {                               // anonymous, at 0
                unsigned long long skc_addrpair;
                struct {                          // anonymous
                    unsigned int skc_daddr;       // 0
                    unsigned int skc_rcv_saddr;   // 4
                };
            };
            union { unsigned int skc_hash; } ;    // anonymous, at 8
            unsigned short skc_family;            // 12
        };
        struct inner { unsigned int a; unsigned int b; };    // b at 4
        typedef struct inner inner_t;
        struct outer {
            unsigned long long pad;               // 0
            struct inner inner;                   // 8
            const inner_t cinner;                 // 16
            struct sock_common __sk_common;       // 24
            unsigned char flags : 3;              // bitfield (kind_flag) at bit 40*8
            unsigned int odd;                     // at bit 330: not byte aligned
            struct inner *ptr;                    // 48
        };
    """
    b = BtfBuilder()
    u8 = b.add_int("unsigned char", 1)
    u16 = b.add_int("unsigned short", 2)
    u32 = b.add_int("unsigned int", 4)
    u64 = b.add_int("unsigned long long", 8)
    pair = b.add_struct("", [("skc_daddr", u32, 0), ("skc_rcv_saddr", u32, 32)], 8)
    addr_union = b.add_union("", [("skc_addrpair", u64, 0), ("", pair, 0)], 8)
    hash_union = b.add_union("", [("skc_hash", u32, 0)], 4)
    sk_common = b.add_struct("sock_common", [("", addr_union, 0), ("", hash_union, 64),
                                             ("skc_family", u16, 96)], 16)
    inner = b.add_struct("inner", [("a", u32, 0), ("b", u32, 32)], 8)
    inner_t = b.add_typedef("inner_t", inner)
    const_inner_t = b.add_const(inner_t)
    ptr_inner = b.add_ptr(inner)
    b.add_struct("outer", [
        ("pad", u64, 0),
        ("inner", inner, 64),
        ("cinner", const_inner_t, 128),
        ("__sk_common", sk_common, 192),
        ("flags", u8, 320, 3),
        ("odd", u32, 330),
        ("ptr", ptr_inner, 384),
    ], 56, kind_flag=True)
    return b


@pytest.fixture(scope="module")
def sock_btf() -> BTF:
    return BTF(sock_like().to_bytes())


# -- member paths ----------------------------------------------------------


@pytest.mark.parametrize("path, offset", [
    ("pad", 0),
    ("inner", 8),
    ("inner.a", 8),
    ("inner.b", 12),
    ("__sk_common", 24),
    ("ptr", 48),
])
def test_member_paths(sock_btf, path, offset):
    assert sock_btf.member_offset("outer", path) == offset


def test_nested_path_three_levels():
    b = BtfBuilder()
    u32 = b.add_int("unsigned int")
    leaf = b.add_struct("leaf", [("x", u32, 0), ("y", u32, 32)], 8)
    mid = b.add_struct("mid", [("pad", u32, 0), ("leaf", leaf, 64)], 16)
    b.add_struct("top", [("pad", u32, 0), ("mid", mid, 128)], 32)
    assert BTF(b.to_bytes()).member_offset("top", "mid.leaf.y") == 16 + 8 + 4


@pytest.mark.parametrize("path, offset", [
    ("__sk_common.skc_addrpair", 24),  # in the anonymous union
    ("__sk_common.skc_daddr", 24),  # in an anonymous struct inside the anonymous union
    ("__sk_common.skc_rcv_saddr", 28),
    ("__sk_common.skc_hash", 32),  # anonymous union at a non-zero offset
    ("__sk_common.skc_family", 36),
])
def test_members_of_anonymous_structs_and_unions_are_found_as_in_c(sock_btf, path, offset):
    assert sock_btf.member_offset("outer", path) == offset


def test_anonymous_members_directly_in_the_named_struct(sock_btf):
    assert sock_btf.member_offset("sock_common", "skc_rcv_saddr") == 4
    assert sock_btf.member_offset("sock_common", "skc_hash") == 8


def test_named_struct_members_are_not_transparent(sock_btf):
    # C reaches inner.b only through "inner"; "b" alone is not a member of outer.
    with pytest.raises(BTFError, match=r"no member b\b"):
        sock_btf.member_offset("outer", "b")


def test_typedef_and_const_are_followed_for_nested_paths(sock_btf):
    assert sock_btf.member_offset("outer", "cinner.a") == 16
    assert sock_btf.member_offset("outer", "cinner.b") == 20


def test_typedef_volatile_restrict_and_type_tag_chain_is_followed():
    b = BtfBuilder()
    u32 = b.add_int("unsigned int")
    inner = b.add_struct("inner", [("a", u32, 0), ("b", u32, 32)], 8)
    chain = b.add_type_tag("rcu", b.add_restrict(b.add_volatile(b.add_typedef("inner_t", inner))))
    b.add_struct("outer", [("pad", u32, 0), ("in", chain, 64)], 16)
    assert BTF(b.to_bytes()).member_offset("outer", "in.b") == 12


def test_member_through_a_pointer_is_refused(sock_btf):
    # A pointer must be dereferenced by the BPF program; its target's members
    # are not at an offset inside the struct.
    with pytest.raises(BTFError, match="outer"):
        sock_btf.member_offset("outer", "ptr.a")


def test_struct_found_by_name_even_when_a_typedef_shares_it():
    b = BtfBuilder()
    u32 = b.add_int("unsigned int")
    b.add_typedef("sk", u32)  # typedef unsigned int sk;  comes first
    b.add_struct("sk", [("pad", u32, 0), ("x", u32, 32)], 8)
    assert BTF(b.to_bytes()).member_offset("sk", "x") == 4


def test_union_can_be_the_outer_type():
    b = BtfBuilder()
    u32 = b.add_int("unsigned int")
    pair = b.add_struct("", [("lo", u32, 0), ("hi", u32, 32)], 8)
    b.add_union("u", [("whole", b.add_int("unsigned long", 8), 0), ("", pair, 0)], 8)
    assert BTF(b.to_bytes()).member_offset("u", "hi") == 4


# -- errors ----------------------------------------------------------------


def test_missing_struct_names_the_struct(sock_btf):
    with pytest.raises(BTFError, match="no struct nosuchstruct"):
        sock_btf.member_offset("nosuchstruct", "a")


def test_forward_declaration_is_not_a_struct():
    b = BtfBuilder()
    b.add_fwd("sock")
    b.add_ptr(1)
    with pytest.raises(BTFError, match="no struct sock"):
        BTF(b.to_bytes()).member_offset("sock", "x")


def test_missing_member_names_struct_and_member(sock_btf):
    with pytest.raises(BTFError) as e:
        sock_btf.member_offset("outer", "__sk_common.skc_nope")
    message = str(e.value)
    assert "struct outer" in message
    assert "__sk_common.skc_nope" in message
    assert "'skc_nope'" in message and "outer.__sk_common" in message


def test_bitfield_member_is_refused(sock_btf):
    with pytest.raises(BTFError, match="outer.flags is a bitfield"):
        sock_btf.member_offset("outer", "flags")


def test_kind_flag_struct_without_bitfield_gives_plain_offsets(sock_btf):
    # outer has kind_flag set; its other members have bitfield size 0.
    assert sock_btf.member_offset("outer", "ptr") == 48


def test_unaligned_member_is_refused(sock_btf):
    with pytest.raises(BTFError, match="not byte aligned"):
        sock_btf.member_offset("outer", "odd")


def test_bad_magic():
    blob = bytearray(sock_like().to_bytes())
    blob[0:2] = b"\x00\x00"
    with pytest.raises(BTFError, match="bad magic"):
        BTF(bytes(blob))


def test_too_short():
    with pytest.raises(BTFError, match="too short"):
        BTF(b"\x9f\xeb\x01\x00")


def test_unreadable_file(tmp_path):
    with pytest.raises(BTFError, match="cannot read BTF from .*nothing-here"):
        BTF.from_file(str(tmp_path / "nothing-here"))


def test_from_file(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(sock_like().to_bytes())
    assert BTF.from_file(str(path)).member_offset("outer", "inner.b") == 12


def test_truncated_blob_is_a_btf_error():
    blob = sock_like().to_bytes()
    (type_len,) = struct.unpack_from("<I", blob, 12)
    with pytest.raises(BTFError):
        BTF(blob[: 24 + type_len // 2])


# -- layouts of the blob itself ----------------------------------------------


def test_big_endian_blob():
    blob = sock_like().to_bytes(endian=">")
    assert blob[:2] == b"\xeb\x9f"
    t = BTF(blob)
    assert t.member_offset("outer", "__sk_common.skc_rcv_saddr") == 28
    with pytest.raises(BTFError, match="bitfield"):
        t.member_offset("outer", "flags")


def test_longer_header_and_strings_before_types():
    t = BTF(sock_like().to_bytes(hdr_len=32, strings_first=True))
    assert t.member_offset("outer", "cinner.b") == 20


def test_other_kinds_are_skipped_so_later_ids_stay_right():
    b = BtfBuilder()
    u32 = b.add_int("unsigned int")
    u64 = b.add_int("unsigned long long", 8, signed=True)
    b.add_enum("color", [("RED", 0), ("GREEN", 1), ("BLUE", -1)])
    b.add_enum64("big", [("HUGE", 1 << 40), ("SMALL", 2)])
    proto = b.add_func_proto(u32, [("a", u32), ("b", u64), ("c", u32)])
    b.add_func("f", proto)
    arr = b.add_array(u32, u32, 16)
    b.add_float("double", 8)
    var = b.add_var("v", u32)
    b.add_datasec(".data", [(var, 0, 4), (var, 4, 4)], 8)
    b.add_decl_tag("tag", var)
    b.add_fwd("later", union=True)
    # Reference a type added after all of the above: a miscounted skip shifts ids.
    target_id = b.next_id + 1
    b.add_struct("outer", [("pad", u64, 0), ("arr", arr, 64), ("inner", target_id, 576)], 80)
    assert b.add_struct("target", [("p", u32, 0), ("q", u32, 32)], 8) == target_id

    t = BTF(b.to_bytes())
    assert t.member_offset("outer", "inner.q") == 72 + 4
    assert t.member_offset("outer", "arr") == 8
    assert t.type(proto).kind == btfmod.KIND_FUNC_PROTO
    assert t.type(proto).members == (u32, u64, u32)
    assert t.type(arr).kind == btfmod.KIND_ARRAY
    assert t.type(target_id).kind == btfmod.KIND_STRUCT
    assert t.type(target_id).name == "target"
    with pytest.raises(BTFError, match="out of range"):
        t.type(target_id + 1)


def test_resolve_follows_qualifiers_to_the_type():
    b = BtfBuilder()
    u32 = b.add_int("unsigned int")
    c = b.add_const(b.add_typedef("u32_t", u32))
    t = BTF(b.to_bytes())
    type_id, resolved = t.resolve(c)
    assert type_id == u32
    assert (resolved.kind, resolved.name, resolved.size_or_type) == (btfmod.KIND_INT, "unsigned int", 4)


# -- typedef lookups -----------------------------------------------------------


def tracepoint_blob() -> BTF:
    b = BtfBuilder()
    void_ptr = b.add_ptr(0)
    u32 = b.add_int("int", 4, signed=True)
    sock = b.add_struct("sock", [("x", u32, 0)], 4)
    sock_ptr = b.add_ptr(sock)
    proto = b.add_func_proto(0, [("", void_ptr), ("sk", sock_ptr), ("family", u32), ("ret", u32)])
    b.add_typedef("btf_trace_sock_send_length", b.add_ptr(proto))
    proto2 = b.add_func_proto(0, [("", void_ptr), ("p", void_ptr)])
    b.add_typedef("btf_trace_via_const", b.add_const(b.add_ptr(proto2)))
    b.add_typedef("not_a_function", u32)
    b.add_struct("btf_trace_is_a_struct", [("x", u32, 0)], 4)
    return BTF(b.to_bytes())


def test_func_proto_arity_of_a_typedef_to_a_pointer_to_a_func_proto():
    t = tracepoint_blob()
    assert t.func_proto_arity("btf_trace_sock_send_length") == 4
    assert t.func_proto_arity("btf_trace_via_const") == 2


def test_func_proto_arity_of_other_names_is_none():
    t = tracepoint_blob()
    assert t.func_proto_arity("not_a_function") is None
    assert t.func_proto_arity("btf_trace_is_a_struct") is None
    assert t.func_proto_arity("btf_trace_missing") is None


def test_has_typedef():
    t = tracepoint_blob()
    assert t.has_typedef("btf_trace_sock_send_length")
    assert t.has_typedef("not_a_function")
    assert not t.has_typedef("btf_trace_is_a_struct")  # a struct, not a typedef
    assert not t.has_typedef("sock")
    assert not t.has_typedef("btf_trace_missing")


# -- layout: offsets for the BPF programs, and their cache ----------------------


def fake_offsets() -> dict[str, int]:
    """Distinct made-up offsets, so a wrong lookup cannot pass by accident."""
    return {macro: 8 * (i + 1) for i, macro in enumerate(sorted(layout.FIELDS))}


@pytest.fixture
def fields_blob(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(blob_with_fields(layout.FIELDS, fake_offsets()))
    return str(path)


def test_offsets_from_btf_reads_every_field(fields_blob):
    assert layout.offsets_from_btf(BTF.from_file(fields_blob)) == fake_offsets()


def test_offsets_from_btf_names_the_missing_field():
    fields = dict(layout.FIELDS)
    offsets = fake_offsets()
    del fields["NET_NS_INUM"]
    blob = BTF(blob_with_fields(fields, offsets))
    with pytest.raises(BTFError, match="no struct net$"):
        layout.offsets_from_btf(blob)


def test_complete_cache_is_used_without_parsing(tmp_path):
    cached = fake_offsets()
    (tmp_path / layout.CACHE_FILE).write_text(json.dumps(cached))
    # The BTF path does not exist: any attempt to parse would raise BTFError.
    got = layout.kernel_offsets(btf_path=str(tmp_path / "no-such-btf"), cache_dir=str(tmp_path))
    assert got == cached


def test_missing_cache_is_built_and_written(tmp_path, fields_blob):
    cache_dir = tmp_path / "cache"
    got = layout.kernel_offsets(btf_path=fields_blob, cache_dir=str(cache_dir))
    assert got == fake_offsets()
    assert json.loads((cache_dir / layout.CACHE_FILE).read_text()) == fake_offsets()
    # Next time the cache answers alone.
    assert layout.kernel_offsets(btf_path=str(tmp_path / "gone"), cache_dir=str(cache_dir)) == got


def test_cache_with_missing_keys_is_rebuilt(tmp_path, fields_blob):
    stale = {"SK_FAMILY": 999}
    (tmp_path / layout.CACHE_FILE).write_text(json.dumps(stale))
    got = layout.kernel_offsets(btf_path=fields_blob, cache_dir=str(tmp_path))
    assert got == fake_offsets()
    assert json.loads((tmp_path / layout.CACHE_FILE).read_text()) == fake_offsets()


def test_cache_with_extra_keys_is_rebuilt(tmp_path, fields_blob):
    stale = dict(fake_offsets(), OLD_FIELD=1, SK_FAMILY=999)
    (tmp_path / layout.CACHE_FILE).write_text(json.dumps(stale))
    assert layout.kernel_offsets(btf_path=fields_blob, cache_dir=str(tmp_path)) == fake_offsets()


def test_corrupt_cache_is_rebuilt(tmp_path, fields_blob):
    (tmp_path / layout.CACHE_FILE).write_text('{"SK_FAMILY": 1')
    assert layout.kernel_offsets(btf_path=fields_blob, cache_dir=str(tmp_path)) == fake_offsets()


def test_cache_that_is_not_an_object_is_rebuilt(tmp_path, fields_blob):
    (tmp_path / layout.CACHE_FILE).write_text("null")
    assert layout.kernel_offsets(btf_path=fields_blob, cache_dir=str(tmp_path)) == fake_offsets()


def test_unwritable_cache_still_returns_offsets(tmp_path, fields_blob):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    got = layout.kernel_offsets(btf_path=fields_blob, cache_dir=str(not_a_dir / "cache"))
    assert got == fake_offsets()


def test_missing_btf_without_cache_is_a_btf_error(tmp_path):
    with pytest.raises(BTFError, match="cannot read BTF"):
        layout.kernel_offsets(btf_path=str(tmp_path / "no-such-btf"), cache_dir=str(tmp_path))
    assert not (tmp_path / layout.CACHE_FILE).exists()


def test_offset_cflags():
    assert layout.offset_cflags({"SK_NUM": 14, "DEV_IFINDEX": 224, "SK_FAMILY": 16}) == [
        "-DOFF_DEV_IFINDEX=224", "-DOFF_SK_FAMILY=16", "-DOFF_SK_NUM=14"]
    assert layout.offset_cflags({}) == []


# -- the running kernel ---------------------------------------------------------


@pytest.fixture(scope="module")
def kernel_btf() -> BTF:
    if not os.path.exists(btfmod.VMLINUX_BTF):
        pytest.skip("kernel has no BTF (/sys/kernel/btf/vmlinux)")
    return BTF.from_file()


def test_every_field_resolves_on_this_kernel(kernel_btf):
    offsets = layout.offsets_from_btf(kernel_btf)
    assert set(layout.FIELDS) <= set(offsets) <= set(layout.FIELDS) | set(layout.OPTIONAL)
    assert all(isinstance(v, int) and 0 <= v < 16384 for v in offsets.values())
    # Layouts stable for a decade: sock_common opens with the address pair,
    # then the port pair; sk_buff_head opens with next, prev.
    assert offsets["SK_DADDR"] == 0
    assert offsets["SK_RCV_SADDR"] == 4
    assert offsets["SK_DPORT"] == 12
    assert offsets["SK_NUM"] == 14
    assert offsets["SKB_HEAD_PREV"] == struct.calcsize("P")


def test_a_field_missing_from_its_struct_is_read_at_its_fallback():
    b = BtfBuilder()
    u32 = b.add_int("unsigned int", 4)
    b.add_struct("sock", [("sk_protocol", u32, 0)], size=8)
    b.add_struct("inet_sock", [("sk", u32, 0), ("rx_dst_ifindex", u32, 64)], size=16)
    btf = BTF(b.to_bytes())
    fields = {"SK_RX_DST_IFINDEX": ("sock", "sk_rx_dst_ifindex")}
    fallbacks = {"SK_RX_DST_IFINDEX": ("inet_sock", "rx_dst_ifindex")}
    assert layout.offsets_from_btf(btf, fields, fallbacks, {}) == {"SK_RX_DST_IFINDEX": 8}
    with pytest.raises(BTFError, match="sk_rx_dst_ifindex"):
        layout.offsets_from_btf(btf, fields, {}, {})


def test_optional_fields_are_left_out_when_missing():
    b = BtfBuilder()
    u32 = b.add_int("unsigned int", 4)
    b.add_struct("sock", [("sk_protocol", u32, 0)], size=8)
    btf = BTF(b.to_bytes())
    got = layout.offsets_from_btf(btf, {"SK_PROTOCOL": ("sock", "sk_protocol")}, {},
                                  {"REGS_PARM1": ("pt_regs", "di")})
    assert got == {"SK_PROTOCOL": 0}
