"""Hostile app files: `tlsgate import` does work and takes memory linear in what it is given, reads nothing it was
not asked to (devices, FIFOs, entities, zip bombs), and refuses the rest with file (entry) and line:column.

Work is measured by counting, not by the clock: characters written into element text, attribute records decoded,
directory records walked, bytes allocated (tracemalloc). Each case here failed, hung or took seconds to minutes
before the hardening (the issue's numbers are in the report of i21-import).
"""

from __future__ import annotations

import contextlib
import io
import os
import plistlib
import re
import struct
import sys
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsgate.app.appimport import render
from tlsgate.app.cli import main
from tlsgate.apps import axml, ios, ziparchive
from tlsgate.apps.android import Manifest, parse_any_xml, parse_xml_text, read_apk, read_nsc
from tlsgate.apps.axml import Element, parse_axml
from tlsgate.apps.ios import read_ipa, read_plist
from tlsgate.apps.model import MAX_DOMAINS, AppConfig, AppFormatError
from tlsgate.policy import load_texts

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "apps" / "fixture.apk"
LOCATED = re.compile(r"^(?P<file>[^\n]+?):(?P<line>\d+):(?P<column>\d+): ")


# -- builders: compiled XML as aapt lays it out, and archives as zip tools do ----------------------------------------


def pool(strings: list[str]) -> bytes:
    """A UTF-16 string pool chunk."""
    body, offsets = b"", []
    for text in strings:
        offsets.append(len(body))
        body += struct.pack("<H", len(text)) + text.encode("utf-16-le") + b"\x00\x00"
    body += b"\x00" * (-len(body) % 4)
    start = 28 + 4 * len(strings)
    return (
        struct.pack("<HHIIIIII", 0x0001, 28, start + len(body), len(strings), 0, 0, start, 0)
        + b"".join(struct.pack("<I", o) for o in offsets)
        + body
    )


def raw_pool(body: bytes, offsets: list[int]) -> bytes:
    """A UTF-16 string pool chunk whose offsets are given as they are (they may overlap)."""
    start = 28 + 4 * len(offsets)
    return (
        struct.pack("<HHIIIIII", 0x0001, 28, start + len(body), len(offsets), 0, 0, start, 0)
        + b"".join(struct.pack("<I", o) for o in offsets)
        + body
    )


def attribute(name: int, value: int) -> bytes:
    """An attribute record: a string value (type 0x03) from the pool."""
    return struct.pack("<IIIHBBI", 0xFFFFFFFF, name, value, 8, 0, 0x03, value)


def start(name: int, attrs: list[bytes] = (), attr_start: int = 20, count: int | None = None) -> bytes:
    records = b"".join(attrs)
    return (
        struct.pack("<HHIII", 0x0102, 16, 36 + len(records), 1, 0xFFFFFFFF)
        + struct.pack("<IIHHHHHH", 0xFFFFFFFF, name, attr_start, 20, len(attrs) if count is None else count, 0, 0, 0)
        + records
    )


def end(name: int) -> bytes:
    return struct.pack("<HHIII", 0x0103, 16, 24, 1, 0xFFFFFFFF) + struct.pack("<II", 0xFFFFFFFF, name)


def cdata(index: int) -> bytes:
    return struct.pack("<HHIII", 0x0104, 16, 28, 1, 0xFFFFFFFF) + struct.pack("<IHBBI", index, 8, 0, 0x03, 0)


def axml_file(*chunks: bytes) -> bytes:
    body = b"".join(chunks)
    return struct.pack("<HHI", 0x0003, 8, 8 + len(body)) + body


def shared_attribute_run(elements: int, records: int) -> bytes:
    """Sibling elements whose attribute records all point forward at one run at the end (what took 80 s at 6 MiB)."""
    strings = pool(["manifest", "a"])
    root = start(0)
    children = b""
    for i in range(elements):
        distance = (elements - i) * 60 - 16 + 24 + 8  # from this child's attribute header to the run's records
        children += start(1, attr_start=distance, count=records) + end(1)
    run = struct.pack("<HHI", 0x0105, 8, 8 + 20 * records) + attribute(1, 1) * records
    return axml_file(strings, root, children, end(0), run)


