"""LangChain chat model over an in-process transformers model.

The stock `ChatHuggingFace` over a local pipeline does not fit a server: its async methods
raise NotImplementedError (and LangServe calls only those), it ignores `stop` outside
streaming, reports no token usage and runs every request as its own `generate` call. This
chat model sends every call to the batching `Engine` instead, streams real tokens, honours
stop strings, reports `usage_metadata`, and cancels its row when the caller goes away.

Prompt rendering: a model with a chat template gets its messages through that template. A
base model (such as the Gemma 3 270M default) gets a plain completion prompt, because base
models continue text rather than follow turns: the system message, then each example as the
human text directly followed by the AI reply, ending at the slot to fill.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from app.backends.engine import (
    Engine,
    EngineError,
    GenerationEvent,
    RequestHandle,
    SamplingParams,
    softmax,
)
from app.observability import current_request_id
from chains.classify import LABEL_CANDIDATES_KWARG

logger = logging.getLogger(__name__)


class GenerationTimeout(EngineError):
    """A generation ran longer than the configured timeout and was stopped."""


class ModelNotLoaded(EngineError):
    """The local model failed to load or is still loading."""


class LocalRuntime:
    """The engine of the local model, loaded once and shared by every chat model instance."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.engine: Engine | None = None
        self.load_error: BaseException | None = None
        self.load_seconds: float | None = None
        self._loaded = threading.Event()

    @property
    def is_loaded(self) -> bool:
        return self.engine is not None

    def set_engine(self, engine: Engine, load_seconds: float) -> None:
        self.engine = engine
        self.load_seconds = load_seconds
        self._loaded.set()

    def set_failed(self, error: BaseException) -> None:
        self.load_error = error
        self._loaded.set()

    def wait(self, timeout: float | None = None) -> Engine:
        """Block until the model is loaded; raise ModelNotLoaded if loading failed."""
        if not self._loaded.wait(timeout):
            raise ModelNotLoaded(f"the local model {self.name} is still loading; retry shortly")
        if self.engine is None:
            raise ModelNotLoaded(f"the local model {self.name} failed to load: {self.load_error}")
        return self.engine


def render_completion(messages: Sequence[BaseMessage]) -> str:
    """Render chat messages as one completion prompt for a base model."""
    parts: list[str] = []
    for message in messages:
        text = message.text.strip("\n")
        if message.type == "ai" and parts:
            parts[-1] = parts[-1] + " " + text
        else:
            parts.append(text)
    return "\n\n".join(parts)


