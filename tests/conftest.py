"""Shared fixtures: a tiny local model, and real uvicorn servers on loopback ports."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app.server import create_app
from app.settings import Settings
from tests.tiny_model import build_tiny_model

# The tiny model answers every prompt with this reply: English, Chinese and full-width
# punctuation, so round trips through every client can be compared byte for byte.
TINY_REPLY = "Hello 世界，小模型 ok"

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """A uvicorn server running `create_app(settings)` in a thread on 127.0.0.1."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, wait_ready: bool = True, timeout: float = 120.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        path = "/ready" if wait_ready else "/health"
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server at {self.url} did not answer {path} within {timeout} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextmanager
def running_server(settings: Settings, wait_ready: bool = True) -> Iterator[LiveServer]:
    server = LiveServer(settings).start(wait_ready=wait_ready)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), reply=TINY_REPLY)


@pytest.fixture(scope="session")
def tiny_settings_factory(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Settings]:
    cache_dir = tmp_path_factory.mktemp("cache")

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "local_model": str(tiny_model_dir),
            "cache_dir": cache_dir,
            "device": "cpu",
            "dtype": "float32",
            "backend": "local",
            "openai_api_key": None,
            "max_new_tokens": 32,
            "_env_file": None,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def tiny_server(tiny_settings_factory: Callable[..., Settings]) -> Iterator[LiveServer]:
    with running_server(tiny_settings_factory()) as server:
        yield server


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
