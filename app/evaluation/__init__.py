"""Evaluation of the chains on labelled datasets, and dataset preparation.

`register(cli)` adds `chainserve eval` and `chainserve data split` to the main CLI.
`run_evaluation` is the programmatic entry point, which tests call with a chain built on a
fake chat model.
"""

from app.evaluation.commands import data_app, eval_app, eval_command, register, split_command
from app.evaluation.datasets import (
    DatasetError,
    Example,
    PreparedDataset,
    RawRow,
    SkippedRow,
    prepare_rows,
    read_records,
)
from app.evaluation.metrics import compute_metrics
from app.evaluation.report import compare_reports, load_report
from app.evaluation.runner import EvaluationError, EvaluationResult, run_evaluation
from app.evaluation.split import split_dataset

__all__ = [
    "DatasetError",
    "EvaluationError",
    "EvaluationResult",
    "Example",
    "PreparedDataset",
    "RawRow",
    "SkippedRow",
    "compare_reports",
    "compute_metrics",
    "data_app",
    "eval_app",
    "eval_command",
    "load_report",
    "prepare_rows",
    "read_records",
    "register",
    "run_evaluation",
    "split_command",
    "split_dataset",
]
