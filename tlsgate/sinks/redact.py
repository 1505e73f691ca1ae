"""Name the credentials a request carried without ever keeping their values.

A finding that says "this cleartext request carried a Bearer token and an
api_key query parameter" is what a tester needs; the token itself must never
reach a findings file, a log line or a metric, since those travel further than
the traffic did.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from tlsgate.tls import multipart

REDACTED = "[REDACTED]"

# Field names that carry secrets in the apps tlsgate audits: passwords, tokens,
# API keys, sessions, signatures. Matched anywhere in the name, case-insensitively.
SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|pwd|secret|token|api[-_]?key|apikey|access[-_]?key|private[-_]?key|"
    r"^key$|[-_]key$|auth|session|sessid|^sid$|signature|^sig$|credential|otp|pin[-_]?code|cvv|ssn|"
    r"^code$|[-_]code$|^state$|nonce|ticket|assertion|verifier|challenge|hmac|jwt|bearer|^hash$|cred",
    re.IGNORECASE,
)
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")
# A query value shown as written: a number, or a short plain word (page=2, lang=en, sort=desc). Anything
# else may be a secret under an innocent name (OAuth's code, a reset link's t=...) and is not kept.
PLAIN_VALUE = re.compile(r"\d{1,8}|[a-z][a-z_-]{0,15}|true|false", re.IGNORECASE)
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,64}")
# A path segment that could be a secret: long and mixing letters with digits (tokens, reset codes, UUIDs,
# hex digests) or a JWT; ordinary segments (/v1/users/42/orders) stay readable.
TOKEN_SEGMENT = re.compile(r"(?=[^/]*[0-9])(?=[^/]*[A-Za-z])[A-Za-z0-9_~%+=.-]{16,}")
AUTH_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9._~+-]{0,19}")  # an RFC 9110 auth-scheme token, as schemes are named
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token", "x-access-token")


@dataclass(frozen=True)
class Credential:
    """What kind of secret was seen and where: never the value."""

    kind: str  # authorization | cookie | header | userinfo | query | form | json
    name: str  # header, cookie, parameter or field name; the scheme for Authorization

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name}

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def is_secret_name(name: str) -> bool:
    """Whether a value under this name is hidden from findings, logs and the console: deliberately broad, since
    hiding a harmless value costs nothing. What counts as a credential *found* is `is_credential_name`."""
    return bool(SECRET_NAME.search(name))


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# What a finding calls a credential, by the words of its name (split at separators and camelCase): a word that
# names a secret, not a substring of some other word (`authuser`, Google's account index, holds `auth`;
# `passport` holds `pass`), and not when the words around it say the value is about the secret rather than the
# secret itself (`auth_type`, `token_type`, `session_state`, `signature_method`) or is a token of another
# kind (`pageToken`, `NextToken`, `pagination_token`, `sync_token`, `idempotency_key`, `publicKey`).
CREDENTIAL_WORDS = _words(
    "password passwd pwd passphrase pass secret token apikey accesstoken authtoken idtoken sessionid sessid "
    "jsessionid phpsessid session auth credential credentials cred creds jwt bearer otp totp cvv cvc ssn pin "
    "pincode hmac signature assertion verifier"
)
EXACT_WORDS = frozenset(("key", "sig", "sid", "code", "state", "ticket", "hash"))  # credentials only as the whole name
COMPOUND_ENDINGS = ("password", "passwd", "secret", "token", "apikey", "sessionid", "sessid")  # `accesstoken`, `userpassword`
KEY_OWNERS = _words(
    "api access secret private client app auth signing session master encryption license stream x consumer "
    "subscription developer dev server partner account admin"
)
CODE_OWNERS = _words(
    "auth authorization verification otp sms pin reset activation security access login confirmation recovery "
    "mfa twofa onetime invite"
)
NOT_THE_SECRET_BEFORE = _words(
    "page pagination next previous prev continuation sync cursor resume push registration idempotency public pub device fcm apns"
)
NOT_THE_SECRET_AFTER = _words(
    "type types method methods mode provider providers flow url uri endpoint domain hint version status state name "
    "count length expires expiry expiration ttl timeout required enabled scheme kind format algorithm alg policy "
    "strength level"
)
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+[a-z]*")


def name_words(name: str) -> list[str]:
    """`X-Session-Id` -> [x, session, id]; `NextToken` -> [next, token]; `auth0Client` -> [auth0, client]."""
    return [word.lower() for part in re.split(r"[^A-Za-z0-9]+", name) for word in _merge_digits(_WORD.findall(part))]


def _merge_digits(words: list[str]) -> list[str]:
    out: list[str] = []
    for word in words:
        if out and word[0].isdigit():
            out[-1] += word  # auth0, oauth2, x509: a number belongs to the word before it
        else:
            out.append(word)
    return out


def is_credential_name(name: str) -> bool:
    """Whether a value under this name is a credential (a password, token, API key, session): see CREDENTIAL_WORDS."""
    words = name_words(name)
    if len(words) == 1 and words[0] in EXACT_WORDS:
        return True
    for index, word in enumerate(words):
        before = words[index - 1] if index else ""
        after = words[index + 1] if index + 1 < len(words) else ""
        if word in CREDENTIAL_WORDS:
            hit = True
        elif word == "key":
            hit = before in KEY_OWNERS
        elif word == "code":
            hit = before in CODE_OWNERS
        else:
            ending = next((e for e in COMPOUND_ENDINGS if word.endswith(e) and word != e), None)
            if ending is None:
                continue
            hit, before = True, word[: -len(ending)] or before
        if hit and before not in NOT_THE_SECRET_BEFORE and after not in NOT_THE_SECRET_AFTER:
            return True
    return False


def header_credentials(headers: Iterable[tuple[str, str]]) -> list[Credential]:
    found: list[Credential] = []
    for name, value in headers:
        lower = name.lower()
        if lower in ("authorization", "proxy-authorization"):
            found.append(Credential("authorization", f"{lower}: {auth_scheme(value)}"))
        elif lower == "cookie":
            for part in value.split(";"):
                cookie = part.split("=", 1)[0].strip()
                if cookie:
                    found.append(Credential("cookie", cookie[:64]))
        elif lower in CREDENTIAL_HEADERS or is_credential_name(lower):
            found.append(Credential("header", lower[:64]))
    return found


def auth_scheme(value: str) -> str:
    """`Bearer`, `Basic`, ...: the word before the credentials. A value without one (`Authorization: <api key>`)
    is the secret itself, so it is never quoted."""
    parts = value.split(None, 1)
    if not parts:
        return "empty"
    if len(parts) == 2 and AUTH_SCHEME.fullmatch(parts[0]):
        return parts[0]
    return "no scheme"


def looks_like_token(value: str) -> bool:
    """JWTs travel under innocent names (`?state=eyJ...`); their shape gives them away."""
    return bool(JWT.search(value))


def url_credentials(url: str) -> list[Credential]:
    parts = urlsplit(url)
    found = [Credential("userinfo", "user:password in URL")] if "@" in parts.netloc else []
    found += path_credentials(parts.path)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if is_credential_name(key) or looks_like_token(value):
            found.append(Credential("query", key[:64]))
        elif looks_like_token(key):
            found.append(Credential("query", "token as parameter name"))
    return found


def body_credentials(content_type: str, body: bytes) -> list[Credential]:
    """Form and JSON bodies, the two ways apps post logins; bounded so a large upload costs nothing."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    sample = body[:65536]
    if ctype == "application/x-www-form-urlencoded":
        text = sample.decode("utf-8", "replace")
        return [Credential("form", k[:64]) for k, _ in parse_qsl(text, keep_blank_values=True) if is_credential_name(k)]
    if ctype == "application/json" or ctype.endswith("+json"):
        try:
            data = json.loads(sample)
        except (ValueError, RecursionError):  # hostile nesting ([[[[...) is not a crash
            return []
        return [Credential("json", name[:64]) for name in _json_secret_keys(data, depth=0)]
    if ctype == "multipart/form-data":  # each part's own name, never a filename="..." read as one
        return [Credential("form", name[:64]) for name in multipart.names(content_type, sample, 256) if is_credential_name(name)]
    return []


