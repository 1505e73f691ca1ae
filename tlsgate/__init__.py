"""tlsgate: a TLS-inspecting forward proxy that enforces YAML policies on what apps send."""

__version__ = "0.1.0"