class LocalChatModel(BaseChatModel):
    """Chat model that runs on the in-process engine of a transformers model."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    runtime: LocalRuntime = Field(exclude=True)
    model_name: str = "local"
    prompt_format: Literal["auto", "chat", "completion"] = "auto"
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    timeout: float | None = Field(default=None, description="Generation timeout (seconds).")
    load_timeout: float = Field(default=600.0, description="Wait for a loading model (seconds).")

    @property
    def _llm_type(self) -> str:
        return "chainserve-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature}

    def render(self, messages: Sequence[BaseMessage], engine: Engine) -> str:
        """Render messages through the chat template, or as a completion prompt."""
        if self._is_completion(engine):
            return render_completion(messages)

        roles = {"human": "user", "ai": "assistant", "system": "system"}
        conversation = [
            {"role": roles.get(message.type, "user"), "content": message.text}
            for message in messages
        ]
        rendered = engine.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        return str(rendered)

    # The common path: every call becomes one request to the engine, whose events arrive
    # through `events`, a queue that the caller reads synchronously or asynchronously.

    def _submit(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        sink: Any,
        kwargs: dict[str, Any],
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None = None,
    ) -> tuple[RequestHandle, list[str] | None]:
        engine = self.runtime.wait(self.load_timeout)
        prompt = self.render(messages, engine)
        candidates: list[str] | None = kwargs.get(LABEL_CANDIDATES_KWARG)
        request_id = (
            kwargs.get("request_id") or request_id_from(run_manager) or current_request_id()
        )

        if candidates:
            separator = " " if self._is_completion(engine) else ""
            handle = engine.submit_score(
                prompt, [separator + c for c in candidates], sink, request_id=request_id
            )
            return handle, candidates

        max_new_tokens = int(kwargs.get("max_tokens") or self.max_new_tokens)
        temperature = float(kwargs.get("temperature", self.temperature))
        handle = engine.submit_generate(
            prompt,
            sink,
            max_new_tokens=min(max_new_tokens, self.max_new_tokens),
            sampling=SamplingParams(temperature=temperature, top_p=self.top_p),
            stop=stop or (),
            request_id=request_id,
        )
        return handle, None

    def _is_completion(self, engine: Engine) -> bool:
        template = getattr(engine.tokenizer, "chat_template", None)
        return self.prompt_format == "completion" or (self.prompt_format == "auto" and not template)

    def _chunks_from_event(
        self, event: GenerationEvent, candidates: list[str] | None
    ) -> Iterator[ChatGenerationChunk]:
        if event.error is not None:
            raise event.error

        if candidates is not None and event.scores is not None:
            probabilities = softmax(event.scores)
            best = max(range(len(candidates)), key=lambda i: probabilities[i])
            metadata = {"label_scores": dict(zip(candidates, probabilities, strict=True))}
            yield ChatGenerationChunk(
                message=AIMessageChunk(content=candidates[best], response_metadata=metadata)
            )

        elif event.text:
            yield ChatGenerationChunk(message=AIMessageChunk(content=event.text))

        if event.done:
            usage = UsageMetadata(
                input_tokens=event.input_tokens,
                output_tokens=event.output_tokens,
                total_tokens=event.input_tokens + event.output_tokens,
            )
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    usage_metadata=usage,
                    response_metadata={
                        "finish_reason": event.finish_reason,
                        "model_name": self.model_name,
                    },
                    chunk_position="last",
                ),
            )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        events: queue.Queue[GenerationEvent] = queue.Queue()
        handle, candidates = self._submit(messages, stop, events.put, kwargs, run_manager)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        finished = False

        try:
            while not finished:
                remaining = None if deadline is None else deadline - time.monotonic()
                try:
                    event = events.get(timeout=remaining)
                except queue.Empty:
                    raise self._timed_out(handle) from None
                finished = event.done
                yield from self._chunks_from_event(event, candidates)
        finally:
            if not finished:
                handle.cancel()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent] = asyncio.Queue()

        def sink(event: GenerationEvent) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:
                pass  # The event loop is closed, so no caller is waiting for this event.

        if self.runtime.is_loaded:
            handle, candidates = self._submit(messages, stop, sink, kwargs, run_manager)
        else:
            handle, candidates = await asyncio.to_thread(
                self._submit, messages, stop, sink, kwargs, run_manager
            )
        deadline = None if self.timeout is None else loop.time() + self.timeout
        finished = False

        try:
            while not finished:
                remaining = None if deadline is None else deadline - loop.time()
                try:
                    event = await asyncio.wait_for(events.get(), remaining)
                except TimeoutError:
                    raise self._timed_out(handle) from None
                finished = event.done
                for chunk in self._chunks_from_event(event, candidates):
                    yield chunk
        finally:
            # Reached on cancellation (client disconnect) and on early close by the caller.
            if not finished:
                handle.cancel()

    def _timed_out(self, handle: RequestHandle) -> GenerationTimeout:
        handle.cancel()
        logger.warning(
            "generation timed out after %.1f s, request_id=%s", self.timeout, handle.request_id
        )
        return GenerationTimeout(f"generation timed out after {self.timeout:g} s")

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = list(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))
        return _result_from_chunks(chunks)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = [
            chunk
            async for chunk in self._astream(messages, stop=stop, run_manager=run_manager, **kwargs)
        ]
        return _result_from_chunks(chunks)


def request_id_from(
    run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
) -> str | None:
    """Return the HTTP request id that the server put into the run metadata, if any."""
    if run_manager is None:
        return None
    request_id = (run_manager.metadata or {}).get("request_id")
    return str(request_id) if request_id else None


def _result_from_chunks(chunks: list[ChatGenerationChunk]) -> ChatResult:
    merged: AIMessageChunk = AIMessageChunk(content="")
    for chunk in chunks:
        merged = merged + chunk.message  # type: ignore[assignment]

    message = AIMessage(
        content=merged.content,
        usage_metadata=merged.usage_metadata,
        response_metadata=merged.response_metadata,
    )
    return ChatResult(generations=[ChatGeneration(message=message)])
