"""What `tlsgate pin` prints: the chain with its pins, and a policy snippet ready to paste.

The snippet pins the leaf and, as the backup Android and OkHttp both ask for,
the intermediate: a routine certificate renewal with a new key then keeps
working, and `tlsgate validate` accepts the snippet as printed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from cryptography import x509

from tlsgate.tls.certcheck import chain_summary

BACKUP_HORIZON = dt.timedelta(days=365)


def pin_set_name(host: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-") or "pins"


def describe_chain(chain: Sequence[x509.Certificate]) -> list[str]:
    lines = []
    for item in chain_summary(chain):
        lines += [
            f"[{item['index']}] {item['role']}: {item['subject']}",
            f"    issuer:  {item['issuer']}",
            f"    expires: {str(item['not_after'])[:10]}   key: {item['key']}   signature: {item['signature_hash']}",
            f"    pin:     {item['pin']}",
        ]
    return lines


def snippet(host: str, chain: Sequence[x509.Certificate], today: dt.date, name: str | None = None) -> str:
    """A `pin_sets` entry and a rule using it; the leaf pin plus the next certificate up as backup."""
    summary = chain_summary(chain)
    name = name or pin_set_name(host)
    lines = ["pin_sets:", f"  {name}:", "    pins:"]
    for item, label in zip(summary[:2], ("", "backup, "), strict=False):
        expiry = str(item["not_after"])[:10]
        lines.append(f"      - {item['pin']}  # {label}{item['role']} {item['subject']} (expires {expiry})")
    if len(summary) < 2:
        lines.append("      # no second certificate in the chain: add a backup pin (a spare key) before enforcing")
    expires = today + BACKUP_HORIZON
    if len(chain) > 1:
        expires = min(expires, chain[1].not_valid_after_utc.date())
    lines += [
        f"    expires: {expires.isoformat()}  # after this date the pins are not enforced (as on Android); rotate before",
        "rules:",
        f"  - hosts: [{host}]",
        f"    pins: {name}",
    ]
    return "\n".join(lines) + "\n"
