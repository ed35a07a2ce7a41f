"""Secret references: where a secret may go, and that its value never comes back."""

from __future__ import annotations

import httpx
import pytest

from flowrun.engine.secrets import SecretRefs, SecretUse, check_prefix, url_allowed
from flowrun.errors import NodeFailure
from flowrun.records import SecretRecord


@pytest.mark.parametrize(("url", "ok"), [
    ("https://api.example.com/v1/chat", True),
    ("https://api.example.com/v1", True),
    ("https://API.example.com:443/v1/x", True),
    ("https://api.example.com/v10", False),
    ("https://api.example.com/v2", False),
    ("http://api.example.com/v1", False),
    ("https://api.example.com:8443/v1", False),
    ("https://api.example.com.evil.net/v1", False),
    ("https://evil.net/api.example.com/v1", False),
])
def test_urls_match_by_origin_and_path_prefix(url: str, ok: bool) -> None:
    assert url_allowed(httpx.URL(url), ["https://api.example.com/v1"]) is ok


def test_prefixes_must_be_plain_http_urls() -> None:
    assert check_prefix("https://api.example.com/") is None
    for bad in ("ftp://x", "https://", "https://u:p@x/", "https://x/?q=1", "not a url"):
        assert check_prefix(bad) is not None


class Source:
    async def get(self, name: str) -> SecretRecord | None:
        if name == "TOKEN":
            return SecretRecord("TOKEN", "s3cr3t-value", ["https://api.example.com/"], 0, 0)
        return None


async def test_references_fill_only_for_allowed_urls_and_redact_back() -> None:
    ref = SecretRefs()["TOKEN"]
    use = SecretUse(Source())
    await use.load({"Authorization": f"Bearer {ref}"})
    assert use.fill({"h": f"Bearer {ref}"}) == {"h": "Bearer s3cr3t-value"}
    assert use.redact({"echo": ["x s3cr3t-value y"]}) == {"echo": [f"x {ref} y"]}
    use.check(httpx.URL("https://api.example.com/a"))
    with pytest.raises(NodeFailure, match="may not be sent"):
        use.check(httpx.URL("https://evil.net/"))
    with pytest.raises(NodeFailure, match="is not set"):
        await SecretUse(Source()).load("[[secret:NOPE]]")
    with pytest.raises(KeyError):
        SecretRefs()["not a name"]
