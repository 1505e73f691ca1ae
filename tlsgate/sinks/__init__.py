"""Where verdicts go: findings, metrics, block pages, redaction, and the console's reasons for refused handshakes.

Depend on nothing above `tlsgate.tls`.
"""
