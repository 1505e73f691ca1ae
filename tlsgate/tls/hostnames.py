"""A Unicode host name as the devices put it on the wire: UTS 46 mapping, IDNA 2008 (non-transitional) punycode.

Android, iOS, browsers and curl (libidn2) all encode `faß.de` as
`xn--fa-hia.de`; Python's built-in `idna` codec is IDNA 2003 and gives
`fass.de`, a different host. A rule or an app's declared domain normalised the
2003 way would match a host the app never reaches and miss the one it does,
so every name tlsgate reads from a policy, a config or a certificate check
goes through here. IDNA 2008 also refuses look-alikes that 2003 accepted
(`evil⁄com.de` with U+2044 FRACTION SLASH), which then fail as invalid names.
"""

from __future__ import annotations

import idna


def to_ascii(name: str) -> str:
    """`name` in lower-case ASCII; non-ASCII labels become punycode. Raises UnicodeError for a name IDNA 2008 refuses.

    Labels are converted one by one so that an ASCII label keeps what DNS allows
    but IDNA does not (`_dmarc`, `a_b`): only Unicode labels must be valid IDNs.
    """
    if name.isascii():
        return name.lower()
    labels = []
    for label in name.split("."):
        if label.isascii():
            labels.append(label.lower())
            continue
        try:
            labels.append(idna.encode(label, uts46=True, transitional=False).decode("ascii"))
        except idna.IDNAError as error:
            raise UnicodeError(f"{label!r} is not a valid internationalised name: {error}") from None
    return ".".join(labels)
