"""Payload inspection against realistic gRPC app sessions, end to end through the add-on: the false-positive and
detection figures README.md publishes ("gRPC and HTTP/2") are these, for the seeded corpus of
tests/payload_grpc_sessions.py (`python -m tests.payload_grpc_sessions` prints them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.payload_grpc_sessions import GRPC_ORDINARY, measure_grpc
from tests.payload_sessions import NO_EVIDENCE, SCHEMES, Figures, Outcome


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Figures, list[Outcome]]:
    return measure_grpc(workdir=Path(tmp_path_factory.mktemp("grpc-sessions")))


def test_no_ordinary_grpc_session_gets_a_finding(corpus: tuple[Figures, list[Outcome]]) -> None:
    figures, outcomes = corpus
    found = [
        (o.session.family, f["evidence"]["kind"], json.dumps(f["evidence"].get("fields") or f["evidence"].get("keys"))[:200])
        for o in outcomes
        if o.session.mode is None
        for f in o.findings
    ]
    assert found == []
    assert (figures.false_positive_sessions, figures.false_positive_requests) == (0, 0)


def test_every_grpc_session_whose_bytes_carry_evidence_is_caught_with_the_right_finding(
    corpus: tuple[Figures, list[Outcome]],
) -> None:
    figures, outcomes = corpus
    assert figures.detected == figures.with_evidence
    assert figures.wrong_findings == 0 and figures.caught_without_evidence == 0
    fields = {item["field"] for o in outcomes if o.session.mode for f in o.findings for item in f["evidence"].get("fields", [])}
    assert fields == {"grpc[0].2.3"}  # the field the apps encrypt, by its field numbers


def test_published_grpc_figures(corpus: tuple[Figures, list[Outcome]]) -> None:
    figures, outcomes = corpus
    assert {o.session.family for o in outcomes} == set(GRPC_ORDINARY) | {f"gRPC: {scheme.name}" for scheme in SCHEMES}
    assert (figures.ordinary_sessions, figures.ordinary_requests, figures.ordinary_bytes) == (130, 744, 428104)
    assert (figures.positive_sessions, figures.positive_requests, figures.with_evidence, figures.detected) == (128, 919, 89, 89)
    assert dict(figures.no_evidence) == {NO_EVIDENCE["unrelated"]: 13, NO_EVIDENCE["one"]: 14, NO_EVIDENCE["prefix"]: 12}
