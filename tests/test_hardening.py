"""Hardening tests: requests that plain LangServe 0.3.3 mishandles, against real servers.

Plain LangServe responds to most of these with a bare 500, an error body in another shape,
a stream that stops without its `end` event, or no check at all (API keys, body limits,
unknown config keys). The Unicode round trips also pass on plain LangServe, except for lone
surrogates and for RemoteRunnable streams of U+2028, U+2029 and U+0085.

The servers are real uvicorn servers on 127.0.0.1. Most use the openai backend pointed at
FakeOpenAI, whose responder echoes the input text back, so outputs can be compared with
inputs character for character. The engine gauge and CLI log tests use the tiny local model.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langserve import RemoteRunnable
from langserve.lzstring import LZString
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from chains import CHAIN_INPUTS
from tests.conftest import LiveServer, free_port, running_server
from tests.fake_openai import FakeOpenAI, message_text
from tests.sse import join_chunks, parse_sse

SECRET_KEY = "sk-hardening-secret-4f2a9c71"
API_KEY_1 = "k1-hardening-7d31e5"
API_KEY_2 = "k2-hardening-c08e42"
WRONG_KEY = "wrong-hardening-5b9f06"
ALL_KEYS = (SECRET_KEY, API_KEY_1, API_KEY_2, WRONG_KEY)

ALLOWED_ORIGIN = "http://app.example"
OTHER_ORIGIN = "http://evil.example"

CHAINS = ("classify", "summarize", "translate", "qa")
STREAM_ENDPOINTS = ("stream", "stream_log", "stream_events")
RUN_ENDPOINTS = ("invoke", "batch", *STREAM_ENDPOINTS)

VALID_INPUTS: dict[str, dict[str, Any]] = {
    "classify": {"text": "This product works well.", "labels": ["positive", "negative"]},
    "summarize": {"text": "The council approved a new library."},
    "translate": {"text": "你好，世界", "target_language": "English"},
    "qa": {"question": "Who approved it?", "context": "The council approved it."},
}

# Text fields that must contain more than whitespace.
TEXT_FIELDS = [
    ("classify", "text"),
    ("summarize", "text"),
    ("translate", "text"),
    ("translate", "target_language"),
    ("qa", "question"),
    ("qa", "context"),
]

# A config hash as the playground builds it: LZString of the config JSON.
CONFIG_HASH = LZString.compressToEncodedURIComponent(
    json.dumps({"configurable": {"model": "openai"}})
)


def echo_text(request_json: dict[str, Any]) -> str:
    """Return the input text of the last message, without its template label and last line.

    The prompts' human templates have the shape "Label: {text}\\nNext label:", so for
    summarize the reply equals the `text` field exactly.
    """
    content = message_text(request_json["messages"][-1].get("content"))
    _, separator, rest = content.partition(": ")
    text, _, _ = rest.rpartition("\n")
    return text if separator and text else content


def openai_settings(fake: FakeOpenAI, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "backend": "openai",
        "openai_api_key": SECRET_KEY,
        "openai_base_url": fake.base_url,
        "openai_max_retries": 0,
        "openai_timeout": 1.0,
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(responder=echo_text) as server:
        yield server


@pytest.fixture(autouse=True)
def clear_fault(fake: FakeOpenAI) -> Iterator[None]:
    fake.fault = None
    yield
    fake.fault = None


@pytest.fixture(scope="module")
def server(fake: FakeOpenAI) -> Iterator[LiveServer]:
    with running_server(openai_settings(fake)) as live:
        yield live


@pytest.fixture(scope="module")
def small_limits_server(fake: FakeOpenAI) -> Iterator[LiveServer]:
    settings = openai_settings(
        fake, max_body_bytes=4096, max_text_chars=100, max_batch_items=3, max_labels=3
    )
    with running_server(settings) as live:
        yield live


@pytest.fixture(scope="module")
def keyed_server(fake: FakeOpenAI) -> Iterator[LiveServer]:
    settings = openai_settings(fake, api_keys=[API_KEY_1, API_KEY_2], cors_origins=[ALLOWED_ORIGIN])
    # LiveServer waits for /ready by default, which returns 401 here. The openai backend
    # has nothing to load, so /health is enough.
    with running_server(settings, wait_ready=False) as live:
        yield live


@pytest.fixture(scope="module")
def public_probes_server(fake: FakeOpenAI) -> Iterator[LiveServer]:
    settings = openai_settings(fake, api_keys=[API_KEY_1], public_ready=True, public_metrics=True)
    with running_server(settings) as live:
        yield live


@pytest.fixture(scope="module")
def cors_server(fake: FakeOpenAI) -> Iterator[LiveServer]:
    with running_server(openai_settings(fake, cors_origins=[ALLOWED_ORIGIN])) as live:
        yield live


class ServerLogCollector(logging.Handler):
    """Log handler that keeps records emitted outside the main thread.

    The servers and FakeOpenAI run in other threads, while the test's own httpx client runs
    in the main thread and logs request URLs (with any `?api_key=`) that the server never
    logged, so main-thread records are left out.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.main_thread = threading.main_thread().ident

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.main_thread:
            self.records.append(record)

    def text(self) -> str:
        """Return every record as text: message, exception and extra attributes."""
        formatter = logging.Formatter()
        lines = []
        for record in self.records:
            lines.append(record.getMessage())
            if record.exc_info:
                lines.append(formatter.formatException(record.exc_info))
            lines.append(json.dumps(record.__dict__, default=str, ensure_ascii=False))
        return "\n".join(lines)


@pytest.fixture
def server_logs() -> Iterator[ServerLogCollector]:
    collector = ServerLogCollector()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    try:
        yield collector
    finally:
        root.removeHandler(collector)
        root.setLevel(previous_level)


