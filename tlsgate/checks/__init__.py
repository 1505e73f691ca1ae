"""Pure verdicts: facts from `tlsgate.tls` plus rules from `tlsgate.policy` give issues; no mitmproxy here.

Importing this package registers the built-in upstream judges (`tlsgate.checks.registry`), in this order;
a new judge's module is imported after them.
"""

from tlsgate.checks import upstream  # noqa: F401  # isort: skip
from tlsgate.checks import conformance  # noqa: F401  # isort: skip
from tlsgate.checks import revocation  # noqa: F401  # isort: skip
from tlsgate.checks import ct  # noqa: F401  # isort: skip
