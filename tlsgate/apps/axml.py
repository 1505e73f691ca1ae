"""Android's compiled XML (AXML) and resource table (resources.arsc), as far as reading an app's network security needs.

Hand-written rather than a PyPI dependency: the well-kept readers are whole
analysis suites (androguard pulls in a dozen packages) or read only the
manifest and not the resource table that `@xml/network_security_config` needs
resolving through (apkInspector). What is needed is small and fixed by the
format (frameworks/base/libs/androidfw/ResourceTypes.h): the string pool, the
resource-id map, start/end element chunks with typed attribute values, and one
lookup in the table's type chunks. Every offset is bounds-checked; a malformed
file raises AppFormatError, never reads past its buffer, and is bounded in
depth, elements and strings.

Work is linear in the file: an element's attribute records must lie inside its
own chunk (as Android's ResXMLTree checks), so no two elements share one run
of records (a 6 MiB manifest whose elements all pointed at one run took 80 s);
strings are decoded when used, once each, and the characters decoded and the
strings handed out (tags, attributes, text: the same pooled string can be named
by every element) are counted against a budget proportional to the file, so
what the NSC reader and the policy writer get is linear in it too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from tlsgate.apps.model import AppFormatError

RES_STRING_POOL = 0x0001
RES_TABLE = 0x0002
RES_XML = 0x0003
RES_XML_START_NAMESPACE = 0x0100
RES_XML_END_NAMESPACE = 0x0101
RES_XML_START_ELEMENT = 0x0102
RES_XML_END_ELEMENT = 0x0103
RES_XML_CDATA = 0x0104
RES_XML_RESOURCE_MAP = 0x0180
RES_TABLE_PACKAGE = 0x0200
RES_TABLE_TYPE = 0x0201

TYPE_REFERENCE = 0x01
TYPE_STRING = 0x03
TYPE_INT_DEC = 0x10
TYPE_INT_HEX = 0x11
TYPE_INT_BOOLEAN = 0x12
NO_INDEX = 0xFFFFFFFF
UTF8_FLAG = 0x100
SPARSE_FLAG = 0x01

MAX_STRINGS = 1 << 20
MAX_ELEMENTS = 100_000
MAX_DEPTH = 64
ATTRIBUTE_EXT = 20  # ResXMLTree_attrExt
ATTRIBUTE_SIZE = 20  # ResXMLTree_attribute


def string_budget(size: int) -> int:
    """Characters a file of `size` bytes may hand out: real files stay near 1x (each string named once or twice)."""
    return 4 * size + (1 << 20)


# android: attributes a shrunk APK may leave nameless in the string pool, by their framework resource id.
ANDROID_ATTRIBUTES = {
    0x0101000F: "debuggable",
    0x0101020C: "minSdkVersion",
    0x01010270: "targetSdkVersion",
    0x010104EC: "usesCleartextTraffic",
    0x01010527: "networkSecurityConfig",
    0x0101054C: "targetSandboxVersion",
}


@dataclass
class Element:
    """One XML element from either a text or a compiled file: local names, string values, its line."""

    tag: str
    attrs: dict[str, str]
    line: int | None
    children: list[Element] = field(default_factory=list)
    text: str = ""

    def find(self, tag: str) -> Element | None:
        return next((c for c in self.children if c.tag == tag), None)


def _u16(data: bytes, offset: int) -> int:
    if offset < 0 or offset + 2 > len(data):
        raise AppFormatError(f"binary XML truncated at byte {offset}")
    return struct.unpack_from("<H", data, offset)[0]


def _u32(data: bytes, offset: int) -> int:
    if offset < 0 or offset + 4 > len(data):
        raise AppFormatError(f"binary XML truncated at byte {offset}")
    return struct.unpack_from("<I", data, offset)[0]


def _chunk(data: bytes, offset: int, end: int) -> tuple[int, int, int]:
    """(type, header size, size) of the chunk at `offset`, checked to lie within `end`."""
    kind, header, size = _u16(data, offset), _u16(data, offset + 2), _u32(data, offset + 4)
    if header < 8 or size < header or offset + size > end:
        raise AppFormatError(f"binary XML chunk 0x{kind:04x} at byte {offset} has a bad size")
    return kind, header, size


class Budget:
    """Characters handed out so far (tags, attribute names and values, text), against what the file's size allows."""

    def __init__(self, size: int, what: str) -> None:
        self.left = string_budget(size)
        self.what = what

    def spend(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise AppFormatError(
                f"{self.what} hands out more than {string_budget(0) >> 20} MiB + 4 characters of strings per byte of "
                "file (one long string named by element after element); not what aapt writes"
            )


class StringPool:
    """A string pool chunk, decoded on demand: each string once, when first named.

    Strings aapt writes do not overlap, so decoding all of them reads each of
    the pool's bytes once; a pool whose offsets point into each other's bytes
    (4,096 offsets into one 16,384-character run: 64M characters from 40 KB)
    is refused once decoding has read more bytes than the pool holds.
    """

    def __init__(self, data: bytes, offset: int, budget: Budget) -> None:
        _, header, size = _chunk(data, offset, len(data))
        count, flags, strings_start = _u32(data, offset + 8), _u32(data, offset + 16), _u32(data, offset + 20)
        if count > MAX_STRINGS or header + 4 * count > size:
            raise AppFormatError("binary XML string pool is too large for its chunk")
        self.data, self.offset, self.header, self.count = data, offset, header, count
        self.utf8 = bool(flags & UTF8_FLAG)
        self.start, self.end = offset + strings_start, offset + size
        self.budget = budget
        self.undecoded = size  # bytes left to decode; refused beyond, so decoded strings take at most ~4x the pool
        self.cache: dict[int, str] = {}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> str:
        at = self.start + _u32(self.data, self.offset + self.header + 4 * index)
        found = self.cache.get(at)
        if found is None:
            found = self.cache[at] = _pool_string(self.data, at, self.end, self.utf8)
            self.undecoded -= len(found) * (1 if self.utf8 else 2)
            if self.undecoded < 0:
                raise AppFormatError(
                    "binary XML string pool: its strings overlap (decoding them reads more bytes than the pool holds); "
                    "not what aapt writes"
                )
        return found


def _pool_string(data: bytes, at: int, end: int, utf8: bool) -> str:
    if at >= end:
        raise AppFormatError("binary XML string outside its pool")
    if utf8:
        at += 2 if data[at] & 0x80 else 1  # UTF-16 length, skipped
        if at >= end:
            raise AppFormatError("binary XML string outside its pool")
        length = data[at]
        if length & 0x80:
            if at + 1 >= end:
                raise AppFormatError("binary XML string outside its pool")
            length = ((length & 0x7F) << 8) | data[at + 1]
            at += 1
        at += 1
        if at + length > end:
            raise AppFormatError("binary XML string runs past its pool")
        return data[at : at + length].decode("utf-8", "replace")
    length = _u16(data, at)
    if length & 0x8000:
        length = ((length & 0x7FFF) << 16) | _u16(data, at + 2)
        at += 2
    at += 2
    if at + 2 * length > end:
        raise AppFormatError("binary XML string runs past its pool")
    return data[at : at + 2 * length].decode("utf-16-le", "replace")


def _typed(data_type: int, value: int, raw: str | None) -> str:
    """An attribute's value as its source would have written it (booleans as true/false, references as @0x...)."""
    if raw is not None and data_type == TYPE_STRING:
        return raw
    if data_type == TYPE_INT_BOOLEAN:
        return "false" if value == 0 else "true"
    if data_type == TYPE_INT_DEC:
        return str(value - (1 << 32) if value & 0x80000000 else value)
    if data_type == TYPE_INT_HEX:
        return f"0x{value:x}"
    if data_type == TYPE_REFERENCE:
        return f"@0x{value:08x}"
    return raw if raw is not None else f"0x{value:x}"


def parse_axml(data: bytes) -> Element:
    """Compiled XML -> the root Element (attribute names without namespace prefixes)."""
    if len(data) < 8 or _u16(data, 0) != RES_XML:
        raise AppFormatError("not an Android binary XML file")
    _, header, total = _chunk(data, 0, len(data))
    budget = Budget(total, "binary XML")
    strings: StringPool | None = None
    resource_ids: list[int] = []
    stack: list[tuple[Element, list[str]]] = []
    root: Element | None = None
    offset, count = header, 0
    while offset < total:
        kind, chunk_header, size = _chunk(data, offset, total)
        if kind == RES_STRING_POOL:
            strings = StringPool(data, offset, budget)
        elif kind == RES_XML_RESOURCE_MAP:
            resource_ids = [_u32(data, offset + chunk_header + 4 * i) for i in range((size - chunk_header) // 4)]
        elif kind == RES_XML_START_ELEMENT:
            count += 1
            if count > MAX_ELEMENTS or len(stack) >= MAX_DEPTH:
                raise AppFormatError("binary XML has too many or too deeply nested elements")
            element = _start_element(data, offset, chunk_header, size, strings, resource_ids, budget)
            if stack:
                stack[-1][0].children.append(element)
            elif root is None:
                root = element
            else:
                raise AppFormatError("binary XML has more than one root element")
            stack.append((element, []))
        elif kind == RES_XML_END_ELEMENT:
            if not stack:
                raise AppFormatError("binary XML closes an element it never opened")
            element, pieces = stack.pop()
            if pieces:
                element.text = "".join(pieces)  # once per element, not once per piece
        elif kind == RES_XML_CDATA and stack:
            if chunk_header + 4 > size:
                raise AppFormatError(f"binary XML text chunk at byte {offset} is too small")
            text = _string(strings, _u32(data, offset + chunk_header), budget)
            if text:
                stack[-1][1].append(text)
        offset += size
    if root is None or stack:
        raise AppFormatError("binary XML has no complete root element")
    return root


def _string(strings: StringPool | None, index: int, budget: Budget | None = None) -> str | None:
    """A pooled string by index; when a budget is given, what is handed out counts against it."""
    if index == NO_INDEX:
        return None
    if strings is None or index >= len(strings):
        raise AppFormatError(f"binary XML refers to string {index} of {len(strings) if strings else 0}")
    text = strings[index]
    if budget is not None:
        budget.spend(len(text))
    return text


def _start_element(
    data: bytes, offset: int, header: int, size: int, strings: StringPool | None, ids: list[int], budget: Budget
) -> Element:
    if header < 16 or header + ATTRIBUTE_EXT > size:
        raise AppFormatError(f"binary XML element at byte {offset} is too small for its header")
    line = _u32(data, offset + 8)
    ext = offset + header
    name = _string(strings, _u32(data, ext + 4), budget) or ""
    attr_start, attr_size, attr_count = _u16(data, ext + 8), _u16(data, ext + 10), _u16(data, ext + 12)
    if attr_size < ATTRIBUTE_SIZE:
        raise AppFormatError("binary XML attribute records are too small")
    if ext + attr_start + attr_count * attr_size > offset + size:
        # Android's ResXMLTree refuses this too; allowing it let every element re-read one shared run of records
        raise AppFormatError(f"binary XML element at byte {offset}: its {attr_count} attribute records run past its chunk")
    attrs: dict[str, str] = {}
    for i in range(attr_count):
        at = ext + attr_start + i * attr_size
        name_index = _u32(data, at + 4)
        attr_name = _string(strings, name_index, budget) or ""
        if name_index < len(ids) and ids[name_index] in ANDROID_ATTRIBUTES:
            attr_name = ANDROID_ATTRIBUTES[ids[name_index]]  # the id is what Android reads, whatever the name says
        raw = _string(strings, _u32(data, at + 8), budget)
        data_type, value = data[at + 15], _u32(data, at + 16)
        attrs[attr_name] = _typed(data_type, value, raw if data_type == TYPE_STRING else None)
    return Element(name, attrs, line or None)


def resolve_file_reference(table: bytes, resource_id: int) -> list[str]:
    """resources.arsc: the file path(s) a resource id such as @xml/network_security_config names, one per configuration."""
    if len(table) < 12 or _u16(table, 0) != RES_TABLE:
        raise AppFormatError("resources.arsc is not an Android resource table")
    _, header, total = _chunk(table, 0, len(table))
    package_id, type_id, entry_id = resource_id >> 24, (resource_id >> 16) & 0xFF, resource_id & 0xFFFF
    values: StringPool | None = None
    budget = Budget(total, "resources.arsc")
    offset = header
    found: list[str] = []
    while offset < total:
        kind, chunk_header, size = _chunk(table, offset, total)
        if kind == RES_STRING_POOL and values is None:
            values = StringPool(table, offset, budget)
        elif kind == RES_TABLE_PACKAGE and chunk_header >= 12 and _u32(table, offset + 8) == package_id:
            found += _package_entries(table, offset, chunk_header, size, type_id, entry_id, values)
        offset += size
    return found


def _package_entries(
    table: bytes, offset: int, header: int, size: int, type_id: int, entry_id: int, values: StringPool | None
) -> list[str]:
    out = []
    at, end = offset + header, offset + size
    while at < end:
        kind, chunk_header, chunk_size = _chunk(table, at, end)
        if kind == RES_TABLE_TYPE and chunk_header >= 20 and table[at + 8] == type_id:
            value = _type_entry(table, at, chunk_header, chunk_size, entry_id, values)
            if value is not None:
                out.append(value)
        at += chunk_size
    return out


def _type_entry(table: bytes, at: int, header: int, size: int, entry_id: int, values: StringPool | None) -> str | None:
    flags, count, entries_start = table[at + 9], _u32(table, at + 12), _u32(table, at + 16)
    if count > MAX_STRINGS or header + 4 * count > size:
        raise AppFormatError("resources.arsc type chunk is too large for its size")
    entry_offset: int | None = None
    if flags & SPARSE_FLAG:
        for i in range(count):
            index, half = _u16(table, at + header + 4 * i), _u16(table, at + header + 4 * i + 2)
            if index == entry_id:
                entry_offset = half * 4
                break
    elif entry_id < count:
        raw = _u32(table, at + header + 4 * entry_id)
        entry_offset = None if raw == NO_INDEX else raw
    if entry_offset is None:
        return None
    entry = at + entries_start + entry_offset
    entry_size, entry_flags = _u16(table, entry), _u16(table, entry + 2)
    if entry_flags & 0x0001 or entry + entry_size + 8 > at + size:  # a complex (bag) entry is no file path
        return None
    value_at = entry + entry_size
    data_type, data = table[value_at + 3], _u32(table, value_at + 4)
    if data_type != TYPE_STRING or values is None or data >= len(values):
        return None
    return values[data]
