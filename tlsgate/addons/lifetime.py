"""`run --duration D`, `--until-idle D` and `--fail-on GATE`: a proxy a device-farm job can start and forget.

The job starts tlsgate, runs the app's tests through it and waits: tlsgate
stops itself after a fixed time or once no client has connected or sent a
request for a while, and its exit status is the verdict on the findings of
*this* run (counted as they are recorded, not re-read from a findings file
that may hold earlier runs), by the same rule as `tlsgate report --fail-on`.
"""

from __future__ import annotations

import asyncio
import logging
import re

from mitmproxy import ctx, exceptions
from mitmproxy.utils import asyncio_utils

from tlsgate.tls import mastg

logger = logging.getLogger("tlsgate.lifetime")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """`90s`, `10m`, `1h`, `2.5` (seconds) -> seconds; ValueError for anything else or for zero."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 90s, 10m, 1h or plain seconds")
    seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be more than zero")
    return seconds


class Lifetime:
    """Stops the proxy after a duration or an idle period, and keeps the run's verdict for the exit status."""

    def __init__(self) -> None:
        self.duration: float | None = None
        self.idle: float | None = None
        self.gate: mastg.Gate | None = None
        self.findings = 0
        self.failing = 0
        self.reason: str | None = None
        self._last_activity = 0.0
        self._task: asyncio.Task[None] | None = None

    # -- options ---------------------------------------------------------------------------------

    def load(self, loader) -> None:
        loader.add_option("tlsgate_duration", str, "", "Stop the proxy after this long (90s, 10m, 1h or seconds).")
        loader.add_option(
            "tlsgate_until_idle", str, "", "Stop the proxy after this long without a new client connection or request."
        )
        loader.add_option(
            "tlsgate_fail_on",
            str,
            "",
            "On stopping, exit 1 if a finding of this run was blocked or is at least this severe, or shows the app "
            f"failing a named MASVS control or MASTG test ({mastg.GATE_HELP}).",
        )

    def configure(self, updated: set[str]) -> None:
        try:
            if "tlsgate_duration" in updated:
                self.duration = parse_duration(ctx.options.tlsgate_duration) if ctx.options.tlsgate_duration else None
            if "tlsgate_until_idle" in updated:
                self.idle = parse_duration(ctx.options.tlsgate_until_idle) if ctx.options.tlsgate_until_idle else None
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        if "tlsgate_fail_on" in updated:
            spec = ctx.options.tlsgate_fail_on
            try:
                self.gate = mastg.parse_gate(spec) if spec else None
            except ValueError as exc:
                raise exceptions.OptionsError(f"tlsgate_fail_on: {exc}") from None

    # -- counting --------------------------------------------------------------------------------

    def on_finding(self, finding) -> None:
        """Subscribed to the findings log: every finding recorded by this process, as it is recorded (a follow-up
        line counting repeats of one already recorded is not another finding)."""
        if getattr(finding, "occurrences", None) is not None:
            return
        self.findings += 1
        if self.gate is None:
            return
        evidence = getattr(finding, "evidence", None)
        evidence = evidence if isinstance(evidence, dict) else {}
        kind = evidence.get("kind")
        evidenced = mastg.refs(getattr(finding, "check", ""), kind if isinstance(kind, str) else None, evidence, finding.action)
        if self.gate.fails(finding.action, finding.severity, evidenced):
            self.failing += 1

    @property
    def threshold(self) -> int | None:
        """The gate's severity (RANK), when it names one."""
        return self.gate.threshold if self.gate is not None else None

    @property
    def exit_code(self) -> int:
        return 1 if self.gate is not None and self.failing else 0

    def verdict(self) -> str:
        if self.gate is None:
            return f"{self.findings} finding(s) this run"
        gate = self.gate.describe()
        word = "FAIL" if self.failing else "PASS"
        return f"{word}: {self.findings} finding(s) this run, {self.failing} fail the gate ({gate}); exit {self.exit_code}"

    # -- activity --------------------------------------------------------------------------------

    def _touch(self, *_: object) -> None:
        self._last_activity = asyncio.get_running_loop().time()

    client_connected = requestheaders = websocket_message = tcp_message = _touch

    # -- the watch -------------------------------------------------------------------------------

    def running(self) -> None:
        if self.duration is None and self.idle is None:
            return
        self._touch()
        self._task = asyncio_utils.create_task(self._watch(), name="tlsgate-lifetime", keep_ref=True)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.duration if self.duration is not None else None
        while True:
            now = loop.time()
            waits = []
            if deadline is not None:
                if now >= deadline:
                    self._stop(f"ran for {ctx.options.tlsgate_duration}")
                    return
                waits.append(deadline - now)
            if self.idle is not None:
                quiet_until = self._last_activity + self.idle
                if now >= quiet_until:
                    self._stop(f"idle for {ctx.options.tlsgate_until_idle}")
                    return
                waits.append(quiet_until - now)
            await asyncio.sleep(min(waits) + 0.01)

    def _stop(self, reason: str) -> None:
        self.reason = reason
        logger.warning(f"tlsgate: stopping: {reason}; {self.verdict()}")
        ctx.master.shutdown()

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.reason is None and self.gate is not None:
            logger.warning(f"tlsgate: stopped; {self.verdict()}")
