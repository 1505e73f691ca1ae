"""Payload inspection against realistic app sessions, end to end through the add-on: the false-positive and
detection figures README.md publishes ("Payload inspection") are these, for the seeded corpus of
tests/payload_sessions.py (`python -m tests.payload_sessions` prints them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.payload_sessions import NO_EVIDENCE, ORDINARY, SCHEMES, Figures, Outcome, measure


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Figures, list[Outcome]]:
    return measure(workdir=Path(tmp_path_factory.mktemp("sessions")))


def test_no_ordinary_session_gets_a_finding(corpus: tuple[Figures, list[Outcome]]) -> None:
    figures, outcomes = corpus
    found = [
        (
            o.session.family,
            f["evidence"]["kind"],
            json.dumps(f["evidence"].get("fields") or f["evidence"].get("credentials"))[:200],
        )
        for o in outcomes
        if o.session.mode is None
        for f in o.findings
    ]
    assert found == []
    assert (figures.false_positive_sessions, figures.false_positive_requests) == (0, 0)


def test_every_session_whose_bytes_carry_evidence_is_caught_with_the_right_finding(corpus: tuple[Figures, list[Outcome]]) -> None:
    figures, _ = corpus
    assert figures.detected == figures.with_evidence
    assert figures.wrong_findings == 0  # no positive session got a finding its mode cannot explain
    assert figures.caught_without_evidence == 0  # the add-on and the stated rules agree on every session


def test_published_figures(corpus: tuple[Figures, list[Outcome]]) -> None:
    figures, _ = corpus
    assert figures == Figures(
        ordinary_sessions=705,
        ordinary_requests=5490,
        ordinary_bytes=135245542,
        false_positive_sessions=0,
        false_positive_requests=0,
        positive_sessions=384,
        positive_requests=3419,
        with_evidence=280,
        detected=280,
        caught_without_evidence=0,
        wrong_findings=0,
        by_scheme=(
            ('AES-ECB (Dart AESMode.ecb, Java "AES")', 48, 25, 25),
            ("AES-CBC, fixed IV (Java AES/CBC/PKCS5Padding)", 48, 7, 7),
            ("AES-CBC, fixed IV sent in front", 48, 37, 37),
            ("AES-CTR, fixed IV, PKCS7 (Dart encrypt's default AES(key): SIC)", 48, 43, 43),
            ("AES-CTR, fixed IV, no padding (Dart SIC, padding: null)", 48, 37, 37),
            ("AES-GCM, fixed nonce (ciphertext || tag)", 48, 44, 44),
            ("AES-GCM, fixed nonce sent in front (nonce || ciphertext || tag)", 48, 39, 39),
            ("AES-ECB of repetitive data (zero-padded records, pixel buffers, fixed-width lines)", 48, 48, 48),
        ),
        by_basis=(
            ("keystream_reuse", 145),
            ("moved_block", 4),
            ("repeated_block", 48),
            ("same_position", 17),
            ("same_prefix", 33),
            ("zero_iv", 33),
        ),
        no_evidence=(
            (NO_EVIDENCE["unrelated"], 42),
            (NO_EVIDENCE["one"], 29),
            (NO_EVIDENCE["prefix"], 29),
            (NO_EVIDENCE["short"], 4),
        ),
    )


def test_the_corpus_is_what_the_readme_says_it_is(corpus: tuple[Figures, list[Outcome]]) -> None:
    figures, outcomes = corpus
    assert figures.ordinary_sessions >= 500 and figures.ordinary_requests >= 5000
    assert {o.session.family for o in outcomes} == set(ORDINARY) | {scheme.name for scheme in SCHEMES}
    big = [r for o in outcomes for r in o.session.requests if len(r.body) > 65536]
    assert len(big) == 508  # README: uploads past the inspection limit, cut at 64 KiB
    assert all(len(o.session.requests) >= 1 for o in outcomes)
