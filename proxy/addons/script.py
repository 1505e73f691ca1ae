"""Entry point for stock mitmproxy tools: `mitmdump -s proxy/addons/script.py --set tlsgate_policy=...`.

So someone who lives in mitmweb sees tlsgate's verdicts on their own flows.
"""

from proxy.addons import make_addons

addons = make_addons()
