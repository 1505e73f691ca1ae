"""gRPC app sessions for payload inspection: ordinary calls that must pass untouched, and gRPC apps that encrypt
fields with ECB, a fixed IV or a fixed nonce that must be caught.

The same bar as tests/payload_sessions.py (and run through the same `run`,
`evidence` and `Figures`): every ordinary session must end without a finding,
every weak-crypto session whose ciphertexts carry evidence by the README's
rules must be caught with the right finding. The protobuf bytes are built here
with an encoder of this module's own (`pb`), not with the parser under test.

`python -m tests.payload_grpc_sessions` prints the figures README.md publishes
("gRPC and HTTP/2"); tests/unit/test_payload_grpc_sessions.py asserts them.
"""

from __future__ import annotations

import base64
import gzip
import random
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.payload_sessions import (
    KINDS,
    SCHEMES,
    TS,
    Figures,
    Gen,
    Outcome,
    Req,
    Scheme,
    Sent,
    Session,
    b64u,
    evidence,
    plaintext,
    run,
)

SEED = 24

PbValue = int | float | str | bytes | tuple[str, int]
PbFields = list[tuple[int, PbValue]]


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 as protobuf writes it: ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def pb(fields: PbFields) -> bytes:
    """Protobuf wire bytes: int varint, float double (fixed64), ("f64", n) fixed64, ("f32", n) fixed32, str and bytes
    length-delimited."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, bool | int):
            out += _varint(number << 3) + _varint(int(value))
        elif isinstance(value, float):
            out += _varint(number << 3 | 1) + struct.pack("<d", value)
        elif isinstance(value, tuple) and value[0] == "f64":
            out += _varint(number << 3 | 1) + struct.pack("<Q", value[1])
        elif isinstance(value, tuple):
            out += _varint(number << 3 | 5) + struct.pack("<I", value[1])
        else:
            data = value.encode() if isinstance(value, str) else value
            out += _varint(number << 3 | 2) + _varint(len(data)) + data
    return bytes(out)


def framed(messages: list[bytes], compress: str = "") -> bytes:
    """Length-prefixed gRPC messages, each compressed with `compress` (the call's grpc-encoding) when given."""
    out = bytearray()
    for message in messages:
        if compress == "gzip":
            body, flag = gzip.compress(message, mtime=0), 1
        elif compress == "deflate":
            body, flag = zlib.compress(message), 1
        else:
            body, flag = message, 0
        out += bytes([flag]) + struct.pack(">I", len(body)) + body
    return bytes(out)


def grpc_req(host: str, method: str, messages: list[bytes], headers: tuple[tuple[str, str], ...], compress: str = "") -> Req:
    head: tuple[tuple[str, str], ...] = (
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-accept-encoding", "gzip"),
    )
    if compress:
        head += (("grpc-encoding", compress),)
    return Req("POST", f"https://{host}/{method}", head + headers, framed(messages, compress))


def grpc_web_req(host: str, method: str, messages: list[bytes], headers: tuple[tuple[str, str], ...], text: bool) -> Req:
    body = framed(messages)
    ctype = "application/grpc-web-text" if text else "application/grpc-web+proto"
    head = (("content-type", ctype), ("x-grpc-web", "1"), ("x-user-agent", "grpc-web-javascript/0.1"), ("accept", ctype))
    return Req("POST", f"https://{host}/{method}", head + headers, base64.b64encode(body) if text else body)


class GrpcApp:
    """A mobile app's gRPC channel: its user agent, Firebase ID token (a signed JWT), and per-call metadata."""

    def __init__(self, g: Gen, host: str, ua: str | None = None) -> None:
        self.g = g
        self.host = host
        self.ua = ua or g.pick(
            ("grpc-java-okhttp/1.62.2", "grpc-objc-cfstream/1.65.0", "grpc-dart/3.2.4", "grpc-swift-nio/1.23.0")
        )
        self.user = b64u(g.rng.randbytes(21))[:28]  # a Firebase UID
        self.token = g.jwt({"iss": f"https://securetoken.google.com/{host}", "sub": self.user, "iat": TS, "exp": TS + 3600})

    def metadata(self, extra: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
        return (
            ("user-agent", self.ua),
            ("authorization", f"Bearer {self.token}"),
            ("grpc-timeout", f"{self.g.pick((10, 30, 60))}S"),
            *extra,
        )


def timestamp(g: Gen) -> bytes:
    return pb([(1, g.ts()), (2, g.rng.randrange(10**9))])


# -- ordinary gRPC traffic ----------------------------------------------------------------------------


def firestore_value(g: Gen, depth: int = 0) -> bytes:
    """A Firestore `Value`: string, integer, double, boolean, timestamp, reference, geo point, bytes, array, map."""
    kind = g.pick(("string", "string", "integer", "double", "boolean", "timestamp", "reference", "geo", "bytes", "array", "map"))
    if kind in ("array", "map") and depth >= 2:
        kind = "string"
    if kind == "string":
        return pb([(17, g.pick((g.word(), " ".join(g.word() for _ in range(g.rng.randrange(1, 9))), g.name().title())))])
    if kind == "integer":
        return pb([(2, g.rng.randrange(-(2**40), 2**40))])
    if kind == "double":
        return pb([(3, g.rng.uniform(-1000, 1000))])
    if kind == "boolean":
        return pb([(1, g.rng.randrange(2))])
    if kind == "timestamp":
        return pb([(10, timestamp(g))])
    if kind == "reference":
        return pb([(5, f"projects/demo/databases/(default)/documents/users/{b64u(g.rng.randbytes(15))}")])
    if kind == "geo":
        return pb([(8, pb([(1, g.rng.uniform(-60, 60)), (2, g.rng.uniform(-150, 150))]))])
    if kind == "bytes":  # a thumbnail hash, a blurhash-ish blob, a small random salt the app stores
        return pb([(18, g.rng.randbytes(g.pick((8, 16, 20, 32))))])
    if kind == "array":
        return pb([(9, pb([(1, firestore_value(g, depth + 1)) for _ in range(g.rng.randrange(1, 5))]))])
    return pb([(6, pb([(1, pb([(1, g.word()), (2, firestore_value(g, depth + 1))])) for _ in range(g.rng.randrange(1, 5))]))])


def firestore_streams(g: Gen) -> list[Req]:
    """Firestore's Listen and Write streams as the Android and iOS SDKs send them: targets with resume tokens,
    documents of every value type, stream tokens echoed back."""
    project = f"{g.word()}-{g.rng.randrange(1000, 9999)}"
    database = f"projects/{project}/databases/(default)"
    app = GrpcApp(g, "firestore.googleapis.com")
    head = app.metadata(
        (
            ("x-goog-api-client", "gl-java/ fire/25.1.1 grpc/1.62.2"),
            ("google-cloud-resource-prefix", database),
            ("x-goog-request-params", f"database={database.replace('/', '%2F')}"),
            ("x-firebase-gmpid", f"1:{g.rng.randrange(10**11, 10**12)}:android:{g.hex(8)}"),
        )
    )
    out: list[Req] = []
    stream = b64u(g.rng.randbytes(12))
    token = g.rng.randbytes(g.pick((8, 16)))
    for index in range(g.rng.randrange(3, 10)):
        if g.rng.random() < 0.5:
            targets = []
            for target in range(g.rng.randrange(1, 4)):
                query = pb(
                    [
                        (1, f"{database}/documents/users/{app.user}"),
                        (
                            2,
                            pb(
                                [
                                    (2, pb([(2, g.pick(("rooms", "messages", "orders", "feed")))])),
                                    (5, pb([(1, g.rng.randrange(1, 100))])),
                                ]
                            ),
                        ),
                    ]
                )
                fields: PbFields = [(2, query), (5, 2 * target + 2)]
                if g.rng.random() < 0.5:
                    fields.append((4, g.rng.randbytes(g.pick((12, 16, 20)))))  # resume_token from the last snapshot
                targets.append(pb([(1, database), (2, pb(fields)), (4, pb([(1, "goog-listen-tags"), (2, "existence-filter")]))]))
            out.append(grpc_req(app.host, "google.firestore.v1.Firestore/Listen", targets, head))
        else:
            writes = []
            for _ in range(g.rng.randrange(1, 6)):
                doc = pb(
                    [(1, f"{database}/documents/{g.pick(('users', 'posts', 'carts'))}/{b64u(g.rng.randbytes(15))}")]
                    + [(2, pb([(1, g.word()), (2, firestore_value(g))])) for _ in range(g.rng.randrange(1, 10))]
                )
                writes.append(pb([(1, doc), (3, pb([(1, g.word()), (1, g.word())]))]))
            first = [pb([(1, database)])] if index == 0 else []
            out.append(
                grpc_req(
                    app.host,
                    "google.firestore.v1.Firestore/Write",
                    [*first, pb([(2, stream), *[(3, w) for w in writes], (4, token)])],
                    head,
                )
            )
            token = g.rng.randbytes(len(token))  # the server's next stream token
    return out


def telemetry_batches(g: Gen) -> list[Req]:
    """OpenTelemetry-style span and log batches, gzip-compressed per message: random trace and span IDs (16 and
    8 bytes), nanosecond timestamps as fixed64, attributes."""
    app = GrpcApp(g, g.pick(("otel.example.io", "ingest.telemetry.example", "firebaselogging-pa.googleapis.com")))
    resource = pb(
        [
            (1, pb([(1, key), (2, pb([(1, value)]))]))
            for key, value in (("service.name", "shop-android"), ("os.version", "14"), ("device.model", "Pixel 7"))
        ]
    )
    out: list[Req] = []
    for _ in range(g.rng.randrange(2, 8)):
        spans = []
        trace = g.rng.randbytes(16)
        for _ in range(g.rng.randrange(1, 40)):
            start = (g.ts() * 10**9) + g.rng.randrange(10**9)
            span: PbFields = [
                (1, trace if g.rng.random() < 0.7 else g.rng.randbytes(16)),
                (2, g.rng.randbytes(8)),
                (5, g.pick(("GET /api/feed", "db.query", "image.decode", "ui.render", "http.client"))),
                (6, g.rng.randrange(1, 5)),
            ]
            if g.rng.random() < 0.6:
                span.append((4, g.rng.randbytes(8)))  # parent span id
            spans.append(
                pb(
                    [
                        *span,
                        (7, ("f64", start)),  # start_time_unix_nano
                        (8, ("f64", start + g.rng.randrange(10**5, 10**9))),
                        (9, pb([(1, "http.status_code"), (2, pb([(3, g.pick((200, 200, 304, 404)))]))])),
                        (12, ("f32", g.rng.randrange(2**32))),  # flags
                    ]
                )
            )
        batch = pb([(1, pb([(1, resource), (2, pb([(1, pb([(1, "io.opentelemetry.okhttp")])), *[(2, s) for s in spans]]))]))])
        compress = g.pick(("gzip", "gzip", ""))
        out.append(
            grpc_req(app.host, "opentelemetry.proto.collector.trace.v1.TraceService/Export", [batch], app.metadata(), compress)
        )
    return out


def unary_calls(g: Gen) -> list[Req]:
    """Unary calls of a ride, bank or delivery app: UUIDs, timestamps, coordinates, idempotency keys, opaque
    session and page tokens, 16-byte device IDs as bytes, money as units + nanos."""
    app = GrpcApp(g, f"api.{g.pick(('ridez', 'bankly', 'deliver', 'medi'))}{g.rng.randrange(100)}.example")
    device = g.rng.randbytes(16)
    session = b64u(g.rng.randbytes(32))
    out: list[Req] = []
    for _ in range(g.rng.randrange(3, 12)):
        method = g.pick(
            ("rides.v1.Rides/GetQuote", "accounts.v1.Accounts/GetBalance", "orders.v1.Orders/List", "payments.v1.Payments/Create")
        )
        fields: PbFields = [(1, g.uuid()), (2, timestamp(g)), (15, device), (16, session)]
        if method.endswith("GetQuote"):
            fields += [
                (3, pb([(1, g.rng.uniform(-60, 60)), (2, g.rng.uniform(-150, 150))])),
                (4, pb([(1, g.rng.uniform(-60, 60)), (2, g.rng.uniform(-150, 150))])),
            ]
        elif method.endswith("List"):
            fields += [(5, g.rng.randrange(10, 50))]
            if g.rng.random() < 0.6:
                fields.append((6, b64u(g.rng.randbytes(g.pick((24, 32, 48))))))  # page_token from the last page
        elif method.endswith("Create"):
            fields += [
                (7, g.uuid()),
                (8, pb([(1, "EUR"), (2, g.rng.randrange(1, 500)), (3, g.rng.randrange(10**9))])),
                (9, f"pm_{b64u(g.rng.randbytes(18))}"),
            ]
        head = app.metadata((("x-request-id", g.uuid()), ("x-app-version", f"{g.rng.randrange(1, 9)}.{g.rng.randrange(30)}.0")))
        out.append(grpc_req(app.host, method, [pb(fields)], head, g.pick(("", "", "gzip"))))
    return out


def grpc_web_app(g: Gen) -> list[Req]:
    """A web app's gRPC-Web calls (Envoy in front): binary and base64 text framing, search queries, page tokens,
    cart updates, session IDs in cookies."""
    host = f"api.{g.pick(('shop', 'news', 'travel'))}{g.rng.randrange(100)}.example"
    text = g.rng.random() < 0.5
    cookie = ("cookie", f"sid={b64u(g.rng.randbytes(24))}; theme=dark")
    head = (
        ("origin", f"https://www.{host[4:]}"),
        ("referer", f"https://www.{host[4:]}/search"),
        cookie,
        ("user-agent", "Mozilla/5.0 (Linux; Android 14) Chrome/126.0"),
    )
    out: list[Req] = []
    for _ in range(g.rng.randrange(3, 12)):
        kind = g.pick(("search", "page", "cart"))
        if kind == "search":
            message = pb(
                [(1, " ".join(g.word() for _ in range(g.rng.randrange(1, 4)))), (2, 20), (3, pb([(1, "price"), (2, 1)]))]
            )
            method = "catalog.v1.Catalog/Search"
        elif kind == "page":
            message = pb([(1, 20), (2, b64u(g.rng.randbytes(g.pick((16, 32, 48)))))])
            method = "catalog.v1.Catalog/ListItems"
        else:
            message = pb(
                [
                    (1, g.uuid()),
                    *[
                        (2, pb([(1, f"sku-{g.rng.randrange(10**6)}"), (2, g.rng.randrange(1, 4))]))
                        for _ in range(g.rng.randrange(1, 6))
                    ],
                ]
            )
            method = "cart.v1.Cart/Update"
        out.append(grpc_web_req(host, method, [message], head, text))
    return out


def sealed_fields(g: Gen) -> list[Req]:
    """Encryption done right inside protobuf: fresh-nonce AES-GCM and ChaCha20-Poly1305 in bytes fields, with and
    without a Tink-style key-ID prefix, client-streamed several to a call."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    app = GrpcApp(g, f"vault.{g.pick(('notes', 'health', 'wallet'))}{g.rng.randrange(100)}.example")
    key = g.rng.randbytes(32)
    aead = AESGCM(key) if g.rng.random() < 0.5 else ChaCha20Poly1305(key)
    prefix = b"\x01" + g.rng.randbytes(4) if g.rng.random() < 0.5 else b""
    out: list[Req] = []
    for _ in range(g.rng.randrange(2, 8)):
        messages = []
        for _ in range(g.rng.randrange(1, 5)):
            nonce = g.rng.randbytes(12)
            sealed = (
                prefix
                + nonce
                + aead.encrypt(
                    nonce, plaintext(g, g.pick(KINDS), {"name": "n", "email": "e@x", "phone": "+1", "id": g.uuid()}), None
                )
            )
            messages.append(pb([(1, g.uuid()), (2, sealed), (3, timestamp(g))]))
        out.append(grpc_req(app.host, "vault.v1.Vault/Upload", messages, app.metadata()))
    return out


GRPC_ORDINARY: dict[str, tuple[Callable[[Gen], list[Req]], int]] = {
    "gRPC: Firestore Listen and Write streams (resume and stream tokens, every value type)": (firestore_streams, 30),
    "gRPC: OpenTelemetry span batches, gzip (random trace and span IDs)": (telemetry_batches, 25),
    "gRPC: unary calls with UUIDs, timestamps, device IDs, session and page tokens": (unary_calls, 30),
    "gRPC-Web from a web app (binary and base64 text)": (grpc_web_app, 25),
    "gRPC: fresh-nonce AES-GCM / ChaCha20 in bytes fields, client streaming": (sealed_fields, 20),
}


# -- gRPC apps that encrypt with ECB, a fixed IV or a fixed nonce ---------------------------------------

GRPC_PLACES = ("bytes", "base64", "bytes-gzip", "web-text")


def grpc_weak_app(g: Gen, scheme: Scheme, requests: int) -> tuple[list[Req], list[Sent]]:
    """Each call carries one encrypted field (raw bytes, or base64 in a string) in a nested message, beside the
    app's ordinary fields."""
    app = GrpcApp(g, f"api.{g.pick(('bankly', 'shopr', 'medi', 'ridez', 'chatty'))}{g.rng.randrange(100)}.example")
    key = g.rng.randbytes(g.pick((16, 32)))
    iv = bytes(16) if g.rng.random() < 0.5 else g.rng.randbytes(16)
    place = g.pick(GRPC_PLACES)
    kinds = [g.pick(scheme.kinds or KINDS) for _ in range(g.rng.randrange(1, 4))]
    user = {"name": g.name() + str(g.rng.randrange(1000)), "email": g.email(), "phone": g.phone(), "id": g.uuid()}
    out: list[Req] = []
    sent: list[Sent] = []
    for _ in range(requests):
        clear = plaintext(g, g.pick(kinds), user)
        data = scheme.encrypt(key, iv, clear)
        inner: PbValue = base64.b64encode(data).decode() if place == "base64" else data
        message = pb([(1, g.uuid()), (2, pb([(1, g.ts()), (3, inner)])), (4, "android")])
        where = "grpc[0].2.3"
        if place == "web-text":
            req = grpc_web_req(app.host, "secure.v1.Secure/Send", [message], app.metadata(), text=True)
        else:
            req = grpc_req(app.host, "secure.v1.Secure/Send", [message], app.metadata(), "gzip" if place == "bytes-gzip" else "")
        sent.append(Sent(len(out), app.host, where, data, clear))
        out.append(req)
        if g.rng.random() < 0.4:
            out.append(grpc_req(app.host, "config.v1.Config/Get", [pb([(1, "en_US"), (2, timestamp(g))])], app.metadata()))
    return out, sent


POSITIVE_PER_SCHEME = 16


def grpc_sessions(seed: int = SEED) -> Iterator[Session]:
    rng = random.Random(seed)
    number = 0
    for family, (make, count) in GRPC_ORDINARY.items():
        for _ in range(count):
            number += 1
            g = Gen(random.Random(rng.getrandbits(64)))
            yield Session(family, f"10.200.{number % 250}.{number // 250 + 1}", make(g))
    for scheme in SCHEMES:
        for index in range(POSITIVE_PER_SCHEME):
            number += 1
            g = Gen(random.Random(rng.getrandbits(64)))
            requests = 1 if index < 2 else g.rng.randrange(2, 10)
            made, sent = grpc_weak_app(g, scheme, requests)
            yield Session(f"gRPC: {scheme.name}", f"10.200.{number % 250}.{number // 250 + 1}", made, scheme.mode, sent)


def measure_grpc(seed: int = SEED, workdir: Path | None = None) -> tuple[Figures, list[Outcome]]:
    """The figures of `tests.payload_sessions.measure`, for the gRPC sessions."""
    import tempfile
    from collections import Counter

    corpus = list(grpc_sessions(seed))
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = run(corpus, workdir or Path(tmp))
    ordinary = [o for o in outcomes if o.session.mode is None]
    positive = [o for o in outcomes if o.session.mode is not None]
    verdicts = [(o, *evidence(o.session)) for o in positive]
    carrying = [(o, basis) for o, basis, _ in verdicts if basis is not None]
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
                sum(o.session.family == f"gRPC: {scheme.name}" for o in positive),
                sum(o.session.family == f"gRPC: {scheme.name}" for o, _ in carrying),
                sum(o.session.family == f"gRPC: {scheme.name}" and o.right() for o, _ in carrying),
            )
            for scheme in SCHEMES
        ),
        by_basis=tuple(sorted(Counter(basis for _, basis in carrying).items())),
        no_evidence=tuple(sorted(Counter(why for _, basis, why in verdicts if basis is None).items())),
    )
    return figures, outcomes


