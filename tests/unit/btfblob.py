"""A tiny BTF encoder, so the BTF parser can be tested on blobs built in the test.

It writes the format of the kernel's Documentation/bpf/btf.rst: a 24-byte
header, the type section (each ``struct btf_type`` followed by its
kind-specific data) and the string section. Every ``add_*`` method appends
one type and returns its id; ids start at 1 (0 is void), in the order the
types were added, exactly as the kernel numbers them.

    b = BtfBuilder()
    u32 = b.add_int("unsigned int", 4)
    inner = b.add_struct("inner", [("a", u32, 0), ("b", u32, 32)], size=8)
    blob = b.to_bytes()
"""

from __future__ import annotations

import struct
from typing import Iterable, Optional, Sequence

MAGIC = 0xEB9F
HDR_LEN = 24

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

INT_SIGNED = 1


def info(kind: int, vlen: int = 0, kind_flag: bool = False) -> int:
    """The ``info`` word of a btf_type: vlen in bits 0-15, kind in 24-28, kind_flag in 31."""
    return (int(bool(kind_flag)) << 31) | ((kind & 0x1F) << 24) | (vlen & 0xFFFF)


class BtfBuilder:
    """Collects types and strings, then emits one BTF blob with ``to_bytes``."""

    def __init__(self) -> None:
        self._strings = bytearray(b"\0")  # offset 0 is the empty name
        self._offsets: dict[str, int] = {"": 0}
        self._types: list[list[int]] = []  # u32 words of each type, header first

    # -- strings and raw types ------------------------------------------------

    def string(self, s: str) -> int:
        """Offset of ``s`` in the string section (added once)."""
        if s not in self._offsets:
            self._offsets[s] = len(self._strings)
            self._strings += s.encode() + b"\0"
        return self._offsets[s]

    @property
    def next_id(self) -> int:
        """The id the next added type will get (for forward references)."""
        return len(self._types) + 1

    def add_raw(self, name: str, kind: int, vlen: int, size_or_type: int,
                extra: Sequence[int] = (), kind_flag: bool = False) -> int:
        """Append a btf_type with ``extra`` u32 words of kind-specific data."""
        words = [self.string(name), info(kind, vlen, kind_flag), size_or_type]
        words += [w & 0xFFFFFFFF for w in extra]
        self._types.append(words)
        return len(self._types)

    # -- the kinds ------------------------------------------------------------

    def add_int(self, name: str, size: int = 4, bits: Optional[int] = None,
                signed: bool = False, bit_offset: int = 0) -> int:
        bits = size * 8 if bits is None else bits
        encoding = INT_SIGNED if signed else 0
        return self.add_raw(name, KIND_INT, 0, size, [(encoding << 24) | (bit_offset << 16) | bits])

    def add_float(self, name: str, size: int = 8) -> int:
        return self.add_raw(name, KIND_FLOAT, 0, size)

    def add_ptr(self, type_id: int) -> int:
        return self.add_raw("", KIND_PTR, 0, type_id)

    def add_array(self, elem_type: int, index_type: int, nelems: int) -> int:
        return self.add_raw("", KIND_ARRAY, 0, 0, [elem_type, index_type, nelems])

    def _members(self, members: Iterable[tuple], kind_flag: bool) -> list[int]:
        words = []
        for m in members:
            name, type_id, bit_offset = m[0], m[1], m[2]
            bitfield_size = m[3] if len(m) > 3 else 0
            if kind_flag:
                offset = (bitfield_size << 24) | bit_offset
            else:
                assert not bitfield_size, "a bitfield member needs kind_flag=True"
                offset = bit_offset
            words += [self.string(name), type_id, offset]
        return words

    def add_struct(self, name: str, members: Sequence[tuple], size: int,
                   kind_flag: bool = False) -> int:
        """``members``: (name, type_id, bit_offset[, bitfield_size]); name "" is anonymous."""
        members = list(members)
        return self.add_raw(name, KIND_STRUCT, len(members), size,
                            self._members(members, kind_flag), kind_flag)

    def add_union(self, name: str, members: Sequence[tuple], size: int,
                  kind_flag: bool = False) -> int:
        members = list(members)
        return self.add_raw(name, KIND_UNION, len(members), size,
                            self._members(members, kind_flag), kind_flag)

    def add_enum(self, name: str, values: Sequence[tuple[str, int]], size: int = 4) -> int:
        extra = []
        for value_name, value in values:
            extra += [self.string(value_name), value]
        return self.add_raw(name, KIND_ENUM, len(values), size, extra)

    def add_enum64(self, name: str, values: Sequence[tuple[str, int]], size: int = 8) -> int:
        extra = []
        for value_name, value in values:
            extra += [self.string(value_name), value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF]
        return self.add_raw(name, KIND_ENUM64, len(values), size, extra)

    def add_fwd(self, name: str, union: bool = False) -> int:
        return self.add_raw(name, KIND_FWD, 0, 0, kind_flag=union)

    def add_typedef(self, name: str, type_id: int) -> int:
        return self.add_raw(name, KIND_TYPEDEF, 0, type_id)

    def add_volatile(self, type_id: int) -> int:
        return self.add_raw("", KIND_VOLATILE, 0, type_id)

    def add_const(self, type_id: int) -> int:
        return self.add_raw("", KIND_CONST, 0, type_id)

    def add_restrict(self, type_id: int) -> int:
        return self.add_raw("", KIND_RESTRICT, 0, type_id)

    def add_type_tag(self, tag: str, type_id: int) -> int:
        return self.add_raw(tag, KIND_TYPE_TAG, 0, type_id)

    def add_func_proto(self, return_type: int, params: Sequence[tuple[str, int]]) -> int:
        """``params``: (name, type_id); a trailing ("", 0) marks varargs."""
        extra = []
        for param_name, type_id in params:
            extra += [self.string(param_name), type_id]
        return self.add_raw("", KIND_FUNC_PROTO, len(params), return_type, extra)

    def add_func(self, name: str, proto: int, linkage: int = 1) -> int:
        return self.add_raw(name, KIND_FUNC, linkage, proto)

    def add_var(self, name: str, type_id: int, linkage: int = 1) -> int:
        return self.add_raw(name, KIND_VAR, 0, type_id, [linkage])

    def add_datasec(self, name: str, vars: Sequence[tuple[int, int, int]], size: int) -> int:
        """``vars``: (var type id, offset, size)."""
        extra = []
        for type_id, offset, var_size in vars:
            extra += [type_id, offset, var_size]
        return self.add_raw(name, KIND_DATASEC, len(vars), size, extra)

    def add_decl_tag(self, tag: str, type_id: int, component_idx: int = -1) -> int:
        return self.add_raw(tag, KIND_DECL_TAG, 0, type_id, [component_idx])

    # -- output ---------------------------------------------------------------

    def to_bytes(self, endian: str = "<", hdr_len: int = HDR_LEN, strings_first: bool = False,
                 magic: int = MAGIC, version: int = 1) -> bytes:
        """The blob; ``hdr_len`` > 24 pads the header with zeros as newer headers may."""
        types = b"".join(struct.pack(f"{endian}{len(w)}I", *w) for w in self._types)
        strings = bytes(self._strings)
        if strings_first:
            str_off, type_off, body = 0, len(strings), strings + types
        else:
            type_off, str_off, body = 0, len(types), types + strings
        header = struct.pack(f"{endian}HBBIIIII", magic, version, 0, hdr_len,
                             type_off, len(types), str_off, len(strings))
        header += b"\0" * (hdr_len - HDR_LEN)
        return header + body


