"""Which requests are gRPC calls, by content type: read by the payload walk and by the block answer alike.

gRPC over HTTP/2 says `application/grpc` (`+proto`, `+json` or another codec
after a plus); gRPC-Web says `application/grpc-web` (binary frames) or
`application/grpc-web-text` (the same frames in base64), each with an
optional codec suffix.
"""

from __future__ import annotations


def grpc_call(content_type: str) -> str | None:
    """`grpc`, `grpc-web` or `grpc-web-text` for a gRPC content type (any codec suffix, any parameters), else None."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype.startswith("application/grpc-web-text"):
        return "grpc-web-text"
    if ctype.startswith("application/grpc-web"):
        return "grpc-web"
    if ctype == "application/grpc" or ctype.startswith("application/grpc+"):
        return "grpc"
    return None
