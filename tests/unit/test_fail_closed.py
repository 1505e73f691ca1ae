"""An exception inside a verdict hook blocks the request: mitmproxy would log it and forward the request."""

from __future__ import annotations

import pytest

from tests.unit import test_addons
from tests.unit.test_addons import Gate, plain
from tlsgate.addons import make_addons
from tlsgate.addons.verdicts import HTTP_VERDICT_HOOKS

gate = test_addons.gate  # the same fixture: make_addons() in a mitmproxy test context


def test_every_http_verdict_hook_of_every_add_on_fails_closed() -> None:
    hooks = []
    for addon in make_addons():
        if not hasattr(addon, "sink"):
            continue  # not a verdict add-on: it records no findings (Lifetime, metrics, the policy store)
        for name in HTTP_VERDICT_HOOKS:
            hook = getattr(type(addon), name, None)
            if hook is not None and type(addon).__module__.startswith("tlsgate.addons"):
                hooks.append(f"{type(addon).__name__}.{name}")
                assert getattr(hook, "tlsgate_fail_closed", False), f"{type(addon).__name__}.{name} is not @fail_closed"
    assert len(hooks) >= 6, hooks  # the contract covers the real add-ons, not an empty list


def test_a_check_that_raises_blocks_the_request_with_a_finding(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")

    monkeypatch.setattr("tlsgate.addons.cleartext.judge_cleartext", broken)
    flow = plain("open.test")  # cleartext is allowed for open.test: without the guard it would be forwarded
    gate.guard.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    (finding,) = gate.findings()
    assert (finding["check"], finding["action"], finding["evidence"]["kind"]) == ("request", "blocked", "check_failed")
    assert "CleartextGuard.request" in finding["detail"] and "UnicodeEncodeError" in finding["detail"]


def test_when_even_the_finding_fails_a_bare_403_is_still_sent(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("check")

    monkeypatch.setattr("tlsgate.addons.cleartext.judge_cleartext", broken)
    monkeypatch.setattr("tlsgate.addons.verdicts.record", broken)
    flow = plain("open.test")
    gate.guard.request(flow)
    assert flow.response is not None and flow.response.status_code == 403 and b"refused by tlsgate" in flow.response.content
