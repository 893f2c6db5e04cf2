"""Pieces that every task chain shares: input checks, prompt routing and output streaming.

Every chain has the same LCEL shape:

    RunnableLambda(prepare) | RunnableLambda(route)

`prepare` validates the input model and computes the prompt variables. `route` returns
`prompt | model.bind(...) | RunnableGenerator(parser)` for that input, so the bound call
keywords (stop strings, token limit, candidate labels) can depend on the input. The parser
turns the model's message chunks into dict deltas of the output model's fields, which add
up (AddableDict `+`) to the invoke result, so a joined stream equals the invoke output.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableGenerator, RunnableLambda
from langchain_core.runnables.utils import AddableDict
from pydantic import BaseModel, Field

from chains.prompts import PromptFile

ChatModel = BaseChatModel | Runnable[Any, Any]

# One CJK character counts as one word; elsewhere a word is a run of non-space characters.
_CJK_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_CJK = re.compile(f"[{_CJK_CHARS}]")
_WORD = re.compile(f"[{_CJK_CHARS}]|[^\\s{_CJK_CHARS}]+")


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def optional_field(description: str, **kwargs: Any) -> Any:
    """Return a pydantic Field for an optional input that may be omitted or null.

    Annotate it as `X | SkipJsonSchema[None]`: its JSON schema then shows only the `X` type
    and no `null` default, because the LangServe 0.3 playground's form (JSONForms) renders a
    blank page for an `anyOf` with a null branch.
    """
    return Field(default=None, description=description, json_schema_extra=_drop_default, **kwargs)


def require_text(value: str, field: str) -> str:
    """Raise ValueError for empty or whitespace-only text; return the text unchanged."""
    if not value.strip():
        raise ValueError(f"{field} must contain text, not only whitespace")
    return value


class TextStreamCleaner:
    """Strip leading and trailing whitespace from streamed text, and cut it at `max_words`.

    Trailing whitespace is held back until more text follows it, so the joined stream equals
    the stripped full text.
    """

    def __init__(self, max_words: int | None = None) -> None:
        self.max_words = max_words
        self.started = False
        self.pending_space = ""
        self.words = 0
        self.in_word = False
        self.cut = False

    def feed(self, text: str) -> str:
        if self.cut or not text:
            return ""
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True

        text = self.pending_space + text
        stripped = text.rstrip()
        self.pending_space = text[len(stripped) :]
        return self._limit(stripped)

    def _limit(self, text: str) -> str:
        if self.max_words is None or not text:
            return text

        end = len(text)
        for match in _WORD.finditer(text):
            # A word split across two chunks (two tokens of one English word) counts once.
            continues_word = match.start() == 0 and self.in_word and not _CJK.match(match.group())
            if continues_word:
                continue
            if self.words >= self.max_words:
                self.cut = True
                end = match.start()
                break
            self.words += 1

        self.in_word = not _CJK.match(text[-1])
        return text[:end].rstrip() if self.cut else text


def message_text(chunk: Any) -> str:
    """Return the text of a message, a message chunk or a plain string."""
    if isinstance(chunk, BaseMessage):
        return chunk.text
    return str(chunk)


def text_parser(key: str, max_words: int | None = None) -> RunnableGenerator:
    """Build a parser that streams the cleaned model text as `{key: delta}` chunks."""

    def transform(chunks: Iterator[Any]) -> Iterator[AddableDict]:
        cleaner = TextStreamCleaner(max_words)
        for chunk in chunks:
            delta = cleaner.feed(message_text(chunk))
            if delta:
                yield AddableDict({key: delta})
        if not cleaner.started:
            yield AddableDict({key: ""})

    async def atransform(chunks: AsyncIterator[Any]) -> AsyncIterator[AddableDict]:
        cleaner = TextStreamCleaner(max_words)
        async for chunk in chunks:
            delta = cleaner.feed(message_text(chunk))
            if delta:
                yield AddableDict({key: delta})
        if not cleaner.started:
            yield AddableDict({key: ""})

    return RunnableGenerator(transform, atransform, name=f"parse_{key}")


def build_task_chain(
    name: str,
    prepare: Callable[[Any], dict[str, Any]],
    route: Callable[[dict[str, Any]], Runnable[Any, Any]],
    input_type: type[BaseModel],
    output_type: type[BaseModel],
) -> Runnable[Any, Any]:
    """Compose `prepare | route` and attach the typed input and output models."""
    chain = RunnableLambda(prepare, name=f"prepare_{name}") | RunnableLambda(
        route, name=f"run_{name}"
    )
    return chain.with_types(input_type=input_type, output_type=output_type).with_config(
        run_name=name
    )


def generation_kwargs(prompt: PromptFile, max_tokens: int | None = None) -> dict[str, Any]:
    """Return the model call keywords for a task: its stop strings and token limit."""
    kwargs: dict[str, Any] = {}
    if prompt.stop:
        kwargs["stop"] = list(prompt.stop)
    limit = max_tokens or prompt.max_new_tokens
    if limit:
        kwargs["max_tokens"] = limit
    return kwargs
