"""The report of an evaluation: report.json, report.md, errors.csv, plots and terminal tables."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from app.evaluation.datasets import PreparedDataset
from app.evaluation.metrics import compute_metrics
from app.evaluation.plots import plot_confusion_matrix, plot_per_label_f1, plot_score_histogram
from app.evaluation.tasks import TaskSpec

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
ERRORS_CSV = "errors.csv"
CONFUSION_PNG = "confusion_matrix.png"
PER_LABEL_PNG = "per_label_f1.png"
SCORES_PNG = "row_scores.png"

ERRORS_COLUMNS = ["row", "line", "kind", "reason", "input", "gold", "prediction", "score"]
MAX_ROWS_IN_MARKDOWN = 20
GENERATION_TASKS = {"summarize", "translate"}

# The per-row score that errors.csv and the histogram show, with its upper bound.
ROW_SCORE_NAMES = {
    "classify": ("correct (1) or wrong (0)", 1.0),
    "summarize": ("ROUGE-L F1", 1.0),
    "translate": ("sentence chrF", 100.0),
    "qa": ("answer F1", 1.0),
}


def build_report(
    spec: TaskSpec,
    prepared: PreparedDataset,
    records: Mapping[int, dict[str, Any]],
    *,
    dataset: str,
    source: str,
    interrupted: bool,
    elapsed_seconds: float,
    rows_this_run: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Compute the metrics over the rows with a prediction and assemble report.json."""
    predicted = [record for record in records.values() if record.get("prediction") is not None]
    failed = [record for record in records.values() if record.get("prediction") is None]
    result = compute_metrics(spec.name, predicted, prepared.labels)

    not_run = len(prepared.examples) - len(predicted) - len(failed)
    speed = rows_this_run / elapsed_seconds if elapsed_seconds > 0 and rows_this_run else None
    return {
        "task": spec.name,
        "dataset": dataset,
        "source": source,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "interrupted": interrupted,
        "options": options,
        "rows": {
            "total": prepared.total_rows,
            "evaluated": len(predicted),
            "skipped": len(prepared.skipped),
            "request_errors": len(failed),
            "not_run": not_run,
            "wrong": len(result.wrong_rows),
        },
        "metrics": result.metrics,
        "details": result.details,
        "labels": prepared.labels,
        "timing": {
            "seconds": round(elapsed_seconds, 3),
            "rows_this_run": rows_this_run,
            "rows_per_second": round(speed, 3) if speed else None,
        },
        "skipped_rows": [
            {"row": item.row, "line": item.line, "reason": item.reason} for item in prepared.skipped
        ],
        "request_errors": [
            {"row": record["row"], "line": record.get("line"), "error": record.get("error")}
            for record in failed
        ],
        "row_scores": {str(row): score for row, score in result.row_scores.items()},
        "wrong_rows": sorted(result.wrong_rows),
        "files": {},
    }


