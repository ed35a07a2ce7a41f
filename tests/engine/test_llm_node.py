"""The llm node against a local fake OpenAI-compatible server (no network)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from flowrun.engine.executor import Executor, RunOutcome
from flowrun.engine.node_services import HttpPolicy, LlmDefaults, NodeServices
from flowrun.engine.nodes import registry
from flowrun.errors import DefinitionError
from flowrun.language.definitions import parse_definition
from flowrun.records import NodeRecord, RunStatus
from tests.local_server import serve

SEEN: list[dict[str, Any]] = []


def chunk(content: str | None = None, usage: dict[str, int] | None = None) -> str:
    body: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk",
                            "choices": [] if content is None else
                            [{"index": 0, "delta": {"content": content},
                              "finish_reason": None}]}
    if usage:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


async def completions(request: Request) -> Response:
    body = await request.json()
    SEEN.append({"body": body, "auth": request.headers.get("authorization")})
    model = body["model"]
    if model == "broken":
        return JSONResponse({"error": {"message": "model exploded"}}, status_code=500)
    if model == "hang":
        await anyio.sleep(3600)
    if not body.get("stream") or model == "plain":
        return JSONResponse({"choices": [{"message": {"content": "plain answer"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                       "total_tokens": 5}})

    async def stream() -> AsyncIterator[str]:
        yield chunk("Hel")
        yield chunk("lo")
        await anyio.sleep(0.4)
        yield chunk(" world")
        yield chunk(usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


APP = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


@pytest.fixture(scope="module")
def llm_url() -> Iterator[str]:
    with serve(APP) as url:
        yield f"{url}/v1"


class Timeline:
    def __init__(self) -> None:
        self.chunks: list[tuple[float, str]] = []
        self.finished: dict[str, float] = {}

    async def node_started(self, node: NodeRecord, predecessor: str | None) -> None: ...
    async def node_retry(self, node: NodeRecord, error: dict[str, Any]) -> None: ...
    async def node_skipped(self, node: NodeRecord) -> None: ...
    async def node_waiting(self, node: NodeRecord) -> None: ...

    async def node_finished(self, node: NodeRecord) -> None:
        self.finished[node.node_id] = time.monotonic()

    async def text_chunk(self, node_id: str, text: str) -> None:
        self.chunks.append((time.monotonic(), text))


async def ask(url: str, observer: Any = None, **params: Any) -> RunOutcome:
    services = NodeServices(llm=LlmDefaults(base_url=url, api_key="sk-test", model="m"),
                            http=HttpPolicy())
    definition = parse_definition({"name": "l", "nodes": [
        {"id": "ask", "type": "llm", **params},
        {"id": "again", "type": "llm", "prompt": "more", "model": "plain"}],
        "edges": [{"source": "ask", "target": "again"}]}, registry=registry)
    return await Executor(definition, run_id="r", inputs={}, services=services,
                          observer=observer).execute()


async def test_streamed_chunks_arrive_before_the_node_finishes(llm_url: str) -> None:
    timeline = Timeline()
    out = await ask(llm_url, timeline, prompt="Say hello", system="Be brief",
                    temperature=0.2, max_tokens=20)
    assert out.status is RunStatus.SUCCEEDED
    texts = [text for _, text in timeline.chunks]
    # (deltas that come close together may share an event: the text is the same)
    assert "".join(texts) == "Hello worldplain answer" and texts[0] == "Hel"
    assert texts[-1] == "plain answer"
    first_chunk = timeline.chunks[0][0]
    assert timeline.finished["ask"] - first_chunk > 0.3  # it streamed, not buffered
    result = out.nodes[0].outputs
    assert result["text"] == "Hello world"
    assert result["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert out.total_tokens == 15
    request = SEEN[-2]
    assert request["auth"] == "Bearer sk-test"
    assert request["body"]["messages"] == [{"role": "system", "content": "Be brief"},
                                           {"role": "user", "content": "Say hello"}]
    assert request["body"]["temperature"] == 0.2 and request["body"]["max_tokens"] == 20


async def test_error_status_fails_the_node(llm_url: str) -> None:
    out = await ask(llm_url, prompt="x", model="broken")
    assert out.error is not None
    assert out.error["code"] == "llm_error" and "500" in out.error["message"]
    assert "model exploded" in out.error["message"]


async def test_hung_connection_hits_the_node_timeout(llm_url: str) -> None:
    started = time.monotonic()
    out = await ask(llm_url, prompt="x", model="hang", timeout=0.5)
    assert out.error is not None
    assert out.error["code"] == "node_timeout" and time.monotonic() - started < 3


async def test_needs_a_prompt_or_messages(llm_url: str) -> None:
    out = await ask(llm_url)
    assert out.error is not None and out.error["code"] == "llm_bad_request"


async def test_a_per_node_base_url_goes_through_the_ssrf_guard(llm_url: str) -> None:
    # the configured API (nothing listens there) is never asked: the node fails first
    out = await ask("http://127.0.0.1:9/v1", prompt="x", base_url=llm_url)
    assert out.error is not None and out.error["code"] == "http_blocked"


@pytest.mark.parametrize(("param", "value", "says"), [
    ("temperature", 5, "less than or equal to 2"),
    ("temperature", -0.1, "greater than or equal to 0"),
    ("max_tokens", 0, "greater than or equal to 1"),
    ("max_tokens", 10**9, "less than or equal to 1000000"),
    ("model", "", "at least 1 character"),
])
def test_out_of_range_params_are_refused_when_the_workflow_is_defined(
        param: str, value: Any, says: str) -> None:
    with pytest.raises(DefinitionError, match=f"param '{param}': .*{says}"):
        parse_definition({"name": "l", "nodes": [
            {"id": "ask", "type": "llm", "prompt": "x", param: value}]}, registry=registry)


async def test_an_expression_that_gives_an_out_of_range_param_fails_the_node_unsent(
        llm_url: str) -> None:
    SEEN.clear()
    services = NodeServices(llm=LlmDefaults(base_url=llm_url, api_key="sk-test", model="m"),
                            http=HttpPolicy())
    definition = parse_definition({"name": "l", "inputs": {"t": {"type": "number"}},
                                   "nodes": [{"id": "ask", "type": "llm", "prompt": "x",
                                              "temperature": "{{ inputs.t }}"}]},
                                  registry=registry)
    out = await Executor(definition, run_id="r", inputs={"t": 9}, services=services).execute()
    assert out.error is not None and out.error["code"] == "invalid_params"
    assert "temperature" in out.error["message"]
    assert SEEN == []  # the LLM API was never asked
