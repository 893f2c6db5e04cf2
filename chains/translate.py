"""Translation between any two languages the model supports; at least Chinese and English."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from chains.language import detect_language, language_name
from chains.prompts import load_prompt_file


class TranslateInput(BaseModel):
    """A text and the language to translate it into."""

    text: str = Field(description="The text to translate.")
    target_language: str = Field(
        description="Language to translate into, as a name or code (English, zh, French).",
        examples=["English"],
    )
    source_language: str | SkipJsonSchema[None] = optional_field(
        "Language of the text; detected when absent."
    )

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        return require_text(value, "text")

    @field_validator("target_language")
    @classmethod
    def _target_not_blank(cls, value: str) -> str:
        return require_text(value, "target_language")


class TranslateOutput(BaseModel):
    """The translated text."""

    translation: str = Field(description="The text in the target language.")


def build_translate_chain(model: ChatModel, prompts_dir: Path | None = None) -> Runnable[Any, Any]:
    """Build the translate chain: text and target language in, translation out."""
    prompt_file = load_prompt_file("translate", prompts_dir)
    prompt = prompt_file.chat_prompt()

    def prepare(data: Any) -> dict[str, Any]:
        request = TranslateInput.model_validate(data)
        if request.source_language and request.source_language.strip():
            source = language_name(request.source_language)
        else:
            source = detect_language(request.text)
        return {
            "text": request.text,
            "source_language": source,
            "target_language": language_name(request.target_language),
        }

    def route(variables: dict[str, Any]) -> Runnable[Any, Any]:
        kwargs = generation_kwargs(prompt_file)
        return prompt | model.bind(**kwargs) | text_parser("translation")

    return build_task_chain("translate", prepare, route, TranslateInput, TranslateOutput)
