"""Chat model backends and the per-request choice between them."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import ConfigurableField, Runnable

from app.backends.engine import Engine
from app.backends.loading import load_model
from app.backends.local import LocalChatModel, LocalRuntime
from app.backends.openai import build_openai_model
from app.settings import Settings

logger = logging.getLogger(__name__)

MODEL_CONFIG_KEY = "model"
"""The `configurable` key that picks a backend per request: `openai` or `local`."""


def load_local_runtime(runtime: LocalRuntime, settings: Settings) -> None:
    """Load the local model into `runtime`; on failure, record the error and re-raise it."""
    try:
        torch.set_num_threads(settings.torch_threads or os.cpu_count() or 1)
        loaded = load_model(
            settings.local_model,
            cache_dir=settings.cache_dir,
            device=settings.device,
            dtype=settings.dtype,
        )
        engine = Engine(
            loaded.model,
            loaded.tokenizer,
            eos_token_ids=loaded.eos_token_ids,
            max_batch_size=settings.max_batch_size,
            batch_wait_ms=settings.batch_wait_ms,
            max_queue_size=settings.max_queue_size,
            max_context_tokens=settings.max_context_tokens,
        )
    except Exception as error:
        logger.exception("loading the local model %s failed", settings.local_model)
        runtime.set_failed(error)
        raise
    runtime.set_engine(engine, loaded.load_seconds)


def build_local_model(settings: Settings, runtime: LocalRuntime) -> LocalChatModel:
    return LocalChatModel(
        runtime=runtime,
        model_name=settings.local_model,
        prompt_format=settings.prompt_format,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        timeout=settings.generation_timeout,
    )


def build_chat_model(settings: Settings, runtime: LocalRuntime | None) -> Runnable[Any, Any]:
    """Build the one chat model that serves every chain.

    With more than one backend available, the result is configurable per request with
    `config={"configurable": {"model": "openai" | "local"}}`.
    """
    models: dict[str, BaseChatModel] = {}
    for name in settings.available_backends():
        if name == "openai":
            models[name] = build_openai_model(settings)
        else:
            if runtime is None:
                raise ValueError("the local backend needs a LocalRuntime")
            models[name] = build_local_model(settings, runtime)

    default_name = settings.resolved_backend()
    default = models.pop(default_name)
    if not models:
        return default

    return default.configurable_alternatives(
        ConfigurableField(
            id=MODEL_CONFIG_KEY,
            name="Model backend",
            description="The chat model backend that serves this request.",
        ),
        default_key=default_name,
        **models,  # type: ignore[arg-type]  # alternatives are keyword arguments by name
    )
