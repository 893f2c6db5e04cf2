"""Closed-loop HTTP load: `concurrency` clients, each sending its next request when one ends.

`/invoke` requests measure throughput and latency. `/stream` requests measure time to first
token (TTFT): the time until the first `event: data` whose payload is not empty, because a
LangServe chain may send an empty chunk before the model produces any text.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.workloads import Workload

TokenCounter = Callable[[str], int]


@dataclass
class RequestRecord:
    """One finished request: its latency, TTFT (stream only), output text or error."""

    latency_s: float
    ttft_s: float | None = None
    text: str = ""
    error: str | None = None
    tokens: int | None = None
    """Generated tokens where the system reports them exactly; else counted from `text`."""


@dataclass
class PhaseResult:
    """The requests of one closed-loop run, and its wall time from first send to last reply."""

    records: list[RequestRecord] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> list[RequestRecord]:
        return [record for record in self.records if record.error is None]

    @property
    def errors(self) -> list[str]:
        return [record.error for record in self.records if record.error is not None]


def output_text(output: Any) -> str:
    """Return the generated text in a chain output: a string, or a dict's text field.

    The baseline's classify output carries the raw generated text in `text`, so its token
    count is the generated tokens, not the label's.
    """
    if isinstance(output, str):
        return output
    if isinstance(output, dict):
        for key in ("text", "summary", "label"):
            value = output.get(key)
            if isinstance(value, str):
                return value
    return ""


async def _invoke(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> RequestRecord:
    started = time.perf_counter()
    response = await client.post(url, json={"input": payload})
    latency = time.perf_counter() - started
    if response.status_code != 200:
        return RequestRecord(latency, error=f"HTTP {response.status_code}: {response.text[:200]}")
    return RequestRecord(latency, text=output_text(response.json().get("output")))


def _is_empty(data: Any) -> bool:
    return data in ("", None) or data == {} or (isinstance(data, dict) and not any(data.values()))


def _append_chunk(parts: list[str], data: Any) -> None:
    if isinstance(data, str):
        parts.append(data)
    elif isinstance(data, dict):
        parts.append(output_text(data))


async def _stream(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> RequestRecord:
    started = time.perf_counter()
    ttft: float | None = None
    parts: list[str] = []
    event = ""

    async with client.stream("POST", url, json={"input": payload}) as response:
        if response.status_code != 200:
            body = (await response.aread()).decode("utf-8", errors="replace")
            latency = time.perf_counter() - started
            return RequestRecord(latency, error=f"HTTP {response.status_code}: {body[:200]}")

        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[len("event:") :].strip()
            elif line.startswith("data:") and event in ("data", "error"):
                data = json.loads(line[len("data:") :].strip() or "null")
                if event == "error":
                    latency = time.perf_counter() - started
                    return RequestRecord(latency, error=f"stream error event: {data}")
                if ttft is None and not _is_empty(data):
                    ttft = time.perf_counter() - started
                _append_chunk(parts, data)

    latency = time.perf_counter() - started
    return RequestRecord(latency, ttft_s=ttft, text="".join(parts))


async def run_closed_loop(
    base_url: str,
    workload: Workload,
    *,
    endpoint: str,
    concurrency: int,
    total: int,
    timeout_s: float,
) -> PhaseResult:
    """Send `total` requests to `/{workload}/{endpoint}` from `concurrency` clients in a loop."""
    if endpoint not in ("invoke", "stream"):
        raise ValueError(f"endpoint must be invoke or stream, got {endpoint!r}")

    url = f"{base_url}/{workload.name}/{endpoint}"
    send = _invoke if endpoint == "invoke" else _stream
    indexes = itertools.count()
    result = PhaseResult()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def client_loop() -> None:
            while (index := next(indexes)) < total:
                started = time.perf_counter()
                try:
                    record = await send(client, url, workload.request_input(index))
                except httpx.HTTPError as error:
                    latency = time.perf_counter() - started
                    record = RequestRecord(latency, error=f"{type(error).__name__}: {error}")
                result.records.append(record)

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - started

    return result
