"""Summarization, in the language of the input unless another is requested."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from langchain_core.runnables import Runnable
from pydantic import BaseModel, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from chains.base import (
    ChatModel,
    build_task_chain,
    generation_kwargs,
    optional_field,
    require_text,
    text_parser,
)
from chains.language import detect_language, is_cjk, language_name
from chains.prompts import load_prompt_file


class SummarizeInput(BaseModel):
    """A text to summarize."""

    text: str = Field(description="The text to summarize.")
    max_words: Annotated[int, Field(ge=1, le=1000)] | SkipJsonSchema[None] = optional_field(
        "Maximum length of the summary in words; for Chinese and Japanese, "
        "one character counts as one word."
    )
    language: str | SkipJsonSchema[None] = optional_field(
        "Language of the summary, as a name or code (English, zh). "
        "Defaults to the language of the text."
    )

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        return require_text(value, "text")


class SummarizeOutput(BaseModel):
    """The summary."""

    summary: str = Field(description="The summary text.")


def build_summarize_chain(model: ChatModel, prompts_dir: Path | None = None) -> Runnable[Any, Any]:
    """Build the summarize chain: text in, summary out, cut at `max_words`."""
    prompt_file = load_prompt_file("summarize", prompts_dir)
    prompt = prompt_file.chat_prompt()

    def prepare(data: Any) -> dict[str, Any]:
        request = SummarizeInput.model_validate(data)
        if request.language and request.language.strip():
            language = language_name(request.language)
        else:
            language = detect_language(request.text)

        length = ""
        if request.max_words:
            unit = "characters" if is_cjk(language) else "words"
            length = f" Use at most {request.max_words} {unit}."

        return {
            "text": request.text,
            "language": language,
            "length": length,
            "max_words": request.max_words,
        }

    def route(variables: dict[str, Any]) -> Runnable[Any, Any]:
        kwargs = generation_kwargs(prompt_file)
        return prompt | model.bind(**kwargs) | text_parser("summary", variables["max_words"])

    return build_task_chain("summarize", prepare, route, SummarizeInput, SummarizeOutput)
