"""The baseline: a plain LangServe app over stock `ChatHuggingFace` and a transformers pipeline.

It serves `/classify` and `/summarize` with the same prompt files, stop strings and token
limits as chainserve, on the same model, through the stock stack:

    ChatHuggingFace(llm=HuggingFacePipeline(pipeline=pipeline("text-generation", ...)))

`ChatHuggingFace` (langchain-huggingface 1.2.3) needs three changes to serve at all, and
`BaselineChatHuggingFace` makes only those:

- `_agenerate` raises NotImplementedError for a pipeline LLM, and LangServe calls only the
  async methods, so it runs the stock `_generate` in a worker thread.
- `_astream` calls `self.llm.async_client`, which a pipeline lacks (AttributeError), so it
  iterates the stock `_stream` in a worker thread, one `next()` at a time.
- `_to_chat_prompt` calls `tokenizer.apply_chat_template`, which raises for the Gemma folder
  converted from GGUF because it has no chat template. For such tokenizers it renders the
  messages with chainserve's `render_completion` instead, so both servers send the model the
  same string. Tokenizers with a template keep the stock path.

Everything else is stock, including what makes it slow under load. Each request is its own
`generate` call, and concurrent requests run concurrently in threads. `/invoke` ignores stop
strings, because the pipeline's `_generate` drops `stop`, and `/stream` stops only on a stop
string that is one whole token. Outputs differ from chainserve's on purpose: classify generates up
to `classify_tokens` tokens and maps the text to the closest label with chainserve's
`match_label` (it has no label scoring), and summarize returns the generated text as a plain
string.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
from langserve import add_routes
from transformers import PreTrainedModel, PreTrainedTokenizerBase, pipeline

from app.backends.local import render_completion
from bench.workloads import prompt_variables
from chains.classify import DEFAULT_LABELS, ClassifyInput, match_label
from chains.prompts import PromptFile, load_prompt_file
from chains.summarize import SummarizeInput


class BaselineChatHuggingFace(ChatHuggingFace):
    """Stock `ChatHuggingFace` plus the minimal async support and base-model prompt rendering."""

    def _to_chat_prompt(self, messages: list[BaseMessage]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return super()._to_chat_prompt(messages)
        return render_completion(messages)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        stream: bool | None = None,  # noqa: FBT001 - the signature of ChatHuggingFace
        **kwargs: Any,
    ) -> ChatResult:
        # The sync method cannot take the async run manager, so callbacks get no per-token
        # events. LangServe's /invoke does not need them.
        return await asyncio.to_thread(self._generate, messages, stop, None, stream, **kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        chunks = self._stream(messages, stop=stop, **kwargs)
        while True:
            # `_stream` never yields None, so None marks the end of the stream.
            chunk = await asyncio.to_thread(next, chunks, None)
            if chunk is None:
                return
            yield chunk


def build_chat_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    model_id: str,
    max_new_tokens: int,
) -> BaselineChatHuggingFace:
    """Wrap `model` in a greedy text-generation pipeline that returns only the new text."""
    generator = pipeline(  # type: ignore[call-overload]
        "text-generation",
        model=model,
        tokenizer=tokenizer,
        return_full_text=False,
        max_new_tokens=max_new_tokens,
        do_sample=False,
    )
    llm = HuggingFacePipeline(pipeline=generator, model_id=model_id)
    return BaselineChatHuggingFace(llm=llm, tokenizer=tokenizer, model_id=model_id)


def _bind_stop(chat_model: BaselineChatHuggingFace, prompt_file: PromptFile) -> Runnable[Any, Any]:
    return chat_model.bind(stop=list(prompt_file.stop)) if prompt_file.stop else chat_model


def build_classify_chain(
    chat_model: BaselineChatHuggingFace, prompts_dir: Path
) -> Runnable[Any, Any]:
    """Build `prompt | model | parse`: the closest default label, and the generated text."""
    prompt_file = load_prompt_file("classify", prompts_dir)

    def prepare(data: Any) -> dict[str, Any]:
        request = ClassifyInput.model_validate(data)
        return prompt_variables("classify", request.text)

    def to_label(text: str) -> dict[str, str]:
        # `text` lets the benchmark count the generated tokens behind the label.
        return {"label": match_label(text, list(DEFAULT_LABELS)), "text": text}

    return (
        RunnableLambda(prepare)
        | prompt_file.chat_prompt()
        | _bind_stop(chat_model, prompt_file)
        | StrOutputParser()
        | RunnableLambda(to_label)
    ).with_types(input_type=ClassifyInput)


def build_summarize_chain(
    chat_model: BaselineChatHuggingFace, prompts_dir: Path
) -> Runnable[Any, Any]:
    """Build `prompt | model | StrOutputParser`: the summary as a plain, streamed string."""
    prompt_file = load_prompt_file("summarize", prompts_dir)

    def prepare(data: Any) -> dict[str, Any]:
        request = SummarizeInput.model_validate(data)
        return prompt_variables("summarize", request.text)

    return (
        RunnableLambda(prepare)
        | prompt_file.chat_prompt()
        | _bind_stop(chat_model, prompt_file)
        | StrOutputParser()
    ).with_types(input_type=SummarizeInput)


def create_baseline_app(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    model_id: str,
    prompts_dir: Path,
    classify_tokens: int,
    summarize_tokens: int,
) -> FastAPI:
    """Build the baseline app with `/classify` and `/summarize` invoke and stream endpoints."""
    app = FastAPI(title="chainserve benchmark baseline")
    chains = {
        "classify": build_classify_chain(
            build_chat_model(model, tokenizer, model_id=model_id, max_new_tokens=classify_tokens),
            prompts_dir,
        ),
        "summarize": build_summarize_chain(
            build_chat_model(model, tokenizer, model_id=model_id, max_new_tokens=summarize_tokens),
            prompts_dir,
        ),
    }
    for name, chain in chains.items():
        add_routes(app, chain, path=f"/{name}", enabled_endpoints=("invoke", "stream"))

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        # The model loads before the app is built, so a running server is ready.
        return {"status": "ready"}

    return app
