"""The local backend under load: batching across requests, cancellation, backpressure.

A random-weight model is used here instead of the trained tiny one, because its greedy output
depends on the prompt, so a request that got another request's tokens would show.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from langchain_core.messages import HumanMessage
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from app.backends import build_local_model, load_local_runtime
from app.backends.engine import PromptTooLongError, plan_scores, score_plans, softmax
from app.backends.local import LocalChatModel, LocalRuntime
from app.settings import Settings
from chains.prompts import DEFAULT_PROMPTS_DIR
from tests.conftest import LiveServer, running_server

PROMPTS = [
    "Hello there",
    "今天天气很好",
    "The model runs a batch of tokens",
    "一二三四五六七八九十",
    "stop here please",
    "queue",
    "窗户 会议 快递",
    "a b c d e f g",
]


@pytest.fixture(scope="module")
def random_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("random-model")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(config)
    # Never end on its own, so a long generation runs until cancelled or out of tokens.
    model.generation_config.suppress_tokens = [tokenizer.eos_token_id]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def long_prompts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prompt files whose summarize task generates up to 4,000 tokens with no stop string."""
    folder = tmp_path_factory.mktemp("prompts") / "prompts"
    shutil.copytree(DEFAULT_PROMPTS_DIR, folder)
    path = folder / "summarize.yaml"
    text = path.read_text(encoding="utf-8")
    text = text.replace('stop: ["\\n"]', "stop: []").replace(
        "max_new_tokens: 96", "max_new_tokens: 4000"
    )
    path.write_text(text, encoding="utf-8")
    return folder


def make_model(
    settings_factory: Callable[..., Settings], model_dir: Path, **overrides: object
) -> LocalChatModel:
    settings = settings_factory(local_model=str(model_dir), **overrides)
    runtime = LocalRuntime(settings.local_model)
    load_local_runtime(runtime, settings)
    return build_local_model(settings, runtime)


@pytest.fixture(scope="module")
def batched_model(
    tiny_settings_factory: Callable[..., Settings], random_model_dir: Path
) -> Iterator[LocalChatModel]:
    model = make_model(
        tiny_settings_factory,
        random_model_dir,
        max_batch_size=8,
        batch_wait_ms=200,
        prompt_format="completion",
    )
    yield model
    assert model.runtime.engine is not None
    model.runtime.engine.close()


async def test_concurrent_outputs_match_solo(batched_model: LocalChatModel) -> None:
    engine = batched_model.runtime.engine
    assert engine is not None
    solo = [(await batched_model.ainvoke(prompt, max_tokens=12)).content for prompt in PROMPTS]
    batches_before = engine.batches_run

    together = await asyncio.gather(
        *(batched_model.ainvoke(prompt, max_tokens=12) for prompt in PROMPTS)
    )

    assert [message.content for message in together] == solo
    assert engine.batches_run - batches_before < len(PROMPTS)  # some requests shared a batch
    assert len(set(solo)) > 1  # the outputs differ, so a swap would show


async def test_mixed_stop_strings_share_batch(batched_model: LocalChatModel) -> None:
    stops = [["there"], ["好"], [], ["s"], ["e"], [], ["会"], ["c"]]
    solo = [
        (await batched_model.ainvoke(prompt, stop=stop, max_tokens=12)).content
        for prompt, stop in zip(PROMPTS, stops, strict=True)
    ]

    together = await asyncio.gather(
        *(
            batched_model.ainvoke(prompt, stop=stop, max_tokens=12)
            for prompt, stop in zip(PROMPTS, stops, strict=True)
        )
    )

    assert [message.content for message in together] == solo
    for message, stop in zip(together, stops, strict=True):
        for stop_string in stop:
            assert stop_string not in message.content


async def test_stream_chunks_match_invoke_in_batch(batched_model: LocalChatModel) -> None:
    async def stream_text(prompt: str) -> tuple[int, str]:
        chunks = [chunk.content async for chunk in batched_model.astream(prompt, max_tokens=12)]
        return len([c for c in chunks if c]), "".join(str(c) for c in chunks)

    streamed = await asyncio.gather(*(stream_text(prompt) for prompt in PROMPTS))
    invoked = await asyncio.gather(
        *(batched_model.ainvoke(prompt, max_tokens=12) for prompt in PROMPTS)
    )

    for (_, text), message in zip(streamed, invoked, strict=True):
        assert text == message.content
    # Rows stream token by token; a row whose tokens decode to partial characters may not.
    assert sum(count for count, _ in streamed) > 2 * len(PROMPTS)


async def test_usage_metadata_counts_tokens(batched_model: LocalChatModel) -> None:
    message = await batched_model.ainvoke("Hello there", max_tokens=5)

    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == 5
    assert message.usage_metadata["input_tokens"] > 0


