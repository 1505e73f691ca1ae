"""The `run --duration/--until-idle/--fail-on` addon without a proxy: options, the in-process verdict, the timers."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from tlsgate.addons.lifetime import Lifetime, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1h", 3600), ("2.5", 2.5), ("250ms", 0.25)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-1s", "0", "1d", "1h30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_options_are_validated_like_mitmproxy_options() -> None:
    addon = Lifetime()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="not a duration"):
            tctx.configure(addon, tlsgate_until_idle="soon")
        with pytest.raises(exceptions.OptionsError, match="tlsgate_fail_on"):
            tctx.configure(addon, tlsgate_fail_on="info")
        tctx.configure(addon, tlsgate_duration="1m", tlsgate_until_idle="5s", tlsgate_fail_on="high")
        assert (addon.duration, addon.idle, addon.threshold) == (60, 5, 3)


def finding(action: str, severity: str) -> SimpleNamespace:
    return SimpleNamespace(action=action, severity=severity)


def test_the_verdict_counts_this_runs_findings_by_the_report_rule() -> None:
    addon = Lifetime()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tlsgate_fail_on="high")
        for item in (finding("reported", "medium"), finding("passed", "critical")):
            addon.on_finding(item)
        assert (addon.findings, addon.failing, addon.exit_code) == (2, 0, 0)
        addon.on_finding(finding("blocked", "low"))
        assert addon.exit_code == 1 and addon.verdict().startswith("FAIL: 3 finding(s) this run, 1 fail the gate")
        tctx.configure(addon, tlsgate_fail_on="")
        assert addon.exit_code == 0, "without --fail-on the run only stops"


def test_idle_watch_shuts_down_after_quiet_and_activity_postpones_it() -> None:
    async def scenario() -> float:
        addon = Lifetime()
        with taddons.context(addon) as tctx:
            stopped = asyncio.Event()
            tctx.master.shutdown = stopped.set
            tctx.configure(addon, tlsgate_until_idle="300ms")
            loop = asyncio.get_running_loop()
            start = loop.time()
            addon.running()
            await asyncio.sleep(0.2)
            addon.client_connected(None)  # activity: the 300 ms start again
            await asyncio.wait_for(stopped.wait(), 5)
            elapsed = loop.time() - start
            addon.done()
            assert addon.reason == "idle for 300ms"
            return elapsed

    assert 0.5 <= asyncio.run(scenario()) < 2  # 0.2 s of quiet, activity, then 0.3 s more


def test_duration_watch_shuts_down_on_time() -> None:
    async def scenario() -> float:
        addon = Lifetime()
        with taddons.context(addon) as tctx:
            stopped = asyncio.Event()
            tctx.master.shutdown = stopped.set
            tctx.configure(addon, tlsgate_duration="200ms")
            start = asyncio.get_running_loop().time()
            addon.running()
            await asyncio.wait_for(stopped.wait(), 5)
            assert addon.reason == "ran for 200ms"
            return asyncio.get_running_loop().time() - start

    assert 0.2 <= asyncio.run(scenario()) < 2
