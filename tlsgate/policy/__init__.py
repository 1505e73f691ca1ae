"""The policy language: located YAML, hosts, model, matcher, loader and one module per section.

Pure Python: depends on `tlsgate.tls` for facts, never on mitmproxy.
"""

from tlsgate.policy.loader import load_policy, load_texts
from tlsgate.policy.model import Location, Match, Mode, Policy, PolicyError, PolicyMessage, Settings
from tlsgate.policy.sections.cleartext import Cleartext

__all__ = [
    "Cleartext",
    "Location",
    "Match",
    "Mode",
    "Policy",
    "PolicyError",
    "PolicyMessage",
    "Settings",
    "load_policy",
    "load_texts",
]
