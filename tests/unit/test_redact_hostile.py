"""Planted secrets in every place an app puts them: the value never survives redaction, its name does."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from proxy.sinks import redact
from proxy.sinks.redact import REDACTED

SECRET = "Zq8sP1anted5ecretVa1ue"  # mixed letters and digits, like real tokens
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.c2lnbmF0dXJlc2lnbmF0dXJl"

URLS = {
    "userinfo": f"http://user:{SECRET}@api.test/",
    "secret-named query": f"http://api.test/login?password={SECRET}",
    "OAuth code": f"http://api.test/cb?code={SECRET}&state=xyz",
    "innocent name": f"http://api.test/x?ref={SECRET}",
    "innocent name, short value": "http://api.test/x?v=Ab3dE9",
    "JWT under an innocent name": f"http://api.test/x?next={JWT}",
    "JWT as parameter name": f"http://api.test/x?{JWT}",
    "JWT in the path": f"http://api.test/reset/{JWT}/confirm",
    "token segment": f"http://api.test/verify/{SECRET}",
    "UUID segment": "http://api.test/invite/5f2b9c1e-8a7d-4e3b-9c1a-2b3c4d5e6f70",
    "jsessionid": f"http://api.test/cart;jsessionid={SECRET}?page=2",
    "percent-encoded": f"http://api.test/x?data={quote(SECRET + '&x=1')}",
}
PLANTED = {"innocent name, short value": "Ab3dE9", "UUID segment": "5f2b9c1e-8a7d-4e3b-9c1a-2b3c4d5e6f70"}


@pytest.mark.parametrize("name", URLS)
def test_no_planted_value_survives_redact_url(name: str) -> None:
    shown = redact.redact_url(URLS[name])
    for value in (PLANTED.get(name, SECRET), JWT, quote(SECRET)):
        assert value not in shown, shown
    assert shown.startswith("http://") and "api.test" in shown


def test_readable_parts_stay_readable() -> None:
    shown = redact.redact_url("http://api.test/v1/users/42/orders?page=2&sort=desc&lang=en&flag=true")
    assert shown == "http://api.test/v1/users/42/orders?page=2&sort=desc&lang=en&flag=true"
    assert redact.redact_url(f"http://api.test/cart;jsessionid={SECRET}?page=2") == f"http://api.test/cart;jsessionid={REDACTED}?page=2"


def test_credentials_are_named_not_valued() -> None:
    found = {str(c) for c in redact.url_credentials(f"http://u:p@api.test/r/{JWT};jsessionid=1?code=1&{JWT}")}
    assert found == {"userinfo user:password in URL", "path token in path", "path jsessionid", "query code", "query token as parameter name"}
    assert not any(SECRET in str(c) or JWT in str(c) for c in redact.url_credentials(f"http://api.test/x?password={SECRET}"))


def test_user_agent_keeps_products_and_drops_pasted_tokens() -> None:
    ua = f"MyApp/1.2 (Android 14; Pixel 7) okhttp/4.12.0 key={SECRET} {JWT}"
    shown = redact.redact_user_agent(ua)
    assert shown.startswith("MyApp/1.2 (Android 14; Pixel 7) okhttp/4.12.0 ")
    assert SECRET not in shown and JWT not in shown
    assert len(redact.redact_user_agent("A" * 1000)) <= 200


@pytest.mark.parametrize("value", ["", "Bearer", SECRET, f"Bearer {SECRET}", f"{SECRET} {SECRET}", "Basic\t" + SECRET])
def test_authorization_values_never_appear(value: str) -> None:
    (cred,) = redact.header_credentials([("Authorization", value)])
    assert SECRET not in str(cred)
