"""URL parameters that carry a secret by design, so that naming them as leaked credentials would be a false alarm.

OAuth 2.0 redirects carry an authorization code and state; presigned URLs
(S3 and GCS, V4 and V2; CloudFront; Azure SAS) carry a short-lived signature,
and OAuth 1.0a callbacks and signed requests a token that is useless without
the secret it was signed with. The payload check (`tlsgate.addons.payload`)
drops these from the URL's credentials and provider keys; an access token in
a URL is still a finding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# OAuth 2.0 puts these in redirect URLs by design (RFC 6749 4.1, RFC 7636, OIDC Session Management); an access
# token there is still a finding. Options and indexes the identity providers add (Google's `authuser`, `hd`,
# `prompt`; Microsoft's `client_info`; Facebook's `auth_type`, `granted_scopes`; Auth0's `auth0Client`) are not
# credentials by name (`redact.is_credential_name`), so they need no entry here.
OAUTH_URL_PARAMS = frozenset({"code", "state", "nonce", "code_challenge", "code_challenge_method", "session_state"})


def signed_url_params(url: str) -> frozenset[str]:
    """Parameters that belong in the URL by design, because a signature binds them to this one request: signed
    URLs (S3 and GCS, V4 and V2; CloudFront; Azure SAS) carry a short-lived signature, and OAuth 1.0a callbacks and
    signed requests carry a token that is useless without the secret it was signed with."""
    keys = {key.lower() for key, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    exempt = {key for key in keys if key.startswith(("x-amz-", "x-goog-"))}
    if "key-pair-id" in keys:  # CloudFront
        exempt |= {"signature", "policy", "key-pair-id"}
    if "sv" in keys and "sig" in keys:  # Azure shared access signature
        exempt.add("sig")
    if "signature" in keys and "expires" in keys and keys & {"awsaccesskeyid", "googleaccessid"}:  # S3 and GCS V2
        exempt |= {"signature", "awsaccesskeyid", "googleaccessid"}
    if "oauth_verifier" in keys:  # OAuth 1.0a callback (RFC 5849 2.2): the request token and its verifier
        exempt |= {"oauth_token", "oauth_verifier"}
    if "oauth_signature_method" in keys:  # OAuth 1.0a request signed in the query string (RFC 5849 3.5.3)
        exempt |= {"oauth_token", "oauth_signature", "oauth_consumer_key", "oauth_nonce"}
    return frozenset(exempt)


def exempt_params(url: str) -> frozenset[str]:
    """The lower-cased query parameter names of `url` that are no leak, whatever they hold."""
    return OAUTH_URL_PARAMS | signed_url_params(url)


def without_exempt_keys(keys: Iterable[dict[str, Any]], exempt: frozenset[str]) -> list[dict[str, Any]]:
    """Provider keys found outside the exempt query parameters: a presigned URL names its access key ID (AKIA...)
    by design, and the secret key never travels."""
    return [key for key in keys if not (key["field"].startswith("query.") and key["field"][6:].lower() in exempt)]
