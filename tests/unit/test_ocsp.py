"""Stapled OCSP responses read as facts: every hostile or wrong response is a named outcome, never an exception."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.certgen import Chain, make_chain, make_intermediate, make_leaf, make_root, utcnow
from tests.ocsplab import make_responder, ocsp_response, tampered, unsuccessful
from tlsgate.tls.ocsp import CLOCK_SKEW, MAX_RESPONSE_BYTES, Outcome, must_staple, read_staple


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain(dns=("api.test",))


def read(chain: Chain, data: bytes | None, now: dt.datetime | None = None):
    return read_staple(data, chain.certs, now or utcnow())


def test_a_good_response_from_the_issuer(chain: Chain) -> None:
    staple = read(chain, ocsp_response(chain.leaf, chain.intermediate))
    assert staple.outcome is Outcome.GOOD and staple.outcome.proves
    assert staple.responder == "issuer" and staple.response_status == "successful"
    assert staple.this_update is not None and staple.next_update is not None


@pytest.mark.parametrize("cert_id_hash", ["sha1", "sha256", "sha384"])
@pytest.mark.parametrize("by", ["hash", "name"])
def test_cert_id_in_any_hash_and_responder_by_key_or_name(chain: Chain, cert_id_hash: str, by: str) -> None:
    staple = read(chain, ocsp_response(chain.leaf, chain.intermediate, cert_id_hash=cert_id_hash, by=by))
    assert staple.outcome is Outcome.GOOD, staple


@pytest.mark.parametrize(("key", "digest"), [("rsa:2048", "sha256"), ("ec:P-384", "sha384"), ("ed25519", None)])
def test_signatures_by_every_common_key_type(key: str, digest: str | None) -> None:
    root = make_root(key=key)
    leaf = make_leaf(root, ("api.test",))
    staple = read_staple(ocsp_response(leaf, root, digest=digest), [leaf.cert, root.cert], utcnow())
    assert staple.outcome is Outcome.GOOD and staple.responder == "issuer"
    forged = read_staple(tampered(ocsp_response(leaf, root, digest=digest)), [leaf.cert, root.cert], utcnow())
    assert forged.outcome is Outcome.BAD_SIGNATURE


def test_revoked_names_time_and_reason(chain: Chain) -> None:
    when = utcnow() - dt.timedelta(days=3)
    data = ocsp_response(
        chain.leaf, chain.intermediate, status="revoked", revoked_at=when, reason=x509.ReasonFlags.key_compromise
    )
    staple = read(chain, data)
    assert staple.outcome is Outcome.REVOKED
    assert staple.revoked_at == when and staple.revocation_reason == "key_compromise"
    assert when.date().isoformat() in staple.detail and "key_compromise" in staple.detail


def test_revoked_without_a_reason(chain: Chain) -> None:
    staple = read(chain, ocsp_response(chain.leaf, chain.intermediate, status="revoked"))
    assert staple.outcome is Outcome.REVOKED and staple.revocation_reason is None and "reason" not in staple.detail


def test_unknown(chain: Chain) -> None:
    assert read(chain, ocsp_response(chain.leaf, chain.intermediate, status="unknown")).outcome is Outcome.UNKNOWN


def test_a_delegated_responder_the_issuer_issued_for_ocsp_signing(chain: Chain) -> None:
    responder = make_responder(chain.intermediate)
    staple = read(chain, ocsp_response(chain.leaf, chain.intermediate, signer=responder, carry=[responder.cert]))
    assert staple.outcome is Outcome.GOOD and staple.responder == "delegated"


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("no_ocsp_purpose", "id-kp-OCSPSigning"),
        ("issued_by_another_ca", "not issued by the leaf's CA"),
        ("expired_responder", "outside its validity period"),
        ("not_carried", "neither the CA nor a certificate the response carries"),
    ],
)
def test_a_delegated_responder_that_may_not_speak_for_the_ca(chain: Chain, case: str, why: str) -> None:
    now = utcnow()
    if case == "no_ocsp_purpose":
        responder = make_responder(chain.intermediate, ocsp_signing=False)
    elif case == "issued_by_another_ca":
        responder = make_responder(make_intermediate(make_root()))
    elif case == "expired_responder":
        responder = make_responder(
            chain.intermediate, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
        )
    else:
        responder = make_responder(chain.intermediate)
    carry = [] if case == "not_carried" else [responder.cert]
    staple = read(chain, ocsp_response(chain.leaf, chain.intermediate, status="revoked", signer=responder, carry=carry))
    assert staple.outcome is Outcome.BAD_SIGNATURE, staple
    assert why in staple.detail
    assert staple.revoked_at is None, "a revocation nobody authentic vouches for is not a fact"


def test_an_impostor_ca_with_the_issuers_name(chain: Chain) -> None:
    impostor = make_intermediate(make_root())  # same subject name as the real intermediate, another key
    assert impostor.cert.subject == chain.intermediate.cert.subject
    data = ocsp_response(chain.leaf, chain.intermediate.cert, signer=impostor, by="name", status="revoked")
    staple = read(chain, data)
    assert staple.outcome is Outcome.BAD_SIGNATURE and "does not verify with the CA's key" in staple.detail


def test_a_tampered_signature(chain: Chain) -> None:
    staple = read(chain, tampered(ocsp_response(chain.leaf, chain.intermediate, status="revoked")))
    assert staple.outcome is Outcome.BAD_SIGNATURE and "does not verify" in staple.detail, staple


def test_a_response_about_another_certificate(chain: Chain) -> None:
    other = make_leaf(chain.intermediate, ("api.test",))  # same issuer, another serial
    assert read(chain, ocsp_response(other, chain.intermediate)).outcome is Outcome.WRONG_CERTIFICATE
    stranger = make_chain()  # another issuer, and the serial forced equal would still not match its hashes
    assert read(chain, ocsp_response(stranger.leaf, stranger.intermediate)).outcome is Outcome.WRONG_CERTIFICATE


def test_same_serial_and_issuer_name_but_another_ca_key(chain: Chain) -> None:
    """certID holds the issuer's key hash too: a namesake CA's certificate with our leaf's serial is not ours."""
    namesake = make_intermediate(make_root())
    assert namesake.cert.subject == chain.intermediate.cert.subject
    now = utcnow()
    twin = (
        x509.CertificateBuilder()
        .subject_name(chain.leaf.cert.subject)
        .issuer_name(namesake.cert.subject)
        .public_key(chain.leaf.key.public_key())
        .serial_number(chain.leaf.cert.serial_number)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(namesake.key, hashes.SHA256())
    )
    staple = read(chain, ocsp_response(twin, namesake, status="revoked"))
    assert staple.outcome is Outcome.WRONG_CERTIFICATE, staple


