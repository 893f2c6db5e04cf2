"""Smoke test of `python -m bench.run` on the tiny model, so the benchmark code keeps working.

It checks that a run completes and writes its outputs, not any speed: with two requests
per level the numbers mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SYSTEMS = {"baseline", "chainserve", "limit"}
RUN_TIMEOUT_S = 180


def run_benchmark(model_dir: Path, out_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "bench.run",
        "--model", str(model_dir),
        "--dtype", "float32",
        "--torch-threads", "1",
        "--concurrency", "2",
        "--requests-per-level", "2",
        "--warmup-requests", "1",
        "--classify-tokens", "2",
        "--summarize-tokens", "4",
        "--startup-timeout", "120",
        "--request-timeout", "60",
        "--out", str(out_dir),
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the benchmark stop its server subprocesses before it exits.
        process.terminate()
        output, _ = process.communicate(timeout=60)
        raise AssertionError(
            f"bench.run timed out after {RUN_TIMEOUT_S} s:\n{output[-3000:]}"
        ) from None
    return subprocess.CompletedProcess(command, process.returncode, output, None)


def test_bench_run_writes_results_and_plot(tiny_model_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "bench"

    completed = run_benchmark(tiny_model_dir, out_dir)

    assert completed.returncode == 0, completed.stdout[-3000:]
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    rows = results["results"]
    for workload in ("classify", "summarize"):
        systems = {row["system"] for row in rows if row["workload"] == workload}
        assert SYSTEMS <= systems, f"{workload} lacks systems: {SYSTEMS - systems}"
    assert "limit_scoring" in {row["system"] for row in rows if row["workload"] == "classify"}
    for row in rows:
        assert row["errors"] == 0, row["error_examples"]
        assert row["stream_errors"] == 0, row["stream_error_examples"]
        assert row["requests"] == 2
        assert row["requests_per_s"] > 0
        assert row["ttft_p50_s"] is not None, f"{row['system']} {row['workload']} has no TTFT"

    assert len(results["targets"]) == 8
    assert set(results["ratios"]) == {"classify", "summarize"}
    plot = Path(results["plot"])
    assert plot.is_file()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "chainserve/" in completed.stdout
