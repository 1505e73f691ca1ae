"""Policy core: model, loader, matcher and presets. Pure Python, no mitmproxy import."""

from proxy.policy.loader import load_policy, load_texts
from proxy.policy.model import Cleartext, Location, Match, Mode, Policy, PolicyError, PolicyMessage, Settings

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