def _json_secret_keys(data: object, depth: int) -> list[str]:
    if depth > 4:
        return []
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(key, str) and is_credential_name(key) and not isinstance(value, dict | list):
                found.append(key)
            found.extend(_json_secret_keys(value, depth + 1))
    elif isinstance(data, list):
        for item in data[:50]:
            found.extend(_json_secret_keys(item, depth + 1))
    return found


def redact_url(url: str) -> str:
    """The URL kept readable without anything that could be a secret: userinfo, query values other than
    plain numbers and words, token-shaped path segments and `;name=value` path parameters (jsessionid).

    Never raises: the URL may be anything a client wrote. The userinfo is cut off
    before parsing, since `urlsplit` rejects a bracket in it (`http://[x]@host/`,
    or a URL redacted once already), and an authority it still cannot parse is
    not shown at all.
    """
    scheme, sep, rest = url.partition("://")
    userinfo = False
    if sep:
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        if "@" in rest[:end]:
            rest, userinfo = rest[:end].rsplit("@", 1)[1] + rest[end:], True
    try:
        parts = urlsplit(f"{scheme}{sep}{rest}")
    except ValueError:
        return f"{scheme}{sep}{REDACTED} ({len(rest)} chars)" if sep else f"{REDACTED} ({len(url)} chars)"
    netloc = f"{REDACTED}@{parts.netloc}" if userinfo else parts.netloc
    query = "&".join(_redact_pair(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, redact_path(parts.path), query, ""))


