"""The policy language: located YAML, hosts, model, matcher, loader and one module per section.

Pure Python: depends on `proxy.tls` for facts, never on mitmproxy.
"""

from proxy.policy.loader import load_policy, load_texts
from proxy.policy.model import Location, Match, Mode, Policy, PolicyError, PolicyMessage, Settings
from proxy.policy.sections.cleartext import Cleartext

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
