"""The FastAPI app: every chain mounted with LangServe, plus index, health, readiness and
metrics, behind the middleware for request checks, API keys, CORS and observability."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from langserve import add_routes
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import AppStatus

from app.backends import MODEL_CONFIG_KEY, build_chat_model, load_local_runtime
from app.backends.local import LocalRuntime
from app.errors import add_request_metadata, install_error_handlers
from app.guard import RequestGuard
from app.observability import Metrics, ObservabilityMiddleware
from app.security import APIKeyMiddleware
from app.settings import Settings
from chains import CHAIN_BUILDERS, CHAIN_INPUTS

logger = logging.getLogger(__name__)

CHAIN_DESCRIPTIONS = {
    "classify": "Classify a text into one of a set of labels (sentiment by default).",
    "summarize": "Summarize a text, in its own language unless another is requested.",
    "translate": "Translate a text into a target language.",
    "qa": "Answer a question from a context, or report that the context lacks the answer.",
}

EndpointName = Literal[
    "invoke",
    "batch",
    "stream",
    "stream_log",
    "stream_events",
    "playground",
    "feedback",
    "public_trace_link",
    "input_schema",
    "config_schema",
    "output_schema",
    "config_hashes",
]

# Every LangServe endpoint the playground, RemoteRunnable and curl users need.
ENABLED_ENDPOINTS: tuple[EndpointName, ...] = (
    "invoke",
    "batch",
    "stream",
    "stream_log",
    "stream_events",
    "playground",
    "input_schema",
    "output_schema",
    "config_schema",
    "config_hashes",
    "feedback",
    "public_trace_link",
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for `settings`; the local model loads when the app starts."""
    settings = settings or Settings()
    runtime = (
        LocalRuntime(settings.local_model) if "local" in settings.available_backends() else None
    )
    model = build_chat_model(settings, runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # sse-starlette 1.8 keeps one process-wide exit event, bound to the event loop that
        # first streamed. Every stream of a second server in the same process (tests,
        # reloads) would fail with "bound to a different event loop" without this.
        if not isinstance(AppStatus.should_exit_event, PerLoopExitEvent):
            AppStatus.should_exit_event = PerLoopExitEvent()  # type: ignore[assignment]

        loading: asyncio.Future[None] | None = None
        if runtime is not None:
            # Load in a thread, so /health responds and /ready returns 503 while it runs.
            loading = asyncio.ensure_future(
                asyncio.to_thread(load_local_runtime, runtime, settings)
            )
        yield
        if loading is not None and not loading.done():
            loading.cancel()
        if runtime is not None and runtime.engine is not None:
            runtime.engine.close()

    app = FastAPI(
        title="chainserve",
        version="0.1.0",
        description="Classification, summarization, translation and question answering, "
        "served with LangServe.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    metrics = Metrics()
    app.state.metrics = metrics
    install_error_handlers(app)
    _install_middleware(app, settings, metrics)
    _watch_engine(metrics, runtime)

    for name, build in CHAIN_BUILDERS.items():
        chain = build(model, settings.prompts_dir)
        add_routes(
            app,
            chain,
            path=f"/{name}",
            enabled_endpoints=ENABLED_ENDPOINTS,
            config_keys=("configurable",),
            per_req_config_modifier=add_request_metadata,
        )

    @app.get("/", summary="List the chains")
    async def index() -> dict[str, Any]:
        return {
            "name": "chainserve",
            "backends": settings.available_backends(),
            "default_backend": settings.resolved_backend(),
            "chains": [
                {
                    "name": name,
                    "description": CHAIN_DESCRIPTIONS[name],
                    "invoke": f"/{name}/invoke",
                    "stream": f"/{name}/stream",
                    "playground": f"/{name}/playground/",
                    "input_schema": f"/{name}/input_schema",
                    "output_schema": f"/{name}/output_schema",
                }
                for name in CHAIN_BUILDERS
            ],
            "docs": "/docs",
        }

    @app.get("/health", summary="Liveness: the process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: the model is loaded", response_model=None)
    async def ready() -> JSONResponse:
        if runtime is None or runtime.is_loaded:
            return JSONResponse({"status": "ready"})
        if runtime.load_error is not None:
            detail = f"loading the local model failed: {runtime.load_error}"
            return JSONResponse({"status": "failed", "detail": detail}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", response_model=None)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class PerLoopExitEvent:
    """Stand-in for sse-starlette's exit event that keeps one anyio Event per event loop."""

    def __init__(self) -> None:
        self._events: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.Event] = (
            weakref.WeakKeyDictionary()
        )

    def _event(self) -> anyio.Event:
        loop = asyncio.get_running_loop()
        event = self._events.get(loop)
        if event is None:
            event = anyio.Event()
            self._events[loop] = event
        return event

    async def wait(self) -> None:
        await self._event().wait()

    def set(self) -> None:
        """Set the event of the running loop; uvicorn calls this on shutdown from its loop."""
        try:
            self._event().set()
        except RuntimeError:
            for event in list(self._events.values()):
                event.set()


def _install_middleware(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Add the middleware stack; the last one added runs first on a request."""
    app.add_middleware(
        RequestGuard,
        input_models=CHAIN_INPUTS,
        configurable={MODEL_CONFIG_KEY: settings.available_backends()},
        max_body_bytes=settings.max_body_bytes,
        max_text_chars=settings.max_text_chars,
        max_batch_items=settings.max_batch_items,
        max_labels=settings.max_labels,
    )

    if settings.api_keys:
        open_paths = {"/health"}
        if settings.public_ready:
            open_paths.add("/ready")
        if settings.public_metrics:
            open_paths.add("/metrics")
        app.add_middleware(APIKeyMiddleware, keys=settings.api_keys, open_paths=open_paths)

    app.add_middleware(ObservabilityMiddleware, metrics=metrics, chain_names=set(CHAIN_BUILDERS))

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )


def _watch_engine(metrics: Metrics, runtime: LocalRuntime | None) -> None:
    """Point the engine gauges at the local runtime, which may still be loading."""

    def engine_value(name: str) -> float:
        engine = runtime.engine if runtime is not None else None
        return float(getattr(engine, name)) if engine is not None else 0.0

    metrics.queue_depth.set_function(lambda: engine_value("queue_depth"))
    metrics.active_generations.set_function(lambda: engine_value("active_rows"))
    metrics.cancelled_rows.set_function(lambda: engine_value("cancelled_total"))
    metrics.model_load_seconds.set_function(
        lambda: float(runtime.load_seconds or 0.0) if runtime is not None else 0.0
    )
