"""Facts about what a request carries once TLS is off: encodings, ciphertext block structure, token formats, seeded identifiers.

Pure byte- and text-level code at the level of `tlsgate.tls`: nothing here knows
about policies, verdicts or mitmproxy, and nothing here hands out a value it
found (callers get field paths, encodings and lengths). `recall` keeps the
first bytes of a field's recent cipher-shaped values in process memory, to
compare the next value with them, and writes them nowhere.
"""
