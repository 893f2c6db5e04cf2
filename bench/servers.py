"""Server subprocesses: start `bench.serve` on a free loopback port, wait for it, stop it by PID."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
STOP_TIMEOUT_S = 45.0
"""Time a server gets to shut down after SIGTERM before SIGKILL. It exceeds the 30 s that
chainserve's engine waits for its running batch at shutdown."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """One `python -m bench.serve SYSTEM ...` subprocess, logging into `log_path`."""

    def __init__(self, system: str, serve_args: list[str], log_path: Path) -> None:
        self.system = system
        self.serve_args = serve_args
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> ServerProcess:
        self.port = free_port()
        command = [sys.executable, "-m", "bench.serve", self.system, "--port", str(self.port)]
        command += self.serve_args
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # A new session keeps Ctrl-C in the terminal from reaching the server directly,
            # so `stop` shuts it down in order.
            self.process = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        logger.info("started %s server pid=%d on %s", self.system, self.process.pid, self.url)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Poll `GET /ready` until it returns 200, and raise RuntimeError if the server exits
        or `timeout_s` passes first."""
        assert self.process is not None, "start() the server first"
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.system} server exited with code {self.process.returncode} "
                        f"before it was ready; log {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    if client.get(f"{self.url}/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
        raise RuntimeError(
            f"{self.system} server at {self.url} was not ready within {timeout_s:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Send SIGTERM to the server's PID, then SIGKILL if it is still running."""
        if self.process is None or self.process.poll() is not None:
            return

        pid = self.process.pid
        os.kill(pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("%s server pid=%d ignored SIGTERM; sending SIGKILL", self.system, pid)
            os.kill(pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        logger.info("stopped %s server pid=%d", self.system, pid)

    def start_and_wait(self, timeout_s: float, attempts: int = 3) -> None:
        """Start the server and wait until it is ready, on a new port if the port was taken."""
        for attempt in range(1, attempts + 1):
            self.start()
            try:
                self.wait_ready(timeout_s)
                return
            except RuntimeError:
                port_taken = "address already in use" in self.log_tail().lower()
                if not port_taken or attempt == attempts:
                    self.stop()
                    raise
                logger.warning("port %d was taken; retrying on another port", self.port)
