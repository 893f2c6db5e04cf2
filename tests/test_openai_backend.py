"""The openai backend through the real langchain-openai client, against a loopback server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from langserve import RemoteRunnable

from app.settings import Settings
from tests.conftest import TINY_REPLY, LiveServer, running_server
from tests.fake_openai import FakeOpenAI
from tests.sse import join_chunks, parse_sse

OPENAI_REPLY = "来自 OpenAI 的回答：fine"
SECRET_KEY = "sk-test-secret-key-123456"


def respond(body: dict[str, Any]) -> str:
    """Reply like a chat model would: a label sentence for classify, else a fixed text."""
    system = str(body["messages"][0]["content"])
    if system.startswith("Classify"):
        return "Negative, because the text complains."
    return OPENAI_REPLY


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(responder=respond) as server:
        yield server


@pytest.fixture
def openai_server(fake_openai: FakeOpenAI) -> Iterator[LiveServer]:
    settings = Settings(
        backend="openai",
        openai_api_key=SECRET_KEY,
        openai_base_url=fake_openai.base_url,
        openai_max_retries=1,
        openai_timeout=2.0,
        _env_file=None,  # type: ignore[call-arg]
    )
    fake_openai.fault = None
    with running_server(settings) as server:
        yield server
    fake_openai.fault = None


@pytest.fixture(scope="module")
def both_backends_server(
    fake_openai: FakeOpenAI, tiny_settings_factory: Callable[..., Settings]
) -> Iterator[LiveServer]:
    settings = tiny_settings_factory(
        backend=None, openai_api_key=SECRET_KEY, openai_base_url=fake_openai.base_url
    )
    with running_server(settings) as server:
        yield server


def test_openai_invoke_each_chain(openai_server: LiveServer) -> None:
    url = openai_server.url

    summary = RemoteRunnable(f"{url}/summarize").invoke({"text": "一段很长的文字。"})
    translation = RemoteRunnable(f"{url}/translate").invoke(
        {"text": "hello", "target_language": "zh"}
    )
    answer = RemoteRunnable(f"{url}/qa").invoke(
        {"question": "What?", "context": f"It says {OPENAI_REPLY} here."}
    )

    assert summary == {"summary": OPENAI_REPLY}
    assert translation == {"translation": OPENAI_REPLY}
    assert answer == {"answer": OPENAI_REPLY, "answerable": True}


def test_openai_classify_maps_reply_to_label(openai_server: LiveServer) -> None:
    output = RemoteRunnable(f"{openai_server.url}/classify").invoke({"text": "Awful."})

    assert output == {"label": "negative", "scores": None}


def test_openai_request_carries_stop_and_limit(
    openai_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.requests.clear()

    RemoteRunnable(f"{openai_server.url}/translate").invoke(
        {"text": "hello", "target_language": "Chinese"}
    )
    sent = fake_openai.requests[-1]

    assert sent["stop"] == ["\n"]
    assert sent["max_completion_tokens"] == 128
    assert "label_candidates" not in sent
    assert "request_id" not in sent
    assert sent["messages"][-1]["content"].startswith("English: hello")


async def test_openai_stream_joins_to_invoke(openai_server: LiveServer) -> None:
    remote = RemoteRunnable(f"{openai_server.url}/summarize")

    chunks = [chunk async for chunk in remote.astream({"text": "Some text to summarize."})]
    invoked = await remote.ainvoke({"text": "Some text to summarize."})

    assert len(chunks) >= 3
    assert join_chunks(chunks) == invoked
    assert invoked["summary"].encode() == OPENAI_REPLY.encode()


def test_openai_sse_stream_chinese(openai_server: LiveServer) -> None:
    body = {"input": {"text": "hello", "target_language": "Chinese"}}

    with httpx.stream("POST", f"{openai_server.url}/translate/stream", json=body) as response:
        events = parse_sse(response.read().decode("utf-8"))
    data = [payload for name, payload in events if name == "data"]

    assert events[-1][0] == "end"
    assert len(data) >= 3
    assert join_chunks(data) == {"translation": OPENAI_REPLY}


def test_model_choice_per_request(both_backends_server: LiveServer) -> None:
    remote = RemoteRunnable(f"{both_backends_server.url}/summarize")
    text = {"text": "Some text to summarize."}

    default = remote.invoke(text)
    local = remote.invoke(text, config={"configurable": {"model": "local"}})
    remote_openai = remote.invoke(text, config={"configurable": {"model": "openai"}})

    assert default == {"summary": OPENAI_REPLY}
    assert local == {"summary": TINY_REPLY}
    assert remote_openai == {"summary": OPENAI_REPLY}


def test_model_choice_unknown_lists_both(both_backends_server: LiveServer) -> None:
    response = httpx.post(
        f"{both_backends_server.url}/qa/invoke",
        json={
            "input": {"question": "q", "context": "c"},
            "config": {"configurable": {"model": "x"}},
        },
    )
    message = response.json()["error"]["message"]

    assert response.status_code == 422
    assert "openai" in message
    assert "local" in message


def test_index_lists_both_backends(both_backends_server: LiveServer) -> None:
    index = httpx.get(both_backends_server.url + "/").json()

    assert index["backends"] == ["openai", "local"]
    assert index["default_backend"] == "openai"


# Upstream faults: the server stays up, returns a clear error, and the next request works.


@pytest.mark.parametrize(
    ("fault", "status", "error_type"),
    [
        ("status:429", 503, "upstream_rate_limited"),
        ("status:401", 502, "upstream_auth_error"),
        ("status:500", 502, "upstream_error"),
        ("slow:5", 504, "upstream_timeout"),
    ],
)
def test_upstream_fault_is_answered(
    openai_server: LiveServer, fake_openai: FakeOpenAI, fault: str, status: int, error_type: str
) -> None:
    fake_openai.fault = fault

    response = httpx.post(
        f"{openai_server.url}/summarize/invoke", json={"input": {"text": "t"}}, timeout=30
    )
    error = response.json()["error"]

    assert response.status_code == status
    assert error["type"] == error_type
    assert SECRET_KEY not in response.text
    assert error["request_id"] == response.headers["x-request-id"]

    fake_openai.fault = None
    recovered = httpx.post(f"{openai_server.url}/summarize/invoke", json={"input": {"text": "t"}})
    assert recovered.status_code == 200


def test_rate_limit_is_retried(openai_server: LiveServer, fake_openai: FakeOpenAI) -> None:
    fake_openai.fault = "status:429"
    fake_openai.requests.clear()

    response = httpx.post(
        f"{openai_server.url}/summarize/invoke", json={"input": {"text": "t"}}, timeout=30
    )

    assert response.status_code == 503
    assert "Retry-After" in response.headers
    assert len(fake_openai.requests) == 2  # the first try and one retry (max retries 1)


def test_unreachable_upstream_is_502(tiny_settings_factory: Callable[..., Settings]) -> None:
    from tests.conftest import free_port

    settings = Settings(
        backend="openai",
        openai_api_key=SECRET_KEY,
        openai_base_url=f"http://127.0.0.1:{free_port()}/v1",
        openai_max_retries=0,
        _env_file=None,  # type: ignore[call-arg]
    )
    with running_server(settings) as server:
        response = httpx.post(
            f"{server.url}/qa/invoke", json={"input": {"question": "q", "context": "c"}}
        )

    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_unreachable"


def test_cut_stream_ends_with_error_event(
    openai_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    fake_openai.fault = "cut"
    body = {"input": {"text": "Some text to summarize."}}

    with httpx.stream(
        "POST", f"{openai_server.url}/summarize/stream", json=body, timeout=30
    ) as response:
        events = parse_sse(response.read().decode("utf-8"))
    names = [name for name, _ in events]

    assert names[-2:] == ["error", "end"]
    error = events[-2][1]["error"]
    assert error["type"] in {"upstream_unreachable", "upstream_error", "internal_error"}
    assert SECRET_KEY not in str(events)

    fake_openai.fault = None
    with httpx.stream("POST", f"{openai_server.url}/summarize/stream", json=body) as response:
        recovered = parse_sse(response.read().decode("utf-8"))
    assert recovered[-1][0] == "end"
