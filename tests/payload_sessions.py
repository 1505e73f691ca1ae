"""Realistic multi-request app sessions for payload inspection: ordinary traffic that must pass untouched, and apps
with ECB, a fixed IV or a fixed nonce that must be caught.

Every session is a list of HTTP requests one device sends, run end to end
through the add-on (`PayloadInspector` under `make_addons()`, mitmproxy test
flows, a policy that blocks every payload finding): a finding in an ordinary
session is a false positive, a blocked or reported positive session with the
right finding kind is a detection. Which positive sessions carry evidence at
all is decided by `evidence()` from what the generator sent (the exact
ciphertexts of every encrypted field, before they were encoded into JSON,
forms, headers or bodies), by the rules README.md states; the suite asserts
zero false positives and that every evidence-carrying session is caught.

`python -m tests.payload_sessions` prints the composition and the figures
README.md publishes ("Payload inspection"); tests/unit/test_payload_sessions.py
asserts them. Everything derives from `random.Random(SEED)`, so the corpus
and the figures are exact for a given seed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import struct
import time
import urllib.parse
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from tests import payload_files as files

SEED = 21
TS = 1_732_000_000  # 2024-11-19: every timestamp in the corpus counts from here


# -- one request, one session -------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True)
class Sent:
    """One encrypted value as the app sent it: which request, which field (as findings name it), its bytes."""

    request: int
    host: str
    field: str
    data: bytes
    plaintext: bytes


@dataclass
class Session:
    family: str
    client: str
    requests: list[Req]
    mode: str | None = None  # positives: "ecb" | "cbc-fixed-iv" | "ctr-fixed-nonce" | "gcm-fixed-nonce"
    sent: list[Sent] = field(default_factory=list)


class Gen:
    """Random values in the shapes apps send them."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def hex(self, n: int) -> str:
        return self.rng.randbytes(n).hex()

    def b64(self, n: int, url: bool = False, pad: bool = True) -> str:
        raw = self.rng.randbytes(n)
        text = (base64.urlsafe_b64encode(raw) if url else base64.b64encode(raw)).decode()
        return text if pad else text.rstrip("=")

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def ts(self, spread: int = 86400) -> int:
        return TS + self.rng.randrange(spread)

    def word(self) -> str:
        return self.rng.choice(WORDS)

    def name(self) -> str:
        return self.rng.choice(NAMES)

    def pick(self, items: tuple[Any, ...] | list[Any]) -> Any:
        return self.rng.choice(items)

    def jwt(self, claims: dict[str, Any], alg: str = "RS256") -> str:
        head = b64u(json.dumps({"alg": alg, "kid": self.hex(20), "typ": "JWT"}).encode())
        body = b64u(json.dumps(claims, separators=(",", ":")).encode())
        return f"{head}.{body}.{b64u(self.rng.randbytes(256 if alg.startswith('RS') else 32))}"

    def phone(self) -> str:
        return f"+1{self.rng.randrange(200, 999)}{self.rng.randrange(10**7):07d}"

    def email(self) -> str:
        return f"{self.name()}.{self.name()}{self.rng.randrange(100)}@{self.pick(('gmail.com', 'example.com', 'outlook.com'))}"


WORDS = (
    "home",
    "feed",
    "profile",
    "settings",
    "search",
    "cart",
    "checkout",
    "photo",
    "share",
    "like",
    "comment",
    "notifications",
    "inbox",
    "map",
    "player",
    "library",
    "wallet",
    "orders",
    "help",
    "onboarding",
)
NAMES = (
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "walter",
    "amara",
    "chen",
    "diego",
    "fatima",
    "hiro",
    "ines",
)
UAS = (
    "okhttp/4.12.0",
    "Dart/3.5 (dart:io)",
    "MyApp/5.2.1 (iPhone; iOS 17.5; Scale/3.00) CFNetwork/1494.0.7 Darwin/23.4.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36",
)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def q(pairs: list[tuple[str, str]]) -> str:
    return urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)


def get(url: str, *headers: tuple[str, str]) -> Req:
    return Req("GET", url, headers)


def post_json(url: str, doc: Any, *headers: tuple[str, str], method: str = "POST") -> Req:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return Req(method, url, (("content-type", "application/json; charset=utf-8"), *headers), body)


def post_form(url: str, pairs: list[tuple[str, str]], *headers: tuple[str, str]) -> Req:
    return Req("POST", url, (("content-type", "application/x-www-form-urlencoded"), *headers), q(pairs).encode())


def put(url: str, body: bytes, ctype: str, *headers: tuple[str, str], method: str = "PUT") -> Req:
    return Req(method, url, (("content-type", ctype), *headers), body)


class App:
    """One app on one device: its user agent, device ID, bearer token and request IDs, as every request carries them."""

    def __init__(self, g: Gen, host: str) -> None:
        self.g = g
        self.host = host
        self.ua = g.pick(UAS)
        self.device = g.uuid()
        self.user = g.uuid()
        self.token = g.jwt(
            {"iss": f"https://{host}", "sub": self.user, "aud": "app", "iat": TS, "exp": TS + 3600, "scope": "read write"}
        )

    def headers(self, auth: bool = True) -> tuple[tuple[str, str], ...]:
        out = [
            ("user-agent", self.ua),
            ("x-device-id", self.device),
            ("x-request-id", self.g.uuid()),
            ("traceparent", f"00-{self.g.hex(16)}-{self.g.hex(8)}-01"),
            ("accept", "application/json"),
        ]
        if auth:
            out.append(("authorization", f"Bearer {self.token}"))
        return tuple(out)

    def url(self, path: str, query: list[tuple[str, str]] | None = None) -> str:
        return f"https://{self.host}{path}" + (f"?{q(query)}" if query else "")


def presigned_s3(g: Gen, bucket: str, key: str) -> str:
    credential = (
        f"AKIA{''.join(g.pick('ABCDEFGHIJKLMNOPQRSTUVWXYZ234567') for _ in range(16))}/20241120/us-east-1/s3/aws4_request"
    )
    query = [
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", credential),
        ("X-Amz-Date", "20241120T101500Z"),
        ("X-Amz-Expires", "900"),
        ("X-Amz-SignedHeaders", "content-type;host"),
        ("X-Amz-Signature", g.hex(32)),
    ]
    if g.rng.random() < 0.4:
        query.insert(4, ("X-Amz-Security-Token", g.b64(g.rng.randrange(300, 700))))
    return f"https://{bucket}.s3.us-east-1.amazonaws.com/{key}?{q(query)}"


def signed_gcs(g: Gen, bucket: str, key: str) -> str:
    query = [
        ("X-Goog-Algorithm", "GOOG4-RSA-SHA256"),
        ("X-Goog-Credential", "uploader@proj-4242.iam.gserviceaccount.com/20241120/auto/storage/goog4_request"),
        ("X-Goog-Date", "20241120T101500Z"),
        ("X-Goog-Expires", "900"),
        ("X-Goog-SignedHeaders", "content-type;host"),
        ("X-Goog-Signature", g.hex(256)),
    ]
    return f"https://storage.googleapis.com/{bucket}/{key}?{q(query)}"


# -- ordinary sessions ---------------------------------------------------------------------------------


def photo_uploads_same_size(g: Gen) -> list[Req]:
    """A camera roll backup: several photos from one camera, padded to one size, PUT to presigned S3 URLs."""
    app = App(g, "api.photobackup.example")
    camera = g.pick(files.CAMERAS)
    size = g.rng.randrange(90_000, 400_000)
    out: list[Req] = []
    for index in range(g.rng.randrange(3, 7)):
        photo = files.jpeg(g.rng, size, camera, flat=g.pick((0.02, 0.1, 0.3)))
        digest = hashlib.sha256(photo).hexdigest()
        key = f"u/{app.user}/IMG_{1000 + index}.JPG"
        out.append(
            post_json(
                app.url("/v1/uploads/presign"),
                {"filename": key.rsplit("/", 1)[1], "size": size, "sha256": digest, "content_type": "image/jpeg"},
                *app.headers(),
            )
        )
        out.append(
            put(
                presigned_s3(g, "photobackup-prod", key),
                photo,
                "image/jpeg",
                ("user-agent", app.ua),
                ("x-amz-checksum-sha256", base64.b64encode(bytes.fromhex(digest)).decode()),
            )
        )
        out.append(
            post_json(
                app.url("/v1/uploads/complete"),
                {"key": key, "sha256": digest, "etag": f'"{hashlib.md5(photo).hexdigest()}"'},
                *app.headers(),
            )
        )
    return out


def photo_uploads_mixed(g: Gen) -> list[Req]:
    """Photos, HEIC images and screen recordings of different sizes to one bucket host."""
    app = App(g, "api.gallery.example")
    out: list[Req] = []
    for index in range(g.rng.randrange(3, 8)):
        kind = g.pick(("jpeg", "heic", "mp4", "webp", "gif"))
        size = g.rng.randrange(20_000, 600_000)
        if kind == "jpeg":
            data, ctype = files.jpeg(g.rng, size, g.pick(files.CAMERAS), flat=0.1), "image/jpeg"
        elif kind == "heic":
            data, ctype = files.iso_bmff(g.rng, size, b"heic"), "image/heic"
        elif kind == "mp4":
            data, ctype = files.iso_bmff(g.rng, size, b"isom"), "video/mp4"
        elif kind == "webp":
            data, ctype = files.riff_webp(g.rng, size), "image/webp"
        else:
            data, ctype = files.gif(g.rng, size), "image/gif"
        out.append(put(presigned_s3(g, "gallery-media", f"m/{app.user}/{index}.{kind}"), data, ctype, ("user-agent", app.ua)))
        out.append(
            post_json(
                app.url("/v2/media"),
                {"id": g.uuid(), "kind": kind, "bytes": len(data), "md5": base64.b64encode(hashlib.md5(data).digest()).decode()},
                *app.headers(),
            )
        )
    return out


def screenshots_to_gcs(g: Gen) -> list[Req]:
    """Bug-report screenshots (PNG, one screen size) and screen images with photos in them, to GCS signed URLs."""
    app = App(g, "feedback.example.io")
    out = [post_json(app.url("/api/reports"), {"title": "Crash on " + g.word(), "build": "5.2.1 (4021)"}, *app.headers())]
    width, height = g.pick(((360, 780), (393, 852), (412, 915)))
    for index in range(g.rng.randrange(1, 4)):
        png = files.screenshot_png(g.rng, width, height, photo_rows=g.pick((0, 0, 60, 160)))
        out.append(
            put(signed_gcs(g, "feedback-shots", f"r/{g.uuid()}/shot-{index}.png"), png, "image/png", ("user-agent", app.ua))
        )
    return out


def resumable_video(g: Gen) -> list[Req]:
    """A video sent in 256 KiB chunks (Google's resumable protocol): chunk bodies carry no file header."""
    app = App(g, "upload.videoapp.example")
    out: list[Req] = []
    for _ in range(g.rng.randrange(1, 3)):
        video = files.iso_bmff(g.rng, g.rng.randrange(400_000, 900_000), g.pick((b"isom", b"qt  ", b"mp42")))
        session = b64u(g.rng.randbytes(48))
        out.append(
            post_json(
                app.url("/upload/v1/videos", [("uploadType", "resumable")]),
                {"title": g.word(), "size": len(video)},
                *app.headers(),
            )
        )
        chunk = 256 * 1024
        for start in range(0, len(video), chunk):
            part = video[start : start + chunk]
            out.append(
                put(
                    app.url("/upload/v1/videos", [("uploadType", "resumable"), ("upload_id", session)]),
                    part,
                    "application/octet-stream",
                    ("content-range", f"bytes {start}-{start + len(part) - 1}/{len(video)}"),
                    *app.headers(),
                )
            )
    return out


FONT = random.Random(7).randbytes(9000)  # one embedded font, shared by every receipt the app renders


def files_to_one_host(g: Gen) -> list[Req]:
    """Raw file uploads to one storage API: bundles, receipts, backups, vaults, voice notes, compressed logs,
    several of one size."""
    app = App(g, "files.cloudsync.example")
    out: list[Req] = []
    duplicate = g.rng.randbytes(g.rng.randrange(2000, 20000))
    kinds = [
        g.pick(("zip", "pdf", "sqlite", "kdbx", "gzip", "xz", "zstd", "bzip2", "ogg", "raw", "kdbx", "pdf"))
        for _ in range(g.rng.randrange(3, 8))
    ]
    same = g.rng.random() < 0.5
    size = g.rng.randrange(70_000, 300_000)
    for kind in kinds:
        if kind == "zip":
            data = files.zip_archive(g.rng, g.rng.randrange(1, 6), duplicate)
        elif kind == "pdf":
            data = files.pdf(g.rng, g.rng.randrange(1, 8), FONT)
        elif kind == "sqlite":
            data = files.sqlite_backup(g.rng, g.rng.randrange(20, 200))
        elif kind == "kdbx":
            data = files.kdbx(g.rng, size if same else g.rng.randrange(5_000, 200_000))
        elif kind == "ogg":
            data = files.ogg_opus(g.rng, g.rng.randrange(5, 60))
        elif kind == "raw":
            data = files.raw_sensor(g.rng, 256, g.rng.randrange(40, 200))
        else:
            data = files.compressed(g.rng, kind, files.log_text(g.rng, g.rng.randrange(100, 1500)))
        out.append(
            put(
                app.url(f"/v1/files/{g.uuid()}"),
                data,
                "application/octet-stream",
                ("x-file-sha256", hashlib.sha256(data).hexdigest()),
                *app.headers(),
            )
        )
    return out


def avatar_multipart(g: Gen) -> list[Req]:
    """Profile photos posted as multipart/form-data with a JSON part."""
    app = App(g, "api.social.example")
    out: list[Req] = []
    for _ in range(g.rng.randrange(1, 4)):
        boundary = f"dart-http-boundary-{g.hex(16)}"
        photo = files.jpeg(g.rng, g.rng.randrange(30_000, 200_000), g.pick(files.CAMERAS), flat=0.1)
        body = (
            f'--{boundary}\r\ncontent-disposition: form-data; name="meta"\r\n\r\n'
            f'{{"crop":[0,0,{g.rng.randrange(500, 4000)},{g.rng.randrange(500, 4000)}]}}\r\n'
            f'--{boundary}\r\ncontent-type: image/jpeg\r\ncontent-disposition: form-data; name="avatar"; filename="a.jpg"\r\n\r\n'
        ).encode()
        body += photo + f"\r\n--{boundary}--\r\n".encode()
        out.append(
            Req(
                "POST",
                app.url("/v1/me/avatar"),
                (("content-type", f"multipart/form-data; boundary={boundary}"), *app.headers()),
                body,
            )
        )
    return out


