"""Running a chain over a dataset: batched calls, predictions.jsonl, resume and Ctrl-C.

Each finished batch is appended to `OUT/predictions.jsonl` and flushed, one JSON object per
row: `row`, `line`, `input`, `gold`, and either `prediction` (the chain output) or `error`.
A KeyboardInterrupt stops the run, and the report is written from the rows done so far.
With `resume`, rows that already have a prediction are skipped and rows whose request
failed are sent again. When a row appears more than once, its last record counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx
from langchain_core.runnables import Runnable
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from app.evaluation.datasets import Example, PreparedDataset, RawRow, prepare_rows
from app.evaluation.report import build_report, write_report_files
from app.evaluation.tasks import get_task

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
RUN_FILE = "run.json"
DEFAULT_BATCH_SIZE = 8


class EvaluationError(RuntimeError):
    """An evaluation cannot start, such as a resume into an output folder of another run."""


@dataclass
class EvaluationResult:
    """The report of a run, where it was written, and whether Ctrl-C cut the run short."""

    report: dict[str, Any]
    out_dir: Path
    interrupted: bool


class RowsPerSecondColumn(ProgressColumn):
    """Progress column with the recent speed in rows per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("- rows/s", style="progress.data.speed")
        return Text(f"{speed:.2f} rows/s", style="progress.data.speed")


def run_evaluation(
    task: str,
    rows: PreparedDataset | Sequence[RawRow | Mapping[str, Any]],
    runnable: Runnable[Any, Any],
    out_dir: Path,
    *,
    columns: Mapping[str, str] | None = None,
    gold_column: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    limit: int | None = None,
    resume: bool = False,
    dataset: str = "<rows>",
    source: str = "in-process",
    show_progress: bool = True,
) -> EvaluationResult:
    """Evaluate `runnable` on the rows of a dataset and write the report files to `out_dir`.

    `rows` is a prepared dataset, or rows as read from a file (plain mappings are numbered
    from 1), which are then prepared with `columns` and `gold_column`. Call this from
    synchronous code, because it runs its own event loop with asyncio.run.
    """
    spec = get_task(task)
    if batch_size < 1:
        raise EvaluationError(f"invalid batch size {batch_size}; use 1 or more")
    if isinstance(rows, PreparedDataset):
        prepared = rows
    else:
        prepared = prepare_rows(spec, rows, columns, gold_column)
    prepared = prepared.head(limit)

    out_dir.mkdir(parents=True, exist_ok=True)
    predictions_path = out_dir / PREDICTIONS_FILE
    previous = _start_run(out_dir, task, dataset, resume)
    _check_inputs_unchanged(previous, prepared.examples, predictions_path)

    done = {row for row, record in previous.items() if record.get("prediction") is not None}
    pending = [example for example in prepared.examples if example.row not in done]
    if done:
        logger.info("resuming: %d rows already have predictions in %s", len(done), out_dir)

    started = time.monotonic()
    progress = _new_progress(task, show_progress)
    interrupted = False
    with progress, predictions_path.open("a", encoding="utf-8") as sink:
        writer = _PredictionWriter(sink, progress, progress.add_task(task, total=len(pending)))
        try:
            asyncio.run(_predict(runnable, pending, batch_size, writer))
        except KeyboardInterrupt:
            interrupted = True
    elapsed = time.monotonic() - started

    records = _latest_records(predictions_path)
    rows_in_run = {example.row for example in prepared.examples}
    records = {row: record for row, record in records.items() if row in rows_in_run}

    report = build_report(
        spec,
        prepared,
        records,
        dataset=dataset,
        source=source,
        interrupted=interrupted,
        elapsed_seconds=elapsed,
        rows_this_run=writer.rows_written,
        options={
            "batch_size": batch_size,
            "limit": limit,
            "resume": resume,
            "columns": dict(prepared.columns),
        },
    )
    write_report_files(report, records, prepared, spec, out_dir)
    return EvaluationResult(report, out_dir, interrupted)


def _new_progress(task: str, show_progress: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        RowsPerSecondColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not show_progress,
    )


def _start_run(out_dir: Path, task: str, dataset: str, resume: bool) -> dict[int, dict[str, Any]]:
    """Check the output folder and write run.json; return the earlier records on resume."""
    predictions_path = out_dir / PREDICTIONS_FILE
    run_path = out_dir / RUN_FILE

    if not resume:
        if predictions_path.exists():
            raise EvaluationError(
                f"{predictions_path} already exists; pass --resume to continue that run, "
                "or choose another --out folder"
            )
        run_path.write_text(
            json.dumps(
                {"task": task, "dataset": dataset, "started": _now()}, ensure_ascii=False, indent=2
            )
            + "\n",
            encoding="utf-8",
        )
        return {}

    if run_path.exists():
        earlier = json.loads(run_path.read_text(encoding="utf-8"))
        if earlier.get("task") != task:
            raise EvaluationError(
                f"cannot resume: {out_dir} contains a {earlier.get('task')!r} run, not {task!r}; "
                "choose another --out folder"
            )
    if not predictions_path.exists():
        logger.warning("nothing to resume in %s; starting a new run there", out_dir)
        return _start_run(out_dir, task, dataset, resume=False)
    return _latest_records(predictions_path)


