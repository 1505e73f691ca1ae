"""The policy's sections, one module each; importing this package registers the built-in ones.

To add a section: write `tlsgate/policy/sections/<name>.py` with its rules type,
parser and schema fragment, `NAME = register(Section(...))` it, and import it
below. Its check goes in `tlsgate/checks/` and reads a host's value through
that object, typed: `NAME.of(match.settings)` (sections with a default) or
`NAME.get(match.settings)` (None where unset). An upstream check registers its
judge with the section (`tlsgate.checks.registry`) and needs no add-on code.
"""

from tlsgate.policy.sections.base import SECTIONS, Context, Section, register, unregister

from tlsgate.policy.sections import certificates, cleartext, client, pins, tls  # noqa: F401  # isort: skip
from tlsgate.policy.sections import destinations, quic  # noqa: F401  # isort: skip
from tlsgate.policy.sections import payload  # noqa: F401  # isort: skip
from tlsgate.policy.sections import app  # noqa: F401  # isort: skip
from tlsgate.policy.sections import timeouts  # noqa: F401  # isort: skip
from tlsgate.policy.sections import revocation  # noqa: F401  # isort: skip
from tlsgate.policy.sections import ct  # noqa: F401  # isort: skip

# Schema and messages list the built-in sections in this order whatever order their modules were imported in,
# and sections registered later after them.
_BUILT_IN = ("cleartext", "tls", "certificates", "pins", "client", "quic", "local_destinations", "pin_sets")
for _name in sorted(SECTIONS, key=lambda n: _BUILT_IN.index(n) if n in _BUILT_IN else len(_BUILT_IN)):
    SECTIONS[_name] = SECTIONS.pop(_name)

__all__ = ["SECTIONS", "Context", "Section", "register", "unregister"]
