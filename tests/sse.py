"""Helpers that read LangServe server-sent events as a client sees them."""

from __future__ import annotations

import json
from typing import Any


def parse_sse(body: str) -> list[tuple[str, Any]]:
    """Split a text/event-stream body into (event, decoded data) pairs."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].strip())
        if data or name != "message":
            events.append((name, json.loads("\n".join(data)) if data else None))
    return events


def join_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    joined: dict[str, Any] = {}
    for chunk in chunks:
        for key, value in chunk.items():
            joined[key] = joined[key] + value if key in joined else value
    return joined