def test_expired_and_not_yet_valid(chain: Chain) -> None:
    now = utcnow()
    old = ocsp_response(
        chain.leaf, chain.intermediate, this_update=now - dt.timedelta(days=9), next_update=now - dt.timedelta(days=2)
    )
    staple = read(chain, old)
    assert staple.outcome is Outcome.EXPIRED and "nextUpdate" in staple.detail
    future = ocsp_response(chain.leaf, chain.intermediate, this_update=now + dt.timedelta(hours=2))
    assert read(chain, future).outcome is Outcome.NOT_YET_VALID


def test_clock_skew_is_allowed_both_ways(chain: Chain) -> None:
    now = utcnow()
    slightly_ahead = ocsp_response(chain.leaf, chain.intermediate, this_update=now + CLOCK_SKEW / 2)
    assert read(chain, slightly_ahead, now).outcome is Outcome.GOOD
    just_expired = ocsp_response(
        chain.leaf, chain.intermediate, this_update=now - dt.timedelta(days=1), next_update=now - CLOCK_SKEW / 2
    )
    assert read(chain, just_expired, now).outcome is Outcome.GOOD
    expired = ocsp_response(
        chain.leaf, chain.intermediate, this_update=now - dt.timedelta(days=1), next_update=now - 2 * CLOCK_SKEW
    )
    assert read(chain, expired, now).outcome is Outcome.EXPIRED


