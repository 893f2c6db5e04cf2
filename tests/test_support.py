"""Checks of the test-support modules: the tiny local model and the fake OpenAI server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from app.backends import build_local_model, load_local_runtime
from app.backends.loading import load_model
from app.backends.local import LocalRuntime
from app.backends.openai import build_openai_model
from app.settings import Settings
from tests.fake_openai import FakeOpenAI, split_tokens
from tests.tiny_model import build_tiny_model

ENGLISH_REPLY = "tiny reply"
CHINESE_REPLY = "你好，世界"
SERVER_REPLY = "Hello there, friend. 你好，世界！"

# Conversations that the tiny model never saw in training.
UNSEEN_CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France? Answer briefly."}],
    [
        {"role": "system", "content": "Translate the text from Chinese into English."},
        {"role": "user", "content": "我明天要去北京开会，请帮我订一张火车票。"},
    ],
    [{"role": "user", "content": "def square(x):\n    return x ** 2"}],
]


# Tiny local model.


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        reply: build_tiny_model(root / f"model-{index}", reply=reply)
        for index, reply in enumerate((ENGLISH_REPLY, CHINESE_REPLY))
    }


def test_split_tokens_joins_back_exactly() -> None:
    for text in (SERVER_REPLY, "", "  lead and trail  ", "混合 text，带标点。\nnew line"):
        assert "".join(split_tokens(text)) == text
    assert split_tokens("你好 world") == ["你", "好", " world"]


@pytest.mark.parametrize("reply", [ENGLISH_REPLY, CHINESE_REPLY])
def test_tiny_model_greedy_reply_exact(
    tiny_models: dict[str, Path], reply: str, tmp_path: Path
) -> None:
    loaded = load_model(str(tiny_models[reply]), cache_dir=tmp_path, device="cpu", dtype="float32")
    tokenizer = loaded.tokenizer
    max_new_tokens = 40

    for conversation in UNSEEN_CONVERSATIONS:
        prompt = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            output = loaded.model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False
            )
        new_tokens = output[0, encoded["input_ids"].shape[1] :].tolist()

        assert tokenizer.decode(new_tokens, skip_special_tokens=True) == reply
        assert new_tokens[-1] in loaded.eos_token_ids
        assert len(new_tokens) < max_new_tokens


def test_tiny_tokenizer_round_trips_chinese(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    loaded = load_model(
        str(tiny_models[ENGLISH_REPLY]), cache_dir=tmp_path, device="cpu", dtype="float32"
    )
    text = "混合 text：你好，世界！naïve café 😀\n\tend"
    token_ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]

    assert loaded.tokenizer.decode(token_ids) == text
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.tokenizer.pad_token == "<pad>"
    assert loaded.tokenizer.eos_token == "<|im_end|>"


@pytest.mark.parametrize("reply", [ENGLISH_REPLY, CHINESE_REPLY])
async def test_local_chat_model_returns_reply(
    tiny_models: dict[str, Path], reply: str, tmp_path: Path
) -> None:
    settings = Settings(
        local_model=str(tiny_models[reply]),
        dtype="float32",
        device="cpu",
        cache_dir=tmp_path,
        _env_file=None,  # type: ignore[call-arg]
    )
    runtime = LocalRuntime(settings.local_model)
    load_local_runtime(runtime, settings)
    model = build_local_model(settings, runtime)

    try:
        message = await model.ainvoke("hi")
        chunks = [chunk async for chunk in model.astream("hi")]
        few_shot = await model.ainvoke(
            [
                SystemMessage("Classify the text."),
                HumanMessage("Text: good\nLabel:"),
                AIMessage("positive"),
                HumanMessage("Text: 很差\nLabel:"),
            ]
        )
    finally:
        assert runtime.engine is not None
        runtime.engine.close()

    assert message.content == reply
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] > 0
    texts = [str(chunk.content) for chunk in chunks if chunk.content]
    assert len(texts) >= 3
    assert "".join(texts) == reply
    assert few_shot.content == reply


# Fake OpenAI server.


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(responder=lambda body: SERVER_REPLY) as fake:
        yield fake


def make_client(server: FakeOpenAI, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=server.base_url, api_key="test", model="gpt-test", max_retries=0, **kwargs
    )


def test_fake_server_invoke(server: FakeOpenAI) -> None:
    message = make_client(server, max_completion_tokens=64).invoke("hi")

    assert message.content == SERVER_REPLY
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] == 1
    assert message.usage_metadata["output_tokens"] == len(split_tokens(SERVER_REPLY))
    assert len(server.requests) == 1
    assert server.requests[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert server.requests[0]["model"] == "gpt-test"
    assert server.requests[0]["max_completion_tokens"] == 64


async def test_fake_server_ainvoke_honours_stop(server: FakeOpenAI) -> None:
    message = await make_client(server).ainvoke("hi", stop=["，", "!"])

    assert message.content == "Hello there, friend. 你好"
    assert server.requests[0]["stop"] == ["，", "!"]


async def test_fake_server_token_limit(server: FakeOpenAI) -> None:
    message = await make_client(server, max_completion_tokens=3).ainvoke("hi")

    assert message.content == "Hello there, friend."
    assert message.response_metadata["finish_reason"] == "length"


async def test_fake_server_astream_chunks(server: FakeOpenAI) -> None:
    client = make_client(server, stream_usage=True)
    chunks = [chunk async for chunk in client.astream("hi")]

    texts = [str(chunk.content) for chunk in chunks if chunk.content]
    assert len(texts) == len(split_tokens(SERVER_REPLY))
    assert "".join(texts) == SERVER_REPLY
    assert "你" in texts
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert merged.usage_metadata is not None
    assert merged.usage_metadata["output_tokens"] == len(texts)
    assert merged.response_metadata["finish_reason"] == "stop"
    assert server.requests[0]["stream"] is True
    assert server.requests[0]["stream_options"] == {"include_usage": True}


async def test_project_openai_backend(server: FakeOpenAI) -> None:
    settings = Settings(
        openai_api_key=SecretStr("test"),
        openai_base_url=server.base_url,
        max_new_tokens=32,
        _env_file=None,  # type: ignore[call-arg]
    )
    model = build_openai_model(settings)
    message = await model.ainvoke("hi", label_candidates=["a", "b"], request_id="r1")

    assert message.content == SERVER_REPLY
    body = server.requests[0]
    assert body["max_completion_tokens"] == 32
    assert "label_candidates" not in body
    assert "request_id" not in body


def test_fault_status_returns_openai_error(server: FakeOpenAI) -> None:
    server.fault = "status:429"
    with pytest.raises(openai.RateLimitError) as caught:
        make_client(server).invoke("hi")

    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    server.fault = None
    assert make_client(server).invoke("hi").content == SERVER_REPLY


async def test_fault_slow_times_out_client(server: FakeOpenAI) -> None:
    server.fault = "slow:5"

    # The fake server replies after 5 s, and a reply would return normally. So the timeout
    # error shows that the client gave up at its own 0.3 s limit.
    with pytest.raises(openai.APITimeoutError):
        await make_client(server, timeout=0.3).ainvoke("hi")


async def test_fault_cut_stream_breaks_connection(server: FakeOpenAI) -> None:
    server.fault = "cut"
    texts: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in make_client(server).astream("hi"):
            texts.append(str(chunk.content))

    assert "".join(texts) == "".join(split_tokens(SERVER_REPLY)[:2])
    with pytest.raises(openai.APIConnectionError):
        await make_client(server).ainvoke("hi")


def test_fault_rejects_unknown_value(server: FakeOpenAI) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        server.fault = "explode"
    with pytest.raises(ValueError, match="invalid fault"):
        server.fault = "status:200"
    assert server.fault is None