def zip_bytes(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def fixture_entries(**replace: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(FIXTURE) as apk:
        return [(i.filename, replace.get(i.filename.replace("/", "_").replace(".", "_"), apk.read(i))) for i in apk.infolist()]


def patch_sizes(data: bytes, name: str, size: int) -> bytes:
    """The archive with `name`'s inflated size rewritten in both headers (a zip bomb's lie)."""
    out = bytearray(data)
    raw = name.encode()
    for signature, size_at, name_length_at, name_at in ((b"PK\x01\x02", 24, 28, 46), (b"PK\x03\x04", 22, 26, 30)):
        at = out.find(signature)
        while at >= 0:
            length = struct.unpack_from("<H", out, at + name_length_at)[0]
            if bytes(out[at + name_at : at + name_at + length]) == raw:
                struct.pack_into("<I", out, at + size_at, size)
            at = out.find(signature, at + 4)
    return bytes(out)


def manifest(target: int = 34) -> Manifest:
    root = Element("manifest", {"package": "com.example"}, 1, [Element("uses-sdk", {"targetSdkVersion": str(target)}, 2)])
    return Manifest(root, "AndroidManifest.xml")


def imported(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["import", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def text_written(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Characters written into Element.text: `text += piece` per piece writes the whole text again each time."""
    written = [0]

    def counting(self: Element, name: str, value: object) -> None:
        if name == "text" and isinstance(value, str):
            written[0] += len(value)
        object.__setattr__(self, name, value)

    monkeypatch.setattr(Element, "__setattr__", counting)
    return written


@pytest.fixture
def records_decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Attribute records decoded: _typed runs once per record read."""
    count = [0]
    original = axml._typed

    def counting(data_type: int, value: int, raw: str | None) -> str:
        count[0] += 1
        return original(data_type, value, raw)

    monkeypatch.setattr(axml, "_typed", counting)
    return count


def peak_bytes(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
    except AppFormatError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# -- linear work ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("piece", ["\n", "\n<!---->", "x<?pi?>"], ids=["newlines", "comments", "instructions"])
def test_element_text_is_written_once_not_once_per_piece(piece: str, text_written: list[int]) -> None:
    """A <domain> of 1.6M newlines took 32 s (4 MiB: 350 s): each piece expat delivered copied the text so far."""
    for n in (20_000, 80_000):
        text_written[0] = 0
        data = ("<network-security-config><domain-config><domain>" + piece * n + "a.test</domain></domain-config>"
                "</network-security-config>").encode()  # fmt: skip
        root = parse_xml_text(data, "nsc.xml")
        assert root is not None and root.children[0].children[0].text.endswith("a.test")
        assert text_written[0] <= 2 * len(data), (n, text_written[0])  # quadratic wrote ~n*n/2


def test_compiled_text_in_many_pieces_is_written_once(text_written: list[int]) -> None:
    for n in (500, 2000):
        text_written[0] = 0
        strings = ["network-security-config", *(f"piece{i:06d}" for i in range(n))]
        data = axml_file(pool(strings), start(0), *(cdata(1 + i) for i in range(n)), end(0))
        root = parse_axml(data)
        assert len(root.text) == 11 * n
        assert text_written[0] <= 2 * 11 * n, (n, text_written[0])


@pytest.mark.parametrize(("elements", "records"), [(40, 200), (160, 800)])
def test_elements_cannot_share_one_run_of_attribute_records(elements: int, records: int, records_decoded: list[int]) -> None:
    """Each element re-read the same run: 144 KB took 5.6 s, 6 MiB 80 s. Android's parser refuses such a file too."""
    data = shared_attribute_run(elements, records)
    with pytest.raises(AppFormatError, match="attribute records run past its chunk"):
        parse_axml(data)
    assert records_decoded[0] <= len(data) // 20  # each record belongs to one element: read at most once


def test_attribute_records_are_read_once_each(records_decoded: list[int]) -> None:
    """The positive control: a real-shaped manifest of n elements costs n times one element."""
    counts = []
    for n in (1000, 4000):
        records_decoded[0] = 0
        strings = pool(["manifest", "uses-permission", "name", *(f"android.permission.P{i}" for i in range(n))])
        children = b"".join(start(1, [attribute(2, 3 + i)]) + end(1) for i in range(n))
        root = parse_axml(axml_file(strings, start(0), children, end(0)))
        assert len(root.children) == n and root.children[-1].attrs["name"] == f"android.permission.P{n - 1}"
        counts.append(records_decoded[0])
    assert counts == [1000, 4000]


def test_overlapping_pool_strings_are_refused_not_decoded_into_gigabytes() -> None:
    """4,096 offsets into one 8 KiB run of 16,384-character 'strings': 64M characters from a 40 KB file, decoded eagerly
    before; now each string is decoded when named, once, and decoding may read each byte of the pool once."""
    count = 4096
    body = struct.pack("<H", 0x4000) * (count + 0x4000 + 1)
    strings = raw_pool(body, [2 * i for i in range(count)])
    children = b"".join(start(1, [attribute(1, i)]) + end(1) for i in range(2, count))
    data = axml_file(strings, start(0), children, end(0))
    peak = peak_bytes(lambda: parse_axml(data))
    with pytest.raises(AppFormatError, match="its strings overlap"):
        parse_axml(data)
    assert peak < 16 * len(data) + (8 << 20)


def test_one_long_string_named_by_every_element_is_refused() -> None:
    """Shared text is free to store but not to use: 5,000 <domain> elements naming one 30,000-character string would
    hand the NSC reader (and its warnings) 150M characters from a 700 KB file."""
    strings = pool(["network-security-config", "domain-config", "domain", "x" * 30_000])
    configs = b"".join(start(1) + start(2) + cdata(3) + end(2) + end(1) for _ in range(5000))
    with pytest.raises(AppFormatError, match="one long string named by element after element"):
        parse_axml(axml_file(strings, start(0), configs, end(0)))


# -- reading only what is a regular file, only up to the limit ------------------------------------------------------


def test_devices_fifos_directories_and_links_to_them_are_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "pipe.xml"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    linked = tmp_path / "app.apk"
    linked.symlink_to("/dev/zero")
    cases = {
        "/dev/zero": "is a character device",
        str(fifo): "is a FIFO",
        str(tmp_path): "is a directory",
        str(linked): "(a link to /dev/zero): is a character device",
    }
    for path, said in cases.items():
        code, out, err = imported(capsys, path, "--target-sdk", "34")
        assert code == 1 and out == "" and err.startswith(f"tlsgate: {path}") and said in err, err
        assert "tlsgate reads only regular files" in err


def test_a_source_tree_link_to_a_device_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The manifest names res/xml/network_security_config.xml; the tree makes it a link to /dev/zero."""
    (tmp_path / "res" / "xml").mkdir(parents=True)
    (tmp_path / "res" / "xml" / "network_security_config.xml").symlink_to("/dev/zero")
    (tmp_path / "AndroidManifest.xml").write_text(
        '<manifest xmlns:android="http://schemas.android.com/apk/res/android" package="com.x">'
        '<application android:networkSecurityConfig="@xml/network_security_config"/></manifest>'
    )
    code, _, err = imported(capsys, str(tmp_path / "AndroidManifest.xml"))
    assert code == 1 and "network_security_config.xml (a link to /dev/zero): is a character device" in err
    code, _, err = imported(capsys, str(tmp_path / "res" / "xml" / "network_security_config.xml"), "--manifest", "/dev/zero")
    assert code == 1 and "is a character device" in err


@pytest.mark.parametrize("name", ["big.xml", "Info.plist"])
def test_an_oversized_file_is_refused_before_it_is_read(name: str, tmp_path: Path) -> None:
    """A 200 MB file was read whole (to look at its first 4 KiB) before the size check: refused now at a few KiB."""
    path = tmp_path / name
    with path.open("wb") as sparse:
        sparse.write(b"<?xml version='1.0'?><plist version='1.0'>" if name == "Info.plist" else b"<network-security-config>")
        sparse.truncate(200 << 20)
    code = [0]
    peak = peak_bytes(lambda: code.__setitem__(0, main(["import", str(path), "--target-sdk", "34"])))
    assert code[0] == 1 and peak < 1 << 20, peak


# -- archives ---------------------------------------------------------------------------------------------------------


def write(tmp_path: Path, data: bytes, name: str = "app.apk") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_memory_does_not_grow_with_the_number_of_entries(tmp_path: Path) -> None:
    """zipfile kept a ZipInfo per entry (a 41 MiB APK of 400,000 entries: 525 MiB); the directory is streamed now."""
    peaks = []
    for count in (5_000, 20_000):
        entries = fixture_entries() + [(f"{i:06x}", b"") for i in range(count)]
        apk = write(tmp_path, zip_bytes(entries, zipfile.ZIP_STORED))
        peaks.append(peak_bytes(lambda apk=apk: main(["import", str(apk)])))  # type: ignore[misc]
    assert max(peaks) < 4 << 20, peaks


def test_entries_and_directory_are_bounded_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    apk = write(tmp_path, zip_bytes(fixture_entries() + [(f"asset{i}", b"") for i in range(20)]))
    monkeypatch.setattr(ziparchive, "MAX_ENTRIES", 10)
    with pytest.raises(AppFormatError, match=r"app.apk: 23 entries, more than the 10 tlsgate reads"):
        read_apk(apk)
    eocd = bytearray(zip_bytes(fixture_entries()))
    at = eocd.rfind(b"PK\x05\x06")
    struct.pack_into("<HHI", eocd, at + 8, 0xFFFF, 0xFFFF, 0xFFFFFFFF)  # "zip64", with no zip64 record anywhere
    with pytest.raises(AppFormatError, match="zip64"):
        read_apk(write(tmp_path, bytes(eocd)))


def test_a_zip_bomb_is_refused_as_it_inflates(tmp_path: Path) -> None:
    bomb = b"\x00" * (60 << 20)  # 60 MiB of zeros deflate to 60 KiB: within the size limit, not the ratio
    apk = write(tmp_path, zip_bytes([("AndroidManifest.xml", bomb)]))
    del bomb
    peak = peak_bytes(lambda: read_apk(apk))
    with pytest.raises(AppFormatError, match=r"AndroidManifest.xml: inflates more than 200:1, as only a zip bomb does"):
        read_apk(apk)
    assert peak < 8 << 20, peak  # stopped after ~1 MiB, not after 60
    lying = patch_sizes(zip_bytes(fixture_entries()), "AndroidManifest.xml", 100)  # declares 100 bytes, inflates 1140
    with pytest.raises(AppFormatError, match="inflates beyond the 100 bytes it declares"):
        read_apk(write(tmp_path, lying))
    huge = patch_sizes(zip_bytes(fixture_entries()), "AndroidManifest.xml", 0xFFFFFFF0)
    with pytest.raises(AppFormatError, match="larger than the 64 MiB tlsgate reads"):
        read_apk(write(tmp_path, huge))


def test_the_total_inflated_per_import_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ziparchive, "MAX_TOTAL", 1500)  # the manifest (1140 bytes) fits, the resource table does not
    with pytest.raises(AppFormatError, match="resources.arsc: would take the bytes inflated by this import beyond"):
        read_apk(FIXTURE)


def test_duplicate_names_and_mismatched_headers_are_refused(tmp_path: Path) -> None:
    entries = fixture_entries()
    doubled = write(tmp_path, zip_bytes([*entries, ("AndroidManifest.xml", b"\x03\x00 the other one")]))
    with pytest.raises(AppFormatError, match="2 entries are named 'AndroidManifest.xml'; Android refuses such an archive"):
        read_apk(doubled)
    data = bytearray(zip_bytes(entries))
    local = data.find(b"PK\x03\x04")
    data[local + 30 : local + 30 + 7] = b"Android"[::-1]  # the local header names another file than the directory
    with pytest.raises(AppFormatError, match="local header names another file"):
        read_apk(write(tmp_path, bytes(data)))


def test_nested_archives_encrypted_and_unknown_methods_are_not_opened(tmp_path: Path) -> None:
    inner = zip_bytes(fixture_entries())
    with pytest.raises(AppFormatError, match="AndroidManifest.xml: is itself a zip archive"):
        read_apk(write(tmp_path, zip_bytes([("AndroidManifest.xml", inner)])))
    data = bytearray(zip_bytes(fixture_entries()))
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<H", data, central + 8, 1)  # "encrypted"
    with pytest.raises(AppFormatError, match="encrypted"):
        read_apk(write(tmp_path, bytes(data)))
    struct.pack_into("<HH", data, central + 8, 0, 14)  # LZMA
    with pytest.raises(AppFormatError, match="compression method 14"):
        read_apk(write(tmp_path, bytes(data)))


def test_a_resource_table_naming_a_path_outside_the_apk_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(FIXTURE) as apk:
        table = apk.read("resources.arsc").replace(b"res/xml/network_security_config.xml", b"../../../../../../../etc/passwd.xml")
    apk_path = write(tmp_path, zip_bytes(fixture_entries(resources_arsc=table) + [("../../../../../../../etc/passwd.xml", b"x")]))
    with pytest.raises(
        AppFormatError, match=r"resources.arsc names '\.\./\.\./.*' as the network security config: not a plain path"
    ):
        read_apk(apk_path)


def test_archive_damage_never_escapes_as_anything_but_a_located_error(tmp_path: Path) -> None:
    """Every byte of the directory and end record, flipped in turn: AppFormatError naming the archive, or a read."""
    data = zip_bytes(fixture_entries())
    directory = data.find(b"PK\x01\x02")
    for at in range(directory, len(data)):
        mutated = bytearray(data)
        mutated[at] ^= 0xFF
        path = write(tmp_path, bytes(mutated))
        try:
            read_apk(path)
        except AppFormatError as exc:
            assert str(exc).startswith(f"{path}: "), exc


# -- XML: refused where written -----------------------------------------------------------------------------------------

XXE_TARGET = "/etc/hostname"

# name -> (document, line:column the error must point at, words it must contain)
HOSTILE_XML = {
    "truncated": (b"<network-security-config>\n  <domain-config>", "2:18", "no element found"),
    "undefined entity": (b"<network-security-config>\n<x>&nope;</x></network-security-config>", "2:4", "undefined entity"),
    "billion laughs": (
        b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><x>&b;</x>',
        "2:1",
        "DOCTYPE",
    ),
    "external entity": (f'<!DOCTYPE x [<!ENTITY e SYSTEM "file://{XXE_TARGET}">]><x>&e;</x>'.encode(), "1:1", "DOCTYPE"),
    "parameter entity": (b'<!DOCTYPE x [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x"> %p;]><x/>', "1:1", "DOCTYPE"),
    "external DTD": (b'<!DOCTYPE x SYSTEM "http://127.0.0.1:9/x.dtd"><x/>', "1:", "DOCTYPE"),
    "deep nesting": (b"<a>" * 100 + b"</a>" * 100, "1:193", "nested too deeply"),
    "too many elements": (b"<a>" + b"<b/>" * 100_001 + b"</a>", "1:400000", "more than 100000 elements"),
    "invalid UTF-8": (b"<network-security-config>\n<domain-config>\xff</domain-config>", "2:16", "invalid token"),
    "UTF-8 surrogate": (b"<a>\xed\xa0\x80</a>", "1:4", "invalid token"),
    "control character": (b"<a>\n\x01</a>", "2:1", "invalid token"),
    "control character reference": (b"<a>&#1;</a>", "1:4", "reference to invalid character number"),
    "surrogate reference": (b"<a>\n<b>&#xD800;</b></a>", "2:4", "reference to invalid character number"),
    "multi-byte declared encoding": (b'<?xml version="1.0" encoding="shift_jis"?><a/>', "1:1", "encoding"),
    "unknown declared encoding": (b'<?xml version="1.0" encoding="x-nope"?><a/>', "1:1", "encoding"),
    "UTF-16 claimed, UTF-8 given": (b'<?xml version="1.0" encoding="UTF-16"?>\n<a/>', "1:", "encoding"),
    "two roots": (b"<a/><b/>", "1:5", "junk after document element"),
    "unbound prefix": (b"<a><x:b/></a>", "1:4", "unbound prefix"),
}


@pytest.fixture
def no_io() -> Iterator[list[str]]:
    """Files opened and sockets connected while parsing: an XML reader must do neither, whatever the document says."""
    seen: list[str] = []
    active = [True]

    def hook(event: str, args: tuple[object, ...]) -> None:
        quiet = not active[0] or str(args[0]).endswith((".py", ".pyc", ".so"))  # a codec's module, imported on first use
        if not quiet and event in ("open", "socket.connect", "urllib.Request", "os.open"):
            seen.append(f"{event} {args[0]!r}")

    sys.addaudithook(hook)  # hooks cannot be removed: this one falls silent after the test
    yield seen
    active[0] = False


@pytest.mark.parametrize("name", HOSTILE_XML)
def test_hostile_xml_is_refused_where_written(name: str, no_io: list[str]) -> None:
    data, where, words = HOSTILE_XML[name]
    with pytest.raises(AppFormatError) as caught:
        read_nsc(data, "nsc.xml", manifest())
    message = str(caught.value)
    assert message.startswith(f"nsc.xml:{where}"), message
    assert words in message and LOCATED.match(message)
    assert no_io == []


@pytest.mark.parametrize(
    "data",
    [
        "\ufeff<network-security-config><domain-config><domain>a.test</domain></domain-config></network-security-config>".encode(),
        "<network-security-config><domain-config><domain>a.test</domain></domain-config></network-security-config>".encode(
            "utf-16"
        ),
        '<?xml version="1.0" encoding="ISO-8859-1"?><network-security-config><domain-config><domain>a.test</domain>'
        "</domain-config><!-- caf\xe9 --></network-security-config>".encode("latin-1"),
    ],
    ids=["UTF-8 BOM", "UTF-16 BOM", "Latin-1"],
)
def test_byte_order_marks_and_declared_encodings_are_read(data: bytes) -> None:
    assert read_nsc(data, "nsc.xml", manifest()).domains[0].hosts == ["a.test"]


def test_huge_attributes_and_names_stay_out_of_messages() -> None:
    big = "x" * (8 << 20)
    data = (f'<network-security-config><{big}/><domain-config><domain>a.test</domain><trust-anchors>'
            f'<certificates src="{big}"/></trust-anchors></domain-config></network-security-config>').encode()  # fmt: skip
    config = read_nsc(data, "nsc.xml", manifest())
    assert config.domains[0].hosts == ["a.test"]
    assert all(len(str(w)) < 600 for w in config.warnings), [len(str(w)) for w in config.warnings]


# -- plists ---------------------------------------------------------------------------------------------------------

PLIST_HEAD = b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'

HOSTILE_PLISTS = {
    "truncated": (PLIST_HEAD + b'<plist version="1.0">\n<dict>\n  <key>CFBundleIdentifier</key>', "5:32", "no element found"),
    "undefined entity": (PLIST_HEAD + b"<plist>\n<dict><key>&nope;</key></dict></plist>", "4:12", "undefined entity &nope;"),
    "internal subset": (
        b'<!DOCTYPE plist [<!ENTITY e SYSTEM "file:///etc/hostname">]><plist><string>&e;</string></plist>',
        "1:1",
        "internal subset",
    ),
    "deep nesting": (PLIST_HEAD + b"<plist>" + b"<array>" * 200 + b"</array>" * 200 + b"</plist>", "3:", "nested too deeply"),
    "5,000-digit integer": (
        PLIST_HEAD + b"<plist><dict><key>a</key><integer>" + b"9" * 5000 + b"</integer></dict></plist>",
        "",
        "not a property list",
    ),
    "bad date": (
        PLIST_HEAD + b"<plist><dict><key>a</key><date>2027-13-45T00:00:00Z</date></dict></plist>",
        "",
        "not a property list",
    ),
    "key outside a dict": (PLIST_HEAD + b"<plist><array><key>a</key></array></plist>", "", "not a property list"),
}


@pytest.mark.parametrize("name", HOSTILE_PLISTS)
def test_hostile_xml_plists_are_refused_where_written(name: str, no_io: list[str]) -> None:
    """A truncated Info.plist or an undefined entity escaped as an ExpatError traceback."""
    data, where, words = HOSTILE_PLISTS[name]
    with pytest.raises(AppFormatError) as caught:
        read_plist(data, "Info.plist")
    message = str(caught.value)
    assert message.startswith(f"Info.plist:{where}" if where else "Info.plist: "), message
    assert words in message
    assert no_io == []


def bplist(objects: list[bytes], top: int = 0, ref_size: int = 1, offset_size: int = 4, count: int | None = None) -> bytes:
    body, offsets = b"", []
    for item in objects:
        offsets.append(8 + len(body))
        body += item
    table = b"".join(o.to_bytes(offset_size, "big") for o in offsets)
    trailer = struct.pack(">6xBBQQQ", offset_size, ref_size, len(objects) if count is None else count, top, 8 + len(body))
    return b"bplist00" + body + table + trailer


def ascii_string(text: str) -> bytes:
    return bytes([0x50 | len(text)]) + text.encode() if len(text) < 15 else b"\x5f\x10" + bytes([len(text)]) + text.encode()


def dictionary(pairs: list[tuple[int, int]]) -> bytes:
    return bytes([0xD0 | len(pairs)]) + bytes(k for k, _ in pairs) + bytes(v for _, v in pairs)


HOSTILE_BPLISTS = {
    "trailer too short": (b"bplist00", "too short"),
    "offset table outside": (bplist([b"\xd0"])[:-8] + struct.pack(">Q", 1 << 40), "offset table lies outside"),
    "top object outside": (bplist([b"\xd0"], top=5), "top object 5 is not one of its 1 objects"),
    "object outside": (
        bplist([b"\xd0"])[: -32 - 4] + (10_000).to_bytes(4, "big") + bplist([b"\xd0"])[-32:],
        "outside the objects",
    ),
    "billions of objects": (bplist([b"\xd0"], count=1 << 40), "more than the 1048576 tlsgate reads"),
    "reference size 0": (bplist([b"\xd0"], ref_size=0), "reference size 0"),
    "array of 2**62 items": (bplist([b"\xaf\x13" + (1 << 62).to_bytes(8, "big")]), "claims 4611686018427387904 items"),
    "reference out of range": (bplist([b"\xa1\x07"]), "out of range"),
    "deep nesting": (
        bplist([b"\xa1" + (1 + i).to_bytes(2, "big") if i < 1999 else b"\xa0" for i in range(2000)], ref_size=2),
        "nested too deeply",
    ),
    "unknown object": (bplist([b"\x7f"]), "out of range"),
    "lone surrogate": (bplist([b"\xd1\x01\x02", ascii_string("CFBundleIdentifier"), b"\x61\xd8\x00"]), "does not decode"),
}


@pytest.mark.parametrize("name", HOSTILE_BPLISTS)
def test_hostile_binary_plists_are_refused(name: str) -> None:
    data, words = HOSTILE_BPLISTS[name]
    with pytest.raises(AppFormatError) as caught:
        read_plist(data, "Info.plist")
    assert str(caught.value).startswith("Info.plist: not a property list") and words in str(caught.value), caught.value


def test_a_bundle_identifier_that_is_an_exponential_graph_is_not_printed() -> None:
    """60 arrays each holding the next twice: 60 objects, 2**60 elements to str() (which read_plist used to do)."""
    depth = 60
    objects = [dictionary([(1, 2)]), ascii_string("CFBundleIdentifier")]
    objects += [bytes([0xA2, 3 + i, 3 + i]) for i in range(depth)] + [b"\xa0"]
    config = read_plist(bplist(objects), "Info.plist")
    assert config.app_id == "app" and any("a list is not a bundle identifier" in str(w) for w in config.warnings)


def test_an_entry_shared_by_every_domain_is_read_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Binary plists share objects: one exception entry of many unknown keys named by every domain is quadratic work."""
    keys = 2000
    domains = 2000
    strings = [ascii_string("NSAppTransportSecurity"), ascii_string("NSExceptionDomains")]
    key_objects = [ascii_string(f"k{i}") for i in range(keys)]
    domain_objects = [ascii_string(f"d{i}.test") for i in range(domains)]
    # 0 root {ATS: 1}; 1 ats {NSExceptionDomains: 2}; 2 {d_i: 3}; 3 the shared entry {k_i: true}; 4 true; then names
    first_key, first_domain = 7, 7 + keys
    refs = lambda items: b"".join(i.to_bytes(2, "big") for i in items)  # noqa: E731
    sized = lambda marker, n: bytes([marker | 0x0F, 0x11]) + n.to_bytes(2, "big")  # noqa: E731
    objects = [
        b"\xd1" + refs([5]) + refs([1]),
        b"\xd1" + refs([6]) + refs([2]),
        sized(0xD0, domains) + refs(range(first_domain, first_domain + domains)) + refs([3] * domains),
        sized(0xD0, keys) + refs(range(first_key, first_key + keys)) + refs([4] * keys),
        b"\x09",
        *strings,
        *key_objects,
        *domain_objects,
    ]
    monkeypatch.setattr(ios, "MAX_VISITS", 100_000)
    with pytest.raises(AppFormatError, match="more than 100000 keys and items"):
        read_plist(bplist(objects, ref_size=2), "Info.plist")


# -- the written policy is valid whatever the app names -----------------------------------------------------------------


def validates(config: AppConfig) -> str:
    import datetime as dt

    text = render(config, "report", dt.date(2026, 1, 1), "p.yaml")
    load_texts([("imported", text)])
    return text


NAMES = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "- a",
            ": b",
            "#c",
            "!tag",
            "&anchor",
            "*alias",
            "%",
            "@",
            "`",
            "'",
            '"',
            "{a: 1}",
            "[x]",
            "? q",
            "1.2.3.4",
            "0x10",
            "a.test\n.",
            "a.test.",
            " Bücher.example ",
            "xn--bcher-kva.example",
            "a" * 300,
            ".".join(["a" * 63] * 4),
            "\u202egnp.test",
            "a\u2028b.test",
            "\x85a.test",
            "null",
            "~",
            "yes",
        ]
    ),  # fmt: skip
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(domains=st.lists(NAMES, max_size=6), package=NAMES, include=st.booleans())
def test_any_declared_names_give_a_valid_policy_or_a_warning(domains: list[str], package: str, include: bool) -> None:
    from xml.sax.saxutils import escape, quoteattr

    legal = lambda s: "".join(c for c in s if c in "\t\n\r" or (" " <= c <= "\ud7ff") or ("\ue000" <= c <= "\ufffd"))  # noqa: E731
    body = "".join(
        f'<domain-config><domain includeSubdomains="{str(include).lower()}">{escape(legal(d))}</domain></domain-config>'
        for d in domains
    )
    root = parse_any_xml(f"<manifest package={quoteattr(legal(package))}/>".encode(), "AndroidManifest.xml")
    config = read_nsc(
        f"<network-security-config>{body}</network-security-config>".encode(), "nsc.xml", Manifest(root, "AndroidManifest.xml")
    )
    validates(config)


@settings(max_examples=200, deadline=None)
@given(domains=st.lists(NAMES, max_size=6), bundle=NAMES, include=st.booleans(), app=st.text(min_size=1, max_size=20))
def test_any_ats_names_give_a_valid_policy_or_a_warning(domains: list[str], bundle: str, include: bool, app: str) -> None:
    legal = lambda s: "".join(c for c in s if c < "\ud800" or c > "\udfff")  # noqa: E731  binary plists take any text
    ats = {
        "NSExceptionDomains": {
            legal(d): {"NSIncludesSubdomains": include, "NSExceptionAllowsInsecureHTTPLoads": True} for d in domains
        }
    }
    info = plistlib.dumps({"CFBundleIdentifier": legal(bundle), "NSAppTransportSecurity": ats}, fmt=plistlib.FMT_BINARY)
    name = f"Payload/{legal(app).replace('/', '_')}.app/Info.plist"
    validates(read_plist(info, name))


def test_too_many_domains_are_refused_not_written(tmp_path: Path) -> None:
    body = "".join(f"<domain-config><domain>d{i}.test</domain></domain-config>" for i in range(MAX_DOMAINS + 1))
    with pytest.raises(AppFormatError, match=f"nsc.xml:1 <domain>: more than {MAX_DOMAINS} domains"):
        read_nsc(f"<network-security-config>{body}</network-security-config>".encode(), "nsc.xml", manifest())
    info = plistlib.dumps({"NSAppTransportSecurity": {"NSExceptionDomains": {f"d{i}.test": {} for i in range(MAX_DOMAINS + 1)}}})
    with pytest.raises(AppFormatError, match=f"at most {MAX_DOMAINS}"):
        read_plist(info, "Info.plist")


def test_warnings_and_messages_printed_are_bounded_and_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A terminal escape in an IPA's app name (and a flood of warnings) reaches stderr escaped and capped."""
    ats = {"NSExceptionDomains": {f"*.w{i}.test": {} for i in range(3000)}}  # every one warned: wildcards
    info = plistlib.dumps({"CFBundleIdentifier": "com.x", "NSAppTransportSecurity": ats}, fmt=plistlib.FMT_BINARY)
    ipa = write(tmp_path, zip_bytes([("Payload/\x1b[31mEvil\u202e.app/Info.plist", info)]), "App.ipa")
    code, out, err = imported(capsys, str(ipa))
    assert code == 0 and "\x1b" not in err and "\u202e" not in err and "\\x1b[31mEvil\\u202e.app" in err
    assert err.count("warning: ") == 1001 and "2000 more warning(s) not shown" in err
    load_texts([("imported", out)])


def test_an_ip_address_with_include_subdomains_is_one_pattern() -> None:
    """`*.1.2.3.4` is no host pattern: the import wrote it and then refused its own policy as a tlsgate bug."""
    data = b'<network-security-config><domain-config><domain includeSubdomains="true">10.0.2.2</domain></domain-config></network-security-config>'
    config = read_nsc(data, "nsc.xml", manifest())
    assert config.domains[0].hosts == ["10.0.2.2"]
    validates(config)


def test_a_domain_with_a_line_break_before_its_dot_is_no_host() -> None:
    data = b"<network-security-config><domain-config><domain>a.test\n.</domain><domain>b.test</domain></domain-config></network-security-config>"
    config = read_nsc(data, "nsc.xml", manifest())
    assert config.domains[0].hosts == ["b.test"] and any("is not a host name" in w.message for w in config.warnings)
    validates(config)


def test_a_huge_target_sdk_does_not_break_printing() -> None:
    root = parse_any_xml(b'<manifest package="com.x"><uses-sdk targetSdkVersion="0x' + b"f" * 5000 + b'"/></manifest>', "m.xml")
    config = read_nsc(b"<network-security-config/>", "nsc.xml", Manifest(root, "m.xml"))
    validates(config)


# -- fuzzing: nothing but AppFormatError escapes ------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_binary_plists_fail_cleanly(tail: bytes) -> None:
    with contextlib.suppress(AppFormatError):
        read_plist(b"bplist00" + tail, "Info.plist")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_plists_fail_cleanly(data: st.DataObject) -> None:
    info = {
        "CFBundleIdentifier": "com.x",
        "NSAppTransportSecurity": {"NSExceptionDomains": {"a.test": {"NSIncludesSubdomains": True}}},
    }
    fmt = data.draw(st.sampled_from([plistlib.FMT_BINARY, plistlib.FMT_XML]))
    blob = bytearray(plistlib.dumps(info, fmt=fmt))
    for _ in range(data.draw(st.integers(1, 6))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    with contextlib.suppress(AppFormatError):
        read_plist(bytes(blob[:cut] if data.draw(st.booleans()) else blob), "Info.plist")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_text_configs_fail_cleanly(data: st.DataObject) -> None:
    text = (b'<?xml version="1.0" encoding="utf-8"?>\n<network-security-config><domain-config cleartextTrafficPermitted="false">'
            b'<domain includeSubdomains="true">api.test</domain><pin-set expiration="2027-01-01"><pin digest="SHA-256">'
            b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=</pin></pin-set></domain-config></network-security-config>")  # fmt: skip
    blob = bytearray(text)
    for _ in range(data.draw(st.integers(1, 6))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(AppFormatError):
        validates(read_nsc(bytes(blob), "nsc.xml", manifest()))


def test_ipa_with_a_hostile_plist_names_archive_and_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ipa = write(tmp_path, zip_bytes([("Payload/App.app/Info.plist", HOSTILE_PLISTS["undefined entity"][0])]), "App.ipa")
    monkeypatch.chdir(tmp_path)
    code, out, err = imported(capsys, "App.ipa")
    assert (code, out) == (1, "")
    assert err == (  # as README.md's "Limits and errors" shows it
        "tlsgate: App.ipa: Payload/App.app/Info.plist:4:12: undefined entity &nope; (only &lt; &gt; &amp; &apos; &quot; are known)\n"
    )
    with pytest.raises(AppFormatError, match=rf"^{re.escape(str(ipa))}: Payload/App.app/Info.plist:4:12: "):
        read_ipa(ipa)


def test_a_tlsgate_bug_is_one_line_and_exit_code_3(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*_: object) -> str:
        raise KeyError("what a bug looks like")

    monkeypatch.setattr("tlsgate.app.appimport.render", broken)
    code, out, err = imported(capsys, str(FIXTURE))
    assert (code, out) == (3, "")
    assert err == f"tlsgate: internal error importing {FIXTURE} (KeyError: 'what a bug looks like'); a tlsgate bug\n"


def test_an_unwritable_out_is_refused_with_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = imported(capsys, str(FIXTURE), "--out", str(tmp_path / "missing" / "policy.yaml"))
    assert code == 1 and err.endswith(
        f"tlsgate: {tmp_path}/missing/policy.yaml: cannot write the policy: No such file or directory\n"
    )


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_archives_fail_cleanly(data: st.DataObject) -> None:
    """Any byte of a real APK changed (headers, names, sizes, data): a read, or AppFormatError naming the archive."""
    blob = bytearray(FIXTURE.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    path = Path(f"/tmp/tlsgate-hostile-{os.getpid()}.apk")
    path.write_bytes(bytes(blob))
    try:
        with contextlib.suppress(AppFormatError):
            read_apk(path)
    finally:
        path.unlink()


def test_apk_with_a_hostile_text_manifest_names_archive_and_entry(tmp_path: Path) -> None:
    apk = write(tmp_path, zip_bytes([("AndroidManifest.xml", b"<manifest>\n<application>&x;</application></manifest>")]))
    with pytest.raises(AppFormatError) as caught:
        read_apk(apk)
    assert str(caught.value).startswith(f"{apk}: AndroidManifest.xml:2:14: not well-formed XML: undefined entity")
    bad = write(tmp_path, zip_bytes([("AndroidManifest.xml", shared_attribute_run(3, 50))]))
    with pytest.raises(AppFormatError, match=rf"^{re.escape(str(bad))}: AndroidManifest.xml: binary XML element at byte \d+"):
        read_apk(bad)


def test_no_socket_is_opened_by_an_import(no_io: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plist = tmp_path / "Info.plist"
    plist.write_bytes(PLIST_HEAD + b"<plist><dict><key>CFBundleIdentifier</key><string>com.x</string></dict></plist>")
    assert imported(capsys, str(plist))[0] == 0
    assert not [event for event in no_io if event.startswith("socket")]
