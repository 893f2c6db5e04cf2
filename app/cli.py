"""The `chainserve` command line."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
import uvicorn
from pythonjsonlogger.json import JsonFormatter
from transformers.utils import logging as transformers_logging

from app.evaluation import register as register_evaluation
from app.observability import RequestIdFilter
from app.settings import Settings

cli = typer.Typer(help="chainserve: LangServe chains for everyday language tasks.")


@cli.callback()
def _main() -> None:
    """chainserve: LangServe chains for everyday language tasks."""


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind; default 127.0.0.1.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port; default 8000.")] = None,
    backend: Annotated[str | None, typer.Option(help="Default backend: openai or local.")] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Local model: a hub id, a local folder or gemma3-270m."),
    ] = None,
) -> None:
    """Serve all chains over HTTP; settings come from the environment and .env."""
    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if backend is not None:
        overrides["backend"] = backend
    if model is not None:
        overrides["local_model"] = model

    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValueError as error:
        typer.echo(f"invalid settings: {error}", err=True)
        raise typer.Exit(code=2) from None

    configure_logging(settings)

    from app.server import create_app
    from chains.prompts import PromptFileError

    try:
        app = create_app(settings)
    except PromptFileError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None

    # chainserve logs each request itself, with its request id, so uvicorn's access log is off.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


def configure_logging(settings: Settings) -> None:
    """Send all logs to stderr as text or JSON lines, each with its request id."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )

    # transformers draws progress bars on stderr, which would break JSON lines.
    transformers_logging.disable_progress_bar()

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


def main() -> None:
    register_evaluation(cli)
    cli()