def sync_check_commit(g: Gen) -> list[Req]:
    """File sync: each file's digests in a check request and again in the commit (hex, base64, MD5, CRC32C)."""
    app = App(g, "sync.notesapp.example")
    out: list[Req] = []
    style = g.pick(("hex", "base64", "both"))
    for _ in range(g.rng.randrange(2, 6)):
        batch = []
        for _ in range(g.rng.randrange(1, 5)):
            content = g.rng.randbytes(g.rng.randrange(100, 5000))
            sha = hashlib.sha256(content).digest()
            entry: dict[str, Any] = {
                "path": f"/Notes/{g.word()}-{g.rng.randrange(100)}.md",
                "size": len(content),
                "mtime": g.ts(),
            }
            if style in ("hex", "both"):
                entry["sha256"] = sha.hex()
            if style in ("base64", "both"):
                entry["contentHash"] = base64.b64encode(sha).decode()
            entry["md5"] = base64.b64encode(hashlib.md5(content).digest()).decode()
            entry["crc32c"] = base64.b64encode(struct.pack(">I", zlib.crc32(content))).decode()
            batch.append(entry)
        out.append(
            post_json(app.url("/v3/sync/check"), {"files": [{k: e[k] for k in e if k != "md5"} for e in batch]}, *app.headers())
        )
        for entry in batch:
            body = g.rng.randbytes(entry["size"])
            out.append(
                put(
                    app.url("/v3/blobs/" + (entry.get("sha256") or g.hex(32))),
                    body,
                    "application/octet-stream",
                    ("content-md5", entry["md5"]),
                    *app.headers(),
                )
            )
        out.append(post_json(app.url("/v3/sync/commit"), {"files": batch, "rev": g.hex(6), "parent": g.hex(6)}, *app.headers()))
    return out


def dropbox_style(g: Gen) -> list[Req]:
    """A Dropbox-like API: JSON arguments in a header, content hashes, revisions, opaque list cursors."""
    app = App(g, "content.cloudbox.example")
    out: list[Req] = []
    cursor_prefix = bytes([0x00, 0x01]) + g.rng.randbytes(6)
    for _ in range(g.rng.randrange(3, 8)):
        cursor = b64u(cursor_prefix + g.rng.randbytes(g.rng.randrange(60, 160)))
        out.append(post_json(app.url("/2/files/list_folder/continue"), {"cursor": cursor}, *app.headers()))
        content = g.rng.randbytes(g.rng.randrange(2000, 40000))
        arg = json.dumps(
            {
                "path": f"/Camera Uploads/{g.word()}.txt",
                "mode": {".tag": "update", "update": g.hex(7)[:13]},
                "content_hash": hashlib.sha256(content).hexdigest(),
            }
        )
        out.append(
            put(
                app.url("/2/files/upload"),
                content,
                "application/octet-stream",
                ("dropbox-api-arg", arg),
                *app.headers(),
                method="POST",
            )
        )
    return out


def graphql_persisted(g: Gen) -> list[Req]:
    """Apollo/Relay clients: persisted-query hashes (sha256Hash) in POST bodies and GET URLs, Relay cursors."""
    app = App(g, "gql.shopapp.example")
    operations = {
        name: hashlib.sha256(f"query {name} {{ ... }}".encode()).hexdigest()
        for name in ("FeedQuery", "ProductQuery", "CartQuery", "ViewerQuery", "SearchQuery")
    }
    out: list[Req] = []
    for step in range(g.rng.randrange(4, 14)):
        name = g.pick(list(operations))
        after = base64.b64encode(f"arrayconnection:{step * 20 - 1}".encode()).decode() if step else None
        variables: dict[str, Any] = {"first": 20, "after": after, "id": b64u(f"Product:{g.rng.randrange(10**6)}".encode())}
        extensions = {"persistedQuery": {"version": 1, "sha256Hash": operations[name]}}
        if g.rng.random() < 0.5:
            out.append(
                get(
                    app.url(
                        "/graphql",
                        [("operationName", name), ("variables", json.dumps(variables)), ("extensions", json.dumps(extensions))],
                    ),
                    *app.headers(),
                )
            )
        else:
            out.append(
                post_json(
                    app.url("/graphql"),
                    {"operationName": name, "variables": variables, "extensions": extensions},
                    *app.headers(),
                    ("apollographql-client-name", "android"),
                    ("x-apollo-operation-name", name),
                )
            )
    return out


def etags(g: Gen) -> list[Req]:
    """Conditional requests: If-None-Match and If-Match with strong, weak, hex and base64 entity tags."""
    app = App(g, "api.newsreader.example")
    tags = {
        path: g.pick((f'W/"{g.hex(16)}"', f'"{g.hex(20)}"', f'"{g.b64(20)}"', f'"{g.hex(16)}-gzip"'))
        for path in ("/v1/feed", "/v1/me", "/v1/config", "/v1/topics")
    }
    out: list[Req] = []
    for _ in range(g.rng.randrange(5, 15)):
        path = g.pick(list(tags))
        out.append(get(app.url(path), *app.headers(), ("if-none-match", tags[path])))
        if g.rng.random() < 0.3:
            tags[path] = f'"{g.hex(20)}"'
        if g.rng.random() < 0.2:
            out.append(post_json(app.url("/v1/me"), {"display_name": g.name(), "bio": "hi"}, *app.headers(), method="PUT"))
            out[-1] = Req(out[-1].method, out[-1].url, (*out[-1].headers, ("if-match", tags["/v1/me"])), out[-1].body)
    return out


def payments(g: Gen) -> list[Req]:
    """Checkout: idempotency keys (retried with the same key), payment method IDs, Apple Pay and Google Pay tokens."""
    app = App(g, "api.payments-shop.example")
    certs = g.rng.randbytes(1800)  # Apple's signing chain: the same in every Apple Pay token
    out: list[Req] = []
    for _ in range(g.rng.randrange(1, 4)):
        key = g.uuid()
        body: dict[str, Any] = {"amount": g.rng.randrange(100, 50000), "currency": "eur", "cart_id": g.uuid()}
        wallet = g.pick(("card", "apple", "google"))
        if wallet == "card":
            body["payment_method"] = "pm_" + b64u(g.rng.randbytes(18))[:24]
        elif wallet == "apple":
            signature = b"\x30\x80\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02\xa0\x80" + certs + g.rng.randbytes(400)
            ephemeral = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004") + g.rng.randbytes(64)
            body["apple_pay"] = {
                "version": "EC_v1",
                "data": g.b64(g.rng.randrange(200, 600)),
                "signature": base64.b64encode(signature).decode(),
                "header": {
                    "ephemeralPublicKey": base64.b64encode(ephemeral).decode(),
                    "publicKeyHash": base64.b64encode(hashlib.sha256(b"merchant").digest()).decode(),
                    "transactionId": g.hex(32),
                },
            }
        else:
            signed = json.dumps(
                {
                    "encryptedMessage": g.b64(g.rng.randrange(300, 700)),
                    "ephemeralPublicKey": base64.b64encode(b"\x04" + g.rng.randbytes(64)).decode(),
                    "tag": g.b64(32),
                }
            )
            body["google_pay"] = {
                "protocolVersion": "ECv2",
                "signature": base64.b64encode(
                    b"\x30\x45\x02\x21\x00" + g.rng.randbytes(32) + b"\x02\x20" + g.rng.randbytes(32)
                ).decode(),
                "signedMessage": signed,
            }
        for _ in range(g.rng.randrange(1, 3)):  # a retry carries the same idempotency key
            out.append(post_json(app.url("/v1/payment_intents"), body, *app.headers(), ("idempotency-key", key)))
        out.append(
            post_json(
                app.url("/v1/payment_intents/confirm"),
                {"client_secret": f"pi_{g.hex(12)}_secret_{b64u(g.rng.randbytes(18))}"},
                *app.headers(),
                ("idempotency-key", g.uuid()),
            )
        )
    return out


def object_id(counter: list[int], machine: bytes, when: int) -> str:
    counter[0] += 1
    return (struct.pack(">I", when) + machine + counter[0].to_bytes(3, "big")).hex()


