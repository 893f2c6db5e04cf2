"""Reading evaluation datasets (CSV or JSONL, UTF-8) and turning rows into chain inputs.

Row numbers: `row` is the 1-based position of a record in the file, not counting the CSV
header or blank lines, and `line` is the file line where the record starts. Every row that
cannot be evaluated becomes a `SkippedRow` with both numbers and a reason, so a bad row is
reported, never dropped without a trace.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.evaluation.tasks import TaskSpec

CSV_SUFFIXES = {".csv"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}

_TRUE_WORDS = {"true", "yes", "1"}
_FALSE_WORDS = {"false", "no", "0"}


class DatasetError(ValueError):
    """A dataset file or a column mapping cannot be used at all."""


@dataclass(frozen=True)
class RawRow:
    """One record of a dataset file, or the reason it could not be parsed."""

    row: int
    line: int
    values: dict[str, Any] | None
    error: str | None = None


@dataclass(frozen=True)
class Example:
    """A row ready to evaluate: the chain input and the gold fields."""

    row: int
    line: int
    input: dict[str, Any]
    gold: dict[str, Any]


@dataclass(frozen=True)
class SkippedRow:
    """A row left out of the evaluation, with the reason."""

    row: int
    line: int
    reason: str
    values: dict[str, Any] | None = None


@dataclass
class PreparedDataset:
    """The evaluable rows of a dataset, the skipped rows and, for classify, the label set."""

    examples: list[Example]
    skipped: list[SkippedRow]
    labels: list[str] | None = None
    total_rows: int = 0
    columns: dict[str, str] = field(default_factory=dict)

    def head(self, limit: int | None) -> PreparedDataset:
        """Keep only the first `limit` rows of the file; the label set stays the full one."""
        if limit is None:
            return self
        return replace(
            self,
            examples=[example for example in self.examples if example.row <= limit],
            skipped=[skipped for skipped in self.skipped if skipped.row <= limit],
            total_rows=min(self.total_rows, limit),
        )


def dataset_format(path: Path) -> str:
    """Return `csv` or `jsonl` from the file suffix; raise DatasetError for anything else."""
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    raise DatasetError(f"unsupported dataset file {path}: use a .csv or .jsonl file")


def read_records(path: Path) -> list[RawRow]:
    """Read every record of a CSV or JSONL file; unparsable records carry an error."""
    kind = dataset_format(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"dataset file {path} not found") from None
    except OSError as error:
        raise DatasetError(f"dataset file {path} could not be read: {error}") from None

    try:
        # utf-8-sig also accepts the byte order mark that spreadsheet programs write.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"dataset file {path} is not valid UTF-8 (byte {error.start}); save it as UTF-8"
        ) from None

    return read_csv_text(text, path) if kind == "csv" else read_jsonl_text(text)


def read_csv_text(text: str, path: Path | str = "<csv>") -> list[RawRow]:
    """Parse CSV text with a header line into records."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetError(f"dataset file {path} is empty; it needs a header line") from None
    except csv.Error as error:
        raise DatasetError(f"dataset file {path}: invalid CSV header: {error}") from None

    columns = [name.strip() for name in header]
    duplicates = sorted({name for name in columns if columns.count(name) > 1})
    if duplicates:
        raise DatasetError(f"dataset file {path}: duplicate column names {duplicates}")

    rows: list[RawRow] = []
    while True:
        start_line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            rows.append(RawRow(len(rows) + 1, start_line, None, f"invalid CSV: {error}"))
            continue

        if not record:
            continue
        number = len(rows) + 1
        if len(record) != len(columns):
            reason = f"has {len(record)} fields but the header has {len(columns)}"
            rows.append(RawRow(number, start_line, None, reason))
            continue
        rows.append(RawRow(number, start_line, dict(zip(columns, record, strict=True))))
    return rows


