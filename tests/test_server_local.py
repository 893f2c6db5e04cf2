"""End-to-end tests of every chain on a real uvicorn server with the tiny local model."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx
import pytest
from langserve import RemoteRunnable

from tests.conftest import TINY_REPLY, LiveServer
from tests.sse import join_chunks, parse_sse

CHAIN_INPUTS: dict[str, dict[str, Any]] = {
    "summarize": {"text": "今天上午，市政府宣布将在明年建设三座新公园。The parks open in 2027."},
    "translate": {"text": "我明天要去上海出差。", "target_language": "English"},
    "qa": {"question": "What does the model reply?", "context": f"The model replies {TINY_REPLY}."},
    "classify": {"text": "这家餐厅的菜很好吃！", "labels": ["好评", "差评"]},
}

TEXT_FIELD = {"summarize": "summary", "translate": "translation", "qa": "answer"}


@pytest.mark.parametrize("chain", list(TEXT_FIELD))
def test_text_chain_invoke_returns_reply(tiny_server: LiveServer, chain: str) -> None:
    remote = RemoteRunnable(f"{tiny_server.url}/{chain}")

    output = remote.invoke(CHAIN_INPUTS[chain])

    assert output[TEXT_FIELD[chain]] == TINY_REPLY
    if chain == "qa":
        assert output["answerable"] is True


def test_classify_returns_allowed_label_and_scores(tiny_server: LiveServer) -> None:
    remote = RemoteRunnable(f"{tiny_server.url}/classify")

    output = remote.invoke(CHAIN_INPUTS["classify"])

    assert output["label"] in {"好评", "差评"}
    assert set(output["scores"]) == {"好评", "差评"}
    assert sum(output["scores"].values()) == pytest.approx(1.0)
    assert output["label"] == max(output["scores"], key=output["scores"].get)


def test_classify_default_labels_are_sentiment(tiny_server: LiveServer) -> None:
    output = RemoteRunnable(f"{tiny_server.url}/classify").invoke({"text": "I like it."})

    assert set(output["scores"]) == {"positive", "negative", "neutral"}


@pytest.mark.parametrize("chain", list(CHAIN_INPUTS))
def test_batch_matches_single_invokes(tiny_server: LiveServer, chain: str) -> None:
    remote = RemoteRunnable(f"{tiny_server.url}/{chain}")
    inputs = [CHAIN_INPUTS[chain], CHAIN_INPUTS[chain], CHAIN_INPUTS[chain]]

    outputs = remote.batch(inputs)
    single = remote.invoke(CHAIN_INPUTS[chain])

    assert len(outputs) == 3
    for output in outputs:
        assert output.keys() == single.keys()
        for key in TEXT_FIELD.values():
            if key in single:
                assert output[key] == single[key]


@pytest.mark.parametrize("chain", list(CHAIN_INPUTS))
async def test_remote_astream_joins_to_invoke(tiny_server: LiveServer, chain: str) -> None:
    remote = RemoteRunnable(f"{tiny_server.url}/{chain}")

    chunks = [chunk async for chunk in remote.astream(CHAIN_INPUTS[chain])]
    invoked = await remote.ainvoke(CHAIN_INPUTS[chain])

    assert len(chunks) >= 2
    assert join_chunks(chunks) == invoked


@pytest.mark.parametrize("chain", list(TEXT_FIELD))
def test_sync_stream_yields_tokens(tiny_server: LiveServer, chain: str) -> None:
    remote = RemoteRunnable(f"{tiny_server.url}/{chain}")

    chunks = list(remote.stream(CHAIN_INPUTS[chain]))
    text = "".join(chunk.get(TEXT_FIELD[chain], "") for chunk in chunks)

    assert text == TINY_REPLY
    if chain != "qa":  # qa keeps an extractive answer back until it is checked.
        assert len([c for c in chunks if c.get(TEXT_FIELD[chain])]) >= 3


@pytest.mark.parametrize("chain", list(CHAIN_INPUTS))
async def test_astream_events_reports_model_tokens(tiny_server: LiveServer, chain: str) -> None:
    remote = RemoteRunnable(f"{tiny_server.url}/{chain}")

    events = [event async for event in remote.astream_events(CHAIN_INPUTS[chain], version="v2")]
    kinds = [event["event"] for event in events]

    assert kinds[0] == "on_chain_start"
    assert kinds[-1] == "on_chain_end"
    assert "on_chat_model_start" in kinds
    if chain != "classify":  # classify scores labels in one step
        assert kinds.count("on_chat_model_stream") >= 3
    assert events[-1]["data"]["output"] == await remote.ainvoke(CHAIN_INPUTS[chain])


@pytest.mark.parametrize("chain", list(TEXT_FIELD))
def test_httpx_sse_stream_equals_invoke(tiny_server: LiveServer, chain: str) -> None:
    body = {"input": CHAIN_INPUTS[chain]}

    with httpx.Client(base_url=tiny_server.url, timeout=60) as client:
        invoked = client.post(f"/{chain}/invoke", json=body).json()["output"]
        with client.stream("POST", f"/{chain}/stream", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            raw = response.read().decode("utf-8")

    events = parse_sse(raw)
    data = [payload for name, payload in events if name == "data"]

    assert events[0][0] == "metadata"
    assert events[-1][0] == "end"
    # qa keeps an extractive answer back until it is checked, then sends `answerable`.
    assert len(data) >= (2 if chain == "qa" else 3)
    assert join_chunks(data) == invoked
    assert join_chunks(data)[TEXT_FIELD[chain]].encode("utf-8") == TINY_REPLY.encode("utf-8")


def test_curl_stream_chinese_is_byte_identical(tiny_server: LiveServer) -> None:
    body = json.dumps({"input": CHAIN_INPUTS["translate"]}, ensure_ascii=False)

    result = subprocess.run(
        [
            "curl",
            "-sN",
            f"{tiny_server.url}/translate/stream",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    events = parse_sse(result.stdout.decode("utf-8"))
    text = "".join(p["translation"] for name, p in events if name == "data")

    assert events[-1][0] == "end"
    assert text.encode("utf-8") == TINY_REPLY.encode("utf-8")


def test_curl_invoke_chinese_input(tiny_server: LiveServer) -> None:
    body = json.dumps({"input": {"text": "这部电影太精彩了"}}, ensure_ascii=False)

    result = subprocess.run(
        [
            "curl",
            "-s",
            f"{tiny_server.url}/classify/invoke",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    output = json.loads(result.stdout)["output"]

    assert output["label"] in {"positive", "negative", "neutral"}


def test_index_lists_chains(tiny_server: LiveServer) -> None:
    index = httpx.get(tiny_server.url + "/").json()

    assert [chain["name"] for chain in index["chains"]] == [
        "classify",
        "summarize",
        "translate",
        "qa",
    ]
    for chain in index["chains"]:
        playground = httpx.get(tiny_server.url + chain["playground"])
        assert playground.status_code == 200
        assert "<html" in playground.text.lower()


def test_health_and_ready(tiny_server: LiveServer) -> None:
    assert httpx.get(tiny_server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(tiny_server.url + "/ready").status_code == 200


@pytest.mark.parametrize(
    ("chain", "fields"),
    [
        ("classify", {"text", "labels", "instructions"}),
        ("summarize", {"text", "max_words", "language"}),
        ("translate", {"text", "target_language", "source_language"}),
        ("qa", {"question", "context"}),
    ],
)
def test_input_schema_has_real_fields(
    tiny_server: LiveServer, chain: str, fields: set[str]
) -> None:
    schema = httpx.get(f"{tiny_server.url}/{chain}/input_schema").json()

    assert set(schema["properties"]) == fields


@pytest.mark.parametrize(
    ("chain", "fields"),
    [
        ("classify", {"label", "scores"}),
        ("summarize", {"summary"}),
        ("translate", {"translation"}),
        ("qa", {"answer", "answerable"}),
    ],
)
def test_output_schema_has_real_fields(
    tiny_server: LiveServer, chain: str, fields: set[str]
) -> None:
    schema = httpx.get(f"{tiny_server.url}/{chain}/output_schema").json()

    assert set(schema["properties"]) == fields


def test_openapi_documents_chain_inputs(tiny_server: LiveServer) -> None:
    spec = httpx.get(tiny_server.url + "/openapi.json").json()

    assert "/classify/invoke" in spec["paths"]
    assert "ClassifyInput" in json.dumps(spec["components"]["schemas"])


def test_unknown_model_choice_lists_valid_ones(tiny_server: LiveServer) -> None:
    response = httpx.post(
        f"{tiny_server.url}/classify/invoke",
        json={"input": {"text": "hi"}, "config": {"configurable": {"model": "gpt-9"}}},
    )
    error = response.json()["error"]

    assert response.status_code == 422
    assert "config.configurable.model" in error["message"]
    assert "local" in error["message"]


def test_blank_text_is_rejected_with_field(tiny_server: LiveServer) -> None:
    response = httpx.post(f"{tiny_server.url}/summarize/invoke", json={"input": {"text": " \n"}})
    error = response.json()["error"]

    assert response.status_code == 422
    assert error["message"].startswith("input.text:")
    assert error["request_id"] == response.headers["x-request-id"]


def test_summarize_max_words_cuts_output(tiny_server: LiveServer) -> None:
    remote = RemoteRunnable(f"{tiny_server.url}/summarize")

    output = remote.invoke({"text": "Some long text to summarize.", "max_words": 1})

    assert output["summary"] == "Hello"


# 17,500 characters: under the default text limit, and several times the tiny model's 4,096
# positions once tokenized.
PAST_CONTEXT_TEXT = "今天天气很好。" * 2500


@pytest.mark.parametrize("chain", ["summarize", "classify"])
def test_input_past_context_is_422(tiny_server: LiveServer, chain: str) -> None:
    body = {"input": {"text": PAST_CONTEXT_TEXT}}

    with httpx.Client(base_url=tiny_server.url, timeout=120) as client:
        rejected = client.post(f"/{chain}/invoke", json=body)
        batch = client.post(f"/{chain}/batch", json={"inputs": [body["input"]]})
        with client.stream("POST", f"/{chain}/stream", json=body) as response:
            events = parse_sse(response.read().decode("utf-8"))
        accepted = client.post(f"/{chain}/invoke", json={"input": CHAIN_INPUTS[chain]})

    error = rejected.json()["error"]
    assert rejected.status_code == 422
    assert error["type"] == "input_too_long"
    subject = "input: the prompt built from this input"
    if chain == "classify":
        subject += " plus its longest label"
    assert error["message"].startswith(subject + " is ")
    assert "fewer than 4096" in error["message"]
    assert batch.status_code == 422
    assert batch.json()["error"]["type"] == "input_too_long"
    assert [name for name, _ in events] == ["error", "end"]
    assert events[0][1]["status_code"] == 422
    assert accepted.status_code == 200