def _redact_pair(key: str, value: str) -> str:
    name = key if PLAIN_NAME.fullmatch(key) and not looks_like_token(key) else REDACTED
    if not value:
        return name
    keep = PLAIN_VALUE.fullmatch(value) and not is_secret_name(key)
    return f"{name}={value if keep else REDACTED}"


def redact_path(path: str) -> str:
    return "/".join(_redact_segment(segment) for segment in path.split("/"))


def _redact_segment(segment: str) -> str:
    base, _, params = segment.partition(";")
    if looks_like_token(base) or TOKEN_SEGMENT.fullmatch(base):
        base = REDACTED
    if not params:
        return base
    shown = [f"{p.split('=', 1)[0][:64]}={REDACTED}" if "=" in p else REDACTED for p in params.split(";")]
    return ";".join([base, *shown])


def path_credentials(path: str) -> list[Credential]:
    """Sessions in path parameters (`;jsessionid=`) and tokens as path segments (`/reset/eyJ...`)."""
    found: list[Credential] = []
    for segment in path.split("/"):
        base, _, params = segment.partition(";")
        if looks_like_token(base):
            found.append(Credential("path", "token in path"))
        for param in params.split(";") if params else ():
            found.append(Credential("path", param.split("=", 1)[0][:64] or "parameter"))
    return found


