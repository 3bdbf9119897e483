"""Byte offsets of kernel struct members, read from BTF.

The BPF programs read a handful of fields of ``struct sock``, ``sk_buff``,
``net_device`` and friends by offset, so they need neither kernel headers nor
CO-RE. This module parses the BTF blob (``/sys/kernel/btf/vmlinux``) just far
enough to resolve dotted member paths such as ``sock.__sk_common.skc_family``,
descending through anonymous structs and unions the way C does.

The format is documented in the kernel's Documentation/bpf/btf.rst.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"

BTF_MAGIC = 0xEB9F

# BTF_KIND_* values and the size of the data that follows each btf_type.
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# Kinds that only qualify or rename another type: followed to reach the struct.
_TRANSPARENT = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}


class BTFError(Exception):
    """The BTF blob is unreadable, or lacks a struct or member we need."""


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int  # 0 when the member is not a bitfield


@dataclass(frozen=True)
class BtfType:
    kind: int
    name: str
    size_or_type: int  # size for structs/unions/ints, referenced type otherwise
    members: tuple = ()  # Member for struct/union; param type ids for FUNC_PROTO


def _extra_size(kind: int, vlen: int) -> int:
    if kind in (KIND_INT, KIND_VAR, KIND_DECL_TAG):
        return 4
    if kind == KIND_ARRAY:
        return 12
    if kind in (KIND_STRUCT, KIND_UNION, KIND_DATASEC, KIND_ENUM64):
        return 12 * vlen
    if kind in (KIND_ENUM, KIND_FUNC_PROTO):
        return 8 * vlen
    return 0


class BTF:
    """The types of one BTF blob, indexed by name for struct/union/typedef lookups."""

    def __init__(self, data: bytes):
        if len(data) < 24:
            raise BTFError("BTF data is too short")
        magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        endian = "<"
        if magic != BTF_MAGIC:
            magic, version, _flags, hdr_len = struct.unpack_from(">HBBI", data, 0)
            endian = ">"
            if magic != BTF_MAGIC:
                raise BTFError("not a BTF blob (bad magic)")
        type_off, type_len, str_off, str_len = struct.unpack_from(endian + "IIII", data, 8)
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self._types: list[Optional[BtfType]] = [None]  # type id 0 is void
        self._by_name: dict[str, list[int]] = {}
        self._funcs: dict[str, int] = {}  # function name -> its FUNC type id
        try:
            self._parse_types(data, hdr_len + type_off, type_len, endian)
        except struct.error as e:
            raise BTFError(f"BTF data is truncated or corrupt: {e}") from None

    @classmethod
    def from_file(cls, path: str = VMLINUX_BTF) -> "BTF":
        try:
            with open(path, "rb") as f:
                return cls(f.read())
        except OSError as e:
            raise BTFError(f"cannot read BTF from {path}: {e.strerror}") from e

    def _str(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off:end].decode("ascii", "replace")

    def _parse_types(self, data: bytes, start: int, length: int, e: str) -> None:
        pos, end = start, start + length
        unpack = struct.unpack_from
        header = e + "III"
        member_fmt = e + "III"
        while pos < end:
            name_off, info, size_or_type = unpack(header, data, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kind_flag = info >> 31
            members: tuple = ()
            if kind in (KIND_STRUCT, KIND_UNION):
                ms = []
                for i in range(vlen):
                    m_name, m_type, m_off = unpack(member_fmt, data, pos + 12 * i)
                    if kind_flag:
                        bit_off, bf_size = m_off & 0xFFFFFF, m_off >> 24
                    else:
                        bit_off, bf_size = m_off, 0
                    ms.append(Member(self._str(m_name), m_type, bit_off, bf_size))
                members = tuple(ms)
            elif kind == KIND_FUNC_PROTO:
                members = tuple(unpack(e + "I", data, pos + 8 * i + 4)[0] for i in range(vlen))
            pos += _extra_size(kind, vlen)
            # Only named structs, unions and typedefs are looked up by name;
            # skipping the rest keeps the parse of ~100k types fast.
            if kind in (KIND_STRUCT, KIND_UNION, KIND_TYPEDEF, KIND_INT):
                name = self._str(name_off) if name_off else ""
            else:
                name = ""
            if kind == KIND_FUNC and name_off:
                # Functions are kept apart: trampolines attach to them by id.
                self._funcs.setdefault(self._str(name_off), len(self._types))
            self._types.append(BtfType(kind, name, size_or_type, members))
            if name:
                self._by_name.setdefault(name, []).append(len(self._types) - 1)

    def type(self, type_id: int) -> BtfType:
        try:
            t = self._types[type_id]
        except IndexError:
            raise BTFError(f"BTF type id {type_id} out of range") from None
        if t is None:
            raise BTFError("member has type void")
        return t

    def resolve(self, type_id: int) -> tuple[int, BtfType]:
        """Follow typedefs and qualifiers to the underlying type."""
        t = self.type(type_id)
        while t.kind in _TRANSPARENT:
            type_id = t.size_or_type
            t = self.type(type_id)
        return type_id, t

    def struct_id(self, name: str) -> int:
        """The type id of the complete struct or union called ``name``."""
        for type_id in self._by_name.get(name, []):
            t = self._types[type_id]
            if t.kind in (KIND_STRUCT, KIND_UNION) and (t.members or t.size_or_type):
                return type_id
        raise BTFError(f"this kernel's BTF has no struct {name}")

    def has_typedef(self, name: str) -> bool:
        return self.typedef_id(name) is not None

    def typedef_id(self, name: str) -> Optional[int]:
        """The BTF id of typedef ``name`` (a raw tracepoint's ``btf_trace_<name>``
        is what a BTF-typed tracepoint program attaches to), or None."""
        return next((i for i in self._by_name.get(name, []) if self._types[i].kind == KIND_TYPEDEF), None)

    def func_id(self, name: str) -> Optional[int]:
        """The BTF id of kernel function ``name`` (what fentry/fexit attach to), or None."""
        return self._funcs.get(name)

    def func_arity(self, name: str) -> Optional[int]:
        """Parameter count of kernel function ``name``, or None when BTF does not have it."""
        type_id = self._funcs.get(name)
        if type_id is None:
            return None
        _, proto = self.resolve(self.type(type_id).size_or_type)
        return len(proto.members) if proto.kind == KIND_FUNC_PROTO else None

    def func_proto_arity(self, typedef_name: str) -> Optional[int]:
        """Parameter count of a function-pointer typedef (e.g. ``btf_trace_<tp>``)."""
        for type_id in self._by_name.get(typedef_name, []):
            t = self._types[type_id]
            if t.kind != KIND_TYPEDEF:
                continue
            _, target = self.resolve(t.size_or_type)
            if target.kind == KIND_PTR:
                _, target = self.resolve(target.size_or_type)
            if target.kind == KIND_FUNC_PROTO:
                return len(target.members)
        return None

    def _find_member(self, type_id: int, name: str) -> Optional[tuple[int, Member]]:
        """Bit offset and member ``name`` in a struct, searching anonymous members."""
        _, t = self.resolve(type_id)
        if t.kind not in (KIND_STRUCT, KIND_UNION):
            return None
        for m in t.members:
            if m.name == name:
                return m.bit_offset, m
        for m in t.members:
            if not m.name:
                found = self._find_member(m.type_id, name)
                if found is not None:
                    return m.bit_offset + found[0], found[1]
        return None

    def member_offset(self, struct_name: str, path: str) -> int:
        """Byte offset of ``path`` (``a`` or ``a.b.c``) inside ``struct struct_name``.

        Raises BTFError naming the struct and member when the kernel lacks
        either, or when the member is a bitfield (which cannot be read by
        byte offset).
        """
        type_id = self.struct_id(struct_name)
        bits = 0
        where = struct_name
        for part in path.split("."):
            found = self._find_member(type_id, part)
            if found is None:
                raise BTFError(f"struct {struct_name} on this kernel has no member {path} "
                               f"(no '{part}' in {where})")
            off, member = found
            if member.bitfield_size:
                raise BTFError(f"{struct_name}.{path} is a bitfield on this kernel; "
                               "procnetmon cannot read it by byte offset")
            bits += off
            type_id = member.type_id
            where = f"{where}.{part}"
        if bits % 8:
            raise BTFError(f"{struct_name}.{path} is not byte aligned")
        return bits // 8
