"""The Flowrun-Signature schemes (v1 over the body, v2 over the URL and the body): what
verifies and what each refusal says."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from flowrun.client import SignatureError, verify_callback
from flowrun.features.webhooks import signing

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


URL = "https://127.0.0.1/hooks/done?tenant=a"


def test_v2_binds_the_url_the_body_was_sent_to() -> None:
    header = signing.sign(SECRET, BODY, timestamp=1_000, url=URL)
    good = signing.signature(SECRET, 1_000, BODY, url=URL)
    assert header == f"t=1000,v2={good}"
    assert signing.verify(SECRET, header, BODY, url=URL, now=1_010) == good
    # the message is the timestamp, the URL and the body, joined by newlines
    message = b"1000\n" + URL.encode() + b"\n" + BODY
    assert good == hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    assert good != signing.signature(SECRET, 1_000, BODY)  # not v1's


@pytest.mark.parametrize("url", [
    "https://127.0.0.2/hooks/done?tenant=a", "https://127.0.0.1/hooks/done",
    URL + "x", URL[:-1], URL.upper()])
def test_v2_refuses_a_body_signed_for_another_url(url: str) -> None:
    header = signing.sign(SECRET, BODY, timestamp=1_000, url=URL)
    with pytest.raises(signing.SignatureError, match="no signature matches the body and URL"):
        signing.verify(SECRET, header, BODY, url=url, now=1_000)


def test_each_scheme_verifies_only_as_itself() -> None:
    bound = signing.sign(SECRET, BODY, timestamp=1_000, url=URL)
    plain = signing.sign(SECRET, BODY, timestamp=1_000)
    with pytest.raises(signing.SignatureError, match="no v1= signature .*bound to a URL"):
        signing.verify(SECRET, bound, BODY, now=1_000)
    with pytest.raises(signing.SignatureError, match="no v2= signature .*bound to no URL"):
        signing.verify(SECRET, plain, BODY, url=URL, now=1_000)
    # a v1 signature renamed v2 does not pass for a bound one
    with pytest.raises(signing.SignatureError, match="no signature matches"):
        signing.verify(SECRET, plain.replace("v1=", "v2="), BODY, url=URL, now=1_000)
    # the framing leaves nothing to shift between URL and body
    shifted = signing.sign(SECRET, b"x\n" + BODY, timestamp=1_000, url=URL[:-1])
    with pytest.raises(signing.SignatureError):
        signing.verify(SECRET, shifted, BODY, url=URL, now=1_000)
    with pytest.raises(ValueError, match="whitespace"):
        signing.signature(SECRET, 1_000, BODY, url="https://127.0.0.3/\nx")
    with pytest.raises(signing.SignatureError, match="no signature matches"):
        signing.verify(SECRET, bound, BODY, url="https://127.0.0.3/ x", now=1_000)


def test_the_clients_helper_checks_a_callback_for_its_receiver() -> None:
    body = b'{"id": "r1", "status": "succeeded"}'
    header = signing.sign(SECRET, body, timestamp=1_000, url=URL)
    for headers in ({"Flowrun-Signature": header}, {"flowrun-signature": header}):
        run = verify_callback(SECRET, headers, body, url=URL, now=1_001)
        assert run == {"id": "r1", "status": "succeeded"}
    with pytest.raises(SignatureError, match="and URL"):
        verify_callback(SECRET, {"Flowrun-Signature": header}, body,
                        url="https://127.0.0.2/", now=1_001)
    with pytest.raises(SignatureError, match="away from now"):
        verify_callback(SECRET, {"Flowrun-Signature": header}, body, url=URL, now=2_000)
    with pytest.raises(SignatureError, match="missing"):
        verify_callback(SECRET, {}, body, url=URL, now=1_001)
