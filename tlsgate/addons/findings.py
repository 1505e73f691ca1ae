"""Where the recording path (`tlsgate.addons.verdicts`) delivers: the findings file, the console and the metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable

from mitmproxy import ctx, exceptions

from tlsgate.checks.fallback import FallbackWatch
from tlsgate.sinks.findings import KEEP, MAX_BYTES, Finding, FindingsLog, Repeats
from tlsgate.sinks.metrics import Metrics

logger = logging.getLogger("tlsgate.findings")

_LEVEL = {
    "info": logging.INFO,
    "low": logging.INFO,
    "medium": logging.WARNING,
    "high": logging.WARNING,
    "critical": logging.ERROR,
}


class FindingsSink:
    """Every finding is written to the findings file (or stdout) and logged as one console line.

    The console line's level is the finding's severity, so `termlog_verbosity`
    (`-q`: errors only) filters them like any other line, except when the
    console is the only record (`--findings ''`, or stock mitmdump without
    `tlsgate_findings`): then the line is raised to the level the console
    shows, so no verdict is ever without a trace.

    It also holds the metrics: every finding (and every occurrence `Repeats`
    only counts) reaches them through the per-check table in
    `tlsgate.sinks.metrics`, and what is counted without a finding (an
    allowed upstream connection, a QUIC decision, a contained error) reaches
    them through `tlsgate.addons.verdicts`. No other add-on holds `Metrics`,
    so a verdict has one way to the dashboards.
    """

    def __init__(self, log: FindingsLog | None = None, metrics: Metrics | None = None) -> None:
        self.log = log or FindingsLog()
        self.log.subscribe(self._to_console)
        self.metrics = metrics
        if metrics is not None:
            self.log.subscribe(metrics.on_finding)
            self.log.subscribe_counts(metrics.on_repeat)
        self.repeats = Repeats(self.log)  # shared by the add-ons that write a standing problem once, then count it
        # Each device's recent failed TLS events per host, fed by the recording path (`verdicts.record`), read by the
        # cleartext add-on: a plain request retrying one of them is an insecure fallback (`tlsgate.checks.fallback`).
        self.fallback = FallbackWatch()
        # What other add-ons say only when tlsgate stops (the probe campaign summaries): run here, before the file
        # closes, because mitmproxy calls `done` in add-on order and this sink comes before the add-ons that feed it.
        self.before_close: list[Callable[[], None]] = []

    def load(self, loader) -> None:
        loader.add_option(
            "tlsgate_findings",
            str,
            "",
            "Append tlsgate findings to this JSON-lines file; '-': JSON lines on stdout (for a container's log collector). "
            "Empty: console only.",
        )
        loader.add_option(
            "tlsgate_findings_max_bytes",
            int,
            MAX_BYTES,
            "Rotate the findings file when it would grow past this many bytes (0: never rotate).",
        )
        loader.add_option("tlsgate_findings_keep", int, KEEP, "Rotated findings files to keep (findings.jsonl.1 is the newest).")

    def configure(self, updated: set[str]) -> None:
        if updated & {"tlsgate_findings_max_bytes", "tlsgate_findings_keep"}:
            if ctx.options.tlsgate_findings_max_bytes < 0 or ctx.options.tlsgate_findings_keep < 0:
                raise exceptions.OptionsError("tlsgate_findings_max_bytes and tlsgate_findings_keep must be 0 or more")
            self.log.max_bytes = ctx.options.tlsgate_findings_max_bytes
            self.log.keep = ctx.options.tlsgate_findings_keep
        if "tlsgate_findings" in updated:
            path = ctx.options.tlsgate_findings
            try:
                if path:
                    self.log.open(path)
                else:
                    self.log.close()
            except OSError as exc:
                raise exceptions.OptionsError(f"cannot open findings file {path}: {exc}") from None

    def done(self) -> None:
        for say in self.before_close:
            try:
                say()
            except Exception:  # noqa: BLE001 - one add-on's summary must not lose every count still to be written
                logger.exception("tlsgate: a summary at stop failed")
        self.repeats.flush()  # before the file closes: every count that is not yet written
        self.log.close()

    def record(self, finding: Finding) -> None:
        self.log.record(finding)

    def _to_console(self, finding: Finding) -> None:
        level = _LEVEL[finding.severity]
        if not self.log.recording:
            level = max(level, console_level())
        logger.log(level, f"tlsgate: {finding.console_line()}")


def console_level() -> int:
    """The lowest level the terminal shows (`termlog_verbosity`); INFO where mitmproxy's terminal log is absent."""
    try:
        verbosity = str(ctx.options.termlog_verbosity)
    except (AttributeError, KeyError):
        return logging.INFO
    level = logging.getLevelName(verbosity.upper())
    return level if isinstance(level, int) else logging.INFO
