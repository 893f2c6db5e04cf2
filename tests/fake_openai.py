"""A loopback server that speaks the OpenAI chat-completions wire format, for tests.

`FakeOpenAI` runs a FastAPI app under uvicorn in a background thread, bound to 127.0.0.1 on a
free port, so tests can drive the real `langchain-openai` client against it:

    with FakeOpenAI(responder=lambda body: "你好，世界") as server:
        model = ChatOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        assert model.invoke("hi").content == "你好，世界"
        assert server.requests[0]["messages"][0]["content"] == "hi"

`POST /v1/chat/completions` returns a `chat.completion` object. With `"stream": true` it sends
server-sent events instead: one `chat.completion.chunk` per piece of the reply, a chunk with the
finish reason, a usage chunk when `stream_options.include_usage` is set, then `data: [DONE]`.
It honours `stop` and `max_completion_tokens` (or the older `max_tokens`).

Token counts are not from a real tokenizer: one token is one CJK character, or one run of
other non-space characters with the whitespace before it (see `split_tokens`).

Error bodies have the shape that the `openai` SDK parses into `APIStatusError` (`message`,
`type`, `param`, `code`). The `type` and `code` values come from the SDK's type hints
(openai 3.63), not from responses of the live API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

logger = logging.getLogger(__name__)

Responder = Callable[[dict[str, Any]], str]

DEFAULT_REPLY = "Hello from the fake OpenAI server."

CUT_AFTER_CHUNKS = 2
"""Content chunks that a stream sends under `fault="cut"` before the connection closes."""

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

# Hangul, CJK ideographs, kana and full-width punctuation: each character is one token.
_CJK_CHARS = "\u1100-\u11ff\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
_TOKEN = re.compile(f"[{_CJK_CHARS}]|\\s*[^\\s{_CJK_CHARS}]+|\\s+")

# Error `code` per HTTP status; other statuses send `"code": null`.
_ERROR_CODES = {429: "rate_limit_exceeded", 500: "server_error"}


def default_responder(request_json: dict[str, Any]) -> str:
    """Return DEFAULT_REPLY for every request."""
    return DEFAULT_REPLY


def split_tokens(text: str) -> list[str]:
    """Split text into the pieces that the server streams and counts as tokens.

    Every CJK character is its own piece, a run of other non-space characters carries the
    whitespace before it, and whitespace before a CJK character or at the end is a piece of
    its own. Joining the pieces gives back `text` exactly.
    """
    return _TOKEN.findall(text)


def message_text(content: Any) -> str:
    """Return the text of a message `content`: a string, or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def cut_at_stop(text: str, stop: str | list[str] | None) -> str:
    """Return `text` up to the earliest occurrence of any stop string."""
    if stop is None:
        return text
    stops = [stop] if isinstance(stop, str) else stop

    end = len(text)
    for value in stops:
        index = text.find(value) if value else -1
        if index != -1:
            end = min(end, index)
    return text[:end]


@dataclass(frozen=True)
class Fault:
    """A parsed `fault` setting: how the server misbehaves on every request."""

    kind: str
    status: int = 0
    seconds: float = 0.0


def parse_fault(value: str) -> Fault:
    """Parse `status:CODE`, `slow:SECONDS` or `cut`; raise ValueError for anything else."""
    kind, _, argument = value.partition(":")
    try:
        if kind == "status":
            status = int(argument)
            if not 400 <= status <= 599:
                raise ValueError(f"status must be between 400 and 599, got {status}")
            return Fault(kind=kind, status=status)
        if kind == "slow":
            seconds = float(argument)
            if seconds < 0:
                raise ValueError(f"seconds must be 0 or more, got {seconds}")
            return Fault(kind=kind, seconds=seconds)
    except ValueError as error:
        raise ValueError(f"invalid fault {value!r}: {error}") from error
    if value == "cut":
        return Fault(kind="cut")
    raise ValueError(f"unknown fault {value!r}; use 'status:CODE', 'slow:SECONDS', 'cut' or None")


class StreamCut(Exception):
    """Raised inside a response body to close the connection mid-response on purpose."""


