"""Pure verdicts: facts from `tlsgate.tls` plus rules from `tlsgate.policy` give issues; no mitmproxy here."""