def pagination(g: Gen) -> list[Req]:
    """List endpoints paged with the cursors real APIs hand out."""
    app = App(g, "api.listings.example")
    style = g.pick(
        ("stripe", "slack", "graph", "twitter", "google", "objectid", "dynamo", "shopify", "aws", "encrypted", "offset")
    )
    machine, counter = g.rng.randbytes(5), [g.rng.randrange(2**23)]
    key = g.rng.randbytes(32)
    out: list[Req] = []
    when = g.ts()
    for page in range(g.rng.randrange(3, 12)):
        when += g.rng.randrange(1, 30)
        if style == "stripe":
            query = [("limit", "20"), ("starting_after", "ch_" + b64u(g.rng.randbytes(18))[:24])]
        elif style == "slack":
            query = [("limit", "200"), ("cursor", base64.b64encode(f"user:U0{g.rng.randrange(10**8):08d}".encode()).decode())]
        elif style == "graph":
            query = [("limit", "25"), ("after", base64.b64encode(str(g.rng.randrange(10**15, 10**16)).encode()).decode())]
        elif style == "twitter":
            query = [
                ("max_results", "100"),
                ("pagination_token", "".join(g.pick("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(48))),
            ]
        elif style == "google":
            token = b"\x0a" + bytes([20]) + g.hex(10).encode() + b"\x12\x00\x18" + bytes([page])
            query = [("pageSize", "50"), ("pageToken", b64u(token))]
        elif style == "objectid":
            query = [("limit", "30"), ("after", object_id(counter, machine, when))]
        elif style == "dynamo":
            query = [("startKey", json.dumps({"pk": {"S": f"USER#{app.user}"}, "sk": {"S": f"ORDER#{when}"}}))]
        elif style == "shopify":
            query = [
                ("limit", "50"),
                ("page_info", b64u(json.dumps({"last_id": g.rng.randrange(10**12), "direction": "next"}).encode())),
            ]
        elif style == "aws":
            query = [("MaxResults", "100"), ("NextToken", g.b64(g.rng.randrange(200, 500)))]
        elif style == "encrypted":
            nonce = g.rng.randbytes(12)
            state = json.dumps({"offset": page * 20, "sort": "recent"}).encode()
            query = [("cursor", b64u(nonce + AESGCM(key).encrypt(nonce, state, None)))]
        else:
            query = [("offset", str(page * 20)), ("limit", "20")]
        out.append(get(app.url("/v1/items", query), *app.headers()))
        if style == "objectid" and g.rng.random() < 0.5:
            out.append(
                post_json(
                    app.url("/v1/items/seen"),
                    {"ids": [object_id(counter, machine, when) for _ in range(g.rng.randrange(1, 6))]},
                    *app.headers(),
                )
            )
    return out


def push_registration(g: Gen) -> list[Req]:
    """Push tokens re-registered on every launch (APNs hex, FCM), Firebase Installations with its heartbeat header."""
    app = App(g, "api.messenger.example")
    apns = g.hex(32)
    fcm = f"{b64u(g.rng.randbytes(16))[:22]}:APA91b{b64u(g.rng.randbytes(105))}"
    fid = b64u(b"\x70" + g.rng.randbytes(16))[:22]
    out: list[Req] = []
    for _ in range(g.rng.randrange(2, 6)):
        heartbeat = files.compressed(
            g.rng,
            "gzip",
            json.dumps(
                {
                    "heartbeats": [
                        {"agent": "fire-core/20.4.2 fire-android/34", "dates": [f"2024-11-{g.rng.randrange(1, 29):02d}"]}
                    ],
                    "version": "2",
                }
            ).encode(),
        )
        out.append(
            post_json(
                "https://firebaseinstallations.googleapis.com/v1/projects/messenger-4242/installations",
                {
                    "fid": fid,
                    "appId": "1:123456789012:android:0a1b2c3d4e5f6789",
                    "authVersion": "FIS_v2",
                    "sdkVersion": "a:17.2.0",
                },
                ("x-firebase-client", b64u(heartbeat)),
                ("x-android-package", "com.example.messenger"),
            )
        )
        out.append(
            post_json(
                app.url("/v1/devices"),
                {
                    "platform": g.pick(("ios", "android")),
                    "apns_token": apns,
                    "fcm_token": fcm,
                    "voip_token": apns[::-1],
                    "app_version": "8.1.0",
                },
                *app.headers(),
            )
        )
    return out


def session_cookies(g: Gen) -> list[Req]:
    """Web-view and API requests carrying the cookies frameworks and load balancers set."""
    app = App(g, "m.marketplace.example")
    session = b64u(g.rng.randbytes(32))
    jsession = g.hex(16).upper()
    flask = f"{b64u(json.dumps({'user_id': g.rng.randrange(10**6), 'cart': []}).encode())}.{b64u(g.rng.randbytes(4))}.{b64u(g.rng.randbytes(20))}"
    key_id = g.rng.randbytes(16)
    out: list[Req] = []
    for _ in range(g.rng.randrange(4, 14)):
        dataprotection = b64u(
            bytes.fromhex("09f0c9f0")
            + key_id
            + g.rng.randbytes(16)
            + g.rng.randbytes(16)
            + g.rng.randbytes(g.rng.randrange(3, 12) * 16)
            + g.rng.randbytes(32)
        )
        rails = f"{g.b64(g.rng.randrange(40, 120))}--{g.b64(12)}--{g.b64(16)}"
        cookie = "; ".join(
            [
                f"session={session}",
                f"JSESSIONID={jsession}",
                f"AWSALB={g.b64(g.rng.randrange(100, 140))}",
                f"AWSALBCORS={g.b64(g.rng.randrange(100, 140))}",
                f"flask_session={flask}",
                f".AspNetCore.Cookies={dataprotection}",
                f"_rails_app_session={urllib.parse.quote(rails)}",
                f"_ga=GA1.1.{g.rng.randrange(10**9)}.{TS}",
                f"__cf_bm={b64u(g.rng.randbytes(40))}-{TS}-1.0.1.1-{b64u(g.rng.randbytes(60))}",
            ]
        )
        out.append(get(app.url(f"/listing/{g.rng.randrange(10**7)}"), ("cookie", cookie), ("user-agent", app.ua)))
    return out


def analytics(g: Gen) -> list[Req]:
    """Analytics SDKs: Segment batches, Amplitude and Mixpanel forms (Mixpanel base64-encodes its JSON),
    Firebase's gzip protobuf, AppsFlyer with per-request HMACs, Sentry envelopes."""
    App(g, "api.fitness.example")
    anonymous = g.uuid()
    out: list[Req] = []
    for _ in range(g.rng.randrange(4, 12)):
        sdk = g.pick(("segment", "amplitude", "mixpanel", "firebase", "appsflyer", "sentry"))
        events = [
            {"event": g.word(), "ts": g.ts(), "props": {"screen": g.word(), "value": g.rng.randrange(1000)}}
            for _ in range(g.rng.randrange(1, 20))
        ]
        if sdk == "segment":
            out.append(
                post_json(
                    "https://api.segment.io/v1/batch",
                    {
                        "batch": [{**e, "messageId": g.uuid(), "anonymousId": anonymous} for e in events],
                        "sentAt": TS,
                        "writeKey": g.b64(24),
                    },
                )
            )
        elif sdk == "amplitude":
            out.append(
                post_form(
                    "https://api2.amplitude.com/2/httpapi",
                    [("e", json.dumps(events)), ("client", g.hex(16)), ("upload_time", str(TS))],
                )
            )
        elif sdk == "mixpanel":
            data = base64.b64encode(
                json.dumps(
                    [{"event": e["event"], "properties": {"distinct_id": anonymous, "time": e["ts"]}} for e in events]
                ).encode()
            ).decode()
            out.append(post_form("https://api-js.mixpanel.com/track/", [("data", data), ("ip", "1")]))
        elif sdk == "firebase":
            proto = b"".join(
                b"\x0a" + bytes([len(e["event"])]) + e["event"].encode() + b"\x10" + bytes([e["props"]["value"] % 128])
                for e in events
            )
            out.append(
                Req(
                    "POST",
                    "https://app-measurement.com/a",
                    (("content-type", "application/x-www-form-urlencoded"), ("content-encoding", "gzip")),
                    files.compressed(g.rng, "gzip", proto),
                )
            )
        elif sdk == "appsflyer":
            body = {
                "af_timestamp": str(TS),
                "uid": f"{TS}-{g.rng.randrange(10**18)}",
                "event": g.word(),
                "af_v": hmac.new(b"k", g.rng.randbytes(8), "sha1").hexdigest(),
                "af_v2": hmac.new(b"k", g.rng.randbytes(8), "sha256").hexdigest(),
            }
            out.append(post_json("https://launches.appsflyer.com/api/v6.12/androidevent", body))
        else:
            envelope = (
                json.dumps({"event_id": g.hex(16), "sent_at": "2024-11-20T10:00:00Z"})
                + "\n"
                + json.dumps({"type": "event"})
                + "\n"
                + json.dumps({"message": "boom", "level": "error"})
            ).encode()
            out.append(
                Req(
                    "POST",
                    "https://o4504.ingest.sentry.io/api/4505/envelope/",
                    (
                        ("content-type", "application/x-sentry-envelope"),
                        (
                            "x-sentry-auth",
                            f"Sentry sentry_version=7, sentry_client=sentry.java.android/7.3.0, sentry_key={g.hex(16)}",
                        ),
                    ),
                    envelope,
                )
            )
    return out


def chat(g: Gen) -> list[Req]:
    """A messenger: client message IDs, end-to-end encrypted bodies done right (a fresh nonce per message, a ratchet
    key that stays for a chain, a message counter), encrypted attachments, receipts, a WebSocket upgrade."""
    app = App(g, "chat.messenger.example")
    key = g.rng.randbytes(32)
    ratchet = b"\x05" + g.rng.randbytes(32)
    out = [
        get(
            app.url("/v1/websocket"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-key", g.b64(16)),
            ("sec-websocket-version", "13"),
            *app.headers(),
        )
    ]
    for counter in range(g.rng.randrange(3, 15)):
        text = " ".join(g.word() for _ in range(g.rng.randrange(1, 30))).encode()
        nonce = g.rng.randbytes(12)
        sealed = nonce + ChaCha20Poly1305(key).encrypt(nonce, text, None)
        signal = (
            b"\x33"
            + b"\x0a\x21"
            + ratchet
            + b"\x10"
            + bytes([counter])
            + b"\x18\x00\x22"
            + bytes([len(text) // 16 * 16 + 16])
            + g.rng.randbytes(len(text) // 16 * 16 + 16)
            + g.rng.randbytes(8)
        )
        out.append(
            post_json(
                app.url("/v1/messages"),
                {
                    "client_msg_id": g.uuid(),
                    "to": g.uuid(),
                    "ts": g.ts(),
                    "ciphertext": base64.b64encode(sealed).decode(),
                    "signal": base64.b64encode(signal).decode(),
                },
                *app.headers(),
            )
        )
        if g.rng.random() < 0.25:
            attachment = g.rng.randbytes(16) + g.rng.randbytes(g.rng.randrange(100, 4000) * 16) + g.rng.randbytes(32)
            out.append(put(app.url(f"/v1/attachments/{g.uuid()}"), attachment, "application/octet-stream", *app.headers()))
        if g.rng.random() < 0.3:
            out.append(
                post_json(
                    app.url("/v1/receipts"),
                    {"ids": [g.uuid() for _ in range(g.rng.randrange(1, 5))], "type": "read"},
                    *app.headers(),
                )
            )
    return out


SCRIPTS = {
    "ru": "привет как дела сегодня хорошо спасибо увидимся завтра вечером погода отличная работа дом друзья",
    "ja": "こんにちは 元気 ですか 今日 天気 いい ですね 明日 会いましょう 駅 で 待って います",
    "zh": "你好 今天 天气 很好 我们 明天 见面 吃饭 了吗 谢谢 朋友 工作",
    "ar": "مرحبا كيف حالك اليوم الطقس جميل شكرا نلتقي غدا في المساء",
    "hi": "नमस्ते आप कैसे हैं आज मौसम अच्छा है धन्यवाद कल मिलते हैं",
    "el": "γεια σου τι κάνεις σήμερα ο καιρός είναι ωραίος ευχαριστώ αύριο",
    "emoji": "😀 🎉 👍 ❤️ 🔥 🙏 😂 🚀 ✨ 🥳",
}


def base64_text(g: Gen) -> list[Req]:
    """Apps that base64 what users type (so any script survives every layer): chat lines, names, notes."""
    app = App(g, "api.chatworld.example")
    words = SCRIPTS[g.pick(list(SCRIPTS))].split()
    out: list[Req] = []
    for _ in range(g.rng.randrange(4, 14)):
        text = " ".join(g.pick(words) for _ in range(g.rng.randrange(1, 8))).encode()
        encoded = g.pick((base64.b64encode(text).decode(), b64u(text)))
        out.append(post_json(app.url("/v1/messages"), {"room": g.uuid(), "text_b64": encoded, "ts": g.ts()}, *app.headers()))
    return out


def ecommerce(g: Gen) -> list[Req]:
    """Browsing and a cart: product IDs, filters, a search, a cart with item IDs."""
    app = App(g, "api.shop.example")
    cart = g.uuid()
    out: list[Req] = []
    for _ in range(g.rng.randrange(5, 16)):
        action = g.pick(("browse", "search", "product", "cart"))
        if action == "browse":
            out.append(
                get(
                    app.url(
                        "/v2/products",
                        [("category", g.word()), ("page", str(g.rng.randrange(10))), ("sort", "price_asc"), ("currency", "EUR")],
                    ),
                    *app.headers(),
                )
            )
        elif action == "search":
            out.append(get(app.url("/v2/search", [("q", f"{g.word()} {g.word()}"), ("query_id", g.uuid())]), *app.headers()))
        elif action == "product":
            out.append(get(app.url(f"/v2/products/{g.hex(12)}", [("variant", g.hex(12))]), *app.headers()))
        else:
            out.append(
                post_json(
                    app.url(f"/v2/carts/{cart}/items"),
                    {"sku": f"SKU-{g.rng.randrange(10**6)}", "qty": g.rng.randrange(1, 4), "product_id": g.hex(12)},
                    *app.headers(),
                )
            )
    return out


def _pkce(g: Gen) -> tuple[str, str]:
    verifier = b64u(g.rng.randbytes(32))
    return verifier, b64u(hashlib.sha256(verifier.encode()).digest())


def _id_token(g: Gen, issuer: str, audience: str) -> str:
    return g.jwt(
        {
            "iss": issuer,
            "aud": audience,
            "sub": str(g.rng.randrange(10**20)),
            "email": g.email(),
            "iat": TS,
            "exp": TS + 3600,
            "nonce": b64u(g.rng.randbytes(16)),
        }
    )


def oauth(g: Gen) -> list[Req]:
    """Sign-in through an identity provider: the authorize URL, the provider's callback to the app's backend with
    everything the provider adds to it, the code exchange, then API calls."""
    provider = g.pick(("google", "apple", "microsoft", "facebook", "github", "okta", "auth0", "keycloak", "cognito"))
    app = App(g, "app.oauthdemo.example")
    verifier, challenge = _pkce(g)
    state, nonce = b64u(g.rng.randbytes(24)), b64u(g.rng.randbytes(16))
    client_id = g.hex(12)
    redirect = f"https://app.oauthdemo.example/auth/{provider}/callback"
    code = b64u(g.rng.randbytes(40))
    out: list[Req] = []
    pkce = [("code_challenge", challenge), ("code_challenge_method", "S256")]
    if provider == "google":
        client_id = f"{g.rng.randrange(10**12)}-{g.hex(16)}.apps.googleusercontent.com"
        out.append(
            get(
                "https://accounts.google.com/o/oauth2/v2/auth?"
                + q(
                    [
                        ("client_id", client_id),
                        ("redirect_uri", redirect),
                        ("response_type", "code"),
                        ("scope", "openid email profile"),
                        ("state", state),
                        ("nonce", nonce),
                        *pkce,
                        ("access_type", "offline"),
                        ("prompt", "consent select_account"),
                        ("login_hint", g.email()),
                        ("hd", "example.com"),
                        ("include_granted_scopes", "true"),
                    ]
                )
            )
        )
        out.append(
            get(
                redirect
                + "?"
                + q(
                    [
                        ("state", state),
                        ("iss", "https://accounts.google.com"),
                        ("code", f"4/0A{code}"),
                        (
                            "scope",
                            "email profile openid https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile",
                        ),
                        ("authuser", str(g.rng.randrange(3))),
                        ("hd", "example.com"),
                        ("prompt", "consent"),
                    ]
                )
            )
        )
        token_url = "https://oauth2.googleapis.com/token"
    elif provider == "apple":
        client_id = "com.oauthdemo.signin"
        out.append(
            get(
                "https://appleid.apple.com/auth/authorize?"
                + q(
                    [
                        ("client_id", client_id),
                        ("redirect_uri", redirect),
                        ("response_type", "code id_token"),
                        ("scope", "name email"),
                        ("response_mode", "form_post"),
                        ("state", state),
                        ("nonce", nonce),
                    ]
                )
            )
        )
        out.append(
            post_form(
                redirect,
                [
                    ("state", state),
                    ("code", f"c{g.hex(16)}.0.{g.hex(2)}.{b64u(g.rng.randbytes(16))}"),
                    ("id_token", _id_token(g, "https://appleid.apple.com", client_id)),
                    ("user", json.dumps({"name": {"firstName": g.name(), "lastName": g.name()}, "email": g.email()})),
                ],
            )
        )
        token_url = "https://appleid.apple.com/auth/token"
    elif provider == "microsoft":
        client_id = g.uuid()
        out.append(
            get(
                "https://login.microsoftonline.com/common/oauth2/v2.0/authorize?"
                + q(
                    [
                        ("client_id", client_id),
                        ("redirect_uri", redirect),
                        ("response_type", "code"),
                        ("response_mode", "query"),
                        ("scope", "openid profile offline_access User.Read"),
                        ("state", state),
                        ("nonce", nonce),
                        *pkce,
                        ("client_info", "1"),
                        ("x-client-SKU", "MSAL.Android"),
                        ("x-client-Ver", "5.4.0"),
                        ("x-client-OS", "34"),
                        ("x-client-DM", "Pixel 7"),
                        ("prompt", "select_account"),
                        ("login_hint", g.email()),
                        ("domain_hint", "organizations"),
                        ("haschrome", "1"),
                        ("claims", json.dumps({"access_token": {"xms_cc": {"values": ["CP1"]}}})),
                    ]
                )
            )
        )
        client_info = b64u(json.dumps({"uid": g.uuid(), "utid": g.uuid()}).encode())
        out.append(
            get(
                redirect
                + "?"
                + q(
                    [
                        ("code", f"0.A{b64u(g.rng.randbytes(300))}"),
                        ("client_info", client_info),
                        ("state", state),
                        ("session_state", g.uuid()),
                    ]
                )
            )
        )
        token_url = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    elif provider == "facebook":
        client_id = str(g.rng.randrange(10**15))
        out.append(
            get(
                "https://m.facebook.com/v18.0/dialog/oauth?"
                + q(
                    [
                        ("client_id", client_id),
                        ("redirect_uri", redirect),
                        (
                            "state",
                            json.dumps(
                                {"0_auth_logger_id": g.uuid(), "3_method": "custom_tab", "7_challenge": b64u(g.rng.randbytes(15))}
                            ),
                        ),
                        ("scope", "public_profile,email"),
                        ("response_type", "code"),
                        ("default_audience", "friends"),
                        ("auth_type", "rerequest"),
                        ("sdk", "android-17.0.0"),
                        ("return_scopes", "true"),
                        ("e2e", json.dumps({"init": TS * 1000})),
                        ("login_behavior", "NATIVE_WITH_FALLBACK"),
                        ("cct_prefetching", "0"),
                        ("ies", "0"),
                        ("cbt", str(TS * 1000)),
                        ("nonce", nonce),
                        *pkce,
                    ]
                )
            )
        )
        out.append(
            get(
                redirect
                + "?"
                + q(
                    [
                        ("code", b64u(g.rng.randbytes(200))),
                        ("state", state),
                        ("granted_scopes", "email,public_profile"),
                        ("denied_scopes", ""),
                    ]
                )
            )
        )
        token_url = "https://graph.facebook.com/v18.0/oauth/access_token"
    elif provider == "github":
        out.append(
            get(
                "https://github.com/login/oauth/authorize?"
                + q(
                    [
                        ("client_id", f"Iv1.{g.hex(8)}"),
                        ("redirect_uri", redirect),
                        ("scope", "read:user user:email"),
                        ("state", state),
                        ("allow_signup", "true"),
                        ("login", g.name()),
                        ("prompt", "select_account"),
                        *pkce,
                    ]
                )
            )
        )
        out.append(get(redirect + "?" + q([("code", g.hex(10)), ("state", state)])))
        token_url = "https://github.com/login/oauth/access_token"
    elif provider in ("okta", "auth0"):
        base = (
            f"https://dev-{g.rng.randrange(10**7)}.okta.com/oauth2/default/v1/authorize"
            if provider == "okta"
            else f"https://{g.word()}-{g.hex(2)}.eu.auth0.com/authorize"
        )
        extra = (
            [("idp", "0oa" + g.hex(8)), ("acr_values", "urn:okta:loa:1fa:any"), ("login_hint", g.email())]
            if provider == "okta"
            else [
                ("audience", "https://api.oauthdemo.example"),
                ("connection", "google-oauth2"),
                ("screen_hint", "signup"),
                ("ui_locales", "en"),
                (
                    "auth0Client",
                    b64u(json.dumps({"name": "Auth0.Android", "version": "2.10.2", "env": {"android": "34"}}).encode()),
                ),
            ]
        )
        out.append(
            get(
                base
                + "?"
                + q(
                    [
                        ("client_id", client_id),
                        ("response_type", "code"),
                        ("response_mode", "query"),
                        ("scope", "openid profile email offline_access"),
                        ("redirect_uri", redirect),
                        ("state", state),
                        ("nonce", nonce),
                        *pkce,
                        ("prompt", "login"),
                        *extra,
                    ]
                )
            )
        )
        out.append(get(redirect + "?" + q([("code", b64u(g.rng.randbytes(32))), ("state", state)])))
        token_url = base.replace("authorize", "token")
    elif provider == "keycloak":
        out.append(
            get(
                "https://sso.oauthdemo.example/realms/app/protocol/openid-connect/auth?"
                + q(
                    [
                        ("client_id", "mobile"),
                        ("redirect_uri", redirect),
                        ("response_type", "code"),
                        ("scope", "openid"),
                        ("state", state),
                        ("nonce", nonce),
                        *pkce,
                        ("kc_idp_hint", "google"),
                        ("ui_locales", "de"),
                    ]
                )
            )
        )
        out.append(
            get(
                redirect
                + "?"
                + q(
                    [
                        ("state", state),
                        ("session_state", g.uuid()),
                        ("iss", "https://sso.oauthdemo.example/realms/app"),
                        ("code", f"{g.uuid()}.{g.uuid()}.{g.uuid()}"),
                    ]
                )
            )
        )
        token_url = "https://sso.oauthdemo.example/realms/app/protocol/openid-connect/token"
    else:
        out.append(
            get(
                f"https://auth-{g.hex(3)}.auth.eu-west-1.amazoncognito.com/oauth2/authorize?"
                + q(
                    [
                        ("client_id", g.hex(13)),
                        ("response_type", "code"),
                        ("scope", "openid email"),
                        ("redirect_uri", redirect),
                        ("state", state),
                        ("identity_provider", "SignInWithApple"),
                        *pkce,
                    ]
                )
            )
        )
        out.append(get(redirect + "?" + q([("code", g.uuid()), ("state", state)])))
        token_url = "https://auth.eu-west-1.amazoncognito.com/oauth2/token"
    out.append(
        post_form(
            token_url,
            [
                ("grant_type", "authorization_code"),
                ("code", code),
                ("code_verifier", verifier),
                ("client_id", client_id),
                ("redirect_uri", redirect),
            ],
        )
    )
    refresh = b64u(g.rng.randbytes(48))
    for _ in range(g.rng.randrange(2, 8)):
        out.append(get(app.url("/api/me"), *app.headers()))
    out.append(post_form(token_url, [("grant_type", "refresh_token"), ("refresh_token", refresh), ("client_id", client_id)]))
    return out


def signed_api(g: Gen) -> list[Req]:
    """An API where every request carries a bearer JWT and an HMAC of its body, plus refresh-token rotation."""
    app = App(g, "api.bank-demo.example")
    secret = g.rng.randbytes(32)
    out: list[Req] = []
    for _ in range(g.rng.randrange(4, 14)):
        body = json.dumps({"account": g.hex(8), "from": g.ts(), "to": g.ts()}).encode()
        signature = base64.b64encode(hmac.new(secret, body, "sha256").digest()).decode()
        out.append(
            Req(
                "POST",
                app.url("/v1/transactions/search"),
                (
                    ("content-type", "application/json"),
                    *app.headers(),
                    ("x-signature", signature),
                    ("x-timestamp", str(g.ts())),
                    ("x-nonce", g.hex(16)),
                ),
                body,
            )
        )
        if g.rng.random() < 0.2:
            out.append(
                post_json(app.url("/v1/auth/refresh"), {"refresh_token": b64u(g.rng.randbytes(64)), "device_id": app.device})
            )
    return out


def firebase(g: Gen) -> list[Req]:
    """Firebase SDK traffic: Remote Config fetch with an installation token, Firestore REST with an ID token,
    Crashlytics settings, FCM registration."""
    app = App(g, "firestore.googleapis.com")
    fid = b64u(b"\x70" + g.rng.randbytes(16))[:22]
    installation_token = g.jwt({"appId": "1:1234:android:ab", "exp": TS + 604800, "fid": fid, "projectNumber": 1234}, alg="ES256")
    out: list[Req] = []
    for _ in range(g.rng.randrange(3, 10)):
        what = g.pick(("config", "firestore", "crashlytics", "fcm"))
        if what == "config":
            out.append(
                post_json(
                    "https://firebaseremoteconfig.googleapis.com/v1/projects/1234/namespaces/firebase:fetch",
                    {
                        "appInstanceId": fid,
                        "appInstanceIdToken": installation_token,
                        "appId": "1:1234:android:ab",
                        "countryCode": "DE",
                        "languageCode": "de-DE",
                        "platformVersion": "34",
                        "timeZone": "Europe/Berlin",
                        "appVersion": "5.2.1",
                        "sdkVersion": "21.6.0",
                        "analyticsUserProperties": {},
                    },
                    ("x-goog-firebase-installations-auth", installation_token),
                )
            )
        elif what == "firestore":
            out.append(
                get(
                    f"https://firestore.googleapis.com/v1/projects/demo-4242/databases/(default)/documents/users/{b64u(g.rng.randbytes(21))}",
                    ("authorization", f"Bearer {app.token}"),
                )
            )
        elif what == "crashlytics":
            out.append(
                get(
                    "https://firebase-settings.crashlytics.com/spi/v2/platforms/android/gmp/1:1234:android:ab/settings?"
                    + q([("build_version", "4021"), ("display_version", "5.2.1"), ("instance", g.hex(20)), ("source", "1")]),
                    ("x-crashlytics-installation-id", g.hex(16)),
                    ("x-crashlytics-device-model", "Pixel 7"),
                )
            )
        else:
            out.append(
                post_form(
                    "https://android.clients.google.com/c2dm/register3",
                    [
                        ("X-subtype", "1234"),
                        ("sender", "1234"),
                        ("X-app_ver", "4021"),
                        ("X-appid", fid),
                        ("X-Goog-Firebase-Installations-Auth", installation_token),
                        ("app", "com.example.app"),
                        ("device", str(g.rng.randrange(10**18))),
                    ],
                    ("authorization", f"AidLogin {g.rng.randrange(10**18)}:{g.rng.randrange(10**18)}"),
                )
            )
    return out


def signed_urls(g: Gen) -> list[Req]:
    """Media fetched through signed URLs of the major CDNs and image services."""
    out: list[Req] = []
    for _ in range(g.rng.randrange(4, 12)):
        kind = g.pick(("cloudfront", "azure", "imgix", "cloudinary", "akamai", "s3v2", "gcsv2", "s3v4-get"))
        if kind == "cloudfront":
            policy = base64.b64encode(
                json.dumps(
                    {
                        "Statement": [
                            {
                                "Resource": "https://d111.cloudfront.net/*",
                                "Condition": {"DateLessThan": {"AWS:EpochTime": TS + 3600}},
                            }
                        ]
                    }
                ).encode()
            ).decode()
            url = (
                "https://d111111abcdef8.cloudfront.net/v/"
                + g.hex(8)
                + ".m3u8?"
                + q(
                    [
                        ("Policy", policy.replace("+", "-").replace("=", "_").replace("/", "~")),
                        ("Signature", g.b64(128).replace("+", "-").replace("=", "_").replace("/", "~")),
                        ("Key-Pair-Id", "K2JCJMDEHXQW5F"),
                    ]
                )
            )
        elif kind == "azure":
            url = f"https://media{g.hex(2)}.blob.core.windows.net/photos/{g.uuid()}.jpg?" + q(
                [
                    ("sv", "2022-11-02"),
                    ("ss", "b"),
                    ("srt", "o"),
                    ("sp", "r"),
                    ("se", "2024-11-21T00:00:00Z"),
                    ("spr", "https"),
                    ("sig", g.b64(32)),
                ]
            )
        elif kind == "imgix":
            url = f"https://demo.imgix.net/products/{g.hex(6)}.jpg?" + q(
                [("w", "640"), ("auto", "format,compress"), ("s", g.hex(16))]
            )
        elif kind == "cloudinary":
            url = f"https://res.cloudinary.com/demo/image/upload/s--{b64u(g.rng.randbytes(6))}--/w_400/v{TS}/{g.word()}.jpg"
        elif kind == "akamai":
            url = f"https://media.akamaized.net/hls/{g.hex(8)}/master.m3u8?" + q(
                [("hdnts", f"st={TS}~exp={TS + 300}~acl=/hls/*~hmac={g.hex(32)}")]
            )
        elif kind == "s3v2":
            url = f"https://legacy-media.s3.amazonaws.com/{g.uuid()}.mp3?" + q(
                [
                    ("AWSAccessKeyId", "AKIA" + "".join(g.pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))),
                    ("Expires", str(TS + 3600)),
                    ("Signature", g.b64(20)),
                ]
            )
        elif kind == "gcsv2":
            url = f"https://storage.googleapis.com/legacy-bucket/{g.uuid()}.png?" + q(
                [
                    ("GoogleAccessId", "signer@proj-4242.iam.gserviceaccount.com"),
                    ("Expires", str(TS + 3600)),
                    ("Signature", g.b64(256)),
                ]
            )
        else:
            url = presigned_s3(g, "media-prod", f"{g.uuid()}.jpg")
        out.append(get(url, ("user-agent", g.pick(UAS))))
    return out


def fresh_nonce_crypto(g: Gen) -> list[Req]:
    """App-level encryption done right, in the layouts libraries produce: AES-GCM and ChaCha20-Poly1305 with a
    fresh nonce, CBC with a random IV and an HMAC, key-ID prefixes (16 bytes, Tink's 5), Fernet, ASP.NET's data
    protection, sealed boxes; the same plaintext re-encrypted; in JSON, forms, headers and raw bodies."""
    app = App(g, "api.securenotes.example")
    key = g.rng.randbytes(32)
    kid = g.rng.randbytes(16)
    layout = g.pick(("gcm", "chacha", "cbc-hmac", "kid16-gcm", "tink", "fernet", "aspnet", "sealedbox", "gcm-wrapped"))
    place = g.pick(("json", "form", "header", "raw", "text"))
    login = json.dumps({"username": g.name(), "password": g.hex(6)}).encode()
    out: list[Req] = []
    for _ in range(g.rng.randrange(3, 12)):
        plaintext = (
            login
            if g.rng.random() < 0.3
            else json.dumps({"note": " ".join(g.word() for _ in range(g.rng.randrange(1, 40))), "updated": g.ts()}).encode()
        )
        nonce = g.rng.randbytes(12)
        if layout == "gcm":
            data = nonce + AESGCM(key).encrypt(nonce, plaintext, None)
        elif layout == "chacha":
            data = nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, None)
        elif layout == "cbc-hmac":
            iv = g.rng.randbytes(16)
            enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
            body = iv + enc.update(pkcs7(plaintext)) + enc.finalize()
            data = body + hmac.new(key, body, "sha256").digest()
        elif layout == "kid16-gcm":
            data = kid + nonce + AESGCM(key).encrypt(nonce, plaintext, None)
        elif layout == "tink":
            data = b"\x01" + kid[:4] + nonce + AESGCM(key).encrypt(nonce, plaintext, None)
        elif layout == "fernet":
            iv = g.rng.randbytes(16)
            enc = Cipher(algorithms.AES(key[:16]), modes.CBC(iv)).encryptor()
            body = b"\x80" + struct.pack(">Q", g.ts()) + iv + enc.update(pkcs7(plaintext)) + enc.finalize()
            data = body + hmac.new(key[16:], body, "sha256").digest()
        elif layout == "aspnet":
            iv = g.rng.randbytes(16)
            enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
            body = bytes.fromhex("09f0c9f0") + kid + g.rng.randbytes(16) + iv + enc.update(pkcs7(plaintext)) + enc.finalize()
            data = body + hmac.new(key, body, "sha256").digest()
        elif layout == "sealedbox":
            data = g.rng.randbytes(32) + ChaCha20Poly1305(key).encrypt(nonce, plaintext, None)
        else:
            data = AESGCM(key).encrypt(nonce, plaintext, None) + nonce  # some apps append the nonce
        text = g.pick((base64.b64encode(data).decode(), b64u(data), data.hex(), base64.encodebytes(data).decode()))
        if place == "json":
            out.append(post_json(app.url("/v1/notes"), {"v": 2, "data": text, "client_ts": g.ts()}, *app.headers()))
        elif place == "form":
            out.append(post_form(app.url("/v1/notes"), [("payload", text), ("v", "2")], *app.headers()))
        elif place == "header":
            out.append(get(app.url("/v1/notes/sync"), *app.headers(), ("x-encrypted-context", text.replace("\n", ""))))
        elif place == "raw":
            out.append(put(app.url("/v1/notes/blob"), data, "application/octet-stream", *app.headers(), method="POST"))
        else:
            out.append(put(app.url("/v1/notes/blob"), text.encode(), "text/plain; charset=utf-8", *app.headers(), method="POST"))
    return out


def counter_nonces(g: Gen) -> list[Req]:
    """Encryption done right with the nonce a message counter, sent in front and starting at zero: GCM with the
    message number as its 12-byte nonce, CTR with it as the nonce half of the IV."""
    app = App(g, "api.telemetry-secure.example")
    key = g.rng.randbytes(16)
    gcm = g.rng.random() < 0.5
    out: list[Req] = []
    for counter in range(g.rng.randrange(3, 15)):
        reading = json.dumps({"hr": g.rng.randrange(50, 180), "spo2": g.rng.randrange(90, 100), "ts": g.ts()}).encode()
        if gcm:
            nonce = counter.to_bytes(12, "big")
            data = nonce + AESGCM(key).encrypt(nonce, reading, None)
        else:
            iv = counter.to_bytes(8, "big") + bytes(8)
            enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
            data = iv + enc.update(reading) + enc.finalize()
        out.append(
            post_json(app.url("/v1/readings"), {"seq": counter, "sealed": base64.b64encode(data).decode()}, *app.headers())
        )
    return out


def files_in_json(g: Gen) -> list[Req]:
    """Files as base64 inside JSON: avatars, receipt scans, voice notes, stickers, documents."""
    app = App(g, "api.helpdesk.example")
    out: list[Req] = []
    for _ in range(g.rng.randrange(2, 7)):
        kind = g.pick(("jpeg", "png", "m4a", "ogg", "pdf", "webp"))
        if kind == "jpeg":
            data = files.jpeg(g.rng, g.rng.randrange(4000, 40000), g.pick(files.CAMERAS), flat=0.1)
        elif kind == "png":
            data = files.screenshot_png(g.rng, 120, 200)
        elif kind == "m4a":
            data = files.iso_bmff(g.rng, g.rng.randrange(5000, 40000), b"M4A ")
        elif kind == "ogg":
            data = files.ogg_opus(g.rng, g.rng.randrange(2, 10))
        elif kind == "pdf":
            data = files.pdf(g.rng, 1, FONT)
        else:
            data = files.riff_webp(g.rng, g.rng.randrange(3000, 30000))
        out.append(
            post_json(
                app.url("/v1/tickets/attachments"),
                {"ticket": g.rng.randrange(10**6), "name": f"file.{kind}", "content": base64.b64encode(data).decode()},
                *app.headers(),
            )
        )
    return out


def large_json(g: Gen) -> list[Req]:
    """Sync payloads past the 64 KiB limit (cut, so not parsed as JSON): records with IDs, hashes, base64 thumbnails."""
    app = App(g, "api.notesync.example")
    out: list[Req] = []
    for _ in range(g.rng.randrange(2, 5)):
        records = [
            {
                "id": g.uuid(),
                "rev": g.hex(6),
                "sha256": g.hex(32),
                "title": " ".join(g.word() for _ in range(4)),
                "thumb": base64.b64encode(files.jpeg(g.rng, g.rng.randrange(800, 3000), None)).decode(),
                "updated": g.ts(),
            }
            for _ in range(g.rng.randrange(30, 90))
        ]
        out.append(post_json(app.url("/v1/sync/push"), {"device": app.device, "records": records}, *app.headers()))
    return out


def compressed_bodies(g: Gen) -> list[Req]:
    """Bodies sent compressed (Content-Encoding gzip, deflate, br, zstd), compressed data in base64 fields, and
    SAML redirect requests (raw DEFLATE, base64, in the URL)."""
    app = App(g, "api.logsync.example")
    out: list[Req] = []
    for _ in range(g.rng.randrange(3, 10)):
        doc = {
            "events": [
                {"event": g.word(), "ts": g.ts(), "screen": g.word(), "ms": g.rng.randrange(900)}
                for _ in range(g.rng.randrange(2, 60))
            ],
            "device": app.device,
        }
        raw = json.dumps(doc).encode()
        kind = g.pick(("gzip", "deflate", "br", "zstd", "field-gzip", "field-zlib", "saml"))
        if kind in ("gzip", "deflate", "br", "zstd"):
            method = {"gzip": "gzip", "deflate": "zlib", "br": "brotli", "zstd": "zstd"}[kind]
            out.append(
                Req(
                    "POST",
                    app.url("/v1/events"),
                    (("content-type", "application/json"), ("content-encoding", kind), *app.headers()),
                    files.compressed(g.rng, method, raw),
                )
            )
        elif kind.startswith("field"):
            packed = files.compressed(g.rng, kind.split("-")[1], raw)
            out.append(
                post_json(
                    app.url("/v1/events/packed"), {"encoding": kind, "data": base64.b64encode(packed).decode()}, *app.headers()
                )
            )
        else:
            request = (
                f'<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="_{g.hex(20)}" Version="2.0" '
                f'IssueInstant="2024-11-20T10:{g.rng.randrange(60):02d}:{g.rng.randrange(60):02d}Z" '
                f'AssertionConsumerServiceURL="https://app.logsync.example/saml/acs"><saml:Issuer>https://app.logsync.example'
                f"</saml:Issuer></samlp:AuthnRequest>"
            ).encode()
            out.append(
                get(
                    "https://idp.corp.example/saml2/sso?"
                    + q(
                        [
                            ("SAMLRequest", base64.b64encode(files.compressed(g.rng, "deflate-raw", request)).decode()),
                            ("RelayState", g.uuid()),
                        ]
                    )
                )
            )
    return out


def protobuf_bodies(g: Gen) -> list[Req]:
    """Protobuf request bodies: telemetry (strings, varints), and sync manifests that list 32-byte content hashes
    (the same hashes, shifted, in the next manifest), plus gRPC-Web frames."""
    app = App(g, "api.photosync.example")
    hashes = [g.rng.randbytes(32) for _ in range(60)]
    start = 0
    out: list[Req] = []
    for _ in range(g.rng.randrange(3, 10)):
        kind = g.pick(("telemetry", "manifest", "manifest", "grpcweb"))
        if kind == "telemetry":
            body = b"".join(
                b"\x0a"
                + bytes([len(w)])
                + w.encode()
                + b"\x10"
                + bytes([g.rng.randrange(128)])
                + b"\x1a\x10"
                + g.rng.randbytes(16)
                for w in (g.word() for _ in range(g.rng.randrange(3, 30)))
            )
            out.append(put(app.url("/v1/telemetry"), body, "application/x-protobuf", *app.headers(), method="POST"))
        elif kind == "manifest":
            start += g.pick((1, 2, 8, 8, 16))
            window = hashes[start % 30 : start % 30 + g.rng.randrange(5, 30)]
            body = b"\x0a\x10" + g.rng.randbytes(16) + b"".join(b"\x12\x20" + h for h in window)
            out.append(put(app.url("/v1/manifest"), body, "application/x-protobuf", *app.headers(), method="POST"))
        else:
            message = b"\x0a\x24" + g.uuid().encode() + b"\x12\x20" + g.pick(hashes)
            out.append(
                put(
                    app.url("/photos.v1.Library/Get"),
                    b"\x00" + struct.pack(">I", len(message)) + message,
                    "application/grpc-web+proto",
                    ("x-grpc-web", "1"),
                    *app.headers(),
                    method="POST",
                )
            )
    return out


def binary_values(g: Gen) -> list[Req]:
    """Binary values in base64: float32 sensor batches, BLE frames, client-generated ObjectIds, UUIDv7 and ULID-like
    IDs, timestamps."""
    app = App(g, "api.wearable.example")
    machine, counter = g.rng.randbytes(5), [g.rng.randrange(2**23)]
    out: list[Req] = []
    base = [g.rng.uniform(-2, 2) for _ in range(3)]
    when = g.ts()
    for _ in range(g.rng.randrange(4, 15)):
        when += g.rng.randrange(1, 20)
        samples = b"".join(struct.pack("<fff", *(b + g.rng.gauss(0, 0.05) for b in base)) for _ in range(g.rng.randrange(8, 64)))
        frame = bytes([0x02, 0x01, g.rng.randrange(256)]) + struct.pack(
            "<HHHB", g.rng.randrange(3000, 4000), g.rng.randrange(60, 190), g.rng.randrange(900, 1100), g.rng.randrange(101)
        )
        millis = when * 1000 + g.rng.randrange(1000)
        uuid7 = (
            millis.to_bytes(6, "big")
            + bytes([0x70 | g.rng.randrange(16), g.rng.randrange(256), 0x80 | g.rng.randrange(64)])
            + g.rng.randbytes(7)
        )
        out.append(
            post_json(
                app.url("/v1/samples"),
                {
                    "id": object_id(counter, machine, when),
                    "trace": str(uuid.UUID(bytes=uuid7)),
                    "ts_ms": millis,
                    "accel": base64.b64encode(samples).decode(),
                    "ble": base64.b64encode(frame).decode(),
                    "stamp": base64.b64encode(struct.pack(">QI", millis, counter[0])).decode(),
                    "seq_hex": struct.pack(">Q", millis).hex(),
                },
                *app.headers(),
            )
        )
    return out


def challenge_tokens(g: Gen) -> list[Req]:
    """Anti-abuse tokens: reCAPTCHA and hCaptcha responses, Play Integrity (JWE), DeviceCheck, CSRF tokens."""
    app = App(g, "api.ticketing.example")
    out: list[Req] = []
    for _ in range(g.rng.randrange(2, 8)):
        kind = g.pick(("recaptcha", "hcaptcha", "integrity", "devicecheck", "csrf"))
        if kind == "recaptcha":
            out.append(
                post_form(
                    app.url("/v1/signup"),
                    [
                        ("g-recaptcha-response", "03AFcWeA" + b64u(g.rng.randbytes(g.rng.randrange(400, 900)))),
                        ("email", g.email()),
                    ],
                )
            )
        elif kind == "hcaptcha":
            out.append(
                post_json(
                    app.url("/v1/login"),
                    {"h-captcha-response": f"P1_{b64u(g.rng.randbytes(600))}.{b64u(g.rng.randbytes(32))}", "user": g.name()},
                )
            )
        elif kind == "integrity":
            jwe = ".".join(
                b64u(part)
                for part in (
                    b'{"alg":"A256KW","enc":"A256GCM"}',
                    g.rng.randbytes(40),
                    g.rng.randbytes(12),
                    g.rng.randbytes(g.rng.randrange(800, 1600)),
                    g.rng.randbytes(16),
                )
            )
            out.append(
                post_json(app.url("/v1/attest"), {"integrity_token": jwe, "nonce": b64u(g.rng.randbytes(24))}, *app.headers())
            )
        elif kind == "devicecheck":
            out.append(
                post_json(app.url("/v1/devicecheck"), {"device_token": g.b64(g.rng.randrange(1500, 2600))}, *app.headers())
            )
        else:
            out.append(
                post_form(app.url("/account/settings"), [("csrf_token", g.b64(32)), ("display_name", g.name())], *app.headers())
            )
    return out


def passkeys(g: Gen) -> list[Req]:
    """Passkey sign-ins (WebAuthn assertions): the credential ID and user handle repeat, authenticator data is the
    relying party's hash, flags and a counter, client data is base64url JSON, the signature DER."""
    app = App(g, "id.passkeydemo.example")
    credential, handle = b64u(g.rng.randbytes(g.pick((16, 32, 64)))), b64u(g.rng.randbytes(32))
    rp_hash = hashlib.sha256(b"passkeydemo.example").digest()
    counter = g.rng.randrange(0, 2) * g.rng.randrange(1, 500)  # Apple passkeys count nothing: always 0
    out: list[Req] = []
    for _ in range(g.rng.randrange(2, 8)):
        challenge = b64u(g.rng.randbytes(32))
        out.append(post_json(app.url("/webauthn/options"), {"username": g.name()}, *app.headers(auth=False)))
        counter += 1 if counter else 0
        client = b64u(
            json.dumps({"type": "webauthn.get", "challenge": challenge, "origin": "https://passkeydemo.example"}).encode()
        )
        r, s_ = g.rng.randbytes(32), g.rng.randbytes(32)
        signature = b"\x30\x44\x02\x20" + r + b"\x02\x20" + s_
        out.append(
            post_json(
                app.url("/webauthn/assert"),
                {
                    "id": credential,
                    "rawId": credential,
                    "type": "public-key",
                    "response": {
                        "clientDataJSON": client,
                        "authenticatorData": b64u(rp_hash + b"\x1d" + struct.pack(">I", counter)),
                        "signature": b64u(signature),
                        "userHandle": handle,
                    },
                },
                *app.headers(auth=False),
            )
        )
    return out


def per_device_envelopes(g: Gen) -> list[Req]:
    """A device farm: two phones of one app, whose ciphertexts start with an app key ID and the phone's own UUID
    (two constant blocks) before a fresh nonce."""
    key = g.rng.randbytes(32)
    app_kid = g.rng.randbytes(16)
    out: list[Req] = []
    devices = [g.rng.randbytes(16), g.rng.randbytes(16)]
    for _ in range(g.rng.randrange(4, 12)):
        device = g.pick(devices)
        nonce = g.rng.randbytes(12)
        sealed = (
            app_kid + device + nonce + AESGCM(key).encrypt(nonce, json.dumps({"steps": g.rng.randrange(10**4)}).encode(), None)
        )
        out.append(
            post_json(
                "https://api.steps.example/v1/sync",
                {"blob": base64.b64encode(sealed).decode()},
                ("x-farm-device", device.hex()[:8]),
            )
        )
    return out


def encrypted_backup(g: Gen) -> list[Req]:
    """An encrypted database backed up after each edit: a 16-byte salt, then pages encrypted with a fresh IV each
    (unchanged pages keep their bytes), as SQLCipher and Realm store them."""
    app = App(g, "backup.diary.example")
    salt = g.rng.randbytes(16)
    pages = [g.rng.randbytes(4096) for _ in range(g.rng.randrange(20, 60))]
    out: list[Req] = []
    for _ in range(g.rng.randrange(2, 6)):
        for index in {0, g.rng.randrange(len(pages))}:
            pages[index] = g.rng.randbytes(4096)
        data = salt + b"".join(pages)[16:]
        out.append(put(app.url(f"/v1/backups/{app.user}/diary.db"), data, "application/octet-stream", *app.headers()))
    return out


def records_container(g: Gen) -> list[Req]:
    """Notes synced as one blob of records, each sealed with its own fresh nonce (AES-GCM, variable lengths)."""
    app = App(g, "api.vaultnotes.example")
    key = g.rng.randbytes(32)
    notes = [" ".join(g.word() for _ in range(g.rng.randrange(2, 40))).encode() for _ in range(g.rng.randrange(3, 12))]
    sealed = []
    for note in notes:
        nonce = g.rng.randbytes(12)
        sealed.append(nonce + AESGCM(key).encrypt(nonce, note, None))
    out: list[Req] = []
    for _ in range(g.rng.randrange(2, 7)):
        index = g.rng.randrange(len(sealed))
        nonce = g.rng.randbytes(12)
        sealed[index] = nonce + AESGCM(key).encrypt(nonce, notes[index] + b" " + g.word().encode(), None)
        blob = b"".join(struct.pack(">H", len(s)) + s for s in sealed)
        out.append(
            post_json(app.url("/v1/vault"), {"blob": base64.b64encode(blob).decode(), "count": len(sealed)}, *app.headers())
        )
    return out


ORDINARY: dict[str, tuple[Callable[[Gen], list[Req]], int]] = {
    "same-size photo uploads (JPEG > 64 KiB) to presigned S3 URLs": (photo_uploads_same_size, 40),
    "photos, HEIC, MP4, WebP, GIF of varied sizes to one bucket": (photo_uploads_mixed, 25),
    "PNG screenshots to GCS signed URLs": (screenshots_to_gcs, 25),
    "resumable video uploads in 256 KiB chunks": (resumable_video, 15),
    "raw files to one host: ZIP, PDF, SQLite, KeePass, gzip/xz/zstd/bzip2 logs, Ogg, camera raw": (files_to_one_host, 35),
    "multipart avatar uploads": (avatar_multipart, 10),
    "sync APIs: SHA-256 / MD5 / CRC32C in check and commit": (sync_check_commit, 30),
    "Dropbox-style: content hashes, revisions, opaque cursors": (dropbox_style, 15),
    "GraphQL persisted queries (sha256Hash), Relay cursors": (graphql_persisted, 20),
    "ETag / If-None-Match / If-Match": (etags, 15),
    "payments: idempotency keys, Apple Pay and Google Pay tokens": (payments, 20),
    "pagination cursors (Stripe, Slack, Graph, Twitter, Google, ObjectId, DynamoDB, Shopify, AWS, encrypted)": (pagination, 35),
    "push tokens (APNs, FCM), Firebase Installations": (push_registration, 15),
    "session cookies (framework, load balancer, ASP.NET, Rails, Flask)": (session_cookies, 15),
    "analytics (Segment, Amplitude, Mixpanel, Firebase, AppsFlyer, Sentry)": (analytics, 25),
    "chat: end-to-end encryption done right, attachments, receipts": (chat, 20),
    "e-commerce browsing and carts": (ecommerce, 15),
    "user text in any script, base64-encoded (Cyrillic, CJK, Arabic, Devanagari, Greek, emoji)": (base64_text, 20),
    "OAuth/OIDC sign-in: Google, Apple, Microsoft, Facebook, GitHub, Okta, Auth0, Keycloak, Cognito": (oauth, 45),
    "signed API requests: bearer JWT, body HMAC, nonce, refresh rotation": (signed_api, 15),
    "Firebase: Remote Config, Firestore, Crashlytics, FCM": (firebase, 15),
    "signed URLs: CloudFront, Azure SAS, imgix, Cloudinary, Akamai, S3 and GCS (V2 and V4)": (signed_urls, 20),
    "encryption done right: fresh-nonce GCM/ChaCha, CBC+HMAC, key-ID prefixes, Tink, Fernet, ASP.NET": (fresh_nonce_crypto, 45),
    "encryption done right with counter nonces sent in front (GCM, CTR), starting at zero": (counter_nonces, 15),
    "files as base64 inside JSON (JPEG, PNG, M4A, Ogg, PDF, WebP)": (files_in_json, 15),
    "sync bodies past 64 KiB (cut, unparsed): IDs, hashes, base64 thumbnails": (large_json, 15),
    "compressed bodies and fields (gzip, deflate, brotli, zstd), SAML redirects": (compressed_bodies, 20),
    "protobuf: telemetry, hash manifests, gRPC-Web": (protobuf_bodies, 20),
    "binary values: float32 batches, BLE frames, ObjectIds, UUIDv7, timestamps": (binary_values, 20),
    "anti-abuse tokens: reCAPTCHA, hCaptcha, Play Integrity, DeviceCheck, CSRF": (challenge_tokens, 15),
    "passkey sign-ins (WebAuthn assertions)": (passkeys, 15),
    "device farm: per-device key-ID + device-UUID prefixes": (per_device_envelopes, 10),
    "encrypted database backups after edits (salt + fresh-IV pages)": (encrypted_backup, 10),
    "record containers (fresh-nonce GCM records) re-synced after edits": (records_container, 15),
}


# -- apps that encrypt with ECB, a fixed IV or a fixed nonce -------------------------------------------


def pkcs7(data: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    return padder.update(data) + padder.finalize()


@dataclass(frozen=True)
class Scheme:
    """How a weak app encrypts: the mode, the IV or nonce it fixes, and what it sends along."""

    name: str  # what the README calls the session kind
    mode: str  # "ecb" | "cbc-fixed-iv" | "ctr-fixed-nonce" | "gcm-fixed-nonce"
    encrypt: Callable[[bytes, bytes, bytes], bytes]  # (key, fixed iv/nonce, plaintext) -> bytes sent
    kinds: tuple[str, ...] = ()  # what the app encrypts (`plaintext` kinds); empty: the ordinary app messages


def _ecb(key: bytes, _iv: bytes, plaintext: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(pkcs7(plaintext)) + enc.finalize()


def _cbc(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(pkcs7(plaintext)) + enc.finalize()


def _cbc_iv_sent(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    return iv + _cbc(key, iv, plaintext)


def _sic_padded(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """Dart `encrypt`'s default: AES(key) is SIC (CTR) with PKCS7 padding; IV.fromLength(16) is sixteen zeros."""
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return enc.update(pkcs7(plaintext)) + enc.finalize()


def _sic(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return enc.update(plaintext) + enc.finalize()


def _gcm(key: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce[:12], plaintext, None)


def _gcm_nonce_sent(key: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    return nonce[:12] + _gcm(key, nonce, plaintext)


SCHEMES = (
    Scheme('AES-ECB (Dart AESMode.ecb, Java "AES")', "ecb", _ecb),
    Scheme("AES-CBC, fixed IV (Java AES/CBC/PKCS5Padding)", "cbc-fixed-iv", _cbc),
    Scheme("AES-CBC, fixed IV sent in front", "cbc-fixed-iv", _cbc_iv_sent),
    Scheme("AES-CTR, fixed IV, PKCS7 (Dart encrypt's default AES(key): SIC)", "ctr-fixed-nonce", _sic_padded),
    Scheme("AES-CTR, fixed IV, no padding (Dart SIC, padding: null)", "ctr-fixed-nonce", _sic),
    Scheme("AES-GCM, fixed nonce (ciphertext || tag)", "gcm-fixed-nonce", _gcm),
    Scheme("AES-GCM, fixed nonce sent in front (nonce || ciphertext || tag)", "gcm-fixed-nonce", _gcm_nonce_sent),
    # The ECB penguin: where the plaintext repeats a block, so does the ciphertext (last, so the sessions above
    # keep their seeds).
    Scheme(
        "AES-ECB of repetitive data (zero-padded records, pixel buffers, fixed-width lines)",
        "ecb",
        _ecb,
        ("struct", "pixels", "lines"),
    ),
)


def plaintext(g: Gen, kind: str, user: dict[str, str]) -> bytes:
    """What such apps encrypt: logins, profiles, phone numbers, OTP checks, API calls, events, locations, chats."""
    if kind == "login":
        doc: Any = {"username": user["name"], "password": g.pick(("hunter2", "Summer2024!", "p@ssw0rd-" + g.hex(3), g.hex(5)))}
    elif kind == "register":
        doc = {
            "email": user["email"],
            "phone": user["phone"],
            "name": user["name"].title(),
            "password": g.hex(g.rng.randrange(4, 10)),
        }
    elif kind == "phone":
        return user["phone"].encode() if g.rng.random() < 0.5 else g.phone().encode()
    elif kind == "otp":
        doc = {"phone": user["phone"], "otp": f"{g.rng.randrange(10**6):06d}"}
    elif kind == "card":
        doc = {
            "pan": f"4{g.rng.randrange(10**15):015d}",
            "exp": f"{g.rng.randrange(1, 13):02d}/{g.rng.randrange(25, 31)}",
            "cvv": f"{g.rng.randrange(1000):03d}",
            "holder": user["name"].upper(),
        }
    elif kind == "api":
        doc = {
            "method": g.pick(("getProfile", "listOrders", "getBalance", "updateSettings", "search")),
            "params": {"user_id": user["id"], "page": g.rng.randrange(5), "query": g.word()},
            "ts": g.ts(),
        }
    elif kind == "event":
        doc = {
            "events": [{"name": g.word(), "ts": g.ts(), "screen": g.word()} for _ in range(g.rng.randrange(1, 8))],
            "uid": user["id"],
        }
    elif kind == "location":
        doc = {
            "lat": round(g.rng.uniform(-60, 60), 6),
            "lng": round(g.rng.uniform(-150, 150), 6),
            "acc": g.rng.randrange(3, 60),
            "ts": g.ts(),
        }
    elif kind == "chat":
        doc = {"to": g.name(), "text": " ".join(g.word() for _ in range(g.rng.randrange(1, 25)))}
    elif kind == "profile":
        doc = {
            "name": user["name"].title(),
            "email": user["email"],
            "city": g.pick(("Berlin", "Lagos", "Lima", "Osaka")),
            "bio": " ".join(g.word() for _ in range(g.rng.randrange(0, 12))),
        }
    elif kind == "struct":  # a fixed-size record, zero-padded (C structs, legacy wire formats)
        record = f"{user['id']}|{user['name']}|{user['phone']}|{g.ts()}".encode()
        return record.ljust(g.pick((128, 256, 512)), b"\0")
    elif kind == "pixels":  # a small RGBA thumbnail: a flat background and a square of another colour
        side, background, square = g.pick((16, 24, 32)), g.rng.randbytes(3) + b"\xff", g.rng.randbytes(3) + b"\xff"
        low, high = sorted(g.rng.sample(range(side), 2))
        return b"".join(square if low <= x < high and low <= y < high else background for y in range(side) for x in range(side))
    elif kind == "lines":  # fixed-width text records, 32 characters each, some of them the same
        states = ("STATUS=OK", "STATUS=IDLE", f"USER={user['name']}", f"BATTERY={g.rng.randrange(100)}")
        return b"".join(g.pick(states).ljust(31).encode() + b"\n" for _ in range(g.rng.randrange(4, 24)))
    else:  # "token": a short secret-ish value on its own
        return g.hex(g.rng.randrange(8, 24)).encode()
    return json.dumps(doc, separators=(",", ":") if g.rng.random() < 0.5 else (", ", ": ")).encode()


KINDS = ("login", "register", "phone", "otp", "card", "api", "event", "location", "chat", "profile", "token")
PLACES = ("json", "form", "query", "header", "raw", "text")
ENCODINGS = ("base64", "base64-android-default", "base64url", "hex", "HEX")


def encode_text(data: bytes, how: str) -> str:
    if how == "base64":
        return base64.b64encode(data).decode()
    if how == "base64-android-default":  # android.util.Base64.DEFAULT: a line break every 76 characters
        return base64.encodebytes(data).decode()
    if how == "base64url":
        return b64u(data)
    return data.hex() if how == "hex" else data.hex().upper()


def weak_app(g: Gen, scheme: Scheme, requests: int) -> tuple[list[Req], list[Sent]]:
    """One app screen after another, its payloads encrypted under one key with the scheme's fixed IV/nonce, mixed
    with the app's ordinary calls."""
    app = App(g, f"api.{g.pick(('bankly', 'shopr', 'medi', 'ridez', 'chatty'))}{g.rng.randrange(100)}.example")
    key = g.rng.randbytes(g.pick((16, 32)))
    iv = bytes(16) if g.rng.random() < 0.5 else g.rng.randbytes(16)  # IV.fromLength(16), or a constant in the source
    place, how = g.pick(PLACES), g.pick(ENCODINGS)
    kinds = [g.pick(scheme.kinds or KINDS) for _ in range(g.rng.randrange(1, 4))]
    name = g.pick(("encryptedData", "data", "payload", "enc", "d"))
    user = {"name": g.name() + str(g.rng.randrange(1000)), "email": g.email(), "phone": g.phone(), "id": g.uuid()}
    out: list[Req] = []
    sent: list[Sent] = []
    for _ in range(requests):
        clear = plaintext(g, g.pick(kinds), user)
        data = scheme.encrypt(key, iv, clear)
        text = encode_text(data, how)
        if place == "json":
            req = post_json(app.url("/api/v1/secure"), {name: text, "ts": g.ts(), "v": "1.4"}, *app.headers())
            where = f"json.{name}"
        elif place == "form":
            req = post_form(app.url("/api/v1/secure"), [(name, text), ("platform", "android")], *app.headers())
            where = f"form.{name}"
        elif place == "query":
            req = get(app.url("/api/v1/lookup", [(name, text.replace("\n", "")), ("lang", "en")]), *app.headers())
            where = f"query.{name}"
        elif place == "header":
            req = get(app.url("/api/v1/state"), *app.headers(), ("x-payload", text.replace("\n", "")))
            where = "header.x-payload"
        elif place == "raw":
            req = put(app.url("/api/v1/secure"), data, "application/octet-stream", *app.headers(), method="POST")
            where = "body"
        else:  # Dart http.post(url, body: encrypted.base64): the text as the body
            req = put(app.url("/api/v1/secure"), text.encode(), "text/plain; charset=utf-8", *app.headers(), method="POST")
            where = "body"
        sent.append(Sent(len(out), app.host, where, data, clear))
        out.append(req)
        if g.rng.random() < 0.4:  # the app's ordinary calls between the encrypted ones
            out.append(get(app.url("/api/v1/config", [("locale", "en_US")]), *app.headers()))
    return out, sent


# -- the corpus ---------------------------------------------------------------------------------------


def sessions(seed: int = SEED) -> Iterator[Session]:
    """Every session, ordinary first, in a fixed order; each from its own seed, so one can be rebuilt alone."""
    rng = random.Random(seed)
    number = 0
    for family, (make, count) in ORDINARY.items():
        for _ in range(count):
            number += 1
            g = Gen(random.Random(rng.getrandbits(64)))
            yield Session(family, f"10.{number // 250}.{number % 250}.7", make(g))
    for scheme in SCHEMES:
        for index in range(48):
            number += 1
            g = Gen(random.Random(rng.getrandbits(64)))
            requests = 1 if index < 4 else g.rng.randrange(2, 13)
            made, sent = weak_app(g, scheme, requests)
            yield Session(scheme.name, f"10.{number // 250}.{number % 250}.7", made, scheme.mode, sent)


# -- what the bytes carry -----------------------------------------------------------------------------

# Which findings are right for which mode: (kind, basis)
RIGHT = {
    "ecb": {
        ("ecb", "repeated_block"),
        ("ecb", "moved_block"),
        ("deterministic_encryption", "same_position"),
        ("deterministic_encryption", "same_prefix"),
    },
    "cbc-fixed-iv": {("deterministic_encryption", "same_prefix"), ("deterministic_encryption", "zero_iv")},
    "ctr-fixed-nonce": {
        ("deterministic_encryption", "keystream_reuse"),
        ("deterministic_encryption", "same_position"),
        ("deterministic_encryption", "same_prefix"),
        ("deterministic_encryption", "zero_iv"),
    },
    "gcm-fixed-nonce": {
        ("deterministic_encryption", "keystream_reuse"),
        ("deterministic_encryption", "same_position"),
        ("deterministic_encryption", "same_prefix"),
        ("deterministic_encryption", "zero_iv"),
    },
}


NO_EVIDENCE = {
    "one": "one distinct encrypted value (a single request, or the same value again)",
    "short": "values shorter than one block",
    "prefix": "values share one constant number of leading blocks only",
    "unrelated": "no two values relate enough (no shared aligned block; XORs below the threshold)",
}


def evidence(session: Session) -> tuple[str | None, str]:
    """(the rule whose evidence the session's ciphertexts carry, or None; why not), from the exact bytes sent.

    An independent walk of the README's rules over the ciphertexts as the generator made them, before any
    encoding: the same per-field window of the last PER_KEY different values, the same tests on each value and
    pair; what it cannot see is everything the add-on must get right to see the same bytes (fields, encodings,
    headers, bodies, memory keys).
    """
    from tlsgate.payload import recall
    from tlsgate.payload.ecb import analyse, cipher_shaped, zero_iv

    window: dict[tuple[str, str], list[bytes]] = {}
    prefixes: dict[tuple[str, str], set[int]] = {}
    judged: set[bytes] = set()
    constant_prefix = False
    for item in session.sent:
        key = (item.host, item.field)
        seen = window.setdefault(key, [])
        data = item.data
        if not cipher_shaped(data) or data in seen:
            continue
        judged.add(data)
        aligned = len(data) % 16 == 0
        report = analyse(data) if aligned else None
        if report is not None and report.ecb:
            return "repeated_block", "a value repeats a random-looking block"
        shared: set[int] = set()
        sums = [0.0, 0.0]
        for old in seen:
            if zero_iv(data) and zero_iv(old) == zero_iv(data):
                return "zero_iv", "two values start with the same all-zero IV or nonce"
            a, b = data[: recall.HEAD], old[: recall.HEAD]
            sums = [total + bits for total, bits in zip(sums, recall.keystream_bits(a, b), strict=True)]
            if aligned and len(old) % 16 == 0:
                mine = [a[i : i + 16] for i in range(0, len(a), 16)]
                theirs = [b[i : i + 16] for i in range(0, len(b), 16)]
                for index, block in enumerate(mine):
                    if block in theirs and recall.random_looking(block):
                        if theirs.index(block) != index and not (index < len(theirs) and theirs[index] == block):
                            return "moved_block", "a block of one value appears at another position of an earlier one"
                        if index < len(theirs) and theirs[index] == block and mine[:index] != theirs[:index]:
                            return "same_position", "an equal block at an equal position after a block that differs"
                common = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
                if (
                    common
                    and common % 16 == 0
                    and common < min(len(a), len(b))
                    and all(recall.random_looking(x) for x in mine[: common // 16])
                ):
                    shared.add(common // 16)
        if max(sums) >= recall.THRESHOLD:
            return "keystream_reuse", "values XOR to plaintexts' XORs"
        known = prefixes.setdefault(key, set())
        if len(known) < 8:
            known |= shared
        if shared and len(known) > 1:
            return "same_prefix", f"values share {sorted(known)} leading blocks"
        constant_prefix = constant_prefix or bool(shared)
        seen.append(data)
        del seen[: -recall.PER_KEY]
    if not judged and all(len(item.data) < 16 for item in session.sent):
        return None, NO_EVIDENCE["short"]
    if len(judged) <= 1:
        return None, NO_EVIDENCE["one"]
    return None, NO_EVIDENCE["prefix" if constant_prefix else "unrelated"]


# -- running the corpus through the add-on ------------------------------------------------------------

POLICY = """\
version: 1
defaults:
  mode: enforce
  payload: {ecb: block, secrets: block, identifiers: ignore}
"""


@dataclass
class Outcome:
    session: Session
    findings: list[dict[str, Any]]
    blocked: int  # requests refused

    def right(self) -> bool:
        assert self.session.mode is not None
        return any(
            (f["evidence"]["kind"], item.get("basis")) in RIGHT[self.session.mode]
            for f in self.findings
            for item in f["evidence"].get("fields", [])
        )

    def wrong(self) -> bool:
        """A finding that is not one this session's mode explains (in an ordinary session: any finding)."""
        allowed = RIGHT[self.session.mode] if self.session.mode else set()
        return any(
            (f["evidence"]["kind"], item.get("basis")) not in allowed
            for f in self.findings
            for item in (f["evidence"].get("fields") or [{}])
        )


def run(corpus: list[Session], workdir: Path) -> list[Outcome]:
    """Every session through `PayloadInspector` as `tlsgate run` wires it; findings read back per session."""
    from mitmproxy import http
    from mitmproxy.test import tflow, tutils

    from tests.addonkit import wired
    from tlsgate.addons.payload import PayloadInspector

    outcomes: list[Outcome] = []
    loop = asyncio.new_event_loop()
    with wired(POLICY, workdir) as kit:
        inspector, findings = kit.get(PayloadInspector), kit.findings
        read = 0
        for session in corpus:
            blocked = 0
            for request in session.requests:
                parts = urllib.parse.urlsplit(request.url)
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                headers = http.Headers(
                    [(b"host", parts.netloc.encode()), (b"content-length", str(len(request.body)).encode())]
                    + [(k.encode(), v.encode()) for k, v in request.headers]
                )
                flow = tflow.tflow(
                    req=tutils.treq(
                        host=parts.netloc,
                        port=443,
                        scheme=b"https",
                        method=request.method.encode(),
                        path=path.encode(),
                        headers=headers,
                        content=request.body,
                    )
                )
                flow.client_conn.peername = (session.client, 50000)
                inspector.requestheaders(flow)
                if flow.response is None and not flow.error:
                    pending = inspector.request(flow)
                    if pending is not None:  # a scan longer than one slice: mitmproxy would await it
                        loop.run_until_complete(pending)
                blocked += flow.response is not None or flow.error is not None
            text = findings.read_text() if findings.exists() else ""
            lines = text[read:].splitlines()
            read = len(text)
            outcomes.append(Outcome(session, [json.loads(line) for line in lines], blocked))
    loop.close()
    return outcomes


@dataclass(frozen=True)
class Figures:
    ordinary_sessions: int
    ordinary_requests: int
    ordinary_bytes: int
    false_positive_sessions: int
    false_positive_requests: int
    positive_sessions: int
    positive_requests: int
    with_evidence: int
    detected: int  # of those with evidence, caught with a right finding
    caught_without_evidence: int  # positives the rules call evidence-free but the add-on caught (should be 0)
    wrong_findings: int  # positive sessions with a finding their mode does not explain (should be 0)
    by_scheme: tuple[tuple[str, int, int, int], ...]  # scheme -> (sessions, with evidence, detected)
    by_basis: tuple[tuple[str, int], ...]  # evidence rule -> sessions
    no_evidence: tuple[tuple[str, int], ...]  # why positive sessions carry none -> sessions


def measure(seed: int = SEED, workdir: Path | None = None) -> tuple[Figures, list[Outcome]]:
    import tempfile

    corpus = list(sessions(seed))
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = run(corpus, workdir or Path(tmp))
    ordinary = [o for o in outcomes if o.session.mode is None]
    positive = [o for o in outcomes if o.session.mode is not None]
    verdicts = [(o, *evidence(o.session)) for o in positive]
    carrying = [(o, basis) for o, basis, _ in verdicts if basis is not None]
    by_basis = Counter(basis for _, basis in carrying)
    missing = Counter(why for _, basis, why in verdicts if basis is None)
    figures = Figures(
        ordinary_sessions=len(ordinary),
        ordinary_requests=sum(len(o.session.requests) for o in ordinary),
        ordinary_bytes=sum(len(r.body) + len(r.url) for o in ordinary for r in o.session.requests),
        false_positive_sessions=sum(bool(o.findings) for o in ordinary),
        false_positive_requests=sum(o.blocked for o in ordinary),
        positive_sessions=len(positive),
        positive_requests=sum(len(o.session.requests) for o in positive),
        with_evidence=len(carrying),
        detected=sum(o.right() for o, _ in carrying),
        caught_without_evidence=sum(bool(o.findings) for o, basis, _ in verdicts if basis is None),
        wrong_findings=sum(o.wrong() for o in positive),
        by_scheme=tuple(
            (
                scheme.name,
                sum(o.session.family == scheme.name for o in positive),
                sum(o.session.family == scheme.name for o, _ in carrying),
                sum(o.session.family == scheme.name and o.right() for o, _ in carrying),
            )
            for scheme in SCHEMES
        ),
        by_basis=tuple(sorted(by_basis.items())),
        no_evidence=tuple(sorted(missing.items())),
    )
    return figures, outcomes


def main() -> None:
    started = time.perf_counter()
    figures, outcomes = measure()
    took = time.perf_counter() - started
    print(
        f"ordinary sessions: {figures.ordinary_sessions}, requests: {figures.ordinary_requests}, "
        f"bytes: {figures.ordinary_bytes:,}"
    )
    for family, (_, count) in ORDINARY.items():
        family_outcomes = [o for o in outcomes if o.session.family == family]
        requests = sum(len(o.session.requests) for o in family_outcomes)
        flagged = sum(bool(o.findings) for o in family_outcomes)
        print(f"  {count:3d} sessions {requests:5d} requests  flagged {flagged}  {family}")
    print(f"false positives: {figures.false_positive_sessions} sessions, {figures.false_positive_requests} requests refused")
    print(f"positive sessions: {figures.positive_sessions}, requests: {figures.positive_requests}")
    for name, count, carrying, caught in figures.by_scheme:
        print(f"  {count} sessions, {carrying} with evidence, {caught} caught: {name}")
    print(f"with evidence: {figures.with_evidence}, detected: {figures.detected}, with a wrong finding: {figures.wrong_findings}")
    print(f"by rule: {dict(figures.by_basis)}")
    print(f"without evidence: {dict(figures.no_evidence)}; caught anyway: {figures.caught_without_evidence}")
    for o in outcomes:
        if o.session.mode is None and o.findings:
            for f in o.findings:
                print(
                    "FP",
                    o.session.family,
                    f["evidence"]["kind"],
                    json.dumps(f["evidence"].get("fields") or f["evidence"].get("credentials") or f["evidence"].get("keys"))[
                        :300
                    ],
                )
    print(f"took {took:.1f} s")


# == WebSocket sessions ==================================================================================
# One connection per session: the messages an app and its server exchange, judged by
# `PayloadInspector.websocket_message` under the same POLICY. Seeded on their own (`WS_SEED`), so the HTTP
# figures above do not move; `python -m tests.payload_sessions ws` prints these figures.

WS_SEED = 24


@dataclass(frozen=True)
class Msg:
    from_client: bool
    content: str | bytes  # str: a text message, bytes: a binary one


@dataclass
class WsSession(Session):
    host: str = ""
    messages: list[Msg] = field(default_factory=list)


def _up(doc: Any) -> Msg:
    return Msg(True, json.dumps(doc, separators=(",", ":")))


def _down(doc: Any) -> Msg:
    return Msg(False, json.dumps(doc, separators=(",", ":")))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb(*fields: tuple[int, int | bytes | str]) -> bytes:
    """A protobuf message: (field number, varint | bytes | string) in order."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, int):
            out += _varint(number << 3) + _varint(value)
        else:
            data = value.encode() if isinstance(value, str) else value
            out += _varint(number << 3 | 2) + _varint(len(data)) + data
    return bytes(out)


def _msgpack(value: Any) -> bytes:
    """The msgpack subset apps' frames use: maps, arrays, strings, bin, ints, floats, bools, nil."""
    if value is None:
        return b"\xc0"
    if isinstance(value, bool):
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        if 0 <= value < 128:
            return bytes([value])
        return b"\xd3" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, str):
        data = value.encode()
        return (bytes([0xA0 | len(data)]) if len(data) < 32 else b"\xd9" + bytes([len(data)])) + data
    if isinstance(value, bytes):
        return b"\xc4" + bytes([len(value)]) + value
    if isinstance(value, list):
        return bytes([0x90 | len(value)]) + b"".join(_msgpack(v) for v in value)
    assert isinstance(value, dict)
    return bytes([0x80 | len(value)]) + b"".join(_msgpack(k) + _msgpack(v) for k, v in value.items())


def ws_chat(g: Gen) -> list[Msg]:
    """A chat app: auth with its JWT, join rooms, messages, typing, receipts; the server acks with IDs and
    relays others' messages with their own IDs and timestamps."""
    app = App(g, "chat.example")
    out = [_up({"type": "auth", "token": app.token}), _down({"type": "ready", "session": g.uuid(), "user": app.user})]
    room = g.uuid()
    out.append(_up({"type": "join", "room": room}))
    for _ in range(g.rng.randrange(5, 30)):
        if g.rng.random() < 0.5:
            cid = g.uuid()
            text = " ".join(g.word() for _ in range(g.rng.randrange(1, 20)))
            out.append(_up({"type": "typing", "room": room}))
            out.append(_up({"type": "message", "room": room, "client_id": cid, "text": text, "ts": g.ts()}))
            out.append(_down({"type": "ack", "client_id": cid, "id": g.hex(12), "ts": g.ts()}))
        else:
            out.append(
                _down({"type": "message", "room": room, "id": g.hex(12), "from": g.uuid(), "text": g.word(), "ts": g.ts()})
            )
            out.append(_up({"type": "read", "room": room, "up_to": g.hex(12)}))
    return out


def ws_e2e_chat(g: Gen) -> list[Msg]:
    """End-to-end encrypted chat done right (Signal/Olm-like envelopes): fresh nonces, ratchet keys, MACs."""
    app = App(g, "e2e.chat.example")
    key = g.rng.randbytes(32)
    out = [_up({"type": "auth", "token": app.token})]
    for n in range(g.rng.randrange(4, 25)):
        nonce = g.rng.randbytes(12)
        body = json.dumps({"text": " ".join(g.word() for _ in range(g.rng.randrange(1, 15)))}).encode()
        sealed = nonce + AESGCM(key).encrypt(nonce, body, None)
        envelope = {
            "to": g.uuid(),
            "ratchet": base64.b64encode(g.rng.randbytes(32)).decode(),
            "n": n,
            "ct": base64.b64encode(sealed).decode(),
        }
        if g.rng.random() < 0.5:
            out.append(_up({"type": "send", "envelope": envelope}))
        else:
            out.append(Msg(True, _pb((1, g.uuid()), (2, g.rng.randbytes(32)), (3, n), (4, sealed))))
        out.append(_down({"type": "delivered", "n": n, "server_ts": g.ts()}))
    return out


def ws_live_updates(g: Gen) -> list[Msg]:
    """Live prices and scores: subscribe once, then the server streams ticks with sequence numbers and hashes."""
    out = [_up({"action": "subscribe", "channels": ["ticker", "trades"], "symbols": ["BTC-USD", "ETH-USD", "AAPL"]})]
    out.append(_down({"event": "subscribed", "id": g.uuid()}))
    for seq in range(g.rng.randrange(10, 60)):
        out.append(
            _down(
                {
                    "channel": g.pick(("ticker", "trades")),
                    "seq": seq,
                    "symbol": g.pick(("BTC-USD", "ETH-USD", "AAPL")),
                    "price": round(g.rng.uniform(10, 70000), 2),
                    "size": round(g.rng.uniform(0, 5), 6),
                    "trade_id": g.rng.randrange(10**9),
                    "checksum": g.rng.getrandbits(32),
                    "ts": f"2024-11-19T{g.rng.randrange(24):02d}:{g.rng.randrange(60):02d}:{g.rng.randrange(60):02d}.{g.rng.randrange(10**6):06d}Z",
                }
            )
        )
    return out


def ws_telemetry(g: Gen) -> list[Msg]:
    """Wearable or car telemetry: batches of readings, a device ID, a batch hash, sometimes as binary floats."""
    device = g.uuid()
    out = []
    for n in range(g.rng.randrange(5, 30)):
        readings = [
            [g.ts(), round(g.rng.uniform(40, 180), 1), round(g.rng.uniform(0, 1), 4)] for _ in range(g.rng.randrange(1, 20))
        ]
        if g.rng.random() < 0.6:
            doc = {"device": device, "batch": n, "r": readings}
            out.append(_up({**doc, "sha256": hashlib.sha256(json.dumps(doc).encode()).hexdigest()}))
        else:
            out.append(
                Msg(True, struct.pack(">16sI", uuid.UUID(device).bytes, n) + b"".join(struct.pack(">Iff", *r) for r in readings))
            )
        if g.rng.random() < 0.3:
            out.append(_down({"ack": n}))
    return out


def ws_presence(g: Gen) -> list[Msg]:
    """A Discord-style gateway: hello, identify with a token, heartbeats with sequence numbers, resume."""
    token = f"{b64u(g.uuid().encode())}.{b64u(g.rng.randbytes(4))}.{b64u(g.rng.randbytes(27))}"
    session = g.hex(16)
    out = [
        _down({"op": 10, "d": {"heartbeat_interval": 41250}}),
        _up({"op": 2, "d": {"token": token, "properties": {"os": "android"}}}),
    ]
    out.append(
        _down({"op": 0, "t": "READY", "s": 1, "d": {"session_id": session, "resume_gateway_url": "wss://gateway.example"}})
    )
    for seq in range(2, g.rng.randrange(8, 40)):
        if g.rng.random() < 0.4:
            out += [_up({"op": 1, "d": seq}), _down({"op": 11})]
        else:
            out.append(
                _down(
                    {
                        "op": 0,
                        "t": "PRESENCE_UPDATE",
                        "s": seq,
                        "d": {"user": {"id": str(g.rng.getrandbits(62))}, "status": g.pick(("online", "idle", "dnd"))},
                    }
                )
            )
    out.append(_up({"op": 6, "d": {"token": token, "session_id": session, "seq": seq}}))
    return out


def ws_socketio(g: Gen) -> list[Msg]:
    """Socket.IO v4 over Engine.IO: open packet with a sid, namespace connect, events with acks, ping/pong."""
    sid = g.b64(15, url=True)
    out = [
        Msg(
            False,
            "0" + json.dumps({"sid": sid, "upgrades": [], "pingInterval": 25000, "pingTimeout": 20000, "maxPayload": 1000000}),
        )
    ]
    out += [
        Msg(True, "40/chat," + json.dumps({"token": g.b64(24)})),
        Msg(False, "40/chat," + json.dumps({"sid": g.b64(15, url=True)})),
    ]
    for ack in range(g.rng.randrange(5, 30)):
        event = g.pick(("message", "typing", "location", "reaction"))
        if event == "location":
            payload: Any = {"lat": round(g.rng.uniform(-60, 60), 6), "lng": round(g.rng.uniform(-150, 150), 6)}
        else:
            payload = {"room": g.word(), "text": " ".join(g.word() for _ in range(g.rng.randrange(1, 9))), "nonce": g.hex(8)}
        out.append(Msg(True, f"42/chat,{ack}" + json.dumps([event, payload])))
        out.append(Msg(False, f"43/chat,{ack}" + json.dumps([{"ok": True, "id": g.hex(12)}])))
        if g.rng.random() < 0.3:
            out += [Msg(False, "2"), Msg(True, "3")]
    return out


def ws_phoenix(g: Gen) -> list[Msg]:
    """Phoenix channels: [join_ref, ref, topic, event, payload] with a signed Phoenix.Token, heartbeats."""
    token = (
        b64u(b"\x83h\x03m\x00\x00\x00\x08" + g.rng.randbytes(8) + b"n\x06\x00" + g.rng.randbytes(6))
        + "."
        + b64u(g.rng.randbytes(32))
    )
    topic = f"room:{g.rng.randrange(10**6)}"
    out = [
        Msg(True, json.dumps(["1", "1", topic, "phx_join", {"token": token}])),
        Msg(False, json.dumps(["1", "1", topic, "phx_reply", {"status": "ok", "response": {}}])),
    ]
    for ref in range(2, g.rng.randrange(6, 30)):
        if g.rng.random() < 0.25:
            out.append(Msg(True, json.dumps([None, str(ref), "phoenix", "heartbeat", {}])))
        else:
            out.append(
                Msg(
                    True,
                    json.dumps(
                        ["1", str(ref), topic, "new_msg", {"body": " ".join(g.word() for _ in range(g.rng.randrange(1, 12)))}]
                    ),
                )
            )
            out.append(
                Msg(
                    False,
                    json.dumps(
                        [
                            None,
                            None,
                            topic,
                            "presence_diff",
                            {
                                "joins": {
                                    g.uuid(): {"metas": [{"phx_ref": g.b64(8, url=True, pad=False), "online_at": str(g.ts())}]}
                                },
                                "leaves": {},
                            },
                        ]
                    ),
                )
            )
    return out


def ws_signalr(g: Gen) -> list[Msg]:
    """ASP.NET SignalR JSON hub protocol: handshake, invocations and completions, pings; 0x1e-ended records."""
    rs = "\x1e"
    out = [Msg(True, json.dumps({"protocol": "json", "version": 1}) + rs), Msg(False, "{}" + rs)]
    for invocation in range(g.rng.randrange(5, 25)):
        target = g.pick(("SendMessage", "JoinGroup", "UpdateLocation", "Ack"))
        args = [g.word(), " ".join(g.word() for _ in range(g.rng.randrange(1, 8))), g.uuid()]
        out.append(Msg(True, json.dumps({"type": 1, "invocationId": str(invocation), "target": target, "arguments": args}) + rs))
        records = json.dumps({"type": 3, "invocationId": str(invocation), "result": {"id": g.hex(16), "at": g.ts()}}) + rs
        if g.rng.random() < 0.4:
            records += (
                json.dumps({"type": 6})
                + rs
                + json.dumps({"type": 1, "target": "Receive", "arguments": [g.uuid(), g.word()]})
                + rs
            )
        out.append(Msg(False, records))
    return out


def ws_graphql(g: Gen) -> list[Msg]:
    """GraphQL subscriptions over graphql-ws: connection_init with a bearer token, subscribe, next, complete."""
    app = App(g, "graphql.example")
    out = [
        _up({"type": "connection_init", "payload": {"Authorization": f"Bearer {app.token}"}}),
        _down({"type": "connection_ack"}),
    ]
    for _ in range(g.rng.randrange(2, 6)):
        sid = g.uuid()
        out.append(
            _up(
                {
                    "id": sid,
                    "type": "subscribe",
                    "payload": {
                        "query": "subscription OnComment($post: ID!) { commentAdded(post: $post) { id body author { id name } } }",
                        "variables": {"post": b64u(f"Post:{g.rng.randrange(10**6)}".encode())},
                        "extensions": {"persistedQuery": {"version": 1, "sha256Hash": g.hex(32)}},
                    },
                }
            )
        )
        for _ in range(g.rng.randrange(1, 10)):
            out.append(
                _down(
                    {
                        "id": sid,
                        "type": "next",
                        "payload": {
                            "data": {
                                "commentAdded": {
                                    "id": b64u(f"Comment:{g.rng.randrange(10**8)}".encode()),
                                    "body": g.word(),
                                    "author": {"id": g.uuid(), "name": g.name()},
                                }
                            }
                        },
                    }
                )
            )
        out.append(_up({"id": sid, "type": "complete"}))
        if g.rng.random() < 0.5:
            out += [_up({"type": "ping"}), _down({"type": "pong"})]
    return out


def ws_binary_frames(g: Gen) -> list[Msg]:
    """Binary protocols: protobuf envelopes (IDs as 16 raw bytes, hashes, fresh-nonce sealed payloads),
    msgpack maps, and zlib-compressed JSON frames, both ways."""
    key = g.rng.randbytes(16)
    device = g.rng.randbytes(16)
    out = []
    for n in range(g.rng.randrange(5, 30)):
        kind = g.pick(("pb", "pb-sealed", "msgpack", "zlib"))
        if kind == "pb":
            data = _pb((1, n), (2, device), (3, g.word()), (4, hashlib.sha256(g.rng.randbytes(8)).digest()), (5, g.ts()))
        elif kind == "pb-sealed":
            nonce = g.rng.randbytes(12)
            data = _pb(
                (1, n),
                (2, nonce),
                (3, AESGCM(key).encrypt(nonce, json.dumps({"lat": g.rng.uniform(-60, 60), "n": n}).encode(), None)),
            )
        elif kind == "msgpack":
            data = _msgpack(
                {"t": g.word(), "seq": n, "id": g.rng.randbytes(16), "v": round(g.rng.uniform(0, 100), 3), "ok": True}
            )
        else:
            data = zlib.compress(
                json.dumps({"events": [{"e": g.word(), "ts": g.ts()} for _ in range(g.rng.randrange(1, 30))]}).encode()
            )
        out.append(Msg(g.rng.random() < 0.6, data))
    return out


WS_ORDINARY: dict[str, tuple[Callable[[Gen], list[Msg]], int]] = {
    "WebSocket chat: JWT auth, rooms, messages, typing, receipts, server acks and relays": (ws_chat, 30),
    "WebSocket end-to-end encrypted chat done right (fresh-nonce GCM envelopes, JSON and protobuf)": (ws_e2e_chat, 30),
    "WebSocket live updates: price and score ticks with sequence numbers and checksums": (ws_live_updates, 20),
    "WebSocket telemetry: JSON batches with hashes, binary float frames": (ws_telemetry, 20),
    "WebSocket presence and heartbeats (Discord-style gateway: identify, heartbeat, resume)": (ws_presence, 20),
    "Socket.IO v4: open, namespace connect, events with acks, ping/pong": (ws_socketio, 20),
    "Phoenix channels: join with a signed token, messages, presence diffs, heartbeats": (ws_phoenix, 15),
    "SignalR JSON hub protocol: handshake, invocations, completions, pings": (ws_signalr, 15),
    "GraphQL over WebSocket (graphql-ws): init with a bearer token, subscriptions": (ws_graphql, 15),
    "binary frames: protobuf (raw IDs, hashes, sealed payloads), msgpack, zlib-compressed JSON": (ws_binary_frames, 25),
}

WS_PLACES = ("json", "socketio", "signalr", "binary", "text")


def ws_weak_app(g: Gen, scheme: Scheme, messages: int) -> tuple[str, list[Msg], list[Sent]]:
    """A WebSocket app whose messages carry ciphertext under one key and the scheme's fixed IV or nonce: in a
    JSON field, a Socket.IO event, a SignalR argument, a binary frame or a bare base64 text frame."""
    host = f"ws.{g.pick(('bankly', 'shopr', 'medi', 'ridez', 'chatty'))}{g.rng.randrange(100)}.example"
    key = g.rng.randbytes(g.pick((16, 32)))
    iv = bytes(16) if g.rng.random() < 0.5 else g.rng.randbytes(16)
    place = g.pick(WS_PLACES)
    how = g.pick(("base64", "base64url", "hex"))
    kinds = [g.pick(scheme.kinds or KINDS) for _ in range(g.rng.randrange(1, 4))]
    user = {"name": g.name() + str(g.rng.randrange(1000)), "email": g.email(), "phone": g.phone(), "id": g.uuid()}
    out: list[Msg] = [_up({"type": "hello", "v": "2.1"})]
    sent: list[Sent] = []
    for n in range(messages):
        clear = plaintext(g, g.pick(kinds), user)
        data = scheme.encrypt(key, iv, clear)
        text = encode_text(data, how)
        if place == "json":
            msg, where = _up({"type": "msg", "seq": n, "ct": text}), "json.ct"
        elif place == "socketio":
            msg, where = Msg(True, f"42{n}" + json.dumps(["secure", {"ct": text}])), "json.[1].ct"
        elif place == "signalr":
            msg = Msg(True, json.dumps({"type": 1, "target": "Send", "arguments": [text]}) + "\x1e")
            where = "json.arguments.[0]"
        elif place == "binary":
            msg, where = Msg(True, data), "body"
        else:
            msg, where = Msg(True, text), "body"
        sent.append(Sent(len(out), host, where, data, clear))
        out.append(msg)
        if g.rng.random() < 0.5:
            out.append(_down({"type": "ack", "seq": n}))
    return host, out, sent


def ws_sessions(seed: int = WS_SEED) -> Iterator[WsSession]:
    rng = random.Random(seed)
    number = 0
    for family, (make, count) in WS_ORDINARY.items():
        for _ in range(count):
            number += 1
            g = Gen(random.Random(rng.getrandbits(64)))
            yield WsSession(family, f"10.{number // 250}.{number % 250}.9", [], host=f"ws{number}.example", messages=make(g))
    for scheme in SCHEMES:
        for index in range(24):
            number += 1
            g = Gen(random.Random(rng.getrandbits(64)))
            host, made, sent = ws_weak_app(g, scheme, 1 if index < 2 else g.rng.randrange(2, 13))
            yield WsSession(
                f"WebSocket: {scheme.name}", f"10.{number // 250}.{number % 250}.9", [], scheme.mode, sent, host, made
            )


def ws_run(corpus: list[WsSession], workdir: Path) -> list[Outcome]:
    """Every session as one WebSocket connection through `PayloadInspector.websocket_message`; after a blocked
    message the app reconnects (a new flow), as apps do after a policy close."""
    from mitmproxy.test import tflow
    from mitmproxy.websocket import WebSocketMessage
    from wsproto.frame_protocol import Opcode

    from tests.addonkit import wired
    from tlsgate.addons.payload import PayloadInspector

    def connect(session: WsSession) -> Any:
        flow = tflow.twebsocketflow(messages=False)
        flow.request.host = session.host
        flow.request.headers["host"] = session.host
        flow.request.scheme, flow.request.port = "https", 443
        flow.client_conn.peername = (session.client, 50000)
        flow.websocket.messages = []
        return flow

    outcomes: list[Outcome] = []
    loop = asyncio.new_event_loop()
    with wired(POLICY, workdir) as kit:
        inspector, findings = kit.get(PayloadInspector), kit.findings
        read = 0
        for session in corpus:
            blocked = 0
            flow = connect(session)
            for msg in session.messages:
                data = msg.content.encode() if isinstance(msg.content, str) else msg.content
                message = WebSocketMessage(Opcode.TEXT if isinstance(msg.content, str) else Opcode.BINARY, msg.from_client, data)
                flow.websocket.messages.append(message)
                pending = inspector.websocket_message(flow)
                if pending is not None:
                    loop.run_until_complete(pending)
                if message.dropped:
                    blocked += 1
                    flow = connect(session)
            text = findings.read_text() if findings.exists() else ""
            lines = text[read:].splitlines()
            read = len(text)
            outcomes.append(Outcome(session, [json.loads(line) for line in lines], blocked))
    loop.close()
    return outcomes


@dataclass(frozen=True)
class WsFigures:
    ordinary_sessions: int
    ordinary_messages: int
    ordinary_bytes: int
    false_positive_sessions: int
    false_positive_messages: int
    positive_sessions: int
    positive_messages: int
    with_evidence: int
    detected: int
    caught_without_evidence: int
    wrong_findings: int


def ws_measure(seed: int = WS_SEED, workdir: Path | None = None) -> tuple[WsFigures, list[Outcome]]:
    import tempfile

    corpus = list(ws_sessions(seed))
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = ws_run(corpus, workdir or Path(tmp))
    ordinary = [o for o in outcomes if o.session.mode is None]
    positive = [o for o in outcomes if o.session.mode is not None]
    verdicts = [(o, *evidence(o.session)) for o in positive]
    carrying = [o for o, basis, _ in verdicts if basis is not None]

    def size(o: Outcome) -> int:
        assert isinstance(o.session, WsSession)
        return sum(len(m.content) for m in o.session.messages)

    def count(o: Outcome) -> int:
        assert isinstance(o.session, WsSession)
        return len(o.session.messages)

    figures = WsFigures(
        ordinary_sessions=len(ordinary),
        ordinary_messages=sum(count(o) for o in ordinary),
        ordinary_bytes=sum(size(o) for o in ordinary),
        false_positive_sessions=sum(bool(o.findings) for o in ordinary),
        false_positive_messages=sum(o.blocked for o in ordinary),
        positive_sessions=len(positive),
        positive_messages=sum(count(o) for o in positive),
        with_evidence=len(carrying),
        detected=sum(o.right() for o in carrying),
        caught_without_evidence=sum(bool(o.findings) for o, basis, _ in verdicts if basis is None),
        wrong_findings=sum(o.wrong() for o in positive),
    )
    return figures, outcomes


def ws_main() -> None:
    started = time.perf_counter()
    figures, outcomes = ws_measure()
    print(figures)
    for family in WS_ORDINARY:
        family_outcomes = [o for o in outcomes if o.session.family == family]
        print(f"  {len(family_outcomes):3d} sessions  flagged {sum(bool(o.findings) for o in family_outcomes)}  {family}")
    for o in outcomes:
        if o.findings and (o.session.mode is None or o.wrong()):
            for f in o.findings:
                print(
                    "FP",
                    o.session.family,
                    f["evidence"]["kind"],
                    json.dumps(f["evidence"].get("fields") or f["evidence"].get("keys"))[:300],
                )
    for o in outcomes:
        if o.session.mode is not None and evidence(o.session)[0] is not None and not o.right():
            print("MISSED", o.session.family, evidence(o.session))
    print(f"took {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    import sys

    ws_main() if sys.argv[1:] == ["ws"] else main()