def read_jsonl_text(text: str) -> list[RawRow]:
    """Parse JSON Lines text, one object per line, into records."""
    rows: list[RawRow] = []
    # Split on "\n" only: str.splitlines would also split at U+2028, which JSON allows in strings.
    for line_number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        number = len(rows) + 1
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            rows.append(RawRow(number, line_number, None, f"invalid JSON: {error}"))
            continue
        if not isinstance(value, dict):
            reason = f"expected a JSON object, got {type(value).__name__}"
            rows.append(RawRow(number, line_number, None, reason))
            continue
        rows.append(RawRow(number, line_number, value))
    return rows


def as_raw_rows(rows: Sequence[RawRow | Mapping[str, Any]]) -> list[RawRow]:
    """Number plain mappings 1, 2, ... as rows; pass RawRow items through unchanged."""
    result: list[RawRow] = []
    for index, item in enumerate(rows, start=1):
        if isinstance(item, RawRow):
            result.append(item)
        else:
            result.append(RawRow(index, index, dict(item)))
    return result


def parse_column_mapping(items: Sequence[str], task: TaskSpec) -> dict[str, str]:
    """Parse `FIELD=COLUMN` options into a mapping; raise DatasetError on a bad item."""
    mapping: dict[str, str] = {}
    for item in items:
        name, separator, column = item.partition("=")
        name, column = name.strip(), column.strip()
        if not separator or not name or not column:
            raise DatasetError(f"invalid --column {item!r}; use FIELD=COLUMN, such as text=review")
        if name not in task.mappable_fields:
            allowed = ", ".join(task.mappable_fields)
            raise DatasetError(
                f"invalid --column {item!r}: {task.name} has no field {name!r}; fields: {allowed}"
                " (use --gold-column for the gold column)"
            )
        mapping[name] = column
    return mapping


def prepare_rows(
    task: TaskSpec,
    rows: Sequence[RawRow | Mapping[str, Any]],
    columns: Mapping[str, str] | None = None,
    gold_column: str | None = None,
) -> PreparedDataset:
    """Build chain inputs and gold values from dataset rows, skipping rows that are invalid.

    For classify, rows without a `labels` value get the dataset's label set: every distinct
    gold label, in order of first appearance.
    """
    raw_rows = as_raw_rows(rows)
    mapping = {name: (columns or {}).get(name, name) for name in task.mappable_fields}
    mapping[task.gold_field] = gold_column or task.gold_field
    _check_required_columns(task, raw_rows, mapping)

    examples: list[Example] = []
    skipped: list[SkippedRow] = []
    for raw in raw_rows:
        if raw.values is None:
            skipped.append(SkippedRow(raw.row, raw.line, raw.error or "unparsable row"))
            continue
        example, reason = _prepare_row(task, raw, mapping)
        if example is None:
            skipped.append(SkippedRow(raw.row, raw.line, reason, raw.values))
        else:
            examples.append(example)

    labels = None
    if task.name == "classify":
        labels = _dataset_labels(examples)
        examples, label_skips = _attach_labels(examples, labels)
        skipped = sorted(skipped + label_skips, key=lambda item: item.row)

    return PreparedDataset(examples, skipped, labels, len(raw_rows), mapping)


def _check_required_columns(task: TaskSpec, rows: list[RawRow], mapping: dict[str, str]) -> None:
    parsed = [row.values for row in rows if row.values is not None]
    if not parsed:
        raise DatasetError("the dataset has no readable rows")

    present = set().union(*(values.keys() for values in parsed))
    for name in [*task.required_input_fields, task.gold_field]:
        column = mapping[name]
        if column not in present:
            option = "--gold-column NAME" if name == task.gold_field else f"--column {name}=NAME"
            raise DatasetError(
                f"column {column!r} not found; the dataset has columns {sorted(present)}. "
                f"Name the column for {task.name} field {name!r} with {option}"
            )