def _check_inputs_unchanged(
    previous: dict[int, dict[str, Any]], examples: Sequence[Example], path: Path
) -> None:
    changed = [
        example.row
        for example in examples
        if example.row in previous and previous[example.row].get("input") != example.input
    ]
    if changed:
        shown = ", ".join(str(row) for row in changed[:10])
        raise EvaluationError(
            f"cannot resume: the input of row(s) {shown} differs from {path}, so the dataset "
            "or the column mapping changed; start a new run with another --out folder"
        )


def _latest_records(path: Path) -> dict[int, dict[str, Any]]:
    """Read predictions.jsonl; the last record of each row wins.

    A line cut short by a crash is skipped with a warning, so the row is run again.
    """
    records: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return records
    with path.open(encoding="utf-8") as source:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records[int(record["row"])] = record
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                logger.warning("%s line %d is invalid and is ignored: %s", path, number, error)
    return dict(sorted(records.items()))


class _PredictionWriter:
    """Append prediction records to predictions.jsonl and advance the progress bar."""

    def __init__(self, sink: TextIO, progress: Progress, bar: TaskID) -> None:
        self.sink = sink
        self.progress = progress
        self.bar = bar
        self.rows_written = 0

    def write_batch(self, batch: Sequence[Example], outputs: Sequence[Any]) -> None:
        for example, output in zip(batch, outputs, strict=True):
            record: dict[str, Any] = {
                "row": example.row,
                "line": example.line,
                "input": example.input,
                "gold": example.gold,
            }
            if isinstance(output, BaseException):
                record["prediction"] = None
                record["error"] = f"{type(output).__name__}: {output}"
                logger.warning("row %d failed: %s", example.row, record["error"])
            else:
                record["prediction"] = dict(output)
                record["error"] = None
            self.sink.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")

        # Flush per batch, so an interrupted run keeps every finished row.
        self.sink.flush()
        self.rows_written += len(batch)
        self.progress.advance(self.bar, len(batch))


async def _predict(
    runnable: Runnable[Any, Any],
    examples: Sequence[Example],
    batch_size: int,
    writer: _PredictionWriter,
) -> None:
    try:
        await _predict_batches(runnable, examples, batch_size, writer)
    finally:
        await _close_http_clients(runnable)


async def _predict_batches(
    runnable: Runnable[Any, Any],
    examples: Sequence[Example],
    batch_size: int,
    writer: _PredictionWriter,
) -> None:
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        outputs = await _batch_outputs(runnable, [example.input for example in batch])

        # A row cancelled inside the batch means that the run is being stopped, for example
        # by a KeyboardInterrupt in a worker thread, so that row has no output to record.
        finished = [
            (example, output)
            for example, output in zip(batch, outputs, strict=True)
            if not isinstance(output, asyncio.CancelledError)
        ]
        writer.write_batch([example for example, _ in finished], [output for _, output in finished])
        if len(finished) < len(batch):
            raise KeyboardInterrupt


async def _batch_outputs(runnable: Runnable[Any, Any], inputs: list[Any]) -> list[Any]:
    """Run one batch; failed rows come back as their exception."""
    try:
        return list(await runnable.abatch(inputs, return_exceptions=True))
    except Exception as error:
        if len(inputs) == 1:
            return [error]
        # NOTE: langserve 0.3.3 RemoteRunnable.abatch ignores return_exceptions, so one
        # failing row fails the whole /batch request. Sending each row alone marks only the
        # rows that fail.
        logger.warning("a batch of %d rows failed (%s); retrying row by row", len(inputs), error)
        return list(await asyncio.gather(*(_invoke_row(runnable, item) for item in inputs)))


async def _invoke_row(runnable: Runnable[Any, Any], item: Any) -> Any:
    """Run one row; return its output, or the exception it failed with."""
    for attempt in (1, 2):
        try:
            return await runnable.ainvoke(item)
        except httpx.TransportError as error:
            # A server may close a kept-alive connection after returning status 500, and the
            # next request on that connection fails with ReadError, so send the row once more.
            if attempt == 2:
                return error
            logger.warning("request failed (%r); sending the row again", error)
        except Exception as error:
            return error
    raise AssertionError("unreachable")


async def _close_http_clients(runnable: Runnable[Any, Any]) -> None:
    """Close the httpx client of a RemoteRunnable, also one wrapped by with_config.

    The client's connections belong to the event loop of this run, which asyncio.run
    closes, so the client must be closed inside that loop. The runnable cannot make
    requests afterwards.
    """
    target = getattr(runnable, "bound", runnable)
    client = getattr(target, "async_client", None)
    if isinstance(client, httpx.AsyncClient):
        await client.aclose()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
