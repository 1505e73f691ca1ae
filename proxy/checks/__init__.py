"""Pure verdicts: facts from `proxy.tls` plus rules from `proxy.policy` give issues; no mitmproxy here."""
