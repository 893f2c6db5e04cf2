"""Checks on chain request bodies before LangServe sees them.

LangServe 0.3.3 validates bodies late and loosely: a `/batch` whose `inputs` is an object, or
a list with one invalid item, raises inside the handler and returns a bare 500; unknown
`config` keys are dropped silently; and it reads a body of any size. This ASGI middleware
reads the body of each POST to a chain endpoint (up to `max_body_bytes`), checks the JSON,
the input against the chain's input model, the text limits and the client `config`, and
answers any problem with a 4xx JSON error that names the field. A valid body is passed on
unchanged.

It is a raw ASGI middleware rather than a Starlette `BaseHTTPMiddleware`, so a streaming
response and the client disconnect signal pass through untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import describe_validation_errors, error_response

# Client config keys we accept. RemoteRunnable always sends the first three. Only
# `configurable` reaches the chain (LangServe `config_keys`); tags, metadata and
# recursion_limit are accepted so RemoteRunnable works, then dropped by LangServe.
ALLOWED_CONFIG_KEYS = ("configurable", "metadata", "recursion_limit", "tags")

_ENDPOINT = re.compile(
    r"^/(?P<chain>[a-z_]+)(?:/c/[^/]+)?/(?P<endpoint>invoke|batch|stream|stream_log|stream_events)/?$"
)


class RequestRejected(Exception):
    def __init__(self, status_code: int, error_type: str, message: str, details: Any = None):
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
        self.message = message
        self.details = details


class RequestGuard:
    """ASGI middleware that checks chain request bodies; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        input_models: Mapping[str, type[BaseModel]],
        configurable: Mapping[str, Sequence[str]],
        max_body_bytes: int,
        max_text_chars: int,
        max_batch_items: int,
    ) -> None:
        self.app = app
        self.input_models = dict(input_models)
        self.configurable = {key: list(values) for key, values in configurable.items()}
        self.max_body_bytes = max_body_bytes
        self.max_text_chars = max_text_chars
        self.max_batch_items = max_batch_items

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return

        match = _ENDPOINT.match(scope["path"])
        if not match or match["chain"] not in self.input_models:
            await self.app(scope, receive, send)
            return

        try:
            body = await self._read_body(scope, receive)
            self._check(match["chain"], match["endpoint"], body)
        except RequestRejected as rejection:
            response = error_response(
                Request(scope),
                rejection.status_code,
                rejection.error_type,
                rejection.message,
                rejection.details,
            )
            await response(scope, receive, send)
            return

        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestRejected(400, "client_disconnected", "the client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> RequestRejected:
        return RequestRejected(
            413,
            "payload_too_large",
            f"the request body is larger than the limit of {self.max_body_bytes} bytes "
            "(CHAINSERVE_MAX_BODY_BYTES); send less text or split the batch",
        )

    def _check(self, chain: str, endpoint: str, raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RequestRejected(
                422, "validation_error", f"the body is not valid JSON: {error}"
            ) from None
        if not isinstance(body, dict):
            raise RequestRejected(422, "validation_error", "the body must be a JSON object")

        if endpoint == "batch":
            self._check_batch(chain, body)
        else:
            if "input" not in body:
                raise RequestRejected(
                    422, "validation_error", 'input: missing; send {"input": {...}}'
                )
            self._check_input(chain, body["input"], "input")
            self._check_config(body.get("config"), "config")

    def _check_batch(self, chain: str, body: dict[str, Any]) -> None:
        inputs = body.get("inputs")
        if not isinstance(inputs, list):
            raise RequestRejected(
                422,
                "validation_error",
                'inputs: must be a list of inputs, such as {"inputs": [{...}, {...}]}',
            )
        if not inputs:
            raise RequestRejected(422, "validation_error", "inputs: the list is empty")
        if len(inputs) > self.max_batch_items:
            raise RequestRejected(
                413,
                "payload_too_large",
                f"inputs: {len(inputs)} items is more than the limit of {self.max_batch_items} "
                "(CHAINSERVE_MAX_BATCH_ITEMS); split the batch",
            )

        for index, item in enumerate(inputs):
            self._check_input(chain, item, f"inputs.{index}")

        config = body.get("config")
        if isinstance(config, list):
            if len(config) != len(inputs):
                raise RequestRejected(
                    422,
                    "validation_error",
                    f"config: a list of configs must have one per input "
                    f"({len(config)} configs for {len(inputs)} inputs)",
                )
            for index, item in enumerate(config):
                self._check_config(item, f"config.{index}")
        else:
            self._check_config(config, "config")

    def _check_input(self, chain: str, value: Any, location: str) -> None:
        model = self.input_models[chain]
        if not isinstance(value, dict):
            fields = ", ".join(model.model_fields)
            raise RequestRejected(
                422,
                "validation_error",
                f"{location}: must be an object with the fields {fields}",
            )

        try:
            model.model_validate(value)
        except ValidationError as error:
            message, details = describe_validation_errors(error.errors())
            for detail in details:
                detail["location"] = [*location.split("."), *detail["location"]]
            prefixed = "; ".join(f"{location}.{part}" for part in message.split("; "))
            raise RequestRejected(422, "validation_error", prefixed, details) from None

        for field, text in value.items():
            if isinstance(text, str) and len(text) > self.max_text_chars:
                raise RequestRejected(
                    422,
                    "validation_error",
                    f"{location}.{field}: {len(text)} characters is more than the limit of "
                    f"{self.max_text_chars} (CHAINSERVE_MAX_TEXT_CHARS); shorten the text",
                )

    def _check_config(self, config: Any, location: str) -> None:
        if config is None:
            return
        if not isinstance(config, dict):
            raise RequestRejected(422, "validation_error", f"{location}: must be an object")

        unknown = sorted(set(config) - set(ALLOWED_CONFIG_KEYS))
        if unknown:
            raise RequestRejected(
                422,
                "validation_error",
                f"{location}: keys {unknown} are not accepted from clients; "
                f"allowed keys: {', '.join(ALLOWED_CONFIG_KEYS)}",
            )

        configurable = config.get("configurable") or {}
        if not isinstance(configurable, dict):
            raise RequestRejected(
                422, "validation_error", f"{location}.configurable: must be an object"
            )
        for key, value in configurable.items():
            if key not in self.configurable:
                valid = ", ".join(sorted(self.configurable)) or "none"
                raise RequestRejected(
                    422,
                    "validation_error",
                    f"{location}.configurable.{key}: unknown key; valid keys: {valid}",
                )
            if value not in self.configurable[key]:
                raise RequestRejected(
                    422,
                    "validation_error",
                    f"{location}.configurable.{key}: {value!r} is not valid; choose one of: "
                    f"{', '.join(self.configurable[key])}",
                )


def _replay(body: bytes, receive: Receive) -> Receive:
    """Return a `receive` that yields the already-read body, then the real messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
