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


# The same sizes as tables by kind (the kind field has 5 bits): the parse
# walks every type of the kernel, and this is its inner loop.
_FIXED_EXTRA = tuple(_extra_size(k, 0) for k in range(32))
_PER_VLEN_EXTRA = tuple(_extra_size(k, 1) - _extra_size(k, 0) for k in range(32))

# Kinds looked up by name; every other type keeps an empty name.
_NAMED = frozenset({KIND_STRUCT, KIND_UNION, KIND_TYPEDEF, KIND_INT, KIND_ENUM})


class BTF:
    """The types of one BTF blob, indexed by name for struct/union/typedef lookups.

    A kernel's BTF holds over 100,000 types, and procnetmon needs a few
    dozen. The parse only walks the headers, indexing names by their offset
    in the string table; a type's name and members are decoded when it is
    first asked for. In an emulated guest the eager parse took over a
    minute per run; natively, a second of every cold start.
    """

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
        self._data = data
        self._endian = endian
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        # Per type id: (kind, name offset, size or type, where its extra data starts, vlen, kind_flag).
        self._raw: list[Optional[tuple]] = [None]  # type id 0 is void
        self._decoded: dict[int, BtfType] = {}
        self._named: dict[int, list[int]] = {}  # name offset -> ids of the named kinds
        self._funcs: dict[int, int] = {}  # name offset -> the first FUNC type id of that name
        self._offsets: dict[str, list[int]] = {}
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
        raw, named, funcs = self._raw, self._named, self._funcs
        fixed, per_vlen = _FIXED_EXTRA, _PER_VLEN_EXTRA
        while pos < end:
            name_off, info, size_or_type = unpack(header, data, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            type_id = len(raw)
            raw.append((kind, name_off, size_or_type, pos, vlen, info >> 31))
            if name_off:
                if kind in _NAMED:
                    named.setdefault(name_off, []).append(type_id)
                elif kind == KIND_FUNC:
                    # Functions are kept apart: trampolines attach to them by id.
                    funcs.setdefault(name_off, type_id)
            pos += fixed[kind] + per_vlen[kind] * vlen
        if pos > end or end > len(data):
            raise BTFError("BTF data is truncated or corrupt: the last type runs past the type section")

    def _name_offsets(self, name: str) -> list[int]:
        """Where ``name`` starts in the string table (usually once; a blob need not be deduplicated)."""
        found = self._offsets.get(name)
        if found is None:
            found = []
            try:
                needle = b"\0" + name.encode("ascii") + b"\0"
            except UnicodeEncodeError:
                needle = None
            at = self._strings.find(needle) if needle else -1
            while at >= 0:
                found.append(at + 1)
                at = self._strings.find(needle, at + 1)
            self._offsets[name] = found
        return found

    def _ids_named(self, name: str) -> list[int]:
        """The ids of the structs, unions, typedefs and ints called ``name``, in id order."""
        ids = [i for off in self._name_offsets(name) for i in self._named.get(off, ())]
        return sorted(ids)

    def _decode(self, type_id: int) -> BtfType:
        kind, name_off, size_or_type, pos, vlen, kind_flag = self._raw[type_id]
        data, e = self._data, self._endian
        members: tuple = ()
        try:
            if kind in (KIND_STRUCT, KIND_UNION):
                ms = []
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from(e + "III", data, pos + 12 * i)
                    if kind_flag:
                        bit_off, bf_size = m_off & 0xFFFFFF, m_off >> 24
                    else:
                        bit_off, bf_size = m_off, 0
                    ms.append(Member(self._str(m_name), m_type, bit_off, bf_size))
                members = tuple(ms)
            elif kind == KIND_FUNC_PROTO:
                members = tuple(struct.unpack_from(e + "I", data, pos + 8 * i + 4)[0] for i in range(vlen))
        except struct.error as err:
            raise BTFError(f"BTF data is truncated or corrupt: {err}") from None
        name = self._str(name_off) if name_off and kind in _NAMED else ""
        return BtfType(kind, name, size_or_type, members)

    def type(self, type_id: int) -> BtfType:
        t = self._decoded.get(type_id)
        if t is not None:
            return t
        if not 0 <= type_id < len(self._raw):
            raise BTFError(f"BTF type id {type_id} out of range")
        if self._raw[type_id] is None:
            raise BTFError("member has type void")
        t = self._decoded[type_id] = self._decode(type_id)
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
        for type_id in self._ids_named(name):
            kind, _, size, _, vlen, _ = self._raw[type_id]
            if kind in (KIND_STRUCT, KIND_UNION) and (vlen or size):
                return type_id
        raise BTFError(f"this kernel's BTF has no struct {name}")

    def has_typedef(self, name: str) -> bool:
        return self.typedef_id(name) is not None

    def typedef_id(self, name: str) -> Optional[int]:
        """The BTF id of typedef ``name`` (a raw tracepoint's ``btf_trace_<name>``
        is what a BTF-typed tracepoint program attaches to), or None."""
        return next((i for i in self._ids_named(name) if self._raw[i][0] == KIND_TYPEDEF), None)

    def func_id(self, name: str) -> Optional[int]:
        """The BTF id of kernel function ``name`` (what fentry/fexit attach to), or None."""
        ids = [self._funcs[off] for off in self._name_offsets(name) if off in self._funcs]
        return min(ids) if ids else None

    def func_proto_arity(self, typedef_name: str) -> Optional[int]:
        """Parameter count of a function-pointer typedef (e.g. ``btf_trace_<tp>``)."""
        for type_id in self._ids_named(typedef_name):
            t = self.type(type_id)
            if t.kind != KIND_TYPEDEF:
                continue
            _, target = self.resolve(t.size_or_type)
            if target.kind == KIND_PTR:
                _, target = self.resolve(target.size_or_type)
            if target.kind == KIND_FUNC_PROTO:
                return len(target.members)
        return None

    def enum_values(self, name: str) -> dict[str, int]:
        """The names and values of ``enum name`` (empty when the kernel has none)."""
        for type_id in self._ids_named(name):
            kind, _, _, pos, vlen, kind_flag = self._raw[type_id]
            if kind != KIND_ENUM or not vlen:
                continue
            out = {}
            signed = "i" if kind_flag else "I"
            try:
                for i in range(vlen):
                    name_off, value = struct.unpack_from(self._endian + "I" + signed, self._data, pos + 8 * i)
                    out[self._str(name_off)] = value
            except struct.error as err:
                raise BTFError(f"BTF data is truncated or corrupt: {err}") from None
            return out
        return {}

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
