"""Real file formats for the session corpus (tests/payload_sessions.py): what apps upload, byte for byte realistic.

Each builder makes bytes with the format's real structure: headers, tables and
boxes from its specification, compressed parts made by the real compressor
(zlib, gzip, bzip2, xz, zstd, brotli, zipfile, sqlite3), and the random-looking
parts (entropy-coded image data, video NAL units, encrypted vaults) as random
bytes with the format's framing. What matters for payload inspection is what
these share between two files: camera makers' EXIF blocks, quantisation and
Huffman tables, fonts embedded in PDFs, equal ZIP entries, periodic bytes from
flat image areas.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import random
import sqlite3
import struct
import zipfile
import zlib

import brotli
import zstandard


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


# ITU-T T.81 Annex K tables: every baseline encoder ships these (scaled by quality)
_LUMA_Q = bytes(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ]
)
_DC_BITS = bytes([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
_DC_VALS = bytes(range(12))
_AC_BITS = bytes([0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D])
_AC_VALS = bytes(range(1, 163))  # the shape of the standard table (162 symbols), not its exact order


def _quant(quality: int) -> bytes:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return bytes(max(1, min(255, (q * scale + 50) // 100)) for q in _LUMA_Q)


def _scan_data(rng: random.Random, size: int, flat: float) -> bytes:
    """Entropy-coded data: noisy areas as random bytes (0xFF stuffed as FF 00), flat areas as the short periodic
    byte patterns identical MCUs encode to, and restart markers."""
    out = bytearray()
    restart = 0
    while len(out) < size:
        if rng.random() < flat:
            period = rng.choice((4, 7, 14, 3, 6))
            pattern = bytes(rng.choice((0x28, 0xA2, 0x8A, 0x00, 0x14, 0x51, 0x45)) for _ in range(period))
            out += pattern * rng.randrange(8, 200)
        else:
            chunk = rng.randbytes(rng.randrange(200, 4000))
            out += chunk.replace(b"\xff", b"\xff\x00")
        if rng.random() < 0.3:
            out += bytes([0xFF, 0xD0 + restart % 8])
            restart += 1
    return bytes(out[:size])


def _exif(rng: random.Random, camera: tuple[str, str, bytes], when: str) -> bytes:
    """APP1 Exif: a little-endian TIFF IFD with make, model and date, the maker's note (a fixed per-camera block
    and a per-shot part), and a small JPEG thumbnail."""
    make, model, maker_fixed = camera
    strings = [make.encode() + b"\0", model.encode() + b"\0", when.encode() + b"\0"]
    maker = maker_fixed + rng.randbytes(rng.randrange(300, 900))
    entries, blob = [], bytearray()
    offset = 8 + 2 + 12 * 4 + 4
    for tag, data in ((0x010F, strings[0]), (0x0110, strings[1]), (0x0132, strings[2]), (0x927C, maker)):
        entries.append(struct.pack("<HHII", tag, 7 if tag == 0x927C else 2, len(data), offset + len(blob)))
        blob += data
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 4) + b"".join(entries) + b"\0\0\0\0" + bytes(blob)
    thumb = (
        b"\xff\xd8"
        + _segment(0xDB, b"\x00" + _quant(70))
        + rng.randbytes(rng.randrange(2000, 6000)).replace(b"\xff", b"\xff\x00")
        + b"\xff\xd9"
    )
    return _segment(0xE1, b"Exif\x00\x00" + tiff + thumb[:60000])


CAMERAS = (
    ("Apple", "iPhone 13", bytes.fromhex("4170706c6520694f53000001004d4d000b0001000900000001")),
    ("samsung", "SM-S911B", bytes.fromhex("0700010000000000020000000000000000000000000000000000")),
    ("Google", "Pixel 7", bytes.fromhex("48445250000100000000000000000000")),
)


def jpeg(
    rng: random.Random,
    size: int,
    camera: tuple[str, str, bytes] | None = None,
    flat: float = 0.1,
    width: int = 4032,
    height: int = 3024,
) -> bytes:
    """A baseline JPEG of exactly `size` bytes: SOI, Exif (when from a camera), DQT, SOF0, DHT, SOS, scan, EOI."""
    quality = 92 if camera else 80
    head = b"\xff\xd8"
    if camera:
        head += _exif(rng, camera, f"2024:11:{rng.randrange(1, 29):02d} {rng.randrange(24):02d}:{rng.randrange(60):02d}:00")
    else:
        head += _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    head += _segment(0xDB, b"\x00" + _quant(quality) + b"\x01" + _quant(quality - 5))
    head += _segment(0xC0, struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01")
    head += _segment(0xC4, b"\x00" + _DC_BITS + _DC_VALS + b"\x10" + _AC_BITS + _AC_VALS)
    head += _segment(0xDA, b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00")
    return head + _scan_data(rng, size - len(head) - 2, flat) + b"\xff\xd9"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def screenshot_png(rng: random.Random, width: int = 360, height: int = 780, photo_rows: int = 0) -> bytes:
    """A real PNG of an app screen: flat bars, list rows with text-like strokes, an optional photo (noise) area."""
    background = bytes([rng.randrange(230, 256)] * 3 + [255])
    bar = bytes([rng.randrange(256), rng.randrange(256), rng.randrange(256), 255])
    rows: list[bytes] = []
    for y in range(height):
        if y < 60:
            row = bar * width
        elif 60 + 40 <= y < 100 + photo_rows:
            row = rng.randbytes(width * 4)
        elif y % 48 in range(10, 22):  # a line of text: dark strokes of a few pixels on the background
            row = bytearray(background * width)
            for _ in range(width // 12):
                start = rng.randrange(width - 3) * 4
                row[start : start + 4 * rng.randrange(1, 4)] = bytes([40, 40, 40, 255]) * 3
            row = bytes(row[: width * 4])
        else:
            row = background * width
        rows.append(b"\x00" + row)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 6))
        + _png_chunk(b"IEND", b"")
    )


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def iso_bmff(rng: random.Random, size: int, brand: bytes = b"isom") -> bytes:
    """MP4/MOV/HEIC/M4A: ftyp, a moov of mostly fixed-size integer boxes, then mdat of length-prefixed NAL units
    (each stream repeats its parameter sets)."""
    ftyp = _box(b"ftyp", brand + b"\x00\x00\x02\x00" + brand + b"iso2mp41")
    mvhd = _box(b"mvhd", bytes(4) + struct.pack(">IIII", 3786480000, 3786480000, 600, rng.randrange(600, 60000)) + bytes(80))
    trak = _box(
        b"trak",
        _box(b"tkhd", bytes(84))
        + _box(b"mdia", _box(b"mdhd", bytes(24)) + _box(b"hdlr", bytes(8) + b"vide" + bytes(12) + b"VideoHandler\x00")),
    )
    moov = _box(b"moov", mvhd + trak)
    sps_pps = b"\x00\x00\x00\x0d\x67\x64\x00\x28\xac\xd9\x40\x78\x02\x27\xe5\x84\x00" + b"\x00\x00\x00\x04\x68\xeb\xe3\xcb"
    body = bytearray()
    room = size - len(ftyp) - len(moov) - 8
    while len(body) < room:
        nal = rng.randbytes(rng.randrange(500, 20000))
        body += (sps_pps if rng.random() < 0.05 else b"") + struct.pack(">I", len(nal)) + nal
    return ftyp + moov + _box(b"mdat", bytes(body[:room]))


def pdf(rng: random.Random, pages: int, font: bytes) -> bytes:
    """A PDF with FlateDecode page streams, an embedded font (the same bytes in every receipt), an xref and a
    trailer /ID."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Count %d >>" % pages]
    for _page in range(pages):
        text = "".join(
            f"BT /F1 10 Tf 40 {700 - 14 * line} Td (Item {rng.randrange(10**6)} qty {rng.randrange(9)} "
            f"EUR {rng.randrange(10**4) / 100:.2f}) Tj ET\n"
            for line in range(40)
        )
        stream = zlib.compress(text.encode())
        objects.append(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream")
        objects.append(b"<< /Type /Page /Parent 2 0 R /Contents %d 0 R >>" % (len(objects)))
    objects.append(b"<< /Length %d /Filter /FlateDecode /Subtype /OpenType >>\nstream\n" % len(font) + font + b"\nendstream")
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    ident = rng.randbytes(16).hex().encode()
    out += b"trailer\n<< /Size %d /Root 1 0 R /ID [<%s><%s>] >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        ident,
        ident,
        xref,
    )
    return bytes(out)


