"""JSON error responses with request ids.

LangServe 0.3 answers errors in several shapes: FastAPI's default 422 body, plain-text 500s
and `{"detail": ...}`. Every error here has one shape,
`{"error": {"type", "message", "request_id", "details"}}`, where `message` names the field
and says how to fix it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.backends.engine import GenerationCancelled, QueueFullError
from app.backends.local import GenerationTimeout, ModelNotLoaded

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"


def request_id_of(request: Request) -> str:
    """Return the request's id: the client's X-Request-ID, or a new one, stored on the request."""
    existing = getattr(request.state, "request_id", None)
    if existing:
        return str(existing)

    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    cleaned = "".join(ch for ch in incoming if ch.isalnum() or ch in "-_.")[:64]
    request_id = cleaned or uuid.uuid4().hex
    request.state.request_id = request_id
    return request_id


def error_response(
    request: Request,
    status_code: int,
    error_type: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    request_id = request_id_of(request)
    body: dict[str, Any] = {
        "error": {"type": error_type, "message": message, "request_id": request_id}
    }
    if details is not None:
        body["error"]["details"] = details

    all_headers = {REQUEST_ID_HEADER: request_id, **(headers or {})}
    return JSONResponse(body, status_code=status_code, headers=all_headers)


def describe_validation_errors(errors: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
    """Turn pydantic or FastAPI validation errors into one message and a list of details."""
    details: list[dict[str, Any]] = []
    parts: list[str] = []

    for error in errors:
        if not isinstance(error, Mapping):
            parts.append(str(error))
            details.append({"location": [], "message": str(error)})
            continue

        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        field = ".".join(location) or "body"
        parts.append(f"{field}: {message}")
        details.append({"location": location, "message": message, "type": error.get("type")})

    return "; ".join(parts) or "invalid request", details


def add_request_metadata(config: dict[str, Any], request: Request) -> dict[str, Any]:
    """LangServe `per_req_config_modifier` that puts the request id into the run metadata."""
    metadata = dict(config.get("metadata") or {})
    metadata["request_id"] = request_id_of(request)
    config["metadata"] = metadata
    return config


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers that turn errors into the JSON error shape with a fitting status."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        message, details = describe_validation_errors(error.errors())
        return error_response(request, 422, "validation_error", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        error_type = "validation_error" if error.status_code == 422 else "http_error"
        return error_response(
            request, error.status_code, error_type, str(error.detail), headers=error.headers
        )

    @app.exception_handler(QueueFullError)
    async def _queue_full(request: Request, error: QueueFullError) -> JSONResponse:
        logger.warning("rejected request_id=%s: %s", request_id_of(request), error)
        return error_response(
            request,
            503,
            "overloaded",
            f"{error}; retry after a few seconds",
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(ModelNotLoaded)
    async def _not_loaded(request: Request, error: ModelNotLoaded) -> JSONResponse:
        return error_response(
            request, 503, "model_not_loaded", str(error), headers={"Retry-After": "5"}
        )

    @app.exception_handler(GenerationTimeout)
    async def _timeout(request: Request, error: GenerationTimeout) -> JSONResponse:
        return error_response(request, 504, "timeout", str(error))

    @app.exception_handler(GenerationCancelled)
    async def _cancelled(request: Request, error: GenerationCancelled) -> JSONResponse:
        # 499 is the de facto status for a client that closed the request (nginx).
        return error_response(request, 499, "cancelled", "the request was cancelled")
