"""Splitting a dataset file into train and test files with scikit-learn's train_test_split."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sklearn.model_selection import train_test_split

from app.evaluation.datasets import DatasetError, RawRow, dataset_format, read_records


@dataclass
class SplitResult:
    """The written files and the label counts of each part (empty without --stratify)."""

    train_path: Path
    test_path: Path
    train_rows: int
    test_rows: int
    train_counts: Counter[str]
    test_counts: Counter[str]


def split_dataset(
    path: Path,
    *,
    test_size: float,
    stratify: str | None,
    seed: int,
    out_dir: Path | None = None,
) -> SplitResult:
    """Write `<name>.train.<ext>` and `<name>.test.<ext>`, each in the original row order.

    `test_size` below 1 is the test fraction, and a whole number of 1 or more is the test
    row count, as in train_test_split. Any unparsable row, or a row without a `stratify`
    value, raises DatasetError naming its row and line, so no row is lost on the way.
    """
    kind = dataset_format(path)
    rows = read_records(path)
    if not rows:
        raise DatasetError(f"dataset file {path} has no rows to split")

    bad = [row for row in rows if row.values is None]
    if bad:
        listed = "; ".join(f"row {row.row} (line {row.line}): {row.error}" for row in bad[:10])
        raise DatasetError(f"cannot split {path}: fix the unparsable rows first: {listed}")

    labels = _stratify_labels(rows, stratify, path) if stratify else None
    size: float | int = int(test_size) if test_size >= 1 and test_size.is_integer() else test_size
    if not 0 < size < (len(rows) if isinstance(size, int) else 1):
        raise DatasetError(
            f"invalid test size {test_size}: use a fraction between 0 and 1, or a row count "
            f"below {len(rows)}"
        )

    indexes = list(range(len(rows)))
    try:
        train_indexes, test_indexes = train_test_split(
            indexes, test_size=size, random_state=seed, shuffle=True, stratify=labels
        )
    except ValueError as error:
        raise DatasetError(f"cannot split {path}: {error}") from None

    target = out_dir or path.parent
    target.mkdir(parents=True, exist_ok=True)
    stem, suffix = path.stem, path.suffix
    train_path = target / f"{stem}.train{suffix}"
    test_path = target / f"{stem}.test{suffix}"
    train_rows = [rows[i] for i in sorted(train_indexes)]
    test_rows = [rows[i] for i in sorted(test_indexes)]
    _write_rows(train_path, kind, train_rows)
    _write_rows(test_path, kind, test_rows)

    def counts(part: list[RawRow]) -> Counter[str]:
        if not stratify:
            return Counter()
        return Counter(str((row.values or {}).get(stratify)) for row in part)

    return SplitResult(
        train_path,
        test_path,
        len(train_rows),
        len(test_rows),
        counts(train_rows),
        counts(test_rows),
    )


def _stratify_labels(rows: list[RawRow], column: str, path: Path) -> list[str]:
    labels: list[str] = []
    missing: list[RawRow] = []
    for row in rows:
        value = (row.values or {}).get(column)
        if value is None or not str(value).strip():
            missing.append(row)
        else:
            labels.append(str(value).strip())

    if len(missing) == len(rows):
        raise DatasetError(f"cannot stratify {path}: no row has a {column!r} value")
    if missing:
        listed = ", ".join(f"row {row.row} (line {row.line})" for row in missing[:10])
        raise DatasetError(
            f"cannot stratify {path} by {column!r}: these rows have no value: {listed}"
        )
    return labels


def _write_rows(path: Path, kind: str, rows: list[RawRow]) -> None:
    records: list[dict[str, Any]] = [row.values or {} for row in rows]
    if kind == "jsonl":
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        path.write_text(text, encoding="utf-8")
        return

    with path.open("w", encoding="utf-8", newline="") as target:
        if not records:
            return
        writer = csv.DictWriter(target, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