def zip_archive(rng: random.Random, logs: int, duplicate: bytes) -> bytes:
    """A diagnostics bundle: deflated logs, a JSON manifest, and the same binary twice (two equal compressed entries)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for index in range(logs):
            lines = "".join(
                f"2024-11-{rng.randrange(1, 29):02d}T10:{rng.randrange(60):02d}:00Z I/App: event {rng.randrange(10**6)}"
                f" screen=home took={rng.randrange(900)}ms\n"
                for _ in range(rng.randrange(100, 500))
            )
            archive.writestr(f"logs/app-{index}.log", lines)
        archive.writestr("manifest.json", json.dumps({"app": "com.example", "version": "5.2.1", "files": logs}))
        archive.writestr("crash/minidump-1.dmp", duplicate, compress_type=zipfile.ZIP_STORED)
        archive.writestr("crash/minidump-1-copy.dmp", duplicate, compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue()


def sqlite_backup(rng: random.Random, rows: int) -> bytes:
    """A real SQLite database (sqlite3's own serialisation): notes with text and random-looking attachment blobs."""
    con = sqlite3.connect(":memory:")
    con.execute("create table notes (id integer primary key, title text, body text, thumb blob, updated integer)")
    con.executemany(
        "insert into notes (title, body, thumb, updated) values (?, ?, ?, ?)",
        [
            (
                f"Note {i}",
                "shopping list: milk, eggs, bread " * rng.randrange(1, 20),
                rng.randbytes(rng.randrange(100, 3000)),
                1732000000 + i,
            )
            for i in range(rows)
        ],
    )
    con.commit()
    data = con.serialize()
    con.close()
    return bytes(data)


def log_text(rng: random.Random, lines: int) -> bytes:
    return "".join(
        f"2024-11-20 10:{rng.randrange(60):02d}:{rng.randrange(60):02d} D/Sync: pulled {rng.randrange(500)} items "
        f"cursor={rng.randbytes(6).hex()} latency={rng.randrange(2000)}ms\n"
        for _ in range(lines)
    ).encode()


def compressed(rng: random.Random, kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "bzip2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if kind == "brotli":
        return bytes(brotli.compress(data))
    if kind == "zlib":
        return zlib.compress(data)
    if kind == "deflate-raw":
        packer = zlib.compressobj(wbits=-15)
        return packer.compress(data) + packer.flush()
    raise ValueError(kind)


def kdbx(rng: random.Random, size: int) -> bytes:
    """A KeePass vault: magic, version, header fields, then ciphertext (a fresh IV per save)."""
    header = (
        b"\x03\xd9\xa2\x9a\x67\xfb\x4b\xb5\x01\x00\x04\x00" + b"\x02\x10\x00" + bytes.fromhex("31c1f2e6bf714350be5805216afc5aff")
    )
    header += b"\x04\x20\x00" + rng.randbytes(32) + b"\x07\x10\x00" + rng.randbytes(16) + b"\x00\x04\x00\r\n\r\n"
    return header + rng.randbytes(size - len(header))


def riff_webp(rng: random.Random, size: int) -> bytes:
    payload = b"VP8 " + struct.pack("<I", size - 20) + b"\x9d\x01\x2a" + rng.randbytes(size - 23)
    return b"RIFF" + struct.pack("<I", size - 8) + b"WEBP" + payload


def ogg_opus(rng: random.Random, pages: int) -> bytes:
    """Voice notes: OggS pages with one stream serial, page sequence numbers and Opus packets."""
    serial = rng.randbytes(4)
    out = bytearray()
    for page in range(pages):
        packets = rng.randbytes(rng.randrange(800, 4000))
        segments = [255] * (len(packets) // 255) + [len(packets) % 255]
        out += (
            b"OggS\x00" + (b"\x02" if page == 0 else b"\x00") + struct.pack("<Q", page * 960) + serial + struct.pack("<I", page)
        )
        out += rng.randbytes(4) + bytes([len(segments)]) + bytes(segments) + packets
    return bytes(out)


def gif(rng: random.Random, size: int) -> bytes:
    head = b"GIF89a" + struct.pack("<HHBBB", 320, 240, 0xF7, 0, 0) + bytes(rng.randrange(256) for _ in range(768))
    data = bytearray(head + b"\x2c\x00\x00\x00\x00\x40\x01\xf0\x00\x00\x08")
    while len(data) < size - 2:
        block = rng.randbytes(255)
        data += b"\xff" + block
    return bytes(data[: size - 2]) + b"\x00\x3b"


def raw_sensor(rng: random.Random, width: int, height: int) -> bytes:
    """A DNG-like TIFF with 12-bit sensor values in 16-bit words: noisy low bytes, small high bytes."""
    high = bytes(rng.randrange(16) for _ in range(width))  # each column's level: the upper 4 of 12 bits
    pixels = bytearray(2 * width * height)
    for row in range(height):
        start = 2 * width * row
        pixels[start : start + 2 * width : 2] = rng.randbytes(width)  # sensor noise in the low byte
        pixels[start + 1 : start + 2 * width : 2] = high
    return b"II*\x00" + struct.pack("<I", 8) + bytes(120) + bytes(pixels)