LABEL_SETS = [
    ["positive", "negative", "neutral"],
    ["体育", "科技新闻", "国际政治"],
    ["yes", "no"],
    ["sports news today", "science", "财经"],
]


def lone_log_prob(model: LocalChatModel, prompt: str, candidate: str) -> float:
    """Return the log-probability of `candidate` after `prompt`, from one unbatched pass.

    The candidate's tokens are those of prompt + candidate after the prefix that it shares
    with the tokens of the prompt alone.
    """
    engine = model.runtime.engine
    assert engine is not None
    prompt_ids = engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = engine.tokenizer(prompt + candidate, add_special_tokens=False)["input_ids"]
    start = 0
    while start < len(prompt_ids) and prompt_ids[start] == full_ids[start]:
        start += 1

    with torch.inference_mode():
        logits = engine.model(torch.tensor([full_ids])).logits[0].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    return sum(float(log_probs[i - 1, full_ids[i]]) for i in range(start, len(full_ids)))


async def test_label_scores_match_lone_passes(batched_model: LocalChatModel) -> None:
    engine = batched_model.runtime.engine
    assert engine is not None
    requests = list(zip(PROMPTS[:4], LABEL_SETS, strict=True))
    batches_before = engine.batches_run

    replies = await asyncio.gather(
        *(batched_model.ainvoke(text, label_candidates=labels) for text, labels in requests)
    )

    assert engine.batches_run - batches_before < len(requests)  # some requests shared a batch
    for (text, labels), reply in zip(requests, replies, strict=True):
        prompt = batched_model.render([HumanMessage(text)], engine)
        expected = softmax([lone_log_prob(batched_model, prompt, " " + label) for label in labels])
        scores = reply.response_metadata["label_scores"]
        assert list(scores) == labels
        assert list(scores.values()) == pytest.approx(expected, abs=1e-4)
        assert reply.content == labels[expected.index(max(expected))]


def prompt_token_count(model: LocalChatModel, text: str) -> int:
    """Return the token count of the prompt that `model` renders for a message `text`."""
    engine = model.runtime.engine
    assert engine is not None
    prompt = model.render([HumanMessage(text)], engine)
    return len(engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])


async def test_context_limit_cuts_new_tokens(
    tiny_settings_factory: Callable[..., Settings],
    random_model_dir: Path,
    batched_model: LocalChatModel,
) -> None:
    prompt_tokens = prompt_token_count(batched_model, "Hello there")
    limited = make_model(
        tiny_settings_factory,
        random_model_dir,
        prompt_format="completion",
        max_context_tokens=prompt_tokens + 3,
    )

    try:
        reply = await limited.ainvoke("Hello there", max_tokens=12)
        with pytest.raises(PromptTooLongError):
            await limited.ainvoke("Hello there, and some more words", max_tokens=12)
    finally:
        assert limited.runtime.engine is not None
        limited.runtime.engine.close()

    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] == prompt_tokens
    assert reply.usage_metadata["output_tokens"] == 3


async def test_near_limit_prompt_runs_apart(
    tiny_settings_factory: Callable[..., Settings],
    random_model_dir: Path,
    batched_model: LocalChatModel,
) -> None:
    long_text = "一二三四五六七八九十 " * 4
    prompt_tokens = prompt_token_count(batched_model, long_text)
    # The long prompt has room for 2 new tokens, so it must not run in a batch that
    # generates 12: its finished row would grow past the limit.
    limited = make_model(
        tiny_settings_factory,
        random_model_dir,
        prompt_format="completion",
        batch_wait_ms=300,
        max_context_tokens=prompt_tokens + 2,
    )
    limited_engine = limited.runtime.engine
    assert limited_engine is not None

    try:
        before = limited_engine.batches_run
        near_limit, short = await asyncio.gather(
            limited.ainvoke(long_text, max_tokens=12), limited.ainvoke("Hello", max_tokens=12)
        )
        apart_batches = limited_engine.batches_run - before
        before = limited_engine.batches_run
        await asyncio.gather(
            limited.ainvoke("Hello", max_tokens=12), limited.ainvoke("queue", max_tokens=12)
        )
        shared_batches = limited_engine.batches_run - before
    finally:
        limited_engine.close()

    assert near_limit.usage_metadata is not None
    assert near_limit.usage_metadata["output_tokens"] == 2
    assert short.usage_metadata is not None
    assert short.usage_metadata["output_tokens"] == 12
    assert apart_batches == 2
    assert shared_batches == 1


