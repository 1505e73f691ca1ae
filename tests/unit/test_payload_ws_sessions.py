"""Payload inspection against realistic WebSocket sessions, end to end through `PayloadInspector.websocket_message`:
the false-positive and detection figures README.md publishes ("WebSocket messages") are these, for the seeded
corpus of tests/payload_sessions.py (`python -m tests.payload_sessions ws` prints them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.payload_sessions import SCHEMES, WS_ORDINARY, Outcome, WsFigures, WsSession, evidence, ws_measure


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[WsFigures, list[Outcome]]:
    return ws_measure(workdir=Path(tmp_path_factory.mktemp("ws-sessions")))


def test_no_ordinary_websocket_session_gets_a_finding(corpus: tuple[WsFigures, list[Outcome]]) -> None:
    figures, outcomes = corpus
    found = [
        (o.session.family, f["evidence"]["kind"], json.dumps(f["evidence"].get("fields") or f["evidence"].get("keys"))[:200])
        for o in outcomes
        if o.session.mode is None
        for f in o.findings
    ]
    assert found == []
    assert (figures.false_positive_sessions, figures.false_positive_messages) == (0, 0)


def test_every_weak_websocket_app_whose_bytes_carry_evidence_is_caught_and_blocked(
    corpus: tuple[WsFigures, list[Outcome]],
) -> None:
    figures, outcomes = corpus
    assert figures.detected == figures.with_evidence and figures.wrong_findings == 0
    assert figures.caught_without_evidence == 0
    for o in outcomes:
        if o.session.mode is not None and evidence(o.session)[0] is not None:
            assert o.blocked >= 1, o.session.family  # held back, not only recorded: the policy says block
            assert all(f["evidence"]["direction"] == "client_to_server" for f in o.findings)


def test_published_websocket_figures(corpus: tuple[WsFigures, list[Outcome]]) -> None:
    figures, outcomes = corpus
    assert figures == WsFigures(
        ordinary_sessions=210,
        ordinary_messages=6928,
        ordinary_bytes=898174,
        false_positive_sessions=0,
        false_positive_messages=0,
        positive_sessions=192,
        positive_messages=2061,
        with_evidence=143,
        detected=143,
        caught_without_evidence=0,
        wrong_findings=0,
    )
    assert {o.session.family for o in outcomes} == set(WS_ORDINARY) | {f"WebSocket: {s.name}" for s in SCHEMES}
    sessions = [o.session for o in outcomes if isinstance(o.session, WsSession)]
    assert len(sessions) == len(outcomes)
    both_ways = [s for s in sessions if s.mode is None and {m.from_client for m in s.messages} == {True, False}]
    binary = [s for s in sessions if any(isinstance(m.content, bytes) for m in s.messages)]
    assert len(both_ways) >= 150 and len(binary) >= 40  # server messages and binary frames are judged too