def write_report_files(
    report: dict[str, Any],
    records: Mapping[int, dict[str, Any]],
    prepared: PreparedDataset,
    spec: TaskSpec,
    out_dir: Path,
) -> None:
    """Write the plots, errors.csv, report.md and report.json into `out_dir`."""
    files = {"predictions": "predictions.jsonl", "errors": ERRORS_CSV, "markdown": REPORT_MD}
    files.update(_write_plots(report, out_dir))
    report["files"] = files

    _write_errors_csv(report, records, prepared, spec, out_dir / ERRORS_CSV)
    (out_dir / REPORT_MD).write_text(render_markdown(report, records, spec), encoding="utf-8")
    (out_dir / REPORT_JSON).write_text(
        json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


def _write_plots(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    task = report["task"]
    details = report["details"]
    title = f"{task}: {Path(report['dataset']).name}"

    if task == "classify" and details.get("confusion_matrix"):
        plot_confusion_matrix(
            details["confusion_matrix"], details["labels"], out_dir / CONFUSION_PNG, title
        )
        plot_per_label_f1(details["per_label"], out_dir / PER_LABEL_PNG, title)
        files["confusion_matrix"] = CONFUSION_PNG
        files["per_label_f1"] = PER_LABEL_PNG
    elif task != "classify" and report["row_scores"]:
        name, upper = ROW_SCORE_NAMES[task]
        scores = list(report["row_scores"].values())
        plot_score_histogram(scores, out_dir / SCORES_PNG, title, name, upper)
        files["row_scores"] = SCORES_PNG
    return files


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _write_errors_csv(
    report: dict[str, Any],
    records: Mapping[int, dict[str, Any]],
    prepared: PreparedDataset,
    spec: TaskSpec,
    path: Path,
) -> None:
    """List skipped rows, failed requests and wrong predictions, ordered by row."""
    entries: list[dict[str, Any]] = []
    for item in prepared.skipped:
        entries.append(
            {
                "row": item.row,
                "line": item.line,
                "kind": "skipped",
                "reason": item.reason,
                "input": _json_text(item.values) if item.values is not None else "",
            }
        )

    scores = report["row_scores"]
    wrong = set(report["wrong_rows"])
    for row, record in records.items():
        if record.get("prediction") is None:
            kind, reason = "request_error", record.get("error") or ""
        elif row in wrong:
            kind, reason = "wrong", ""
        else:
            continue
        entries.append(
            {
                "row": row,
                "line": record.get("line"),
                "kind": kind,
                "reason": reason,
                "input": _json_text(record["input"]),
                "gold": spec.gold_text(record["gold"]),
                "prediction": spec.prediction_text(record.get("prediction")),
                "score": _format_score(scores.get(str(row))),
            }
        )

    entries.sort(key=lambda entry: entry["row"])
    with path.open("w", encoding="utf-8", newline="") as target:
        writer = csv.DictWriter(target, fieldnames=ERRORS_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(entries)


def _format_score(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def format_metric(name: str, value: float | None) -> str:
    """Format a metric: BLEU and chrF (0-100) with 2 decimals, fractions with 4."""
    if value is None:
        return "n/a"
    if name.startswith(("bleu", "chrf")):
        return f"{value:.2f}"
    return f"{value:.4f}"


def _markdown_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in rows]
    return lines


def render_markdown(
    report: dict[str, Any], records: Mapping[int, dict[str, Any]], spec: TaskSpec
) -> str:
    """Render report.md: run facts, metrics, per-label table, plots and listed rows."""
    rows = report["rows"]
    lines = [f"# Evaluation of {report['task']} on {report['dataset']}", ""]
    lines += [
        f"- Source: {report['source']}",
        f"- Created: {report['created']}",
        f"- Rows: {rows['total']} in the file, {rows['evaluated']} evaluated, "
        f"{rows['skipped']} skipped, {rows['request_errors']} request errors, "
        f"{rows['not_run']} not run",
    ]
    timing = report["timing"]
    if timing["rows_per_second"]:
        lines.append(
            f"- Speed: {timing['rows_this_run']} rows in {timing['seconds']:.1f} s "
            f"({timing['rows_per_second']:.2f} rows/s)"
        )
    if report["interrupted"]:
        lines.append("- The run was interrupted; these metrics cover only the rows done.")
    lines.append("")

    lines += ["## Metrics", ""]
    lines += _markdown_table(
        ["metric", "value"],
        [[name, format_metric(name, value)] for name, value in report["metrics"].items()],
    )
    lines.append("")

    per_label = report["details"].get("per_label")
    if per_label:
        lines += ["## Per label", ""]
        lines += _markdown_table(
            ["label", "precision", "recall", "F1", "support"],
            [
                [
                    label,
                    f"{v['precision']:.4f}",
                    f"{v['recall']:.4f}",
                    f"{v['f1']:.4f}",
                    v["support"],
                ]
                for label, v in per_label.items()
            ],
        )
        lines.append("")

    plots = {key: name for key, name in report["files"].items() if name.endswith(".png")}
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{key}]({name})" for key, name in plots.items()]
        lines.append("")

    if report["skipped_rows"]:
        lines += ["## Skipped rows", ""]
        lines += _markdown_table(
            ["row", "line", "reason"],
            [[item["row"], item["line"], item["reason"]] for item in report["skipped_rows"]],
        )
        lines.append("")

    if report["request_errors"]:
        lines += ["## Request errors", ""]
        lines += _markdown_table(
            ["row", "line", "error"],
            [[item["row"], item["line"], item["error"]] for item in report["request_errors"]],
        )
        lines.append("")

    wrong = list(report["wrong_rows"])
    if wrong:
        scores = report["row_scores"]
        if spec.name in GENERATION_TASKS:
            # Nearly every generated text differs from its reference, so show the worst first.
            wrong.sort(key=lambda row: scores.get(str(row), 0.0))
            lines += [f"## Predictions that differ from the reference ({len(wrong)})", ""]
        else:
            lines += [f"## Wrong predictions ({len(wrong)})", ""]
        if len(wrong) > MAX_ROWS_IN_MARKDOWN:
            lines += [f"The first {MAX_ROWS_IN_MARKDOWN} of them; errors.csv lists all.", ""]
        score_name = ROW_SCORE_NAMES[spec.name][0]
        lines += _markdown_table(
            ["row", "gold", "prediction", score_name],
            [
                [
                    row,
                    spec.gold_text(records[row]["gold"]),
                    spec.prediction_text(records[row]["prediction"]),
                    _format_score(scores.get(str(row))),
                ]
                for row in wrong[:MAX_ROWS_IN_MARKDOWN]
            ],
        )
        lines.append("")
    return "\n".join(lines)


def print_summary(report: dict[str, Any], console: Console) -> None:
    """Print the metrics and row counts of a report as a rich table."""
    rows = report["rows"]
    table = Table(title=Text(f"{report['task']} on {report['dataset']}"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in report["metrics"].items():
        # Text, not a markup string: rich would read "[Chinese]" in "bleu[Chinese]" as a style.
        table.add_row(Text(name), format_metric(name, value))
    console.print(table)
    console.print(
        f"rows: {rows['evaluated']} evaluated, {rows['skipped']} skipped, "
        f"{rows['request_errors']} request errors, {rows['not_run']} not run, "
        f"{rows['wrong']} wrong (of {rows['total']} in the file)"
    )


@dataclass(frozen=True)
class MetricDifference:
    """One metric of two reports and its difference (current minus other)."""

    name: str
    current: float | None
    other: float | None

    @property
    def difference(self) -> float | None:
        if self.current is None or self.other is None:
            return None
        return self.current - self.other


def comparable_metrics(report: Mapping[str, Any]) -> dict[str, float | None]:
    """Return a report's metrics plus per-label F1 as `f1[label]`."""
    metrics: dict[str, float | None] = dict(report.get("metrics") or {})
    per_label = (report.get("details") or {}).get("per_label") or {}
    for label, values in per_label.items():
        metrics[f"f1[{label}]"] = values.get("f1")
    return metrics


def compare_reports(current: Mapping[str, Any], other: Mapping[str, Any]) -> list[MetricDifference]:
    """Pair the metrics of two reports by name, in the current report's order first."""
    current_metrics = comparable_metrics(current)
    other_metrics = comparable_metrics(other)
    names = list(current_metrics) + [name for name in other_metrics if name not in current_metrics]
    return [
        MetricDifference(name, current_metrics.get(name), other_metrics.get(name)) for name in names
    ]


def load_report(path: Path) -> dict[str, Any]:
    """Read a report.json; raise ValueError when it is missing or not a report."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"report {path} not found") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"report {path} could not be read: {error}") from None
    if not isinstance(report, dict) or "metrics" not in report:
        raise ValueError(f"{path} is not a chainserve report.json (it has no 'metrics')")
    return report


def print_comparison(
    current: Mapping[str, Any], other: Mapping[str, Any], other_name: str, console: Console
) -> None:
    """Print each metric of two reports and its difference as a rich table."""
    if current.get("task") != other.get("task"):
        console.print(
            f"[yellow]warning: comparing a {current.get('task')} report with a "
            f"{other.get('task')} report[/yellow]"
        )
    table = Table(title=Text(f"compared with {other_name}"))
    table.add_column("metric")
    table.add_column("this run", justify="right")
    table.add_column("other", justify="right")
    table.add_column("difference", justify="right")
    for item in compare_reports(current, other):
        difference = item.difference
        if difference is None:
            shown = Text("n/a")
        else:
            sign = "+" if difference > 0 else ""
            color = "default"
            if difference > 0:
                color = "green"
            elif difference < 0:
                color = "red"
            shown = Text(f"{sign}{format_metric(item.name, difference)}", style=color)
        table.add_row(
            Text(item.name),
            format_metric(item.name, item.current),
            format_metric(item.name, item.other),
            shown,
        )
    console.print(table)