def test_chunked_scoring_matches_one_pass(batched_model: LocalChatModel) -> None:
    engine = batched_model.runtime.engine
    assert engine is not None
    plans = [
        plan_scores(engine.tokenizer, text, [" " + label for label in labels])
        for text, labels in zip(PROMPTS, LABEL_SETS, strict=False)
    ]

    whole = score_plans(engine.model, engine.tokenizer, plans)
    # A budget of 1 byte runs every multi-token candidate alone, one position per pass.
    chunked = score_plans(engine.model, engine.tokenizer, plans, budget_bytes=1)

    for whole_scores, chunked_scores in zip(whole, chunked, strict=True):
        assert chunked_scores == pytest.approx(whole_scores, abs=1e-5)


# Server-level behaviour, checked through /metrics counters rather than timings.


def metric(server: LiveServer, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not found")


def wait_for_metric(server: LiveServer, name: str, expected: Callable[[float], bool]) -> float:
    """Poll a metric a bounded number of times; return its last value."""
    value = metric(server, name)
    for _ in range(300):
        if expected(value):
            return value
        threading.Event().wait(0.05)
        value = metric(server, name)
    return value


@pytest.fixture(scope="module")
def long_server(
    tiny_settings_factory: Callable[..., Settings], random_model_dir: Path, long_prompts_dir: Path
) -> Iterator[LiveServer]:
    settings = tiny_settings_factory(
        local_model=str(random_model_dir),
        prompts_dir=long_prompts_dir,
        max_new_tokens=4000,
        max_queue_size=2,
        max_batch_size=2,
        prompt_format="completion",
    )
    with running_server(settings) as server:
        yield server


LONG_INPUT = {"input": {"text": "The model runs a batch of tokens"}}


def test_cancelled_stream_frees_slot(long_server: LiveServer) -> None:
    cancelled_before = metric(long_server, "chainserve_cancelled_rows")

    with httpx.stream("POST", f"{long_server.url}/summarize/stream", json=LONG_INPUT) as response:
        assert response.status_code == 200
        busy = wait_for_metric(long_server, "chainserve_active_generations", lambda v: v == 1)
        assert busy == 1

    active = wait_for_metric(long_server, "chainserve_active_generations", lambda v: v == 0)
    cancelled = metric(long_server, "chainserve_cancelled_rows")

    assert active == 0
    assert cancelled == cancelled_before + 1


def test_abandoned_invoke_is_cancelled(long_server: LiveServer) -> None:
    cancelled_before = metric(long_server, "chainserve_cancelled_rows")

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{long_server.url}/summarize/invoke", json=LONG_INPUT, timeout=1.0)

    cancelled = wait_for_metric(
        long_server, "chainserve_cancelled_rows", lambda v: v == cancelled_before + 1
    )
    assert cancelled == cancelled_before + 1
    assert wait_for_metric(long_server, "chainserve_active_generations", lambda v: v == 0) == 0


def test_health_answers_while_generating(long_server: LiveServer) -> None:
    answered_while_busy = 0

    with httpx.stream("POST", f"{long_server.url}/summarize/stream", json=LONG_INPUT) as response:
        assert response.status_code == 200
        wait_for_metric(long_server, "chainserve_active_generations", lambda v: v == 1)
        for _ in range(5):
            health = httpx.get(long_server.url + "/health", timeout=5)
            if health.status_code == 200 and metric(long_server, "chainserve_active_generations"):
                answered_while_busy += 1

    assert answered_while_busy == 5


async def test_full_queue_gets_503(long_server: LiveServer) -> None:
    # The queue takes 2 and a batch takes 2, so of 8 long requests at least 4 are rejected.
    async with httpx.AsyncClient(base_url=long_server.url, timeout=5.0) as client:

        async def post() -> httpx.Response | None:
            try:
                return await client.post("/summarize/invoke", json=LONG_INPUT)
            except httpx.ReadTimeout:
                return None  # still generating: it was accepted

        responses = await asyncio.gather(*(post() for _ in range(8)))

    rejected = [r for r in responses if r is not None and r.status_code == 503]
    assert len(rejected) >= 4
    for response in rejected:
        assert response.headers["Retry-After"].isdigit()
        assert response.json()["error"]["type"] == "overloaded"
    assert wait_for_metric(long_server, "chainserve_active_generations", lambda v: v == 0) == 0


def test_generation_timeout_gets_504(
    tiny_settings_factory: Callable[..., Settings], random_model_dir: Path, long_prompts_dir: Path
) -> None:
    settings = tiny_settings_factory(
        local_model=str(random_model_dir),
        prompts_dir=long_prompts_dir,
        max_new_tokens=4000,
        generation_timeout=0.5,
        prompt_format="completion",
    )
    with running_server(settings) as server:
        response = httpx.post(f"{server.url}/summarize/invoke", json=LONG_INPUT, timeout=30)
        active = wait_for_metric(server, "chainserve_active_generations", lambda v: v == 0)

    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout"
    assert active == 0
