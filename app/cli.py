"""The `chainserve` command line."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
import uvicorn

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

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    from app.server import create_app
    from chains.prompts import PromptFileError

    try:
        app = create_app(settings)
    except PromptFileError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None

    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())


def main() -> None:
    cli()
