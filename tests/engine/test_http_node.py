"""The http node against a real local server, and the SSRF guard's refusals."""

from __future__ import annotations

import gzip
import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from flowrun.engine.executor import Executor, RunOutcome
from flowrun.engine.net.guard import address_allowed
from flowrun.engine.node_services import HttpPolicy, NodeServices
from flowrun.engine.nodes import registry
from flowrun.language.definitions import parse_definition
from flowrun.records import RunStatus
from tests.local_server import serve


async def echo(request: Request) -> Response:
    return JSONResponse({"method": request.method, "query": dict(request.query_params),
                         "header": request.headers.get("x-test"),
                         "body": (await request.body()).decode()})


async def redirect(request: Request) -> Response:
    return RedirectResponse(request.query_params["to"], status_code=302)


async def status(request: Request) -> Response:
    return PlainTextResponse("custom", status_code=int(request.path_params["code"]))


async def big(request: Request) -> Response:
    return PlainTextResponse("x" * 2_000_000)


async def encoded(request: Request) -> Response:
    """The request's Accept-Encoding in a gzip'd body, or a body in ?as= (unreadable)."""
    if "as" in request.query_params:
        return Response(b"\x00\x01", headers={"Content-Encoding": request.query_params["as"]})
    text = request.headers.get("accept-encoding", "").encode()
    return Response(gzip.compress(text), headers={"Content-Encoding": "gzip"})


APP = Starlette(routes=[Route("/echo", echo, methods=["GET", "POST", "PUT"]),
                        Route("/redirect", redirect), Route("/status/{code}", status),
                        Route("/big", big), Route("/encoded", encoded)])


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(APP) as url:
        yield url


class FakeResolver:
    """Answers chosen addresses for made-up names; records what was asked."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return self.answers.get(host, [host])


async def call(policy: HttpPolicy, resolve: Any = None, **params: Any) -> RunOutcome:
    services = NodeServices(http=policy, resolve=resolve)
    definition = parse_definition({"name": "h", "nodes": [{"id": "h", "type": "http",
                                                           **params}]},
                                  registry=registry)
    return await Executor(definition, run_id="r", inputs={}, services=services).execute()


OPEN = HttpPolicy(allow_private_hosts=True, max_response_bytes=1_000_000)


async def test_request_and_response(base_url: str) -> None:
    out = await call(OPEN, url=f"{base_url}/echo", method="POST", query={"q": "1"},
                     headers={"x-test": "yes"}, json={"a": 1})
    assert out.status is RunStatus.SUCCEEDED and out.outputs is not None
    result = out.outputs["h"]
    assert result["status"] == 200 and result["headers"]["content-type"] == "application/json"
    assert result["body"] == {"method": "POST", "query": {"q": "1"}, "header": "yes",
                              "body": '{"a":1}'}


async def test_error_status_fails_unless_expected(base_url: str) -> None:
    failed = await call(OPEN, url=f"{base_url}/status/503")
    assert failed.error is not None
    assert failed.error["code"] == "http_status" and "503" in failed.error["message"]
    expected = await call(OPEN, url=f"{base_url}/status/404", expect_status=[404])
    assert expected.outputs is not None
    assert expected.outputs["h"]["status"] == 404 and expected.outputs["h"]["body"] == "custom"
    unexpected = await call(OPEN, url=f"{base_url}/status/201", expect_status=200)
    assert unexpected.error is not None and unexpected.error["code"] == "http_status"


async def test_a_reply_comes_in_an_encoding_the_node_undoes_or_fails_clearly(
        base_url: str) -> None:
    out = await call(OPEN, url=f"{base_url}/encoded")
    assert out.outputs is not None and out.outputs["h"]["body"] == "gzip, deflate"
    out = await call(OPEN, url=f"{base_url}/encoded?as=br", headers={"Accept-Encoding": "br"})
    assert out.error is not None and out.error["code"] == "http_error"
    assert "unsupported Content-Encoding 'br'" in out.error["message"]


async def test_response_size_cap(base_url: str) -> None:
    out = await call(OPEN, url=f"{base_url}/big")
    assert out.error is not None and out.error["code"] == "http_too_large"


async def test_loopback_is_refused_by_default(base_url: str) -> None:
    out = await call(HttpPolicy(), url=f"{base_url}/echo")
    assert out.status is RunStatus.FAILED and out.error is not None
    assert out.error["code"] == "http_blocked"
    assert "127.0.0.1" in out.error["message"]


# The test's own server is the one address these policies open; 127.0.0.2 stands for
# every address the guard must refuse, so a guard that let it through would still only
# reach this machine (and no name here is ever asked of a real resolver).
LOCAL = HttpPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))


async def test_a_name_resolving_to_a_refused_address_is_refused(base_url: str) -> None:
    port = base_url.rsplit(":", 1)[1]
    resolver = FakeResolver({"localhost": ["127.0.0.2"]})
    out = await call(LOCAL, resolve=resolver, url=f"http://localhost:{port}/echo")
    assert out.error is not None
    assert out.error["code"] == "http_blocked" and "127.0.0.2" in out.error["message"]
    assert resolver.asked == ["localhost"]


async def test_any_refused_answer_refuses_the_name(base_url: str) -> None:
    port = base_url.rsplit(":", 1)[1]
    resolver = FakeResolver({"localhost": ["127.0.0.1", "127.0.0.2"]})
    out = await call(LOCAL, resolve=resolver, url=f"http://localhost:{port}/echo")
    assert out.error is not None
    assert out.error["code"] == "http_blocked" and "127.0.0.2" in out.error["message"]
    allowed = await call(LOCAL, resolve=FakeResolver({"localhost": ["127.0.0.1"]}),
                         url=f"http://localhost:{port}/echo")
    assert allowed.status is RunStatus.SUCCEEDED, allowed.error  # the same name, vetted


async def test_a_redirect_to_a_refused_address_is_refused(base_url: str) -> None:
    # The test server itself is allowed; the address it redirects to is not.
    ok = await call(LOCAL, url=f"{base_url}/echo")
    assert ok.status is RunStatus.SUCCEEDED
    port = base_url.rsplit(":", 1)[1]
    out = await call(LOCAL, url=f"{base_url}/redirect?to=http://127.0.0.2:{port}/echo")
    assert out.error is not None
    assert out.error["code"] == "http_blocked" and "127.0.0.2" in out.error["message"]


async def test_bad_urls() -> None:
    out = await call(HttpPolicy(), url="file:///etc/passwd")
    assert out.error is not None and out.error["code"] == "http_bad_url"


# A pure table (no I/O), the one place these addresses may be written (tests/offbox.py).
@pytest.mark.parametrize(("address", "allowed"), [
    ("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False),
    ("::ffff:127.0.0.1", False), ("fd00:ec2::254", False), ("fe80::1", False),
    ("224.0.0.1", False),
    # IPv6 forms that carry a loopback IPv4 address: compatible, translated, NAT64, 6to4
    ("::127.0.0.1", False), ("::ffff:0:7f00:1", False), ("64:ff9b::7f00:1", False),
    ("2002:7f00:1::1", False),
])
def test_address_policy(address: str, allowed: bool) -> None:
    assert address_allowed(address, HttpPolicy()) is allowed
    assert address_allowed(address, HttpPolicy(allow_private_hosts=True))
