"""`local_destinations:` whether a host may be reached at the proxy's own loopback, link-local or addresses.

Refused by default: an allowed device must not reach services bound to the
proxy host (a database on 127.0.0.1, the metrics port) or the cloud metadata
address through tlsgate. A test lab whose staging server really runs on the
proxy host allows it for that host only, or names it with `--resolve`.
"""

from __future__ import annotations

import enum

from tlsgate.policy.sections.base import choice_section


class LocalDestinations(enum.StrEnum):
    REFUSE = "refuse"
    ALLOW = "allow"


LOCAL_DESTINATIONS = choice_section(
    "local_destinations",
    LocalDestinations,
    LocalDestinations.REFUSE,
    "Connections to the proxy host's loopback, link-local (169.254.0.0/16, fe80::/10) "
    "or own addresses: refuse (default) or allow. A --resolve mapping is always allowed.",
)
