"""What each task's evaluation reads from a dataset row and compares with its gold answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from chains.classify import ClassifyInput
from chains.qa import QAInput
from chains.summarize import SummarizeInput
from chains.translate import TranslateInput

NO_ANSWER_TEXT = "(unanswerable)"
"""How errors.csv and report.md show an unanswerable gold answer or prediction."""


@dataclass(frozen=True)
class TaskSpec:
    """The input model of a task's chain and the names of its gold fields.

    `gold_field` is the main gold value: a label, a reference text or an answer. qa also
    has `answerable` as an optional second gold field.
    """

    name: str
    input_model: type[BaseModel]
    gold_field: str
    output_field: str
    extra_gold_fields: tuple[str, ...] = ()

    @property
    def input_fields(self) -> list[str]:
        return list(self.input_model.model_fields)

    @property
    def required_input_fields(self) -> list[str]:
        return [
            name for name, field in self.input_model.model_fields.items() if field.is_required()
        ]

    @property
    def mappable_fields(self) -> list[str]:
        """Fields that `--column FIELD=COLUMN` may map: the inputs and the extra gold fields."""
        return self.input_fields + list(self.extra_gold_fields)

    def gold_text(self, gold: dict[str, Any]) -> str:
        """Return the gold answer as one readable string."""
        if self.name == "qa" and gold.get("answerable") is False:
            return NO_ANSWER_TEXT
        return str(gold.get(self.gold_field, ""))

    def prediction_text(self, prediction: dict[str, Any] | None) -> str:
        """Return the chain output as one readable string; empty when there is none."""
        if prediction is None:
            return ""
        if self.name == "qa" and prediction.get("answerable") is False:
            return NO_ANSWER_TEXT
        return str(prediction.get(self.output_field, ""))


TASKS: dict[str, TaskSpec] = {
    "classify": TaskSpec("classify", ClassifyInput, gold_field="label", output_field="label"),
    "summarize": TaskSpec(
        "summarize", SummarizeInput, gold_field="reference", output_field="summary"
    ),
    "translate": TaskSpec(
        "translate", TranslateInput, gold_field="reference", output_field="translation"
    ),
    "qa": TaskSpec(
        "qa", QAInput, gold_field="answer", output_field="answer", extra_gold_fields=("answerable",)
    ),
}


def get_task(name: str) -> TaskSpec:
    """Return the spec of task `name`; raise ValueError naming the known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        known = ", ".join(TASKS)
        raise ValueError(f"unknown task {name!r}; choose one of: {known}") from None
