"""Benchmark chainserve against a plain LangServe baseline and raw batched `generate`.

    python -m bench.run [--workloads classify,summarize] [--concurrency 1,4,8]
                        [--requests-per-level N] [--model PATH|gemma3-270m] [--out DIR]

Three systems serve the same prompts on the same model:

- baseline: `bench.baseline_app`, stock ChatHuggingFace over a transformers pipeline,
  served by uvicorn in a subprocess;
- chainserve: `app.server.create_app(Settings(backend="local", ...))`, served by uvicorn
  in a subprocess;
- limit: raw left-padded `model.generate` in this process, batch size = concurrency.

For each workload and concurrency level the systems take turns, in an order that rotates
from level to level, so slow drift in machine load spreads over all of them. Each HTTP
system gets a closed-loop `/invoke` run (throughput, latency), then a closed-loop `/stream`
run (time to first token). The run writes `results.json` and a throughput plot into `--out`
and prints the table, the ratios and the verdict on each target.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import platform
import signal
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import torch

from bench import report
from bench.limit import RawGenerateLimit
from bench.load import PhaseResult, run_closed_loop
from bench.servers import ServerProcess
from bench.workloads import WORKLOAD_NAMES, Workload, build_workloads, write_prompts_dir

logger = logging.getLogger("bench")

HTTP_SYSTEMS = ("baseline", "chainserve")
PACKAGES = (
    "torch",
    "transformers",
    "langchain-core",
    "langchain-huggingface",
    "langserve",
    "fastapi",
    "uvicorn",
    "httpx",
)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return sorted(set(values))


def _name_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in WORKLOAD_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"invalid workloads {text!r}; choose from {', '.join(WORKLOAD_NAMES)}"
        )
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Measure chainserve against a plain LangServe baseline and raw generate.",
    )
    parser.add_argument(
        "--workloads",
        type=_name_list,
        default=list(WORKLOAD_NAMES),
        help="Comma-separated workloads (default: classify,summarize).",
    )
    parser.add_argument(
        "--concurrency",
        type=_int_list,
        default=[1, 4, 8],
        help="Comma-separated closed-loop client counts (default: 1,4,8).",
    )
    parser.add_argument(
        "--requests-per-level",
        type=int,
        default=16,
        help="/invoke requests per system and level, rounded up to a multiple of the level "
        "(default: 16).",
    )
    parser.add_argument(
        "--stream-requests-per-level",
        type=int,
        default=None,
        help="/stream requests per system and level for TTFT, rounded up the same way; "
        "0 skips the stream runs (default: --requests-per-level).",
    )
    parser.add_argument(
        "--model",
        default="gemma3-270m",
        help="Local model folder, or gemma3-270m for chainserve's converted default.",
    )
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads of every system (default: torch's default, one per core).",
    )
    parser.add_argument(
        "--classify-tokens",
        type=int,
        default=4,
        help="New tokens the baseline and the limit generate for classify (default: 4).",
    )
    parser.add_argument(
        "--summarize-tokens",
        type=int,
        default=48,
        help="Summary length in new tokens, with stop strings off, for all systems (default: 48).",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=8, help="chainserve's max_batch_size (default: 8)."
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=10.0,
        help="chainserve's batch_wait_ms in milliseconds (default: 10, its default).",
    )
    parser.add_argument(
        "--warmup-requests",
        type=int,
        default=2,
        help="Unmeasured requests per system and workload before the first level (default: 2).",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=900.0,
        help="Client timeout of one request in seconds (default: 900).",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=900.0,
        help="Seconds a server may take to load the model and return 200 on /ready (default: 900).",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reports/benchmark"),
        help="Output folder for results.json, the plot and server logs (default: "
        "reports/benchmark).",
    )
    parser.add_argument(
        "--plot", type=Path, default=None, help="Plot path (default: OUT/throughput.png)."
    )
    args = parser.parse_args(argv)

    if args.requests_per_level < 1:
        parser.error("--requests-per-level must be at least 1")
    if args.stream_requests_per_level is None:
        args.stream_requests_per_level = args.requests_per_level
    if args.stream_requests_per_level < 0:
        parser.error("--stream-requests-per-level must be 0 or more")
    return args


def _round_up(count: int, level: int) -> int:
    return math.ceil(count / level) * level if count else 0


def _mean_batch_size(
    result: PhaseResult, batches_before: int | None, batches_after: int | None
) -> float | None:
    if batches_before is None or batches_after is None or batches_after == batches_before:
        return None
    return len(result.records) / (batches_after - batches_before)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


class Benchmark:
    """One benchmark run: the servers, the in-process limit and the measurements so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.prompts_dir = write_prompts_dir(self.out / "prompts", args.summarize_tokens)
        self.workloads = build_workloads(
            args.workloads,
            classify_tokens=args.classify_tokens,
            summarize_tokens=args.summarize_tokens,
        )
        self.levels: list[int] = args.concurrency
        self.rows: list[dict[str, Any]] = []
        self.servers = {system: self._server(system) for system in HTTP_SYSTEMS}
        self.limit: RawGenerateLimit | None = None
        self.started_at = time.time()
        self.environment: dict[str, Any] = {
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()),
            "torch_default_threads": torch.get_num_threads(),
            "versions": _versions(),
        }

    def _server(self, system: str) -> ServerProcess:
        args = self.args
        serve_args = [
            "--model", args.model,
            "--dtype", args.dtype,
            "--prompts-dir", str(self.prompts_dir),
            "--max-batch-size", str(args.max_batch_size),
            "--batch-wait-ms", str(args.batch_wait_ms),
            "--generation-timeout", str(args.request_timeout),
            "--classify-tokens", str(args.classify_tokens),
            "--summarize-tokens", str(args.summarize_tokens),
        ]  # fmt: skip
        if args.torch_threads:
            serve_args += ["--torch-threads", str(args.torch_threads)]
        return ServerProcess(system, serve_args, self.out / f"{system}-server.log")

    # Set-up and tear-down.

    def start(self) -> None:
        """Start both servers, load the limit's model meanwhile, then wait for the servers."""
        if self.args.torch_threads:
            torch.set_num_threads(self.args.torch_threads)
        for server in self.servers.values():
            server.start()

        logger.info("loading %s in this process for the raw-generate limit", self.args.model)
        self.limit = RawGenerateLimit(self.args.model, self.args.dtype, self.prompts_dir)

        for server in self.servers.values():
            try:
                server.wait_ready(self.args.startup_timeout)
            except RuntimeError:
                if "address already in use" not in server.log_tail().lower():
                    raise
                server.start_and_wait(self.args.startup_timeout)
            logger.info("%s server is ready at %s", server.system, server.url)

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    # Measurements.

    def _engine_batches(self) -> int | None:
        url = f"{self.servers['chainserve'].url}/bench/engine"
        try:
            counters = httpx.get(url, timeout=10).json()
        except (httpx.HTTPError, ValueError):
            return None
        return counters.get("batches_run")

    def _http_phase(
        self, system: str, workload: Workload, level: int, endpoint: str, total: int
    ) -> PhaseResult:
        return asyncio.run(
            run_closed_loop(
                self.servers[system].url,
                workload,
                endpoint=endpoint,
                concurrency=level,
                total=total,
                timeout_s=self.args.request_timeout,
            )
        )

    def warm_up(self, workload: Workload) -> None:
        count = self.args.warmup_requests
        if count < 1:
            return
        for system in HTTP_SYSTEMS:
            result = self._http_phase(system, workload, 1, "invoke", count)
            if result.errors:
                raise RuntimeError(
                    f"{system} failed its {workload.name} warm-up requests: {result.errors[:2]}. "
                    f"See the server log {self.servers[system].log_path}"
                )
        assert self.limit is not None
        self.limit.generate(workload, 1, 1)

    def measure_http(self, system: str, workload: Workload, level: int) -> dict[str, Any]:
        total = _round_up(self.args.requests_per_level, level)
        stream_total = _round_up(self.args.stream_requests_per_level, level)
        is_chainserve = system == "chainserve"

        batches_before = self._engine_batches() if is_chainserve else None
        invoke = self._http_phase(system, workload, level, "invoke", total)
        batches_after = self._engine_batches() if is_chainserve else None
        stream: PhaseResult | None = None
        if stream_total:
            stream = self._http_phase(system, workload, level, "stream", stream_total)
        batches_at_end = self._engine_batches() if is_chainserve else None

        assert self.limit is not None
        # chainserve's classify scores labels and generates no tokens.
        scored = is_chainserve and workload.name == "classify"
        metrics = report.phase_metrics(invoke, stream, None if scored else self.limit.count_tokens)
        metrics["mean_batch_size"] = _mean_batch_size(invoke, batches_before, batches_after)
        if stream is not None:
            metrics["stream_mean_batch_size"] = _mean_batch_size(
                stream, batches_after, batches_at_end
            )
        return metrics

    def measure_limit(self, system: str, workload: Workload, level: int) -> dict[str, Any]:
        assert self.limit is not None
        total = _round_up(self.args.requests_per_level, level)
        if system == report.SCORING_LIMIT:
            result = self.limit.score_labels(workload, level, total)
            metrics = report.phase_metrics(result, None, None)
        else:
            result = self.limit.generate(workload, level, total)
            metrics = report.phase_metrics(result, None, self.limit.count_tokens)
        metrics["mean_batch_size"] = float(level)
        return metrics

    def measure(self, system: str, workload: Workload, level: int) -> None:
        load_average = os.getloadavg()[0]
        started = time.perf_counter()
        if system in HTTP_SYSTEMS:
            metrics = self.measure_http(system, workload, level)
        else:
            metrics = self.measure_limit(system, workload, level)

        row: dict[str, Any] = {"system": system, "workload": workload.name, "concurrency": level}
        row.update(metrics)
        row["load_average_1m_at_start"] = load_average
        row["measured_s"] = time.perf_counter() - started
        self.rows.append(row)
        logger.info(
            "%-10s %-9s c=%d: %s req/s, p50 %s s, TTFT p50 %s s, %d errors (%.0f s, load %.1f)",
            workload.name,
            system,
            level,
            report.format_number(row["requests_per_s"], 3),
            report.format_number(row["latency_p50_s"]),
            report.format_number(row["ttft_p50_s"]),
            row["errors"] + row["stream_errors"],
            row["measured_s"],
            load_average,
        )
        self.save()

    def run(self) -> None:
        for workload in self.workloads:
            logger.info("warming up %s", workload.name)
            self.warm_up(workload)
            systems = ["baseline", "chainserve", "limit"]
            if workload.name == "classify":
                systems.append(report.SCORING_LIMIT)
            for index, level in enumerate(self.levels):
                shift = index % len(systems)
                for system in systems[shift:] + systems[:shift]:
                    self.measure(system, workload, level)

    # Output.

    def results(self) -> dict[str, Any]:
        names = [workload.name for workload in self.workloads]
        done = sorted({row["workload"] for row in self.rows}, key=names.index)
        ratios = report.compute_ratios(self.rows, done, self.levels)
        environment = dict(self.environment, load_average_at_end=list(os.getloadavg()))
        return {
            "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
            "config": {
                key: (str(value) if isinstance(value, Path) else value)
                for key, value in vars(self.args).items()
            },
            "environment": environment,
            "server_pids": {system: server.pid for system, server in self.servers.items()},
            "started_at_unix": self.started_at,
            "duration_s": time.time() - self.started_at,
            "results": self.rows,
            "ratios": ratios,
            "targets": report.evaluate_targets(ratios, done, self.levels),
        }

    def save(self) -> dict[str, Any]:
        results = self.results()
        report.write_results(self.out / "results.json", results)
        return results


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and return the results that it writes to OUT/results.json."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # httpx logs every request at INFO, thousands of lines per run.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # SIGTERM takes the same path as Ctrl-C, so the servers are stopped either way. Python
    # accepts signal handlers only in the main thread.
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous_handler = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    benchmark = Benchmark(args)
    try:
        benchmark.start()
        benchmark.run()
    finally:
        benchmark.stop()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
        # Partial results still get written on failure or Ctrl-C.
        results = benchmark.save()

    plot_path = args.plot or args.out / "throughput.png"
    load = results["environment"]
    title = (
        f"{args.model} ({args.dtype}), {load['cpu_count']} CPUs, load average "
        f"{load['load_average_at_start'][0]:.1f} at start, {load['load_average_at_end'][0]:.1f} "
        f"at end"
    )
    report.plot_throughput(plot_path, benchmark.rows, args.workloads, benchmark.levels, title)
    results["plot"] = str(plot_path)
    report.write_results(args.out / "results.json", results)

    print(report.format_table(benchmark.rows))
    print()
    print(report.format_ratios(results["ratios"], results["targets"]))
    print(f"\nresults: {args.out / 'results.json'}\nplot: {plot_path}")
    return results


if __name__ == "__main__":
    main()
