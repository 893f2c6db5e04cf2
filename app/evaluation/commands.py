"""The `chainserve eval` command and the `chainserve data` commands."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from langchain_core.runnables import Runnable
from rich.console import Console
from rich.table import Table

from app.evaluation.datasets import DatasetError, parse_column_mapping, prepare_rows, read_records
from app.evaluation.report import load_report, print_comparison, print_summary
from app.evaluation.runner import DEFAULT_BATCH_SIZE, EvaluationError, run_evaluation
from app.evaluation.split import split_dataset
from app.evaluation.tasks import get_task

logger = logging.getLogger(__name__)

DEFAULT_REPORTS_DIR = Path("reports")
API_KEY_ENV = "CHAINSERVE_API_KEY"
EXIT_INTERRUPTED = 130


TaskName = Literal["classify", "summarize", "translate", "qa"]
BackendChoice = Literal["openai", "local"]


eval_app = typer.Typer(help="Evaluate a chain on a labelled dataset.", add_completion=False)
data_app = typer.Typer(help="Prepare evaluation datasets.", no_args_is_help=True)


def register(cli: typer.Typer) -> None:
    """Add `eval` as a command and `data` as a command group to the chainserve CLI."""
    cli.command("eval")(eval_command)
    cli.add_typer(data_app, name="data")


def eval_command(
    task: Annotated[TaskName, typer.Argument(help="The chain to evaluate.")],
    data: Annotated[
        Path, typer.Argument(help="Dataset file: .csv with a header line, or .jsonl (UTF-8).")
    ],
    server: Annotated[
        str | None,
        typer.Option(
            help="Base URL of a running chainserve, such as http://127.0.0.1:8000. "
            "Without it, the chain runs in this process."
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar=API_KEY_ENV,
            help="API key sent to --server as 'Authorization: Bearer KEY'.",
            show_default=False,
        ),
    ] = None,
    backend: Annotated[
        BackendChoice | None,
        typer.Option(help="Chat model backend; default: the server's or the settings' default."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder; default reports/TASK-TIMESTAMP, or with --resume the newest "
            "reports/TASK-* folder."
        ),
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option(
            help="Map a task field to a dataset column, as FIELD=COLUMN; repeat for more fields."
        ),
    ] = None,
    gold_column: Annotated[
        str | None,
        typer.Option(
            help="Column of the gold answer; default label (classify), reference "
            "(summarize, translate) or answer (qa)."
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Rows sent in one batch call.")
    ] = DEFAULT_BATCH_SIZE,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Evaluate only the first N rows of the file.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out: skip rows with a prediction, retry failed ones.",
        ),
    ] = False,
    compare: Annotated[
        Path | None,
        typer.Option(help="Another report.json; print each metric's difference to it."),
    ] = None,
) -> None:
    """Evaluate a chain on a dataset and write report.json, report.md, errors.csv and plots."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    spec = get_task(task)

    try:
        columns = parse_column_mapping(column or [], spec)
        prepared = prepare_rows(spec, read_records(data), columns, gold_column).head(limit)
        other_report = load_report(compare) if compare else None
        out_dir = _output_folder(task, out, resume)
    except (DatasetError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None

    if prepared.skipped:
        typer.echo(
            f"skipping {len(prepared.skipped)} invalid row(s); {out_dir / 'errors.csv'} lists them",
            err=True,
        )

    if server:
        runnable, source, close = _remote_chain(task, server, api_key, backend)
    else:
        runnable, source, close = _local_chain(task, backend)

    try:
        result = run_evaluation(
            task,
            prepared,
            runnable,
            out_dir,
            batch_size=batch_size,
            limit=limit,
            resume=resume,
            dataset=str(data),
            source=source,
        )
    except EvaluationError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    finally:
        close()

    print_summary(result.report, console)
    console.print(f"report: {out_dir / 'report.md'}")
    if other_report is not None:
        print_comparison(result.report, other_report, str(compare), console)

    if result.interrupted:
        typer.echo(
            f"interrupted: the report covers the rows done so far; continue with "
            f"--resume --out {out_dir}",
            err=True,
        )
        raise typer.Exit(code=EXIT_INTERRUPTED)


eval_app.command("eval")(eval_command)


def _output_folder(task: str, out: Path | None, resume: bool) -> Path:
    if out is not None:
        return out
    if resume:
        earlier = sorted(DEFAULT_REPORTS_DIR.glob(f"{task}-*"))
        if not earlier:
            raise ValueError(
                f"--resume found no {DEFAULT_REPORTS_DIR}/{task}-* folder; pass --out FOLDER"
            )
        return earlier[-1]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return DEFAULT_REPORTS_DIR / f"{task}-{stamp}"


def _remote_chain(
    task: str, server: str, api_key: str | None, backend: BackendChoice | None
) -> tuple[Runnable[Any, Any], str, Callable[[], None]]:
    from langserve import RemoteRunnable

    url = server.rstrip("/") + "/" + task
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    runnable: Runnable[Any, Any] = RemoteRunnable(url, headers=headers)
    source = f"server {url}"
    if backend is not None:
        from app.backends import MODEL_CONFIG_KEY

        runnable = runnable.with_config(configurable={MODEL_CONFIG_KEY: backend})
        source += f" (backend {backend})"
    return runnable, source, lambda: None


def _local_chain(
    task: str, backend: BackendChoice | None
) -> tuple[Runnable[Any, Any], str, Callable[[], None]]:
    """Build the chain in this process, loading the local model when it is the backend."""
    from app.backends import build_chat_model, load_local_runtime
    from app.backends.local import LocalRuntime
    from app.settings import Settings
    from chains import CHAIN_BUILDERS

    try:
        settings = Settings(backend=backend) if backend else Settings()
    except ValueError as error:
        typer.echo(f"invalid settings: {error}", err=True)
        raise typer.Exit(code=2) from None

    runtime = None
    if "local" in settings.available_backends():
        runtime = LocalRuntime(settings.local_model)
    resolved = settings.resolved_backend()
    if resolved == "local" and runtime is not None:
        typer.echo(f"loading the local model {settings.local_model} ...", err=True)
        try:
            load_local_runtime(runtime, settings)
        except Exception as error:
            typer.echo(f"error: loading the local model failed: {error}", err=True)
            raise typer.Exit(code=1) from None

    model = build_chat_model(settings, runtime)
    chain = CHAIN_BUILDERS[task](model, settings.prompts_dir)
    name = settings.local_model if resolved == "local" else settings.openai_model
    source = f"in-process, {resolved} backend, model {name}"

    def close() -> None:
        if runtime is not None and runtime.engine is not None:
            runtime.engine.close()

    return chain, source, close


@data_app.command("split")
def split_command(
    data: Annotated[Path, typer.Argument(help="Dataset file: .csv or .jsonl.")],
    test_size: Annotated[
        float,
        typer.Option(help="Test part: a fraction between 0 and 1, or a row count of 1 or more."),
    ] = 0.3,
    stratify: Annotated[
        str | None,
        typer.Option(help="Column whose value shares stay the same in both parts, such as label."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the shuffle.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Output folder; default: the folder of DATA.")
    ] = None,
) -> None:
    """Split DATA into NAME.train.EXT and NAME.test.EXT with scikit-learn's train_test_split."""
    try:
        result = split_dataset(data, test_size=test_size, stratify=stratify, seed=seed, out_dir=out)
    except DatasetError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None

    console = Console()
    console.print(f"train: {result.train_path} ({result.train_rows} rows)")
    console.print(f"test: {result.test_path} ({result.test_rows} rows)")
    if stratify:
        table = Table(title=f"rows per {stratify}")
        table.add_column(stratify)
        table.add_column("train", justify="right")
        table.add_column("test", justify="right")
        for label in sorted(set(result.train_counts) | set(result.test_counts)):
            table.add_row(label, str(result.train_counts[label]), str(result.test_counts[label]))
        console.print(table)
