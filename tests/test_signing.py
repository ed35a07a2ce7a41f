"""The Flowrun-Signature scheme: what verifies and what each refusal says."""

from __future__ import annotations

import pytest

from flowrun import signing

SECRET = "whsec_test"
BODY = b'{"hello": "world"}'


def test_a_signed_body_verifies_and_returns_its_signature() -> None:
    header = signing.sign(SECRET, BODY, timestamp=1_000)
    assert signing.verify(SECRET, header, BODY, now=1_010) == header.split("v1=")[1]


def test_any_matching_v1_is_enough_while_a_secret_rotates() -> None:
    good = signing.signature(SECRET, 1_000, BODY)
    header = f"t=1000,v1={'0' * 64},v1={good}"
    assert signing.verify(SECRET, header, BODY, now=1_000) == good


@pytest.mark.parametrize(("header", "body", "now", "says"), [
    (None, BODY, 1_000, "missing"),
    ("v1=abc", BODY, 1_000, "no timestamp"),
    ("t=x,v1=abc", BODY, 1_000, "not a number"),
    ("t=1000", BODY, 1_000, "no v1"),
    (signing.sign(SECRET, BODY, timestamp=1_000), BODY, 1_301, "away from now"),
    (signing.sign(SECRET, BODY, timestamp=1_000), BODY, 699, "away from now"),
    (signing.sign(SECRET, BODY, timestamp=1_000), BODY + b" ", 1_000, "no signature matches"),
    (signing.sign("whsec_other", BODY, timestamp=1_000), BODY, 1_000, "no signature matches"),
    ("t=1000,v1=\u00e9t\u00e9", BODY, 1_000, "no signature matches"),  # non-ASCII
])
def test_refusals_say_why(header: str | None, body: bytes, now: float, says: str) -> None:
    with pytest.raises(signing.SignatureError, match=says):
        signing.verify(SECRET, header, body, now=now)


def test_new_secrets_differ() -> None:
    assert signing.new_secret() != signing.new_secret()
    assert signing.new_secret().startswith("whsec_")
