"""Loading and checking of the task prompt files in `prompts/`.

A prompt file is YAML with these keys:

- `system`: the instruction, a template over input variables (required).
- `human`: the template of one input, such as "Text: {text}\\nLabel:" (required).
- `variables`: every input variable that the templates use (required).
- `examples`: few-shot examples, each a mapping with a value for every variable that
  `human` uses plus `output`, the reply (required, at least one).
- `stop`: stop strings for generation (optional).
- `max_new_tokens`: upper bound on new tokens for this task (optional).
- `options`: task-specific settings, such as the no-answer marker of `qa` (optional).

A broken file raises `PromptFileError` naming the file and the problem, so the server fails
at start-up rather than on the first request.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"


class PromptFileError(ValueError):
    """A prompt file is missing, unreadable or invalid."""


class PromptFile(BaseModel):
    """The parsed content of one prompt file."""

    model_config = ConfigDict(extra="forbid")

    system: str
    human: str
    variables: list[str]
    examples: list[dict[str, Any]] = Field(min_length=1)
    stop: list[str] = Field(default_factory=list)
    max_new_tokens: int | None = Field(default=None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)

    def chat_prompt(self) -> ChatPromptTemplate:
        """Build the chat prompt: system, then each example as a human/AI pair, then the input."""
        messages: list[Any] = [("system", self.system)]
        human_fields = template_fields(self.human)

        for example in self.examples:
            values = {name: str(example[name]) for name in human_fields}
            # Examples are literal messages, so braces inside them need no escaping.
            messages.append(HumanMessage(content=self.human.format(**values)))
            messages.append(AIMessage(content=str(example["output"])))

        messages.append(("human", self.human))
        return ChatPromptTemplate.from_messages(messages)


def template_fields(template: str) -> set[str]:
    """Return the names of the `{field}` placeholders in a format string."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def load_prompt_file(task: str, prompts_dir: Path | None = None) -> PromptFile:
    """Load `prompts/<task>.yaml` and check it; raise PromptFileError on any problem."""
    path = (prompts_dir or DEFAULT_PROMPTS_DIR) / f"{task}.yaml"

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptFileError(f"prompt file {path} not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise PromptFileError(f"prompt file {path} could not be read: {error}") from None

    if not isinstance(raw, dict):
        raise PromptFileError(f"prompt file {path}: expected a mapping of keys, got {type(raw)}")

    try:
        prompt = PromptFile.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(_describe(e) for e in error.errors())
        raise PromptFileError(f"prompt file {path}: {problems}") from None

    _check_variables(path, prompt)
    return prompt


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "file"
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(PromptFile.model_fields)
        return f"unknown key {location!r} (allowed keys: {allowed})"
    if error["type"] == "missing":
        return f"missing key {location!r}"
    if error["type"] == "too_short" and location == "examples":
        return "the examples list is empty; add at least one example"
    return f"{location}: {error['msg']}"


def _check_variables(path: Path, prompt: PromptFile) -> None:
    declared = set(prompt.variables)
    try:
        used = template_fields(prompt.system) | template_fields(prompt.human)
    except ValueError as error:
        raise PromptFileError(f"prompt file {path}: invalid template: {error}") from None

    undeclared = used - declared
    if undeclared:
        raise PromptFileError(
            f"prompt file {path}: templates use {sorted(undeclared)}, "
            f"which are missing from 'variables'"
        )
    unused = declared - used
    if unused:
        raise PromptFileError(
            f"prompt file {path}: 'variables' lists {sorted(unused)}, which no template uses"
        )

    needed = template_fields(prompt.human) | {"output"}
    for index, example in enumerate(prompt.examples):
        missing = needed - set(example)
        if missing:
            raise PromptFileError(
                f"prompt file {path}: example {index} is missing variable(s) {sorted(missing)}"
            )
