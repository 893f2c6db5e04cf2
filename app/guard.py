"""The one place where chainserve fixes LangServe 0.3.3's request handling.

LangServe validates bodies late and loosely: a `/batch` whose `inputs` is an object, or a
list with one invalid item, raises inside the handler and returns a bare 500; unknown
`config` keys are dropped silently; and it reads a body of any size. It also keeps running
an `/invoke` or `/batch` whose client has gone, and a `/stream` that fails sends an `error`
event with no reason and then drops the connection without the closing `end` event.

This ASGI middleware, for each POST to a chain endpoint:

- reads the body (up to `max_body_bytes`) and checks the JSON, the input against the
  chain's input model, the text and label limits and the client `config`, answering any problem with
  a 4xx JSON error that names the field;
- runs `/invoke` and `/batch` as a task that is cancelled when the client disconnects, so
  the model stops generating for it;
- replaces a stream's `error` event with one that carries the error type, message, status
  and request id, then sends `end` and closes the response properly.

It is a raw ASGI middleware rather than a Starlette `BaseHTTPMiddleware`, so streaming
responses and the client disconnect signal pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from langserve.lzstring import LZString
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import describe_exception, describe_validation_errors, error_response, request_id_of
from app.observability import current_tracker

logger = logging.getLogger(__name__)

# Client config keys we accept. RemoteRunnable always sends the first three. Only
# `configurable` reaches the chain (LangServe `config_keys`); tags, metadata and
# recursion_limit are accepted so RemoteRunnable works, then dropped by LangServe.
ALLOWED_CONFIG_KEYS = ("configurable", "metadata", "recursion_limit", "tags")

_ENDPOINT = re.compile(
    r"^/(?P<chain>[a-z_]+)(?:/c/(?P<config_hash>[^/]+))?"
    r"/(?P<endpoint>invoke|batch|stream|stream_log|stream_events)/?$"
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
        max_labels: int = 100,
    ) -> None:
        self.app = app
        self.input_models = dict(input_models)
        self.configurable = {key: list(values) for key, values in configurable.items()}
        self.max_body_bytes = max_body_bytes
        self.max_text_chars = max_text_chars
        self.max_batch_items = max_batch_items
        self.max_labels = max_labels

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
            if match["config_hash"]:
                self._check_config(_decode_config_hash(match["config_hash"]), "config hash")
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

        endpoint = match["endpoint"]
        if endpoint in ("invoke", "batch"):
            await self._run_cancellable(scope, body, receive, send)
        else:
            await self._run_stream(scope, body, receive, send)

    async def _run_cancellable(
        self, scope: Scope, body: bytes, receive: Receive, send: Send
    ) -> None:
        """Run the endpoint, and cancel it if the client disconnects first."""
        disconnected = asyncio.Event()

        async def app_receive() -> Message:
            if not sent_body[0]:
                sent_body[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        sent_body = [False]
        response_complete = False

        async def tracked_send(message: Message) -> None:
            nonlocal response_complete
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_complete = True

        handler = asyncio.ensure_future(self.app(scope, app_receive, tracked_send))
        watcher = asyncio.ensure_future(receive())
        done, _ = await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)

        if handler in done:
            watcher.cancel()
            handler.result()
            return

        message = watcher.result()
        if message["type"] != "http.disconnect" or response_complete:
            await handler
            return

        disconnected.set()
        handler.cancel()
        logger.info(
            "client disconnected, cancelled %s request_id=%s",
            scope["path"],
            request_id_of(Request(scope)),
        )
        with contextlib.suppress(asyncio.CancelledError):
            await handler

    async def _run_stream(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """Run a streaming endpoint, and end a failed stream with a full error event.

        LangServe yields a bare error event and re-raises, but the exception does not reach
        this middleware, so the request's RunTracker records it from inside the chain run.
        """
        tracker = current_tracker.get()
        raised_error: BaseException | None = None
        held_error = False

        async def guarded_send(message: Message) -> None:
            nonlocal held_error
            if message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                # sse-starlette sends one event per message, so this is an event's name line.
                if chunk.startswith(b"event: error\r\n"):
                    held_error = True
                if held_error:
                    return  # Replaced by the full error event below.
                message = {**message, "body": _escape_line_separators(chunk)}
            await send(message)

        try:
            await self.app(scope, _replay(body, receive), guarded_send)
        except BaseException as raised:
            if not held_error:
                raise
            raised_error = _unwrap(raised)

        if held_error:
            error = (tracker.error if tracker else None) or raised_error
            if isinstance(error, asyncio.CancelledError):
                return  # The client disconnected, so no error event can reach it.
            await self._send_stream_error(scope, send, error or RuntimeError("the stream failed"))

    async def _send_stream_error(self, scope: Scope, send: Send, error: BaseException) -> None:
        request = Request(scope)
        info = describe_exception(error)
        request_id = request_id_of(request)
        if info.error_type == "internal_error":
            logger.error("stream request_id=%s failed", request_id, exc_info=error)
        else:
            logger.warning("stream request_id=%s failed: %s", request_id, info.message)

        payload = {
            "status_code": info.status_code,
            "message": info.message,
            "error": {"type": info.error_type, "message": info.message, "request_id": request_id},
        }
        events = (
            f"event: error\r\ndata: {json.dumps(payload, ensure_ascii=False)}\r\n\r\n"
            "event: end\r\n\r\n"
        )
        with contextlib.suppress(OSError, RuntimeError):
            await send({"type": "http.response.body", "body": events.encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

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
        except RecursionError:
            raise RequestRejected(
                422, "validation_error", "the body is nested too deeply to be read"
            ) from None
        except ValueError as error:  # also JSONDecodeError, UnicodeDecodeError, huge integers
            raise RequestRejected(
                422, "validation_error", f"the body is not valid JSON: {error}"
            ) from None
        if not isinstance(body, dict):
            raise RequestRejected(422, "validation_error", "the body must be a JSON object")

        surrogate_at = _find_lone_surrogate(body)
        if surrogate_at is not None:
            raise RequestRejected(
                422,
                "validation_error",
                f"{surrogate_at}: contains an unpaired UTF-16 surrogate escape, which is not "
                "text; send valid Unicode",
            )
        if "config" in body and body["config"] is None:
            raise RequestRejected(
                422, "validation_error", "config: must be an object; omit it or send {}"
            )

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

        labels = value.get("labels")
        if isinstance(labels, list) and len(labels) > self.max_labels:
            raise RequestRejected(
                422,
                "validation_error",
                f"{location}.labels: {len(labels)} labels is more than the limit of "
                f"{self.max_labels} (CHAINSERVE_MAX_LABELS); send fewer labels",
            )

        for field, field_value in value.items():
            texts = field_value if isinstance(field_value, list) else [field_value]
            for text in texts:
                if isinstance(text, str) and len(text) > self.max_text_chars:
                    raise RequestRejected(
                        422,
                        "validation_error",
                        f"{location}.{field}: {len(text)} characters is more than the limit "
                        f"of {self.max_text_chars} (CHAINSERVE_MAX_TEXT_CHARS); shorten the text",
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


def _decode_config_hash(config_hash: str) -> Any:
    """Decode the config that the playground puts into `/c/{config_hash}/` paths."""
    try:
        decoded = LZString.decompressFromEncodedURIComponent(config_hash)
        return json.loads(decoded) if decoded else None
    except Exception:  # noqa: BLE001 - LZString raises assorted errors on bad input
        raise RequestRejected(
            422, "validation_error", "the config hash in the path is not valid"
        ) from None


_SURROGATE = re.compile("[\ud800-\udfff]")

# httpx (0.29) splits server-sent events with str.splitlines, which also breaks lines at
# these characters, so RemoteRunnable.stream fails on them. In our events they occur only
# inside JSON strings, where an escape means the same.
_LINE_SEPARATORS = (
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
    ("\u0085".encode(), b"\\u0085"),
)


def _escape_line_separators(chunk: bytes) -> bytes:
    for raw, escaped in _LINE_SEPARATORS:
        chunk = chunk.replace(raw, escaped)
    return chunk


def _find_lone_surrogate(value: Any) -> str | None:
    """Return the location of the first string or key with an unpaired surrogate, if any."""
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        location, item = pending.pop()
        prefix = f"{location}." if location else ""
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return location or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                if _SURROGATE.search(key):
                    return location or "body"
                pending.append((f"{prefix}{key}", child))
        elif isinstance(item, list):
            pending.extend((f"{prefix}{index}", child) for index, child in enumerate(item))
    return None


def _unwrap(error: BaseException) -> BaseException:
    """Return the first leaf exception of an exception group (anyio task groups raise them)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


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
