"""`cleartext:` what happens to unencrypted traffic to a host: plain http:// and ws://, and TCP streams that are not TLS.

Two spellings, so every policy written before non-HTTP protocols were judged
keeps its meaning: `cleartext: block` (or `allow`) applies to every protocol,
and a mapping decides per protocol, with `default` for the ones it does not
name (block when `default` is left out: a forgotten protocol stays closed):

    cleartext: {default: block, mqtt: allow, unknown: allow}

The mapping also takes `strip_starttls: true`,
an attack turned on for the hosts a tester chooses (off by default): the
server's offer of STARTTLS is removed from what the client is shown
(`tlsgate.tls.starttls`), and a client that then goes on in the clear is
caught before its line reaches the server (`tlsgate.checks.fallback`). It lives
here, not among the client's TLS probes, because it acts on the cleartext
stream this section already governs, needs no certificate, and applies to the
same per-host rules as the protocol verdicts.

Values are block or allow only. Reporting instead of blocking is what a rule's
`mode: report` is for; a per-protocol `report` would be a second, competing
way to say it (and would silently report a protocol under `mode: enforce`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import yaml

from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.sections.base import Context, Section, boolean, register
from tlsgate.tls.plaintext import PROTOCOLS


class Cleartext(enum.StrEnum):
    BLOCK = "block"
    ALLOW = "allow"


# Protocols by the word the policy uses: `http` covers plain http:// and ws:// requests.
PROTOCOL_KEYS = PROTOCOLS
CLEARTEXT_KEYS = ("default", *PROTOCOL_KEYS, "strip_starttls")


@dataclass(frozen=True)
class CleartextRules:
    """The mapping form: one verdict per protocol, `default` for the rest."""

    default: Cleartext = Cleartext.BLOCK
    protocols: dict[str, Cleartext] = field(default_factory=dict)
    strip_starttls: bool = False  # remove the server's STARTTLS offer: does the client go on in the clear?

    def __str__(self) -> str:
        named = ", ".join(f"{name} {value}" for name, value in self.protocols.items())
        text = f"{self.default} ({named})" if named else str(self.default)
        return f"{text}, strip_starttls" if self.strip_starttls else text


def strips_starttls(value: Cleartext | CleartextRules | None) -> bool:
    """Whether the host's `cleartext` turns STARTTLS stripping on (only the mapping form can)."""
    return isinstance(value, CleartextRules) and value.strip_starttls


def cleartext_for(value: Cleartext | CleartextRules | None, protocol: str) -> Cleartext:
    """The verdict for one protocol under either spelling; an absent section blocks."""
    if isinstance(value, Cleartext):
        return value
    if isinstance(value, CleartextRules):
        return value.protocols.get(protocol, value.default)
    return Cleartext.BLOCK


def parse_cleartext(node: yaml.Node, reader: yn.Reader, context: Context) -> Cleartext | CleartextRules | None:
    where = f"{context.where}.cleartext" if context.where else "cleartext"
    if not isinstance(node, yaml.MappingNode):
        value = yn.choice(node, reader, where, tuple(Cleartext))
        return Cleartext(value) if value else None
    entries = yn.section(node, reader, where, CLEARTEXT_KEYS)
    if entries is None:
        return None
    if not entries:
        reader.error(node, f"{where} must name at least one protocol or 'default' (or be block/allow)")
        return None
    values: dict[str, Cleartext] = {}
    strip = False
    ok = True
    for key, (_, value_node) in entries.items():
        if key not in CLEARTEXT_KEYS:
            ok = False
            continue
        if key == "strip_starttls":
            flag = boolean(value_node, reader, f"{where}.{key}")
            ok, strip = ok and flag is not None, bool(flag)
            continue
        if isinstance(value_node, yaml.ScalarNode) and yn.scalar(value_node) == "report":
            reader.error(value_node, f"{where}.{key} must be block or allow; to report instead of block, set 'mode: report'")
            ok = False
            continue
        value = yn.choice(value_node, reader, f"{where}.{key}", tuple(Cleartext))
        if value is None:
            ok = False
            continue
        values[key] = Cleartext(value)
    if not ok:
        return None
    default = values.pop("default", Cleartext.BLOCK)
    return CleartextRules(default, {name: values[name] for name in PROTOCOL_KEYS if name in values}, strip)


_VERDICT = {"enum": ["block", "allow"]}

CLEARTEXT: Section[Cleartext | CleartextRules] = register(
    Section(
        name="cleartext",
        parse=parse_cleartext,
        default=Cleartext.BLOCK,
        schema={"$ref": "#/$defs/cleartext"},
        defs={
            "cleartext": {
                "description": "Unencrypted traffic: plain http:// and ws:// requests, and TCP streams that are not TLS "
                "(MQTT, SMTP, IMAP, POP3, FTP, XMPP, Redis, unknown). block or allow for every protocol, or a mapping "
                "per protocol with 'default' (block when omitted) for the rest. mode: report reports instead of blocking.",
                "oneOf": [
                    {**_VERDICT, "description": "Every cleartext protocol."},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "properties": {
                            "default": {**_VERDICT, "description": "Protocols not named here (block when omitted)."},
                            "http": {**_VERDICT, "description": "Plain http:// and ws:// requests."},
                            **{
                                name: {**_VERDICT, "description": f"{name} streams in the clear."}
                                for name in PROTOCOL_KEYS
                                if name not in ("http", "unknown")
                            },
                            "unknown": {**_VERDICT, "description": "Non-TLS TCP streams that match no known protocol."},
                            "strip_starttls": {
                                "type": "boolean",
                                "description": "Remove the server's STARTTLS offer (SMTP, IMAP, POP3, XMPP) from what the "
                                "client is shown, once per device, host and port until the client's answer is known: a "
                                "client that then authenticates or sends data in the clear is caught and closed before "
                                "the line reaches the server. Off by default.",
                            },
                        },
                    },
                ],
            }
        },
    )
)