class _DropStreamCut(logging.Filter):
    """Drop uvicorn's error record for a deliberate StreamCut, which is not a server error."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BaseExceptionGroup):
            return not error.subgroup(StreamCut)
        return not isinstance(error, StreamCut)


def _install_log_filter() -> None:
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropStreamCut) for f in uvicorn_errors.filters):
        uvicorn_errors.addFilter(_DropStreamCut())


def error_response(status: int, message: str) -> JSONResponse:
    """Build an OpenAI-style error response."""
    error_type = "server_error" if status >= 500 else "invalid_request_error"
    code = _ERROR_CODES.get(status)
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def sse_event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


class FakeOpenAI:
    """An OpenAI chat-completions server on 127.0.0.1, run by uvicorn in a daemon thread.

    `requests` contains every request body received, parsed from JSON, in arrival order.
    Set `fault` at any time to make the following requests misbehave, and to None to stop:

    - `"status:429"` responds with that HTTP status and an OpenAI-style error body.
    - `"slow:1.5"` waits that many seconds before responding, or until the client disconnects.
    - `"cut"` closes the connection mid-response. A stream ends after CUT_AFTER_CHUNKS content
      chunks without `[DONE]`, and a plain response after half of its JSON body.
    """

    def __init__(self, responder: Responder = default_responder) -> None:
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self._fault: Fault | None = None
        self._fault_text: str | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self.app = self._build_app()

    @property
    def fault(self) -> str | None:
        return self._fault_text

    @fault.setter
    def fault(self, value: str | None) -> None:
        self._fault = None if value is None else parse_fault(value)
        self._fault_text = value

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("the fake OpenAI server is not running; call start() first")
        return f"http://127.0.0.1:{self._port}/v1"

    # Lifecycle.

    def start(self) -> str:
        """Start serving on a free loopback port; return the base URL, ending in /v1."""
        if self._thread is not None:
            raise RuntimeError("the fake OpenAI server is already running")
        _install_log_filter()

        # Bind here rather than in uvicorn, so the port is known before the thread starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

        # log_config=None keeps uvicorn from reconfiguring the test process's logging.
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fake-openai", daemon=True
        )
        thread.start()

        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise RuntimeError(
                    f"the fake OpenAI server failed to start on 127.0.0.1:{port} "
                    f"within {START_TIMEOUT_S:g} s"
                )
            time.sleep(0.01)

        self._server, self._thread, self._port = server, thread, port
        logger.info("fake OpenAI server started at %s", self.base_url)
        return self.base_url

    def stop(self) -> None:
        """Stop the server and wait for its thread; open responses get at most 1 s to end."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            logger.warning("the fake OpenAI server thread did not stop within %g s", STOP_TIMEOUT_S)
        logger.info("fake OpenAI server at %s stopped", self.base_url)
        self._server, self._thread, self._port = None, None, None

    def __enter__(self) -> FakeOpenAI:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # HTTP.

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="fake OpenAI")

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            return await self._chat_completions(request)

        return app

    async def _chat_completions(self, request: Request) -> Response:
        try:
            body = await request.json()
        except json.JSONDecodeError as error:
            logger.warning("fake OpenAI server rejected a request: invalid JSON: %s", error)
            return error_response(400, f"the request body is not valid JSON: {error}")
        if not isinstance(body, dict):
            logger.warning("fake OpenAI server rejected a request: body is not an object")
            return error_response(400, "the request body must be a JSON object")
        self.requests.append(body)

        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            logger.warning("fake OpenAI server rejected a request: 'messages' is %r", messages)
            return error_response(400, "'messages' must be a non-empty array")

        fault = self._fault
        if fault is not None:
            logger.info("fake OpenAI server applies fault %r", self._fault_text)
        if fault is not None and fault.kind == "status":
            return error_response(fault.status, f"injected fault: HTTP {fault.status}")
        if fault is not None and fault.kind == "slow":
            await self._wait_unless_abandoned(request, fault.seconds)
        cut = fault is not None and fault.kind == "cut"

        completion = Completion.from_request(body, self.responder(body))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = completion.stream_events(include_usage=include_usage, cut=cut)
            return StreamingResponse(events, media_type="text/event-stream")
        if cut:
            return StreamingResponse(completion.cut_body(), media_type="application/json")
        return JSONResponse(completion.response_body())

    async def _wait_unless_abandoned(self, request: Request, seconds: float) -> None:
        """Sleep `seconds`, but return early when the client disconnects or the server stops."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                return
            if self._server is not None and self._server.should_exit:
                return
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


@dataclass
class Completion:
    """One reply, already cut at stop strings and the token limit, in both wire formats."""

    id: str
    created: int
    model: str
    pieces: list[str]
    finish_reason: str
    prompt_tokens: int

    @classmethod
    def from_request(cls, body: dict[str, Any], reply: str) -> Completion:
        pieces = split_tokens(cut_at_stop(reply, body.get("stop")))
        finish_reason = "stop"

        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and len(pieces) > limit:
            pieces = pieces[:limit]
            finish_reason = "length"

        prompt_tokens = sum(
            len(split_tokens(message_text(message.get("content"))))
            for message in body.get("messages", [])
            if isinstance(message, dict)
        )
        return cls(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            created=int(time.time()),
            model=str(body.get("model", "fake-model")),
            pieces=pieces,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
        )

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": len(self.pieces),
            "total_tokens": self.prompt_tokens + len(self.pieces),
        }

    def response_body(self) -> dict[str, Any]:
        message = {"role": "assistant", "content": "".join(self.pieces), "refusal": None}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage(),
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }

    async def stream_events(self, *, include_usage: bool, cut: bool) -> AsyncIterator[bytes]:
        yield sse_event(self.chunk({"role": "assistant", "content": ""}))

        for index, piece in enumerate(self.pieces):
            if cut and index == CUT_AFTER_CHUNKS:
                raise StreamCut(f"injected fault: stream cut after {index} content chunks")
            yield sse_event(self.chunk({"content": piece}))
            # Yield to the event loop between chunks, as token streaming does.
            await asyncio.sleep(0)

        if cut:
            raise StreamCut(f"injected fault: stream cut after {len(self.pieces)} content chunks")
        yield sse_event(self.chunk({}, finish_reason=self.finish_reason))
        if include_usage:
            usage_chunk = self.chunk({})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = self.usage()
            yield sse_event(usage_chunk)
        yield sse_event("[DONE]")

    async def cut_body(self) -> AsyncIterator[bytes]:
        body = json.dumps(self.response_body()).encode()
        yield body[: len(body) // 2]
        raise StreamCut("injected fault: response body cut in half")
