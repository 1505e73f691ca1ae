"""Where verdicts go: findings, metrics, block pages and redaction. Depend on nothing above `tlsgate.tls`."""
