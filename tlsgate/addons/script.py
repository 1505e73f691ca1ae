"""Entry point for stock mitmproxy tools: `mitmdump -s tlsgate/addons/script.py --set tlsgate_policy=...`.

So someone who lives in mitmweb sees tlsgate's verdicts on their own flows.
"""

from tlsgate.addons import make_addons

addons = make_addons()
