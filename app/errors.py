"""JSON error responses with request ids.

LangServe 0.3 returns errors in several shapes: FastAPI's default 422 body, plain-text 500s
and `{"detail": ...}`. Every error here has one shape,
`{"error": {"type", "message", "request_id", "details"}}`, where `message` names the field
and how to fix it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import openai
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.backends.engine import GenerationCancelled, PromptTooLongError, QueueFullError
from app.backends.local import GenerationTimeout, ModelNotLoaded
from app.observability import REQUEST_ID_HEADER

logger = logging.getLogger(__name__)


def request_id_of(request: Request) -> str:
    """Return the id that ObservabilityMiddleware gave the request, or a new one."""
    existing = getattr(request.state, "request_id", None)
    if existing:
        return str(existing)

    request_id = uuid.uuid4().hex
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


KNOWN_ERRORS: tuple[type[Exception], ...] = (
    QueueFullError,
    ModelNotLoaded,
    GenerationTimeout,
    GenerationCancelled,
    PromptTooLongError,
    openai.APIError,
    ValidationError,
)


@dataclass(frozen=True)
class ErrorInfo:
    """The response to an exception: HTTP status, error type, client message, headers."""

    status_code: int
    error_type: str
    message: str
    headers: Mapping[str, str] | None = None


def describe_exception(error: BaseException) -> ErrorInfo:
    """Map an exception raised while running a chain to the response the client gets.

    Messages never contain the exception text of unknown errors, because it may hold
    secrets or internals; those are logged with the request id instead.
    """
    if isinstance(error, QueueFullError):
        return ErrorInfo(503, "overloaded", f"{error}; retry later", {"Retry-After": "2"})
    if isinstance(error, ModelNotLoaded):
        return ErrorInfo(503, "model_not_loaded", str(error), {"Retry-After": "5"})
    if isinstance(error, GenerationTimeout):
        return ErrorInfo(504, "timeout", str(error))
    if isinstance(error, PromptTooLongError):
        return ErrorInfo(422, "input_too_long", f"input: {error}")
    if isinstance(error, GenerationCancelled):
        # 499 is the status nginx uses for a request whose client closed the connection.
        return ErrorInfo(499, "cancelled", "the request was cancelled")
    if isinstance(error, openai.APITimeoutError):
        return ErrorInfo(504, "upstream_timeout", "the OpenAI-compatible server timed out")
    if isinstance(error, openai.AuthenticationError):
        return ErrorInfo(
            502,
            "upstream_auth_error",
            "the OpenAI-compatible server rejected the API key (OPENAI_API_KEY); check it",
        )
    if isinstance(error, openai.RateLimitError):
        return ErrorInfo(
            503,
            "upstream_rate_limited",
            "the OpenAI-compatible server is rate limiting requests, and retries ran out; "
            "retry later",
            {"Retry-After": _retry_after(error) or "10"},
        )
    if isinstance(error, openai.APIStatusError):
        return ErrorInfo(
            502,
            "upstream_error",
            f"the OpenAI-compatible server answered HTTP {error.status_code}",
        )
    if isinstance(error, openai.APIConnectionError):
        return ErrorInfo(502, "upstream_unreachable", "the OpenAI-compatible server is unreachable")
    if isinstance(error, ValidationError):
        message, _ = describe_validation_errors(error.errors())
        return ErrorInfo(422, "validation_error", message)
    return ErrorInfo(
        500, "internal_error", "the chain failed; see the server log for this request id"
    )


def _retry_after(error: openai.APIStatusError) -> str | None:
    value = error.response.headers.get("retry-after")
    return value if value and value.isdigit() else None


def response_for_exception(request: Request, error: BaseException) -> JSONResponse:
    """Log `error` with the request id and build its JSON error response."""
    info = describe_exception(error)
    request_id = request_id_of(request)
    if info.status_code >= 500 and info.error_type == "internal_error":
        logger.error("request_id=%s failed", request_id, exc_info=error)
    else:
        logger.warning("request_id=%s failed: %s (%s)", request_id, info.message, info.error_type)
    return error_response(
        request, info.status_code, info.error_type, info.message, None, info.headers
    )


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

    async def _known(request: Request, error: Exception) -> JSONResponse:
        return response_for_exception(request, error)

    # The exception middleware handles known errors. Any other exception reaches Starlette's
    # server error middleware, which responds with the same handler and then re-raises it,
    # so uvicorn logs the traceback.
    for error_class in (*KNOWN_ERRORS, Exception):
        app.add_exception_handler(error_class, _known)
