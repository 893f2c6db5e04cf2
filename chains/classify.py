"""Text classification into a fixed label set: sentiment by default, or any given labels."""

from __future__ import annotations

import difflib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable, RunnableGenerator
from langchain_core.runnables.utils import AddableDict
from pydantic import BaseModel, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from chains.base import (
    ChatModel,
    build_task_chain,
    generation_kwargs,
    message_text,
    optional_field,
    require_text,
)
from chains.prompts import load_prompt_file

DEFAULT_LABELS = ["positive", "negative", "neutral"]

# Keyword of the model call that asks a backend to score these labels (see app.backends.local).
LABEL_CANDIDATES_KWARG = "label_candidates"


class ClassifyInput(BaseModel):
    """A text to classify, with the allowed labels."""

    text: str = Field(description="The text to classify.", examples=["这个产品太好用了！"])
    # A plain default (pydantic copies it per instance) shows in the JSON schema, so the
    # playground's form starts with the sentiment labels filled in.
    labels: list[str] = Field(
        default=list(DEFAULT_LABELS),
        description="Allowed labels; the output is always one of them.",
    )
    instructions: str | SkipJsonSchema[None] = optional_field(
        "Extra instructions for the model, such as label definitions."
    )

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        return require_text(value, "text")

    @field_validator("labels")
    @classmethod
    def _labels_valid(cls, value: list[str]) -> list[str]:
        labels: list[str] = []
        for label in value:
            cleaned = label.strip()
            if not cleaned:
                raise ValueError("labels must not contain empty strings")
            if cleaned not in labels:
                labels.append(cleaned)
        if len(labels) < 2:
            raise ValueError("labels must contain at least 2 distinct labels")
        return labels


class ClassifyOutput(BaseModel):
    """The chosen label, with per-label confidence where the backend computes it."""

    label: str = Field(description="One of the allowed labels.")
    scores: dict[str, float] | None = Field(
        default=None,
        description="Confidence per label, summing to 1; null when the backend gives none.",
    )


def match_label(text: str, labels: list[str]) -> str:
    """Map free model text onto the closest allowed label, so the output is never free text."""
    cleaned = text.strip().strip(".。!！\"'").strip()
    lowered = cleaned.lower()

    for label in labels:
        if lowered == label.lower():
            return label
    # The earliest label mentioned in the text, such as "Positive, because ...".
    positions = [(lowered.find(label.lower()), label) for label in labels]
    mentioned = [(index, label) for index, label in positions if index != -1]
    if mentioned:
        return min(mentioned)[1]

    ratios = [difflib.SequenceMatcher(None, lowered, label.lower()).ratio() for label in labels]
    return labels[ratios.index(max(ratios))]


def _label_parser(labels: list[str]) -> RunnableGenerator:
    """Build a parser that yields `{"label"}` and then `{"scores"}`."""

    def finish(text: str, scores: dict[str, float] | None) -> Iterator[AddableDict]:
        if scores:
            label = max(scores, key=lambda name: scores[name])
        else:
            label = match_label(text, labels)
        yield AddableDict(label=label)
        yield AddableDict(scores=scores)

    def read(chunk: Any, state: dict[str, Any]) -> None:
        state["text"] += message_text(chunk)
        metadata = getattr(chunk, "response_metadata", None) or {}
        if metadata.get("label_scores"):
            state["scores"] = {label: float(metadata["label_scores"][label]) for label in labels}

    def transform(chunks: Iterator[Any]) -> Iterator[AddableDict]:
        state: dict[str, Any] = {"text": "", "scores": None}
        for chunk in chunks:
            read(chunk, state)
        yield from finish(state["text"], state["scores"])

    async def atransform(chunks: AsyncIterator[Any]) -> AsyncIterator[AddableDict]:
        state: dict[str, Any] = {"text": "", "scores": None}
        async for chunk in chunks:
            read(chunk, state)
        for delta in finish(state["text"], state["scores"]):
            yield delta

    return RunnableGenerator(transform, atransform, name="parse_label")


def build_classify_chain(model: ChatModel, prompts_dir: Path | None = None) -> Runnable[Any, Any]:
    """Build the classify chain: text and labels in, one allowed label and scores out."""
    prompt_file = load_prompt_file("classify", prompts_dir)
    prompt = prompt_file.chat_prompt()

    def prepare(data: Any) -> dict[str, Any]:
        request = ClassifyInput.model_validate(data)
        extra = f" {request.instructions.strip()}" if request.instructions else ""
        return {
            "text": request.text,
            "labels": ", ".join(request.labels),
            "label_list": request.labels,
            "instructions": extra,
        }

    def route(variables: dict[str, Any]) -> Runnable[Any, Any]:
        labels = variables["label_list"]
        kwargs = generation_kwargs(prompt_file)
        kwargs[LABEL_CANDIDATES_KWARG] = labels
        return prompt | model.bind(**kwargs) | _label_parser(labels)

    return build_task_chain("classify", prepare, route, ClassifyInput, ClassifyOutput)