def blob_with_fields(fields: dict[str, tuple[str, str]], offsets: dict[str, int],
                     endian: str = "<") -> bytes:
    """A blob in which every (struct, dotted path) of ``fields`` has the byte offset in ``offsets``.

    ``fields`` maps a macro name to (struct, path) like ``layout.FIELDS``;
    ``offsets`` maps the same macro names to the byte offset of the whole
    path. Each path component becomes a named member: intermediate ones are
    nested structs at offset 0 of their parent, and the last one carries the
    whole offset. Paths sharing a prefix share the nested struct.
    """
    trees: dict[str, dict] = {}  # struct -> {member: subtree, or byte offset of a leaf}
    for macro, (struct_name, path) in fields.items():
        *inner, leaf = path.split(".")
        node = trees.setdefault(struct_name, {})
        for part in inner:
            node = node.setdefault(part, {})
        node[leaf] = offsets[macro]

    b = BtfBuilder()
    u32 = b.add_int("unsigned int", 4)

    def emit(name: str, tree: dict) -> int:
        members = []
        for member, sub in tree.items():
            if isinstance(sub, dict):
                members.append((member, emit(f"{name}__{member}", sub), 0))
            else:
                members.append((member, u32, sub * 8))
        size = max(m[2] // 8 + 4 for m in members)
        return b.add_struct(name, members, size)

    for struct_name, tree in trees.items():
        emit(struct_name, tree)
    return b.to_bytes(endian)
