"""Upstream judges, registered by the phase of the handshake whose facts they need.

Adding an upstream check is one policy section, one check module, and one
import line; no add-on changes. The add-on (`tlsgate.addons.upstream_tls`)
gathers `HandshakeFacts` as OpenSSL (or aioquic) reveals them and, at each
phase, runs the judges registered for it, records what they find and refuses
the connection when one blocks.

How a new judge is added:

1. Its section, in `tlsgate/policy/sections/<name>.py` (see that package):
   `OCSP = register(Section(name="ocsp", parse=..., schema=...))`.
2. Its judge, a pure function in `tlsgate/checks/<name>.py`, registered with
   the phase whose facts it needs and its section:

       @upstream_judge(Phase.STAPLED, OCSP)
       def judge_stapling(facts: HandshakeFacts, rules: OcspRules, match: Match, now: dt.datetime) -> list[Issue]:
           ...

   It gets the facts, the host's value of its section (typed), the policy
   match (host, rule: for `remedy_for`) and the time (UTC); it returns the
   `Issue`s found, [] for none. It runs only for hosts where its section is
   set (a section with a default is set everywhere).
3. An import of that module in `tlsgate/checks/__init__.py` (after the
   built-in ones: judges of one phase run, and are reported, in import order).

Phases, in the order facts become known:

- `Phase.CHAIN`: the server's certificate chain is validated (leaf first in
  `facts.chain`; embedded SCTs are in the leaf); `facts.protocol` is known and
  `facts.cipher` is for TLS 1.3. Judged inside OpenSSL's verify callback, so a
  refusal aborts the handshake before any request byte. A judge that needs a
  fact not known yet (the TLS 1.2 suite) returns None: it is asked again once
  the connection is established, and what it finds then is listed first.
- `Phase.STAPLED`: `facts.stapled_ocsp` holds the server's stapled OCSP
  response (DER bytes; b"" when it stapled none). tlsgate asks for a staple
  only on connections where a judge of this phase has its section set, and
  judges inside OpenSSL's status callback: a refusal aborts the handshake too.
  None means tlsgate could not ask (a QUIC upstream, a resumed session).
- `Phase.ESTABLISHED`: the handshake is complete and every negotiated
  parameter is known. Runs only if the earlier phases did not block; a block
  here refuses the connection's requests at their headers (the connection
  itself stays up, unused).

Options of `upstream_judge`: `check` and `failure` name the `check_failed`
issue recorded (always blocking) when the judge raises; `once` lists kinds
that describe the server rather than one connection, written once per device
and host and then counted (`tlsgate.sinks.findings.Repeats`) when they do not
block; `connection_evidence=False` leaves out the negotiated version, suite,
chain and transport every other upstream finding carries.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.policy.model import Match
from tlsgate.policy.sections.base import Section

logger = logging.getLogger("tlsgate.tls")


class Phase(enum.Enum):
    CHAIN = "the certificate chain is validated"
    STAPLED = "the stapled OCSP response is known"
    ESTABLISHED = "the handshake is complete"


@dataclass
class HandshakeFacts:
    """What one upstream handshake has shown: filled in as OpenSSL reveals it."""

    protocol: str | None = None  # OpenSSL's name, e.g. "TLSv1.2"
    cipher: str | None = None  # OpenSSL's suite name; known only after the handshake for TLS 1.2
    chain: list[x509.Certificate] = field(default_factory=list)  # validated chain, leaf first
    stapled_ocsp: bytes | None = None  # DER; b"": asked, none stapled; None: not asked (see Phase.STAPLED)


# (facts, the host's value of the judge's section, the match, now in UTC) -> issues; None: ask again when established.
type JudgeFunction[T] = Callable[[HandshakeFacts, T, Match, dt.datetime], list[Issue] | None]


@dataclass(frozen=True)
class UpstreamJudge:
    name: str
    phase: Phase
    section: Section[Any]
    judge: JudgeFunction[Any]
    check: Check = Check.TLS
    failure: str = "tlsgate could not check this server (see log)"
    once: frozenset[str] = frozenset()
    connection_evidence: bool = True

    def rules(self, match: Match) -> Any:
        """The host's value of this judge's section; None: the judge does not run for this host."""
        return self.section.get(match.settings)


@dataclass(frozen=True)
class Found:
    """One issue and the judge that found it (None: gathering the facts failed, see the add-on)."""

    judge: UpstreamJudge | None
    issue: Issue


JUDGES: list[UpstreamJudge] = []


def register(judge: UpstreamJudge) -> UpstreamJudge:
    if any(known.name == judge.name for known in JUDGES):
        raise ValueError(f"upstream judge {judge.name!r} is already registered")
    JUDGES.append(judge)
    return judge


def unregister(name: str) -> None:
    """For tests that add a toy judge."""
    JUDGES[:] = [judge for judge in JUDGES if judge.name != name]


def upstream_judge[T](
    phase: Phase,
    section: Section[T],
    *,
    name: str | None = None,
    check: Check = Check.TLS,
    failure: str = "tlsgate could not check this server (see log)",
    once: Iterable[str] = (),
    connection_evidence: bool = True,
) -> Callable[[JudgeFunction[T]], JudgeFunction[T]]:
    """Register the decorated function as a judge of `phase` reading `section`; the function is returned unchanged."""

    def decorate(function: JudgeFunction[T]) -> JudgeFunction[T]:
        register(
            UpstreamJudge(
                name or str(getattr(function, "__name__", function)),
                phase,
                section,
                function,
                check,
                failure,
                frozenset(once),
                connection_evidence,
            )
        )
        return function

    return decorate


def judges(phase: Phase) -> list[UpstreamJudge]:
    return [judge for judge in JUDGES if judge.phase is phase]


def wanted(phase: Phase, match: Match) -> bool:
    """Whether any judge of `phase` runs for this host (tlsgate asks for a staple only then)."""
    return any(judge.rules(match) is not None for judge in judges(phase))


@dataclass
class Judged:
    """What one phase found, and the judges that asked to be run again once the connection is established."""

    found: list[Found] = field(default_factory=list)
    deferred: list[UpstreamJudge] = field(default_factory=list)


def run(phase: Phase, facts: HandshakeFacts, match: Match, now: dt.datetime) -> Judged:
    """Every judge of `phase` whose section is set for the host; a judge that raises yields a blocking `check_failed`."""
    return run_judges(judges(phase), facts, match, now)


def run_judges(to_run: Iterable[UpstreamJudge], facts: HandshakeFacts, match: Match, now: dt.datetime) -> Judged:
    judged = Judged()
    for judge in to_run:
        rules = judge.rules(match)
        if rules is None:
            continue
        try:
            issues = judge.judge(facts, rules, match, now)
        except Exception:  # fail closed: a check that cannot run refuses the server rather than waving it through
            logger.exception(f"tlsgate: upstream check {judge.name} failed; refusing the connection")
            issues = [Issue(judge.check, "check_failed", Effect.ALWAYS, Severity.HIGH, judge.failure)]
        if issues is None:
            judged.deferred.append(judge)
        else:
            judged.found += [Found(judge, issue) for issue in issues]
    return judged


def issues_of(found: Iterable[Found]) -> list[Issue]:
    return [f.issue for f in found]