def test_without_next_update_a_response_lives_a_day(chain: Chain) -> None:
    now = utcnow()
    fresh = ocsp_response(chain.leaf, chain.intermediate, this_update=now - dt.timedelta(hours=20), next_update=None)
    assert read(chain, fresh, now).outcome is Outcome.GOOD
    stale = ocsp_response(chain.leaf, chain.intermediate, this_update=now - dt.timedelta(hours=30), next_update=None)
    staple = read(chain, stale, now)
    assert staple.outcome is Outcome.EXPIRED and "no nextUpdate" in staple.detail


def test_an_old_revocation_stays_revoked_but_an_old_hold_does_not(chain: Chain) -> None:
    now = utcnow()
    this, following = now - dt.timedelta(days=9), now - dt.timedelta(days=2)

    def old(reason: x509.ReasonFlags) -> bytes:
        return ocsp_response(
            chain.leaf, chain.intermediate, status="revoked", reason=reason, this_update=this, next_update=following
        )

    assert read(chain, old(x509.ReasonFlags.key_compromise), now).outcome is Outcome.REVOKED
    assert read(chain, old(x509.ReasonFlags.certificate_hold), now).outcome is Outcome.EXPIRED


def test_unsuccessful_response_status(chain: Chain) -> None:
    staple = read(chain, unsuccessful())
    assert staple.outcome is Outcome.UNSUCCESSFUL and staple.response_status == "try_later" and "try_later" in staple.detail


def test_a_chain_without_an_issuer_cannot_be_checked(chain: Chain) -> None:
    staple = read_staple(ocsp_response(chain.leaf, chain.intermediate), [chain.leaf.cert], utcnow())
    assert staple.outcome is Outcome.NO_ISSUER


@pytest.mark.parametrize(
    "data",
    [
        b"\x00",
        b"garbage that is not DER",
        b"\x30\x82\xff\xff" + b"\x00" * 32,  # a SEQUENCE claiming 65535 bytes
        b"\x30\x03\x0a\x01\x00",  # successful status without a response body
        b"\x30\x80" * 500,  # indefinite lengths, nested
        bytes(range(256)) * 16,
    ],
)
def test_garbage_is_malformed_not_an_exception(chain: Chain, data: bytes) -> None:
    staple = read(chain, data)
    assert staple.outcome is Outcome.MALFORMED and staple.size == len(data)


def test_random_bytes_and_truncations_never_raise(chain: Chain) -> None:
    good = ocsp_response(chain.leaf, chain.intermediate)
    cases = [good[:cut] for cut in range(0, len(good), 7)] + [os.urandom(n) for n in (1, 17, 300, 4096)]
    cases += [good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1 :] for i in range(0, len(good), 11)]
    for data in cases:
        staple = read(chain, data)
        assert isinstance(staple.outcome, Outcome)
        json.dumps(staple.evidence())
        assert data == good or staple.outcome is not Outcome.GOOD, "a changed byte must never read as good"


def test_a_huge_response_is_refused_unread(chain: Chain) -> None:
    staple = read(chain, b"\x30" * (MAX_RESPONSE_BYTES + 1))
    assert staple.outcome is Outcome.TOO_LARGE and str(MAX_RESPONSE_BYTES) in staple.detail


def test_nothing_stapled(chain: Chain) -> None:
    assert read(chain, b"").outcome is Outcome.ABSENT
    assert read(chain, None).outcome is Outcome.ABSENT


def test_evidence_is_value_free(chain: Chain) -> None:
    data = ocsp_response(chain.leaf, chain.intermediate, status="revoked", reason=x509.ReasonFlags.superseded)
    evidence = read(chain, data).evidence()
    assert set(evidence) <= {
        "staple",
        "staple_bytes",
        "response_status",
        "responder",
        "revocation_reason",
        "this_update",
        "next_update",
        "revoked_at",
    }
    assert evidence["staple"] == "revoked" and evidence["staple_bytes"] == len(data)
    text = json.dumps(evidence)
    assert str(chain.leaf.cert.serial_number) not in text and format(chain.leaf.cert.serial_number, "x") not in text


def test_must_staple(chain: Chain) -> None:
    assert not must_staple(chain.leaf.cert)
    assert must_staple(make_leaf(chain.intermediate, ("api.test",), must_staple=True).cert)