# A URL; a path with a query or parameters, bare or after host[:port] (mitmdump's WebSocket message lines end in
# `127.0.0.1:8000/chat?token=...`); or a host with a query and no path (a hostile SNI).
_URL_TOKEN = re.compile(
    r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>]+"""
    r"""|(?<![^\s'"(=])(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)?(?::\d{1,5})?/[^\s'"<>]*[?;][^\s'"<>]*"""
    r"""|(?<![^\s'"(=])[A-Za-z0-9_.-]+(?::\d{1,5})?\?[^\s'"<>]*="""
    r"""[^\s'"<>]*"""
)


_seeded: re.Pattern[str] | None = None  # every wire form of the policy's seeded identifiers (payload inspection)


def mask_seeded(needles: Iterable[str]) -> None:
    """Console and log lines hide the policy's seeded identifiers too (a user name in a URL path is a plain word).

    Set by the payload add-on whenever the policy in force changes; matched case-insensitively, longest first.
    """
    global _seeded
    ordered = sorted({n for n in needles if n}, key=len, reverse=True)
    _seeded = re.compile("|".join(map(re.escape, ordered)), re.IGNORECASE) if ordered else None


def redact_text(text: str) -> str:
    """Free text (a log line quoting a malformed request line) with every URL or path?query in it redacted, and
    every quoted bytes value (`b'...'`: mitmproxy quotes what a client or server sent) reduced to what is safe."""
    if _seeded is not None:
        text = _seeded.sub(REDACTED, text)
    if "b'" not in text and 'b"' not in text:
        return _redact_urls(text)
    shown, last = [], 0
    for quoted in _BYTES_REPR.finditer(text):  # each part redacted once: redacting a redacted URL again could fail
        shown += [_redact_urls(text[last : quoted.start()]), _redact_bytes_repr(quoted)]
        last = quoted.end()
    return "".join([*shown, _redact_urls(text[last:])])


def _redact_urls(text: str) -> str:
    if "?" not in text and "@" not in text and ";" not in text:
        return text

    def one(found: re.Match[str]) -> str:
        token = found.group(0)
        if "://" in token:
            return redact_url(token)
        prefix = "http://h" if token.startswith("/") else "http://"
        return redact_url(prefix + token)[len(prefix) :]

    return _URL_TOKEN.sub(one, text)


# Python's repr of bytes, as mitmproxy's log lines and errors quote raw input: "Invalid header line:
# b'Authorization Bearer ...'", a cut-short request head, a ping payload, an h2 header value, a SOCKS5 buffer.
_BYTES_REPR = re.compile(r"""(?<![A-Za-z0-9_])b('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_REPR_BREAK = re.compile(r"(\\r\\n|\\n|\\r)")  # a line break as the repr writes it
_FIELD = re.compile(r"(?P<name>[!#$%&*+.^_`|~0-9A-Za-z-]{1,64}):[ \t]*(?P<value>.*)")
_REQUEST_LINE = re.compile(r"[A-Z]{3,12} \S|HTTP/\d")
_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,39}")  # a header name without its colon ("Authorization Bearer ...")
# Whole values that are protocol words, not data: framing errors quote them ("unknown transfer-encoding: b'br'").
_PROTOCOL_WORD = re.compile(
    r"\d{1,19}|chunked|gzip|deflate|br|zstd|compress|identity|close|keep-alive|upgrade|websocket|h2c?|trailers|"
    r":(?:method|scheme|authority|path|status|protocol)",
    re.IGNORECASE,
)
_SHOWN_FIELDS = {
    "host": re.compile(r"[A-Za-z0-9.\-\[\]:]{1,260}"),
    "content-length": re.compile(r"\d{1,19}"),
    "transfer-encoding": re.compile(r"[A-Za-z, ]{1,64}"),
    "connection": re.compile(r"[A-Za-z, -]{1,64}"),
    "upgrade": re.compile(r"[A-Za-z0-9, /.-]{1,64}"),
}


def _redact_bytes_repr(found: re.Match[str]) -> str:
    quoted = found.group(1)
    parts = _REPR_BREAK.split(quoted[1:-1])
    shown = [part if index % 2 else _redact_repr_line(part) for index, part in enumerate(parts)]
    return f"b{quoted[0]}{''.join(shown)}{quoted[0]}"


def _redact_repr_line(line: str) -> str:
    """One line of quoted client bytes: a request line with its URL redacted, a header with its name and the
    value only where it is a framing value (Host, Content-Length, ...), anything else as its length."""
    core = line.strip()
    if not core:
        return line
    lead = line[: len(line) - len(line.lstrip())]
    if _REQUEST_LINE.match(core) or core.startswith("/"):  # a request line, or an h2 `:path`
        return lead + " ".join(_redact_request_word(word) for word in core.split(" "))
    field = _FIELD.fullmatch(core)
    if field:
        name, value = field["name"], field["value"]
        shape = _SHOWN_FIELDS.get(name.lower())
        if shape is not None and shape.fullmatch(value):
            return f"{lead}{name}: {value}"
        scheme = auth_scheme(value) if name.lower() in ("authorization", "proxy-authorization") else ""
        return f"{lead}{name}: {REDACTED} ({f'{scheme}, ' if scheme else ''}{len(value)} chars)"
    if _PROTOCOL_WORD.fullmatch(core):
        return line
    first, _, rest = core.partition(" ")
    if rest and _LABEL.fullmatch(first):
        return f"{lead}{first} {REDACTED} ({len(rest.strip())} chars)"
    return f"{lead}{REDACTED} ({len(core)} chars)"


_REQUEST_WORD = re.compile(
    r"[A-Z]{3,12}|HTTP/[\d.]{1,5}|\d{3}|[A-Za-z][A-Za-z-]{0,30}"  # method, version, status, a stray word
    r"|[A-Za-z0-9.\-\[\]]{1,253}:\d{1,5}"  # CONNECT's host:port
)


def _redact_request_word(word: str) -> str:
    if "://" in word:
        return redact_url(word)
    if word.startswith("/"):
        return redact_url("http://h" + word)[len("http://h") :]
    plain = _REQUEST_WORD.fullmatch(word) and not (looks_like_token(word) or TOKEN_SEGMENT.fullmatch(word))
    return word if plain else REDACTED


def redact_token_words(value: str) -> str:
    """A header value with each token-shaped word (a JWT, or 16+ letters mixed with digits) redacted: a value
    under an innocent header name (a session id, a key in a malformed Content-Length) is not shown either."""
    if not TOKEN_SEGMENT.search(value) and not looks_like_token(value):
        return value
    return " ".join(REDACTED if looks_like_token(w) or TOKEN_SEGMENT.fullmatch(w.strip(",;")) else w for w in value.split(" "))


_HOST_CHARS = re.compile(r"[\w.*\-\[\]:%]*")  # letters of any script: a Host header may carry an IDN unencoded


def redact_host(host: str) -> str:
    """A host name as a client sent it (SNI, Host header), cut at the first character no host name has: a client
    can put anything there (`api.test?token=...`), and findings and logs keep host names."""
    shown = _HOST_CHARS.match(host)
    kept = shown.group(0) if shown else ""
    if len(kept) == len(host):
        return host
    return f"{kept}{REDACTED} ({len(host) - len(kept)} chars)"


def redact_user_agent(value: str) -> str:
    """Product tokens (`okhttp/4.12.0`, `Dart/3.3 (dart:io)`) are kept; a token or key pasted into the
    User-Agent is not."""
    shown = " ".join(REDACTED if looks_like_token(w) or TOKEN_SEGMENT.search(w.split("/", 1)[-1]) else w for w in value.split())
    return shown[:200]


def dedupe(creds: Iterable[Credential]) -> list[Credential]:
    seen: dict[tuple[str, str], Credential] = {}
    for cred in creds:
        seen.setdefault((cred.kind, cred.name), cred)
    return list(seen.values())


def request_credentials(headers: Iterable[tuple[str, str]], url: str, content_type: str, body: bytes | None) -> list[Credential]:
    """Every credential a request carries (headers, URL, and a form or JSON body when given), each kind and name
    once: what the cleartext finding and the accepted-probe finding both name."""
    found = header_credentials(headers)
    found += url_credentials(url)
    if body:
        found += body_credentials(content_type, body)
    return dedupe(found)