def send(
    live: LiveServer,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> httpx.Response:
    response = httpx.request(method, live.url + path, json=body, headers=headers, timeout=timeout)
    return settle(response)


def post_raw(live: LiveServer, path: str, content: bytes, timeout: float = 30.0) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    response = httpx.post(live.url + path, content=content, headers=headers, timeout=timeout)
    return settle(response)


def settle(response: httpx.Response) -> httpx.Response:
    """Give the server thread time to log the traceback of a 500 before the test goes on.

    The server logs the traceback after it sends the response, and both traceback
    formatting and pytest's failure report parse source with the ast module. On CPython
    3.11.7, a failure report built at the same moment ended the whole session with
    "SystemError: AST constructor recursion depth mismatch".
    """
    if response.status_code == 500:
        time.sleep(0.5)
    return response


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """Check the JSON error shape and status of `response`, and return its `error` object."""
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert isinstance(error["type"], str)
    assert isinstance(error["message"], str)
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def assert_no_leak(text: str) -> None:
    assert SECRET_KEY not in text
    assert "Traceback" not in text
    assert 'File "/' not in text


def stream_events(
    live: LiveServer, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, str, list[tuple[str, Any]]]:
    """POST to a streaming endpoint and read the whole body.

    httpx raises RemoteProtocolError if the server drops the connection before the final
    empty chunk, so returning at all means the response was closed cleanly.
    """
    with httpx.stream("POST", live.url + path, json=body, headers=headers, timeout=30) as response:
        raw = response.read().decode("utf-8")
    settle(response)
    return response, raw, parse_sse(raw)


def required_fields(chain: str) -> list[str]:
    model = CHAIN_INPUTS[chain]
    return [name for name, field in model.model_fields.items() if field.is_required()]


def run_body(endpoint: str, chain_input: Any, config: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = (
        {"inputs": [chain_input]} if endpoint == "batch" else {"input": chain_input}
    )
    if config is not None:
        body["config"] = config
    return body


# /batch bodies for which LangServe 0.3.3 returns a 500.


def test_batch_inputs_object_is_422(server: LiveServer, fake: FakeOpenAI) -> None:
    before = len(fake.requests)

    response = send(server, "POST", "/summarize/batch", {"inputs": {"text": "One text."}})
    error = error_of(response, 422)

    assert error["type"] == "validation_error"
    assert error["message"].startswith("inputs:")
    assert "list" in error["message"]
    assert len(fake.requests) == before


@pytest.mark.parametrize("chain", CHAINS)
def test_batch_invalid_item_names_index(server: LiveServer, fake: FakeOpenAI, chain: str) -> None:
    field = required_fields(chain)[0]
    invalid = {key: value for key, value in VALID_INPUTS[chain].items() if key != field}
    inputs = [VALID_INPUTS[chain], VALID_INPUTS[chain], invalid]
    before = len(fake.requests)

    response = send(server, "POST", f"/{chain}/batch", {"inputs": inputs})
    error = error_of(response, 422)

    assert f"inputs.2.{field}" in error["message"]
    assert error["details"][0]["location"] == ["inputs", "2", field]
    assert len(fake.requests) == before, "the valid items must not reach the model"


def test_batch_item_not_object_names_index(server: LiveServer) -> None:
    inputs = [VALID_INPUTS["qa"], "What is this?"]

    response = send(server, "POST", "/qa/batch", {"inputs": inputs})
    error = error_of(response, 422)

    assert error["message"].startswith("inputs.1:")
    assert "question" in error["message"]
    assert "context" in error["message"]


def test_batch_config_count_mismatch_is_422(server: LiveServer) -> None:
    body = {"inputs": [VALID_INPUTS["summarize"]] * 2, "config": [{}]}

    error = error_of(send(server, "POST", "/summarize/batch", body), 422)

    assert "config" in error["message"]
    assert "1 configs for 2 inputs" in error["message"]


# Chain failures: a JSON error with a fitting status, and streams that end properly.

UPSTREAM_FAULTS = [
    ("status:500", 502, "upstream_error"),
    ("status:401", 502, "upstream_auth_error"),
    ("status:429", 503, "upstream_rate_limited"),
    ("slow:5", 504, "upstream_timeout"),
]


@pytest.mark.parametrize(("fault", "status", "error_type"), UPSTREAM_FAULTS)
def test_invoke_fault_is_json_error(
    server: LiveServer,
    fake: FakeOpenAI,
    server_logs: ServerLogCollector,
    fault: str,
    status: int,
    error_type: str,
) -> None:
    fake.fault = fault
    headers = {"X-Request-ID": f"fault-invoke-{status}"}

    response = send(
        server, "POST", "/summarize/invoke", {"input": VALID_INPUTS["summarize"]}, headers
    )
    error = error_of(response, status)

    assert error["type"] == error_type
    assert error["request_id"] == headers["X-Request-ID"]
    assert_no_leak(response.text)
    assert SECRET_KEY not in server_logs.text()
    assert headers["X-Request-ID"] in server_logs.text(), "the failure must be logged with its id"


@pytest.mark.parametrize(
    ("fault", "status", "error_type"), UPSTREAM_FAULTS[:1] + UPSTREAM_FAULTS[3:]
)
def test_batch_fault_is_json_error(
    server: LiveServer, fake: FakeOpenAI, fault: str, status: int, error_type: str
) -> None:
    fake.fault = fault

    body = {"inputs": [VALID_INPUTS["translate"], VALID_INPUTS["translate"]]}
    response = send(server, "POST", "/translate/batch", body)
    error = error_of(response, status)

    assert error["type"] == error_type
    assert_no_leak(response.text)


def test_invoke_cut_response_is_json_error(server: LiveServer, fake: FakeOpenAI) -> None:
    fake.fault = "cut"

    response = send(server, "POST", "/qa/invoke", {"input": VALID_INPUTS["qa"]})

    assert response.status_code in {500, 502}
    error = error_of(response, response.status_code)
    assert error["type"] in {"upstream_unreachable", "upstream_error", "internal_error"}
    assert_no_leak(response.text)


@pytest.mark.parametrize("endpoint", STREAM_ENDPOINTS)
@pytest.mark.parametrize(
    ("fault", "error_types"),
    [
        ("status:500", {"upstream_error"}),
        ("slow:5", {"upstream_timeout"}),
        ("cut", {"upstream_unreachable", "upstream_error", "internal_error"}),
    ],
)
def test_stream_fault_sends_error_then_end(
    server: LiveServer,
    fake: FakeOpenAI,
    server_logs: ServerLogCollector,
    endpoint: str,
    fault: str,
    error_types: set[str],
) -> None:
    fake.fault = fault
    request_id = f"fault-{endpoint}-{fault.replace(':', '-')}"
    body = {"input": VALID_INPUTS["summarize"]}

    response, raw, events = stream_events(
        server, f"/summarize/{endpoint}", body, {"X-Request-ID": request_id}
    )
    names = [name for name, _ in events]
    error = events[-2][1]["error"] if len(events) >= 2 else {}

    assert response.status_code == 200
    assert names[-2:] == ["error", "end"], names
    assert names.count("error") == 1
    assert error["type"] in error_types
    assert isinstance(error["message"], str)
    assert error["request_id"] == request_id
    assert_no_leak(raw)
    assert SECRET_KEY not in server_logs.text()


def test_stream_recovers_after_fault(server: LiveServer, fake: FakeOpenAI) -> None:
    body = {"input": VALID_INPUTS["summarize"]}
    fake.fault = "status:500"
    stream_events(server, "/summarize/stream", body)
    fake.fault = None

    _, _, events = stream_events(server, "/summarize/stream", body)
    data = [payload for name, payload in events if name == "data"]

    assert events[-1][0] == "end"
    assert join_chunks(data) == {"summary": VALID_INPUTS["summarize"]["text"]}


@pytest.mark.parametrize("endpoint", STREAM_ENDPOINTS)
def test_stream_text_with_error_marker(server: LiveServer, endpoint: str) -> None:
    # stream_log and stream_events repeat the input inside their events, so a text that
    # contains the SSE line "event: error" must not be taken for a failed stream.
    text = "Please log event: error and continue."

    _, _, events = stream_events(server, f"/summarize/{endpoint}", {"input": {"text": text}})
    names = [name for name, _ in events]

    assert "error" not in names, events[-2:]
    assert names[-1] == "end"


def test_classify_stream_label_with_error_marker(server: LiveServer) -> None:
    chain_input = {"text": "event: error", "labels": ["event: error", "fine"]}

    _, _, events = stream_events(server, "/classify/stream", {"input": chain_input})
    names = [name for name, _ in events]
    data = [payload for name, payload in events if name == "data"]

    assert "error" not in names, events[-2:]
    assert join_chunks(data)["label"] == "event: error"


# OpenAI-style message dicts as input.

MESSAGE = {"role": "user", "content": "Summarize: the council approved a library."}


@pytest.mark.parametrize("chain", CHAINS)
def test_message_list_input_is_422(server: LiveServer, fake: FakeOpenAI, chain: str) -> None:
    before = len(fake.requests)

    response = send(server, "POST", f"/{chain}/invoke", {"input": [MESSAGE]})
    error = error_of(response, 422)

    assert error["type"] == "validation_error"
    assert error["message"].startswith("input:")
    for field in required_fields(chain):
        assert field in error["message"]
    assert len(fake.requests) == before


@pytest.mark.parametrize("chain", CHAINS)
def test_message_dict_input_is_422(server: LiveServer, chain: str) -> None:
    response = send(server, "POST", f"/{chain}/invoke", {"input": MESSAGE})
    error = error_of(response, 422)

    for field in required_fields(chain):
        assert f"input.{field}" in error["message"]


@pytest.mark.parametrize("endpoint", RUN_ENDPOINTS)
def test_message_list_rejected_everywhere(server: LiveServer, endpoint: str) -> None:
    response = send(server, "POST", f"/summarize/{endpoint}", run_body(endpoint, [MESSAGE]))

    error = error_of(response, 422)

    assert "text" in error["message"]


def test_string_input_is_422(server: LiveServer) -> None:
    response = send(server, "POST", "/translate/invoke", {"input": "Translate this."})
    error = error_of(response, 422)

    assert "text" in error["message"]
    assert "target_language" in error["message"]


def test_remote_runnable_messages_get_422(server: LiveServer) -> None:
    remote = RemoteRunnable(f"{server.url}/summarize")

    with pytest.raises(httpx.HTTPStatusError) as raised:
        remote.invoke([MESSAGE])

    assert raised.value.response.status_code == 422
    assert "text" in raised.value.response.text


# Body, text and batch limits.


@pytest.mark.parametrize(
    "path",
    [
        "/summarize/invoke",
        "/summarize/batch",
        "/summarize/stream",
        "/summarize/stream_log",
        "/summarize/stream_events",
        f"/summarize/c/{CONFIG_HASH}/invoke",
    ],
)
def test_body_over_limit_is_413(
    small_limits_server: LiveServer, fake: FakeOpenAI, path: str
) -> None:
    before = len(fake.requests)
    text = "word " * 1000
    body = run_body(path.rsplit("/", 1)[-1], {"text": text})

    response = send(small_limits_server, "POST", path, body)
    error = error_of(response, 413)

    assert error["type"] == "payload_too_large"
    assert "4096 bytes" in error["message"]
    assert "CHAINSERVE_MAX_BODY_BYTES" in error["message"]
    assert len(fake.requests) == before, "the model must not be called"


def test_chunked_body_over_limit_is_413(small_limits_server: LiveServer, fake: FakeOpenAI) -> None:
    before = len(fake.requests)

    def chunks() -> Iterator[bytes]:
        yield b'{"input": {"text": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"}}'

    response = httpx.post(
        small_limits_server.url + "/summarize/invoke",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )

    assert "content-length" not in response.request.headers
    assert error_of(response, 413)["type"] == "payload_too_large"
    assert len(fake.requests) == before


def test_default_body_limit_is_413(server: LiveServer, fake: FakeOpenAI) -> None:
    before_requests = len(fake.requests)
    before = scrape(server)
    body = {"input": {"text": "a" * 1_048_576}}

    response = send(server, "POST", "/summarize/invoke", body)
    error = error_of(response, 413)
    after = scrape(server)

    assert "1048576 bytes" in error["message"]
    assert len(fake.requests) == before_requests
    assert sample(after, "chainserve_active_generations") == 0
    assert (
        sample(after, "chainserve_requests_total", route="/summarize/invoke", status="413")
        == sample(before, "chainserve_requests_total", route="/summarize/invoke", status="413") + 1
    )


def send_body_start(live: LiveServer, framing: str, body_start: bytes) -> bytes:
    """Send the headers and the start of a POST body that never ends; return the reply head.

    The socket timeout only guards against a hang: a server that waits for the rest of the
    body never replies, so the read fails.
    """
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            b"POST /summarize/invoke HTTP/1.1\r\n"
            + f"Host: {host}:{port}\r\n".encode()
            + b"Content-Type: application/json\r\n"
            + framing.encode()
            + b"\r\n"
            + body_start
        )
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = connection.recv(65536)
            if not data:
                break
            reply += data
    return reply


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_20mb_body_is_413_unread(server: LiveServer, fake: FakeOpenAI, chunked: bool) -> None:
    before = len(fake.requests)
    body_start = b'{"input": {"text": "' + b"a" * 2_000_000
    if chunked:
        # 2 MB in 64 KiB chunks, over the 1 MiB limit, and no final chunk.
        pieces = [body_start[i : i + 65536] for i in range(0, len(body_start), 65536)]
        framing = "Transfer-Encoding: chunked\r\n"
        sent = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    else:
        framing = "Content-Length: 20000024\r\n"
        sent = b""

    reply = send_body_start(server, framing, sent)

    # The 413 comes back although the body never ended, so the server did not wait for it.
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert len(fake.requests) == before
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200


@pytest.mark.parametrize(("chain", "field"), TEXT_FIELDS)
def test_text_over_limit_is_422(
    small_limits_server: LiveServer, fake: FakeOpenAI, chain: str, field: str
) -> None:
    at_limit = {**VALID_INPUTS[chain], field: "x" * 100}
    over_limit = {**VALID_INPUTS[chain], field: "x" * 101}
    before = len(fake.requests)

    rejected = send(small_limits_server, "POST", f"/{chain}/invoke", {"input": over_limit})
    error = error_of(rejected, 422)
    requests_after_rejection = len(fake.requests)
    accepted = send(small_limits_server, "POST", f"/{chain}/invoke", {"input": at_limit})

    assert f"input.{field}" in error["message"]
    assert "101 characters" in error["message"]
    assert "limit of 100" in error["message"]
    assert "CHAINSERVE_MAX_TEXT_CHARS" in error["message"]
    assert requests_after_rejection == before
    assert accepted.status_code == 200, accepted.text


def test_text_limit_counts_characters(small_limits_server: LiveServer) -> None:
    # 100 emoji are 100 characters, 400 UTF-8 bytes and 200 UTF-16 code units.
    text = "😀" * 100

    accepted = send(small_limits_server, "POST", "/summarize/invoke", {"input": {"text": text}})
    rejected = send(
        small_limits_server, "POST", "/summarize/invoke", {"input": {"text": text + "😀"}}
    )

    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["output"]["summary"] == text
    assert error_of(rejected, 422)["type"] == "validation_error"


def test_label_over_text_limit_is_422(small_limits_server: LiveServer) -> None:
    chain_input = {"text": "Fine.", "labels": ["positive", "x" * 101]}

    response = send(small_limits_server, "POST", "/classify/invoke", {"input": chain_input})
    error = error_of(response, 422)

    assert "labels" in error["message"]
    assert "limit of 100" in error["message"]


def test_labels_over_count_limit_is_422(small_limits_server: LiveServer, fake: FakeOpenAI) -> None:
    labels = ["positive", "negative", "neutral"]
    before = len(fake.requests)

    rejected = send(
        small_limits_server,
        "POST",
        "/classify/batch",
        {
            "inputs": [
                {"text": "Fine.", "labels": labels},
                {"text": "Fine.", "labels": [*labels, "mixed"]},
            ]
        },
    )
    error = error_of(rejected, 422)
    requests_after_rejection = len(fake.requests)
    accepted = send(
        small_limits_server,
        "POST",
        "/classify/invoke",
        {"input": {"text": "Fine.", "labels": labels}},
    )

    assert "inputs.1.labels" in error["message"]
    assert "4 labels" in error["message"]
    assert "limit of 3" in error["message"]
    assert "CHAINSERVE_MAX_LABELS" in error["message"]
    assert requests_after_rejection == before
    assert accepted.status_code == 200, accepted.text


def test_batch_over_item_limit_is_413(small_limits_server: LiveServer, fake: FakeOpenAI) -> None:
    item = VALID_INPUTS["summarize"]
    before = len(fake.requests)

    rejected = send(small_limits_server, "POST", "/summarize/batch", {"inputs": [item] * 4})
    error = error_of(rejected, 413)
    requests_after_rejection = len(fake.requests)
    accepted = send(small_limits_server, "POST", "/summarize/batch", {"inputs": [item] * 3})

    assert error["type"] == "payload_too_large"
    assert "4 items" in error["message"]
    assert "limit of 3" in error["message"]
    assert "CHAINSERVE_MAX_BATCH_ITEMS" in error["message"]
    assert requests_after_rejection == before
    assert accepted.status_code == 200, accepted.text


# Empty and whitespace-only text.


@pytest.mark.parametrize("value", ["", "   ", "\t\r\n", "\u3000\u00a0\u2003"])
@pytest.mark.parametrize(("chain", "field"), TEXT_FIELDS)
def test_blank_text_is_422(
    server: LiveServer, fake: FakeOpenAI, chain: str, field: str, value: str
) -> None:
    chain_input = {**VALID_INPUTS[chain], field: value}
    before = len(fake.requests)

    response = send(server, "POST", f"/{chain}/invoke", {"input": chain_input})
    error = error_of(response, 422)

    assert f"input.{field}" in error["message"]
    assert len(fake.requests) == before


@pytest.mark.parametrize("endpoint", RUN_ENDPOINTS)
def test_blank_text_is_422_everywhere(server: LiveServer, endpoint: str) -> None:
    response = send(
        server, "POST", f"/qa/{endpoint}", run_body(endpoint, {"question": " ", "context": "c"})
    )

    error = error_of(response, 422)

    assert "question" in error["message"]


def test_blank_label_is_422(server: LiveServer) -> None:
    chain_input = {"text": "Fine.", "labels": ["positive", "  "]}

    error = error_of(send(server, "POST", "/classify/invoke", {"input": chain_input}), 422)

    assert "input.labels" in error["message"]


def test_blank_summary_language_not_in_prompt(server: LiveServer, fake: FakeOpenAI) -> None:
    # A blank `language` must be rejected or treated as absent, never sent as "written in .".
    chain_input = {"text": "The council approved a new library.", "language": "   "}
    before = len(fake.requests)

    response = send(server, "POST", "/summarize/invoke", {"input": chain_input})
    system_prompts = [
        message_text(body["messages"][0]["content"]) for body in fake.requests[before:]
    ]

    assert response.status_code in {200, 422}, response.text[:300]
    for prompt in system_prompts:
        assert "written in ." not in prompt, prompt


# Client config: unknown configurable keys, run_name and callbacks.


@pytest.mark.parametrize("endpoint", RUN_ENDPOINTS)
def test_unknown_configurable_key_is_422(
    server: LiveServer, fake: FakeOpenAI, endpoint: str
) -> None:
    config = {"configurable": {"temperature": 1.5}}
    before = len(fake.requests)

    response = send(
        server,
        "POST",
        f"/summarize/{endpoint}",
        run_body(endpoint, VALID_INPUTS["summarize"], config),
    )
    error = error_of(response, 422)

    assert "configurable.temperature" in error["message"]
    assert "valid keys: model" in error["message"]
    assert len(fake.requests) == before


@pytest.mark.parametrize("endpoint", RUN_ENDPOINTS)
def test_run_name_and_callbacks_are_422(server: LiveServer, endpoint: str) -> None:
    config = {"run_name": "mine", "callbacks": [], "tags": ["ok"]}

    response = send(
        server,
        "POST",
        f"/summarize/{endpoint}",
        run_body(endpoint, VALID_INPUTS["summarize"], config),
    )
    error = error_of(response, 422)

    assert "callbacks" in error["message"]
    assert "run_name" in error["message"]
    assert "configurable, metadata, recursion_limit, tags" in error["message"]


def test_unknown_model_lists_backends(server: LiveServer) -> None:
    config = {"configurable": {"model": "gpt-9"}}

    body = run_body("invoke", VALID_INPUTS["summarize"], config)
    error = error_of(send(server, "POST", "/summarize/invoke", body), 422)

    assert "'gpt-9'" in error["message"]
    assert "openai" in error["message"]


def test_batch_config_list_names_index(server: LiveServer) -> None:
    body = {
        "inputs": [VALID_INPUTS["summarize"]] * 2,
        "config": [{}, {"configurable": {"seed": 1}}],
    }

    error = error_of(send(server, "POST", "/summarize/batch", body), 422)

    assert "config.1.configurable.seed" in error["message"]


@pytest.mark.parametrize("endpoint", ("invoke", *STREAM_ENDPOINTS))
def test_null_config_is_422(server: LiveServer, endpoint: str) -> None:
    # The OpenAPI schema declares `config` an object, and LangServe raises TypeError on null.
    body = {"input": VALID_INPUTS["summarize"], "config": None}

    response = send(server, "POST", f"/summarize/{endpoint}", body)

    assert response.status_code == 422, response.text[:300]
    assert "config" in response.json()["error"]["message"]


def test_config_hash_unknown_key_is_422(server: LiveServer) -> None:
    config_hash = LZString.compressToEncodedURIComponent(
        json.dumps({"configurable": {"temperature": 2}, "callbacks": []})
    )

    response = send(
        server, "POST", f"/summarize/c/{config_hash}/invoke", {"input": VALID_INPUTS["summarize"]}
    )
    error = error_of(response, 422)

    assert "callbacks" in error["message"]


@pytest.mark.parametrize("config_hash", ["zz", "0", "A", "%25%25"])
@pytest.mark.parametrize("endpoint", ["invoke", "stream"])
def test_malformed_config_hash_is_4xx(server: LiveServer, config_hash: str, endpoint: str) -> None:
    body = {"input": VALID_INPUTS["summarize"]}

    response = send(server, "POST", f"/summarize/c/{config_hash}/{endpoint}", body)

    assert 400 <= response.status_code < 500, response.text[:300]
    assert_no_leak(response.text)


# API keys.


def chain_routes(chain: str) -> list[tuple[str, str, Any]]:
    single = {"input": VALID_INPUTS[chain]}
    routes: list[tuple[str, str, Any]] = []
    for prefix in (f"/{chain}", f"/{chain}/c/{CONFIG_HASH}"):
        routes += [
            ("POST", f"{prefix}/invoke", single),
            ("POST", f"{prefix}/batch", {"inputs": [VALID_INPUTS[chain]]}),
            ("POST", f"{prefix}/stream", single),
            ("POST", f"{prefix}/stream_log", single),
            ("POST", f"{prefix}/stream_events", single),
            ("GET", f"{prefix}/input_schema", None),
            ("GET", f"{prefix}/output_schema", None),
            ("GET", f"{prefix}/config_schema", None),
        ]
    routes += [
        ("GET", f"/{chain}/playground/", None),
        (
            "POST",
            f"/{chain}/feedback",
            {"run_id": "00000000-0000-0000-0000-000000000000", "key": "k"},
        ),
    ]
    return routes


SERVICE_ROUTES = [
    ("GET", "/", None),
    ("GET", "/docs", None),
    ("GET", "/redoc", None),
    ("GET", "/openapi.json", None),
    ("GET", "/ready", None),
    ("GET", "/metrics", None),
    ("GET", "/no-such-route", None),
    ("POST", "/no-such-route", {}),
]
KEYED_ROUTES = SERVICE_ROUTES + [route for chain in CHAINS for route in chain_routes(chain)]


@pytest.mark.parametrize(
    ("method", "path", "body"), KEYED_ROUTES, ids=[f"{m} {p}" for m, p, _ in KEYED_ROUTES]
)
def test_route_needs_api_key(keyed_server: LiveServer, method: str, path: str, body: Any) -> None:
    missing = send(keyed_server, method, path, body)
    wrong_bearer = send(keyed_server, method, path, body, {"Authorization": f"Bearer {WRONG_KEY}"})
    wrong_header = send(keyed_server, method, path, body, {"X-API-Key": WRONG_KEY})
    bearer = send(keyed_server, method, path, body, {"Authorization": f"Bearer {API_KEY_1}"})
    header = send(keyed_server, method, path, body, {"X-API-Key": API_KEY_2})

    for rejected in (missing, wrong_bearer, wrong_header):
        error = error_of(rejected, 401)
        assert error["type"] == "unauthorized"
        assert rejected.headers["www-authenticate"] == "Bearer"
    assert "missing" in missing.json()["error"]["message"]
    assert "invalid" in wrong_bearer.json()["error"]["message"]
    assert bearer.status_code != 401
    assert header.status_code != 401
    if method == "POST" and "feedback" not in path and "no-such-route" not in path:
        assert bearer.status_code == 200, bearer.text[:300]
        assert header.status_code == 200, header.text[:300]
    for response in (missing, wrong_bearer, wrong_header, bearer, header):
        for key in ALL_KEYS:
            assert key not in response.text
            assert key not in str(response.headers)


def test_health_is_open(keyed_server: LiveServer) -> None:
    response = httpx.get(keyed_server.url + "/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_public_probes_open_without_key(public_probes_server: LiveServer) -> None:
    ready = httpx.get(public_probes_server.url + "/ready")
    metrics = httpx.get(public_probes_server.url + "/metrics")
    invoke = httpx.post(
        public_probes_server.url + "/summarize/invoke", json={"input": VALID_INPUTS["summarize"]}
    )
    index = httpx.get(public_probes_server.url + "/")

    assert ready.status_code == 200
    assert metrics.status_code == 200
    assert "chainserve_requests_total" in metrics.text
    assert invoke.status_code == 401
    assert index.status_code == 401


def test_playground_query_key_sets_cookie(keyed_server: LiveServer) -> None:
    with httpx.Client(base_url=keyed_server.url, timeout=30) as client:
        redirect = client.get("/summarize/playground/", params={"api_key": API_KEY_1})
        cookie = redirect.headers.get("set-cookie", "")
        page = client.get(redirect.headers["location"])
        asset_paths = re.findall(r'(?:src|href)="(/summarize/playground/[^"]+)"', page.text)
        assets = [client.get(path) for path in asset_paths]
        with client.stream(
            "POST", "/summarize/stream_log", json={"input": VALID_INPUTS["summarize"]}
        ) as response:
            stream_status = response.status_code
            events = parse_sse(response.read().decode("utf-8"))
        invoke = client.post("/summarize/invoke", json={"input": VALID_INPUTS["summarize"]})

    assert redirect.status_code == 303
    assert redirect.headers["location"] == "/summarize/playground/"
    assert page.status_code == 200
    assert cookie.startswith("chainserve_api_key=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert asset_paths, "the playground page links its scripts"
    assert [asset.status_code for asset in assets] == [200] * len(assets)
    assert stream_status == 200
    assert events[-1][0] == "end"
    assert "error" not in [name for name, _ in events]
    assert invoke.status_code == 200


def test_playground_wrong_query_key_is_401(keyed_server: LiveServer) -> None:
    with httpx.Client(base_url=keyed_server.url) as client:
        page = client.get("/summarize/playground/", params={"api_key": WRONG_KEY})
        invoke = client.post("/summarize/invoke", json={"input": VALID_INPUTS["summarize"]})

    assert error_of(page, 401)["type"] == "unauthorized"
    assert "set-cookie" not in page.headers
    assert invoke.status_code == 401


@pytest.mark.parametrize(("method", "path"), [("GET", "/"), ("POST", "/summarize/invoke")])
def test_query_key_outside_playground_is_401(
    keyed_server: LiveServer, method: str, path: str
) -> None:
    body = {"input": VALID_INPUTS["summarize"]} if method == "POST" else None

    response = send(keyed_server, method, f"{path}?api_key={API_KEY_1}", body)

    assert error_of(response, 401)["type"] == "unauthorized"


def test_remote_runnable_with_bearer_header(keyed_server: LiveServer) -> None:
    url = f"{keyed_server.url}/summarize"
    remote = RemoteRunnable(url, headers={"Authorization": f"Bearer {API_KEY_1}"})
    text = VALID_INPUTS["summarize"]["text"]

    invoked = remote.invoke({"text": text})
    batched = remote.batch([{"text": text}, {"text": text}])
    streamed = join_chunks(list(remote.stream({"text": text})))
    with pytest.raises(httpx.HTTPStatusError) as raised:
        RemoteRunnable(url).invoke({"text": text})

    assert invoked == {"summary": text}
    assert batched == [{"summary": text}] * 2
    assert streamed == {"summary": text}
    assert raised.value.response.status_code == 401


def test_api_keys_never_logged(keyed_server: LiveServer, server_logs: ServerLogCollector) -> None:
    body = {"input": VALID_INPUTS["summarize"]}
    send(keyed_server, "POST", "/summarize/invoke", body, {"Authorization": f"Bearer {API_KEY_1}"})
    send(keyed_server, "POST", "/summarize/stream", body, {"X-API-Key": API_KEY_2})
    send(keyed_server, "POST", "/summarize/invoke", body, {"Authorization": f"Bearer {WRONG_KEY}"})
    send(keyed_server, "POST", "/summarize/invoke", {"input": []}, {"X-API-Key": API_KEY_1})
    send(keyed_server, "GET", f"/summarize/playground/?api_key={API_KEY_1}")
    send(keyed_server, "GET", f"/summarize/playground/?api_key={WRONG_KEY}")
    with httpx.Client(base_url=keyed_server.url) as client:
        client.get("/qa/playground/", params={"api_key": API_KEY_2})
        client.post("/qa/invoke", json={"input": VALID_INPUTS["qa"]})

    logged = server_logs.text()

    assert "rejected" in logged, "the collector must see the server's records"
    assert "POST /summarize/invoke 200" in logged
    for key in ALL_KEYS:
        assert key not in logged


# CORS.

PREFLIGHT_HEADERS = {
    "Origin": ALLOWED_ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type,authorization",
}


def test_cors_closed_by_default(server: LiveServer) -> None:
    preflight = httpx.options(server.url + "/summarize/invoke", headers=PREFLIGHT_HEADERS)
    simple = httpx.post(
        server.url + "/summarize/invoke",
        json={"input": VALID_INPUTS["summarize"]},
        headers={"Origin": ALLOWED_ORIGIN},
    )

    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in simple.headers


@pytest.mark.parametrize("server_name", ["cors_server", "keyed_server"])
def test_cors_preflight_allowed_origin(request: pytest.FixtureRequest, server_name: str) -> None:
    live: LiveServer = request.getfixturevalue(server_name)

    response = httpx.options(live.url + "/summarize/invoke", headers=PREFLIGHT_HEADERS)
    allowed_headers = response.headers.get("access-control-allow-headers", "").lower()

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in allowed_headers
    assert "content-type" in allowed_headers


@pytest.mark.parametrize("server_name", ["cors_server", "keyed_server"])
def test_cors_other_origin_not_allowed(request: pytest.FixtureRequest, server_name: str) -> None:
    live: LiveServer = request.getfixturevalue(server_name)
    headers = {**PREFLIGHT_HEADERS, "Origin": OTHER_ORIGIN}

    preflight = httpx.options(live.url + "/summarize/invoke", headers=headers)
    simple = httpx.get(live.url + "/health", headers={"Origin": OTHER_ORIGIN})

    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in simple.headers


def test_cors_response_exposes_request_id(keyed_server: LiveServer) -> None:
    headers = {"Origin": ALLOWED_ORIGIN, "Authorization": f"Bearer {API_KEY_1}"}

    allowed = send(
        keyed_server, "POST", "/summarize/invoke", {"input": VALID_INPUTS["summarize"]}, headers
    )
    unauthorized = send(keyed_server, "POST", "/summarize/invoke", {}, {"Origin": ALLOWED_ORIGIN})

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "x-request-id" in allowed.headers["access-control-expose-headers"].lower()
    # A browser client can read the 401 body only if it carries the allow header too.
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


# Request ids and logs.


def test_request_id_in_header_and_error(server: LiveServer) -> None:
    headers = {"X-Request-ID": "client-id-42"}

    ok = send(server, "POST", "/summarize/invoke", {"input": VALID_INPUTS["summarize"]}, headers)
    invalid = send(server, "POST", "/summarize/invoke", {"input": {}}, headers)

    assert ok.headers["x-request-id"] == "client-id-42"
    assert error_of(invalid, 422)["request_id"] == "client-id-42"


def test_request_id_in_stream_error(server: LiveServer, fake: FakeOpenAI) -> None:
    fake.fault = "status:500"

    response, _, events = stream_events(
        server,
        "/summarize/stream",
        {"input": VALID_INPUTS["summarize"]},
        {"X-Request-ID": "sse-id-7"},
    )

    assert response.headers["x-request-id"] == "sse-id-7"
    assert events[-2][1]["error"]["request_id"] == "sse-id-7"


def test_request_id_generated_when_absent(server: LiveServer) -> None:
    first = httpx.get(server.url + "/health")
    second = send(server, "POST", "/summarize/invoke", {"input": {}})

    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", second.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert second.json()["error"]["request_id"] == second.headers["x-request-id"]


@pytest.mark.parametrize(
    ("given", "returned"),
    [
        ("abc def<script>/x\\y", "abcdefscriptxy"),
        ("a" * 100, "a" * 64),
        ("trace-id_1.2", "trace-id_1.2"),
    ],
)
def test_request_id_is_sanitized(server: LiveServer, given: str, returned: str) -> None:
    response = httpx.get(server.url + "/health", headers={"X-Request-ID": given})

    assert response.headers["x-request-id"] == returned


def test_access_log_has_request_id(server: LiveServer, server_logs: ServerLogCollector) -> None:
    headers = {"X-Request-ID": "access-log-id-3"}
    send(server, "POST", "/summarize/invoke", {"input": VALID_INPUTS["summarize"]}, headers)

    access = [r for r in server_logs.records if r.name == "chainserve.access"]
    matching = [r for r in access if getattr(r, "request_id", None) == "access-log-id-3"]

    assert len(matching) == 1, [r.getMessage() for r in access]
    record = matching[0]
    assert "POST /summarize/invoke 200" in record.getMessage()
    assert record.route == "/summarize/invoke"  # type: ignore[attr-defined]
    assert record.status == 200  # type: ignore[attr-defined]
    assert record.duration_s > 0  # type: ignore[attr-defined]


def test_cli_json_logs(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CHAINSERVE_", "OPENAI_"))
    }
    env.update(
        CHAINSERVE_LOG_FORMAT="json",
        CHAINSERVE_LOCAL_MODEL=str(tiny_model_dir),
        CHAINSERVE_DTYPE="float32",
        CHAINSERVE_DEVICE="cpu",
        CHAINSERVE_BACKEND="local",
        CHAINSERVE_MAX_NEW_TOKENS="16",
        CHAINSERVE_CACHE_DIR=str(tmp_path / "cache"),
        CHAINSERVE_API_KEYS=API_KEY_1,
        CHAINSERVE_PUBLIC_READY="true",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    stderr_path = tmp_path / "stderr.log"
    headers = {"Authorization": f"Bearer {API_KEY_1}", "X-Request-ID": "cli-json-7c2d"}

    # cwd is tmp_path, so no .env file of the checkout is read.
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            wait_until_ready(url, process)
            invoke = httpx.post(
                url + "/summarize/invoke", json={"input": {"text": "Some text."}}, headers=headers
            )
            httpx.get(url + f"/summarize/playground/?api_key={API_KEY_1}")
            httpx.post(url + "/summarize/invoke", json={}, headers={"X-API-Key": WRONG_KEY})
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)

    lines = [line for line in stderr_path.read_text("utf-8").splitlines() if line.strip()]
    records, not_json = [], []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            not_json.append(line)
    matching = [r for r in records if r.get("request_id") == "cli-json-7c2d"]
    access = [r for r in matching if r.get("logger") == "chainserve.access"]

    assert invoke.status_code == 200, invoke.text
    assert len(access) == 1, matching
    assert access[0]["route"] == "/summarize/invoke"
    assert access[0]["status"] == 200
    assert access[0]["duration_s"] > 0
    assert access[0]["level"] == "INFO"
    for key in (API_KEY_1, WRONG_KEY):
        assert key not in stderr_path.read_text("utf-8")
    assert not_json == [], "every stderr line must be a JSON log record"


def wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server at {url} was not ready within {timeout} s")


# Prometheus metrics.


def scrape(
    live: LiveServer, headers: dict[str, str] | None = None
) -> dict[tuple[str, frozenset[Any]], float]:
    text = httpx.get(live.url + "/metrics", headers=headers).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            samples[(item.name, frozenset(item.labels.items()))] = item.value
    return samples


def sample(samples: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_change_after_requests(server: LiveServer) -> None:
    before = scrape(server)
    body = {"input": VALID_INPUTS["summarize"]}
    send(server, "POST", "/summarize/invoke", body)
    stream_events(server, "/summarize/stream", body)
    send(server, "POST", "/summarize/invoke", {"input": {"text": " "}})
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    invoke_ok = {"route": "/summarize/invoke", "status": "200"}
    assert delta("chainserve_requests_total", **invoke_ok) == 1
    assert delta("chainserve_requests_total", route="/summarize/invoke", status="422") == 1
    assert delta("chainserve_requests_total", route="/summarize/stream", status="200") == 1
    assert delta("chainserve_request_duration_seconds_count", route="/summarize/invoke") == 2
    assert delta("chainserve_request_duration_seconds_sum", route="/summarize/invoke") > 0
    assert delta("chainserve_time_to_first_token_seconds_count", route="/summarize/stream") == 1
    assert delta("chainserve_generated_tokens_total", route="/summarize/invoke") > 0
    assert delta("chainserve_generated_tokens_total", route="/summarize/stream") > 0
    for gauge in (
        "chainserve_queue_depth",
        "chainserve_active_generations",
        "chainserve_model_load_seconds",
    ):
        assert (gauge, frozenset()) in after, gauge


def test_metrics_engine_gauges(tiny_server: LiveServer) -> None:
    body = {"input": {"text": "Some text to summarize, long enough to generate."}}
    peaks = {"chainserve_queue_depth": 0.0, "chainserve_active_generations": 0.0}
    done = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=60) as client:
            threads = [
                threading.Thread(
                    target=client.post,
                    args=(tiny_server.url + "/summarize/invoke",),
                    kwargs={"json": body},
                )
                for _ in range(16)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        done.set()

    before = scrape(tiny_server)
    loader = threading.Thread(target=load)
    loader.start()
    while not done.is_set():
        current = scrape(tiny_server)
        for name in peaks:
            peaks[name] = max(peaks[name], sample(current, name))
    loader.join()
    after = scrape(tiny_server)

    assert sample(after, "chainserve_model_load_seconds") > 0
    assert peaks["chainserve_active_generations"] >= 1, peaks
    assert sample(after, "chainserve_active_generations") == 0
    assert sample(after, "chainserve_queue_depth") == 0
    assert (
        sample(after, "chainserve_requests_total", route="/summarize/invoke", status="200")
        - sample(before, "chainserve_requests_total", route="/summarize/invoke", status="200")
        == 16
    )


def test_metrics_count_rejected_requests(keyed_server: LiveServer) -> None:
    key = {"X-API-Key": API_KEY_1}
    before = scrape(keyed_server, key)
    send(keyed_server, "POST", "/summarize/invoke", {"input": VALID_INPUTS["summarize"]})
    after = scrape(keyed_server, key)

    labels = {"route": "/summarize/invoke", "status": "401"}
    assert (
        sample(after, "chainserve_requests_total", **labels)
        == sample(before, "chainserve_requests_total", **labels) + 1
    )


# Unicode round trips through every client.

UNICODE_TEXTS = {
    "chinese": "今天天气很好，我们去公园散步吧。",
    "emoji_zwj": "family 👨‍👩‍👧‍👦 and rainbow flag 🏳️‍🌈 ok",
    "flags_and_skin_tones": "flags 🇯🇵🇨🇳🇺🇸 thumbs 👍🏽👋🏿",
    "combining_marks": "e\u0301 n\u0303 a\u030a Z\u0351\u0362\u0334 stay decomposed",
    "rtl_and_bidi": "مرحبا بالعالم שלום \u202eevil\u202c \u200fend",
    "control_characters": "tab\there bell\x07 esc\x1b[31m del\x7f cr\rend",
    "nul": "nul\x00inside",
    "line_separators": "line\u2028separator\u2029paragraph",
    "other_line_breaks": "next\x85line vt\x0bff\x0cfs\x1cgs\x1drs\x1eend",
    "astral_cjk": "𠀀𪚥𰻞 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "bom_and_noncharacters": "\ufeffbom \ufffe\uffff\U0010ffff end",
    "braces": "{text} {{double}} ${x} %s {0}",
}


@pytest.fixture(params=list(UNICODE_TEXTS), ids=list(UNICODE_TEXTS))
def unicode_text(request: pytest.FixtureRequest) -> str:
    return UNICODE_TEXTS[request.param]


def test_unicode_invoke_round_trip(server: LiveServer, unicode_text: str) -> None:
    # httpx sends the JSON as raw UTF-8. The batch test sends \u escapes instead.
    response = send(server, "POST", "/summarize/invoke", {"input": {"text": unicode_text}})

    assert response.status_code == 200, response.text[:300]
    assert response.json()["output"]["summary"] == unicode_text


def test_unicode_batch_round_trip(server: LiveServer, unicode_text: str) -> None:
    body = json.dumps({"inputs": [{"text": unicode_text}, {"text": "plain"}]}, ensure_ascii=True)

    response = post_raw(server, "/summarize/batch", body.encode("ascii"))

    assert response.status_code == 200, response.text[:300]
    assert [item["summary"] for item in response.json()["output"]] == [unicode_text, "plain"]


def test_unicode_stream_round_trip(server: LiveServer, unicode_text: str) -> None:
    response, _, events = stream_events(
        server, "/summarize/stream", {"input": {"text": unicode_text}}
    )
    data = [payload for name, payload in events if name == "data"]

    assert response.status_code == 200
    assert events[-1][0] == "end"
    assert join_chunks(data) == {"summary": unicode_text}


def test_unicode_remote_runnable_round_trip(server: LiveServer, unicode_text: str) -> None:
    remote = RemoteRunnable(f"{server.url}/summarize")

    invoked = remote.invoke({"text": unicode_text})
    batched = remote.batch([{"text": unicode_text}])

    assert invoked == {"summary": unicode_text}
    assert batched == [{"summary": unicode_text}]


def test_unicode_remote_runnable_stream(server: LiveServer, unicode_text: str) -> None:
    # The LangServe 0.3.3 client reads events with httpx 0.29's iter_lines, which splits
    # lines as str.splitlines does, so also at U+2028, U+2029 and U+0085.
    remote = RemoteRunnable(f"{server.url}/summarize")

    chunks = list(remote.stream({"text": unicode_text}))

    assert join_chunks(chunks) == {"summary": unicode_text}


async def test_unicode_remote_runnable_astream(server: LiveServer, unicode_text: str) -> None:
    remote = RemoteRunnable(f"{server.url}/summarize")

    chunks = [chunk async for chunk in remote.astream({"text": unicode_text})]

    assert join_chunks(chunks) == {"summary": unicode_text}


@pytest.mark.parametrize(
    "escaped", ["a\\ud800b", "\\udc00", "x\\udc00\\ud800y"], ids=["high", "low", "reversed"]
)
@pytest.mark.parametrize("endpoint", ["invoke", "batch", "stream"])
def test_lone_surrogate_is_4xx(
    server: LiveServer, fake: FakeOpenAI, endpoint: str, escaped: str
) -> None:
    chain_input = f'{{"text": "{escaped}"}}'
    if endpoint == "batch":
        raw = f'{{"inputs": [{chain_input}]}}'
    else:
        raw = f'{{"input": {chain_input}}}'
    before = len(fake.requests)

    response = post_raw(server, f"/summarize/{endpoint}", raw.encode("ascii"))

    assert 400 <= response.status_code < 500, response.text[:300]
    assert "text" in response.json()["error"]["message"]
    assert len(fake.requests) == before


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/classify/invoke", '{"input": {"text": "ok", "labels": ["a\\ud800", "b"]}}'),
        ("/summarize/invoke", '{"input": {"text": "ok", "language": "\\udfff"}}'),
        ("/translate/invoke", '{"input": {"text": "ok", "target_language": "\\ud800"}}'),
    ],
    ids=["label", "language", "target_language"],
)
def test_lone_surrogate_other_fields_is_4xx(server: LiveServer, path: str, raw: str) -> None:
    response = post_raw(server, path, raw.encode("ascii"))

    assert 400 <= response.status_code < 500, response.text[:300]


def test_escaped_surrogate_pair_round_trips(server: LiveServer) -> None:
    raw = b'{"input": {"text": "smile \\ud83d\\ude00 ok"}}'

    response = post_raw(server, "/summarize/invoke", raw)

    assert response.status_code == 200, response.text[:300]
    assert response.json()["output"]["summary"] == "smile 😀 ok"


# Malformed JSON that Python's json module rejects with errors other than JSONDecodeError.


@pytest.mark.parametrize(
    "raw",
    [
        b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"input": {"text": "a", "max_words": ' + b"9" * 5000 + b"}}",
        b'{"input": {"text": "a"}, "config": {"metadata": '
        + b'{"a":' * 5000
        + b"1"
        + b"}" * 5000
        + b"}}",
    ],
    ids=["deep_nesting", "huge_integer", "deep_config"],
)
def test_pathological_json_is_4xx(server: LiveServer, raw: bytes) -> None:
    response = post_raw(server, "/summarize/invoke", raw)

    assert 400 <= response.status_code < 500, response.text[:300]
    assert_no_leak(response.text)
