"""APKs and IPAs as zip archives: the central directory streamed, a few entries inflated under bounds.

Python's zipfile reads the whole central directory into memory and keeps a
ZipInfo per entry: a 41 MiB APK of 400,000 entries took 525 MiB to import.
Here the directory is read in 1 MiB blocks, one record at a time, and only the
entries the import reads are kept: memory is a few MiB whatever the archive
holds. Two entries of a name the import reads are refused (Android refuses an
APK with duplicate names since the "master key" bug showed that readers
disagree on which one counts).

An entry is read only after its declared size, method and place in the file
are checked, then inflated piece by piece: never beyond the size it declares,
the per-entry limit (MAX_INPUT) or the per-import total, nor at a ratio only a
zip bomb reaches; its local header must name what the directory names, and
its CRC must match. An entry that is itself an archive is not opened. Entry
names are matched byte for byte and never used as file paths.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tlsgate.apps.files import open_regular
from tlsgate.apps.model import MAX_INPUT, AppFormatError, clip

MAX_ENTRIES = 1_000_000  # large games hold ~100,000; zip64 allows billions
MAX_DIRECTORY = 256 << 20  # central directory bytes walked (~100 bytes per entry)
MAX_TOTAL = 2 * MAX_INPUT  # inflated across every entry one import reads (manifest, resource table, config)
MAX_RATIO = 200  # deflate's ceiling is ~1032:1; real manifests, resource tables and plists stay under 20:1
RATIO_FROM = 1 << 20  # the ratio is judged once this much is inflated: small, very repetitive files are fine
BLOCK = 1 << 20

_EOCD = struct.Struct("<4sHHHHIIH")
_EOCD64_LOCATOR = struct.Struct("<4sIQI")
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_STORED, _DEFLATED = 0, 8
_ENCRYPTED, _UTF8 = 0x0001, 0x0800
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


@dataclass(frozen=True)
class Entry:
    raw: bytes  # the name as stored: what matching and duplicate checks compare
    name: str  # for messages and origins
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    offset: int  # of its local header


class Archive:
    """One zip file, open; `scan` walks its directory, `read` inflates one entry."""

    def __init__(self, stream: BinaryIO, file_size: int, label: str) -> None:
        self.stream = stream
        self.file_size = file_size
        self.label = label
        self.inflated = 0
        self.records_read = 0  # directory records walked, over every scan (the unit tests count work by it)
        self._locate()

    @classmethod
    def open(cls, path: Path) -> Archive:
        stream, size = open_regular(path)
        try:
            return cls(stream, size, str(path))
        except BaseException:
            stream.close()
            raise

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def error(self, message: str) -> AppFormatError:
        return AppFormatError(f"{self.label}: {message}")

    # -- the directory ------------------------------------------------------------------------------

    def _read_at(self, offset: int, size: int) -> bytes:
        self.stream.seek(offset)
        data = self.stream.read(size)
        if len(data) != size:
            raise self.error(f"cut short at byte {offset + len(data)} (wanted {size} bytes at {offset})")
        return data

    def _locate(self) -> None:
        tail_size = min(self.file_size, _EOCD.size + 0xFFFF)
        if tail_size < _EOCD.size:
            raise self.error("not a zip archive (too short)")
        tail_start = self.file_size - tail_size
        tail = self._read_at(tail_start, tail_size)
        at = tail.rfind(b"PK\x05\x06")
        while at >= 0 and (at + _EOCD.size > len(tail) or at + _EOCD.size + _EOCD.unpack_from(tail, at)[7] > len(tail)):
            at = tail.rfind(b"PK\x05\x06", 0, at)
        if at < 0:
            raise self.error("not a zip archive (no end of central directory record)")
        eocd = tail_start + at
        _, disk, cd_disk, on_disk, total, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
        directory_limit = eocd
        if 0xFFFF in (on_disk, total) or 0xFFFFFFFF in (cd_size, cd_offset):
            if eocd < _EOCD64_LOCATOR.size:
                raise self.error("zip64 archive without its zip64 locator")
            signature, _, record, _ = _EOCD64_LOCATOR.unpack(self._read_at(eocd - _EOCD64_LOCATOR.size, _EOCD64_LOCATOR.size))
            if signature != b"PK\x06\x07" or record + _EOCD64.size > eocd:
                raise self.error("zip64 locator is missing or points outside the file")
            fields = _EOCD64.unpack(self._read_at(record, _EOCD64.size))
            if fields[0] != b"PK\x06\x06":
                raise self.error(f"no zip64 end of central directory record at byte {record}")
            disk, cd_disk, on_disk, total, cd_size, cd_offset = fields[4:10]
            directory_limit = record
        if disk or cd_disk or on_disk != total:
            raise self.error("a multi-disk (split) archive; tlsgate reads single-file archives")
        if total > MAX_ENTRIES:
            raise self.error(f"{total} entries, more than the {MAX_ENTRIES} tlsgate reads")
        if cd_size > MAX_DIRECTORY:
            raise self.error(f"a central directory of {cd_size} bytes, more than the {MAX_DIRECTORY >> 20} MiB tlsgate reads")
        if cd_offset + cd_size > directory_limit:
            raise self.error("the central directory lies outside the archive")
        if total * _CENTRAL.size > cd_size:
            raise self.error(f"a central directory of {cd_size} bytes cannot hold the {total} entries it declares")
        self.count, self.directory, self.directory_size = total, cd_offset, cd_size

    def _records(self) -> Iterator[tuple[bytes, tuple[int, ...], bytes, int]]:
        """(name, fixed fields, the block holding the record, where its extra field starts), one record at a time."""
        block, at = b"", 0
        position, end = self.directory, self.directory + self.directory_size

        def ensure(need: int) -> None:
            nonlocal block, at, position
            if len(block) - at >= need:
                return
            more = max(BLOCK, need - (len(block) - at))
            more = min(more, end - position)
            block = block[at:] + self._read_at(position, more) if more > 0 else block[at:]
            position += max(more, 0)
            at = 0
            if len(block) < need:
                raise self.error("the central directory ends in the middle of a record")

        for _ in range(self.count):
            ensure(_CENTRAL.size)
            fields = _CENTRAL.unpack_from(block, at)
            if fields[0] != b"PK\x01\x02":
                raise self.error(f"central directory record {self.records_read + 1} is damaged (bad signature)")
            name_length, extra_length, comment_length = fields[10], fields[11], fields[12]
            ensure(_CENTRAL.size + name_length + extra_length + comment_length)
            start = at + _CENTRAL.size
            self.records_read += 1
            yield block[start : start + name_length], fields, block, start + name_length
            at = start + name_length + extra_length + comment_length

    def scan(self, wanted: Callable[[bytes], bool]) -> list[Entry]:
        """Every directory record once; the entries `wanted` (given each raw name) picks, each name at most once."""
        found: list[Entry] = []
        for raw, fields, block, extra_at in self._records():
            if wanted(raw):
                found.append(self._entry(raw, fields, block[extra_at : extra_at + fields[11]]))
                if len(found) > 10_000:
                    raise self.error("more than 10000 entries match what tlsgate looks for")
        for raw, count in Counter(entry.raw for entry in found).items():
            if count > 1:
                raise self.error(
                    f"{count} entries are named {_decode(raw, _UTF8)!r}; Android refuses such an archive, and readers "
                    "disagree on which of them counts"
                )
        return found

    def find(self, name: str) -> Entry | None:
        raw = name.encode("utf-8")
        found = self.scan(lambda candidate: candidate == raw)
        return found[0] if found else None

    def _entry(self, raw: bytes, fields: tuple[int, ...], extra: bytes) -> Entry:
        flags, method, crc, compressed, size, offset = fields[3], fields[4], fields[7], fields[8], fields[9], fields[16]
        if 0xFFFFFFFF in (compressed, size, offset):
            size, compressed, offset = _zip64_sizes(extra, size, compressed, offset, lambda m: self.error(m))
        return Entry(raw, _decode(raw, flags), flags, method, crc, compressed, size, offset)

    # -- one entry ----------------------------------------------------------------------------------

    def read(self, entry: Entry, limit: int | None = None) -> bytes:
        """The entry's bytes, inflated under every bound; AppFormatError names the archive and the entry."""
        limit = MAX_INPUT if limit is None else limit
        where = f"{clip(entry.name, 200)}: "
        if entry.flags & _ENCRYPTED:
            raise self.error(where + "encrypted; tlsgate reads only unencrypted entries")
        if entry.method not in (_STORED, _DEFLATED):
            raise self.error(where + f"compression method {entry.method}; Android and iOS read only stored and deflated")
        if entry.size > limit:
            raise self.error(where + f"{entry.size} bytes inflated, larger than the {limit >> 20} MiB tlsgate reads")
        if self.inflated + entry.size > MAX_TOTAL:
            raise self.error(where + f"would take the bytes inflated by this import beyond {MAX_TOTAL >> 20} MiB")
        if entry.offset + _LOCAL.size > self.directory:
            raise self.error(where + "its local header lies outside the archive's entries")
        local = _LOCAL.unpack(self._read_at(entry.offset, _LOCAL.size))
        if local[0] != b"PK\x03\x04":
            raise self.error(where + f"no local header at byte {entry.offset}")
        start = entry.offset + _LOCAL.size
        if self._read_at(start, local[9]) != entry.raw:
            raise self.error(where + "its local header names another file than the central directory does")
        start += local[9] + local[10]
        if start + entry.compressed > self.directory:
            raise self.error(where + "its data runs into the central directory or past the end of the file")
        self.stream.seek(start)
        if entry.method == _STORED:
            if entry.compressed != entry.size:
                raise self.error(where + "stored, but its compressed and inflated sizes differ")
            data = self._read_at(start, entry.size)
        else:
            data = self._inflate(entry, where)
        if len(data) != entry.size:
            raise self.error(where + f"inflates to {len(data)} bytes, not the {entry.size} it declares")
        if zlib.crc32(data) != entry.crc:
            raise self.error(where + "fails its CRC check (damaged or altered)")
        self.inflated += len(data)
        if data[:4] in _ARCHIVE_MAGIC:
            raise self.error(where + "is itself a zip archive; tlsgate does not open archives inside archives")
        return data

    def _inflate(self, entry: Entry, where: str) -> bytes:
        inflater = zlib.decompressobj(-15)
        pieces: list[bytes] = []
        produced, left = 0, entry.compressed
        while not inflater.eof:
            chunk = inflater.unconsumed_tail
            if not chunk:
                if left == 0:
                    raise self.error(where + "its deflate stream is cut short")
                chunk = self.stream.read(min(BLOCK, left))
                if not chunk:
                    raise self.error(where + "cut short by the end of the file")
                left -= len(chunk)
            try:
                piece = inflater.decompress(chunk, BLOCK)
            except zlib.error as exc:
                raise self.error(where + f"its deflate stream is damaged ({exc})") from None
            produced += len(piece)
            if produced > entry.size:
                raise self.error(where + f"inflates beyond the {entry.size} bytes it declares")
            consumed = entry.compressed - left - len(inflater.unconsumed_tail)
            if produced > RATIO_FROM and produced > MAX_RATIO * max(consumed, 1):
                raise self.error(where + f"inflates more than {MAX_RATIO}:1, as only a zip bomb does")
            pieces.append(piece)
        return b"".join(pieces)


def _zip64_sizes(
    extra: bytes, size: int, compressed: int, offset: int, error: Callable[[str], AppFormatError]
) -> tuple[int, int, int]:
    """The zip64 extra field's values, for exactly the fields the record marks 0xFFFFFFFF, in the format's order."""
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4 : at + 4 + length]
        if kind == 0x0001:
            values = [size, compressed, offset]
            taken = 0
            for i in range(3):
                if values[i] == 0xFFFFFFFF:
                    if taken + 8 > len(body):
                        raise error("a zip64 extra field too short for the sizes it stands for")
                    values[i] = struct.unpack_from("<Q", body, taken)[0]
                    taken += 8
            return values[0], values[1], values[2]
        at += 4 + length
    raise error("an entry's sizes say zip64, but it has no zip64 extra field")


def _decode(raw: bytes, flags: int) -> str:
    """The name as the tools that wrote it meant it: UTF-8 when flagged or valid, else the zip default, CP437."""
    if flags & _UTF8:
        return raw.decode("utf-8", "replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437")


def looks_like_zip(head: bytes) -> bool:
    """APKs and IPAs start with a local header (an empty archive with its end record)."""
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")
