"""Extractive question answering over a given context, with an explicit "not answerable"."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable, RunnableGenerator
from langchain_core.runnables.utils import AddableDict
from pydantic import BaseModel, Field, field_validator

from chains.base import (
    ChatModel,
    TextStreamCleaner,
    build_task_chain,
    generation_kwargs,
    message_text,
    require_text,
)
from chains.prompts import load_prompt_file

DEFAULT_NO_ANSWER_MARKERS = ["unanswerable"]


class QAInput(BaseModel):
    """A question about a context."""

    question: str = Field(description="The question.")
    context: str = Field(description="The text that should contain the answer.")

    @field_validator("question", "context")
    @classmethod
    def _not_blank(cls, value: str, info: Any) -> str:
        return require_text(value, info.field_name)


class QAOutput(BaseModel):
    """The answer, or `answerable: false` when the context does not contain it."""

    answer: str = Field(description="The answer; empty when answerable is false.")
    answerable: bool = Field(description="False when the context does not contain the answer.")


def _normalize(text: str) -> str:
    collapsed = " ".join(text.split())
    return collapsed.strip(".。!！?？,，;；:：\"'“”「」").strip().lower()


class _AnswerStream:
    """Turn model text into `answer` deltas, then `answerable`.

    The answer is held back while it may still turn out to be a no-answer marker. With
    `extractive`, it is held to the end, because an answer that is not a span of the context
    means the model invented it, and the chain then reports `answerable: false`.
    """

    def __init__(self, markers: list[str], context: str, extractive: bool) -> None:
        self.markers = [_normalize(m) for m in markers]
        self.context = _normalize(context)
        self.extractive = extractive
        self.cleaner = TextStreamCleaner()
        self.text = ""
        self.sent = 0

    def _may_be_marker(self) -> bool:
        current = _normalize(self.text)
        return not current or any(marker.startswith(current) for marker in self.markers)

    def feed(self, text: str) -> Iterator[AddableDict]:
        self.text += self.cleaner.feed(text)
        if self.extractive or (self.sent == 0 and self._may_be_marker()):
            return
        if len(self.text) > self.sent:
            yield AddableDict(answer=self.text[self.sent :])
            self.sent = len(self.text)

    def finish(self) -> Iterator[AddableDict]:
        if self.sent:
            yield AddableDict(answerable=True)
            return

        answer = _normalize(self.text)
        answerable = bool(answer) and answer not in self.markers
        if answerable and self.extractive:
            answerable = answer in self.context
        yield AddableDict(answer=self.text if answerable else "")
        yield AddableDict(answerable=answerable)


def _answer_parser(markers: list[str], context: str, extractive: bool) -> RunnableGenerator:
    def transform(chunks: Iterator[Any]) -> Iterator[AddableDict]:
        stream = _AnswerStream(markers, context, extractive)
        for chunk in chunks:
            yield from stream.feed(message_text(chunk))
        yield from stream.finish()

    async def atransform(chunks: AsyncIterator[Any]) -> AsyncIterator[AddableDict]:
        stream = _AnswerStream(markers, context, extractive)
        async for chunk in chunks:
            for delta in stream.feed(message_text(chunk)):
                yield delta
        for delta in stream.finish():
            yield delta

    return RunnableGenerator(transform, atransform, name="parse_answer")


def build_qa_chain(model: ChatModel, prompts_dir: Path | None = None) -> Runnable[Any, Any]:
    """Build the qa chain: question and context in, answer and `answerable` out."""
    prompt_file = load_prompt_file("qa", prompts_dir)
    prompt = prompt_file.chat_prompt()
    markers = list(prompt_file.options.get("no_answer_markers") or DEFAULT_NO_ANSWER_MARKERS)
    extractive = bool(prompt_file.options.get("extractive", False))

    def prepare(data: Any) -> dict[str, Any]:
        request = QAInput.model_validate(data)
        return {"question": request.question, "context": request.context}

    def route(variables: dict[str, Any]) -> Runnable[Any, Any]:
        kwargs = generation_kwargs(prompt_file)
        parser = _answer_parser(markers, variables["context"], extractive)
        return prompt | model.bind(**kwargs) | parser

    return build_task_chain("qa", prepare, route, QAInput, QAOutput)