def main() -> None:
    started = time.perf_counter()
    figures, outcomes = measure_grpc()
    took = time.perf_counter() - started
    print(
        f"ordinary gRPC sessions: {figures.ordinary_sessions}, calls: {figures.ordinary_requests}, bytes: {figures.ordinary_bytes:,}"
    )
    for family in GRPC_ORDINARY:
        mine = [o for o in outcomes if o.session.family == family]
        print(
            f"  {len(mine):3d} sessions {sum(len(o.session.requests) for o in mine):5d} calls  flagged {sum(bool(o.findings) for o in mine)}  {family}"
        )
    print(f"false positives: {figures.false_positive_sessions} sessions, {figures.false_positive_requests} calls refused")
    print(f"positive sessions: {figures.positive_sessions}, calls: {figures.positive_requests}")
    for name, count, carrying, caught in figures.by_scheme:
        print(f"  {count} sessions, {carrying} with evidence, {caught} caught: {name}")
    print(f"with evidence: {figures.with_evidence}, detected: {figures.detected}, with a wrong finding: {figures.wrong_findings}")
    print(f"by rule: {dict(figures.by_basis)}; without evidence: {dict(figures.no_evidence)}")
    print(f"caught without evidence: {figures.caught_without_evidence}")
    for o in outcomes:
        for f in o.findings if o.session.mode is None else []:
            print(
                "FP", o.session.family, f["evidence"]["kind"], str(f["evidence"].get("fields") or f["evidence"].get("keys"))[:300]
            )
    print(f"took {took:.1f} s")


if __name__ == "__main__":
    main()