def _cell(values: Mapping[str, Any], column: str) -> Any:
    """Return a cell value, or None when it is absent, null or blank text."""
    value = values.get(column)
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _prepare_row(
    task: TaskSpec, raw: RawRow, mapping: dict[str, str]
) -> tuple[Example | None, str]:
    values = raw.values or {}
    problems: list[str] = []

    for name in task.required_input_fields:
        if _cell(values, mapping[name]) is None:
            problems.append(f"missing or empty {mapping[name]!r}")

    gold, gold_problems = _read_gold(task, values, mapping)
    problems.extend(gold_problems)
    if problems:
        return None, "; ".join(problems)

    data: dict[str, Any] = {}
    for name in task.input_fields:
        value = _cell(values, mapping[name])
        if value is None:
            continue
        if name == "labels":
            value = parse_labels(value)
        data[name] = value

    try:
        validated = task.input_model.model_validate(data)
    except ValidationError as error:
        return None, "invalid input: " + _describe_validation(error, mapping)
    chain_input = validated.model_dump(mode="json", exclude_unset=True)
    return Example(raw.row, raw.line, chain_input, gold), ""


def _read_gold(
    task: TaskSpec, values: Mapping[str, Any], mapping: dict[str, str]
) -> tuple[dict[str, Any], list[str]]:
    column = mapping[task.gold_field]
    value = _cell(values, column)
    text = "" if value is None else str(value).strip()

    if task.name != "qa":
        if not text:
            return {}, [f"missing or empty gold column {column!r}"]
        return {task.gold_field: text}, []

    # qa: a row is unanswerable when `answerable` is false, or when `answerable` is absent
    # and the answer is empty.
    answerable_column = mapping["answerable"]
    flag = _cell(values, answerable_column)
    if flag is None:
        answerable = bool(text)
    else:
        parsed = parse_bool(flag)
        if parsed is None:
            return {}, [f"invalid {answerable_column!r} value {flag!r}; use true or false"]
        answerable = parsed

    if answerable and not text:
        return {}, [f"answerable is true but gold column {column!r} is empty"]
    if not answerable and text:
        return {}, [f"answerable is false but gold column {column!r} has {text!r}"]
    return {"answer": text, "answerable": answerable}, []


def parse_labels(value: Any) -> list[str]:
    """Parse a labels cell: a list, a JSON array string, or labels separated by `|`."""
    if isinstance(value, list):
        return [str(label) for label in value]
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return [str(label) for label in parsed]
    return [label.strip() for label in text.split("|")]


def parse_bool(value: Any) -> bool | None:
    """Parse true/false, yes/no or 1/0 (any case); return None for anything else."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE_WORDS:
        return True
    if text in _FALSE_WORDS:
        return False
    return None


def _describe_validation(error: ValidationError, mapping: dict[str, str]) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        name = str(item["loc"][0]) if item["loc"] else ""
        column = mapping.get(name, location)
        parts.append(f"{column}: {item['msg']}")
    return "; ".join(parts)


def _dataset_labels(examples: list[Example]) -> list[str]:
    labels: list[str] = []
    for example in examples:
        label = example.gold["label"]
        if label not in labels:
            labels.append(label)
    return labels


def _attach_labels(
    examples: list[Example], dataset_labels: list[str]
) -> tuple[list[Example], list[SkippedRow]]:
    needs_dataset_labels = any("labels" not in example.input for example in examples)
    if needs_dataset_labels and len(dataset_labels) < 2:
        raise DatasetError(
            f"the dataset has only the gold label(s) {dataset_labels}; classify needs at least "
            "2 labels, so add rows of another label or a labels column"
        )

    kept: list[Example] = []
    skipped: list[SkippedRow] = []
    for example in examples:
        labels = example.input.get("labels") or list(dataset_labels)
        gold = example.gold["label"]
        if gold not in labels:
            reason = f"gold label {gold!r} is not one of the row's labels {labels}"
            skipped.append(SkippedRow(example.row, example.line, reason, example.input))
            continue
        kept.append(replace(example, input={**example.input, "labels": labels}))
    return kept, skipped
