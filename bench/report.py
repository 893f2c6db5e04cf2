"""Statistics, ratios, targets, the results file, the plot and the printed table."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import PhaseResult

SYSTEMS = ("baseline", "chainserve", "limit")
SCORING_LIMIT = "limit_scoring"
"""Diagnostic system for classify only: chainserve's label scoring with no queue and no HTTP."""


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def phase_metrics(
    invoke: PhaseResult,
    stream: PhaseResult | None,
    count_tokens: Callable[[str], int] | None,
) -> dict[str, Any]:
    """Compute throughput and latency of the invoke run, and TTFT of the stream run.

    `count_tokens` is None where a system generates no tokens (chainserve's classify scores
    labels), and its token figures are then None.
    """
    ok = invoke.ok
    latencies = [record.latency_s for record in ok]
    metrics: dict[str, Any] = {
        "requests": len(invoke.records),
        "errors": len(invoke.errors),
        "error_examples": invoke.errors[:3],
        "wall_s": invoke.wall_s,
        "requests_per_s": len(ok) / invoke.wall_s if invoke.wall_s > 0 else None,
        "generated_tokens_per_s": None,
        "tokens_per_request": None,
        "latency_p50_s": _percentile(latencies, 50),
        "latency_p95_s": _percentile(latencies, 95),
    }

    if count_tokens is not None and ok:
        tokens = [
            record.tokens if record.tokens is not None else count_tokens(record.text)
            for record in ok
        ]
        metrics["generated_tokens_per_s"] = sum(tokens) / invoke.wall_s
        metrics["tokens_per_request"] = sum(tokens) / len(tokens)

    source = stream if stream is not None else invoke
    ttfts = [record.ttft_s for record in source.ok if record.ttft_s is not None]
    metrics.update(
        ttft_p50_s=_percentile(ttfts, 50),
        ttft_p95_s=_percentile(ttfts, 95),
        ttft_samples=len(ttfts),
        stream_requests=len(stream.records) if stream is not None else 0,
        stream_errors=len(stream.errors) if stream is not None else 0,
        stream_error_examples=stream.errors[:3] if stream is not None else [],
    )
    return metrics


def _find(rows: list[dict[str, Any]], system: str, workload: str, level: int) -> dict | None:
    for row in rows:
        if (row["system"], row["workload"], row["concurrency"]) == (system, workload, level):
            return row
    return None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def compute_ratios(
    rows: list[dict[str, Any]], workloads: list[str], levels: list[int]
) -> dict[str, Any]:
    """Return chainserve's throughput over the other systems' at each level, and TTFT growth."""
    ratios: dict[str, Any] = {}
    low, high = min(levels), max(levels)

    for workload in workloads:
        per_level = {}
        for level in levels:
            ours = _find(rows, "chainserve", workload, level)
            ours_rate = ours["requests_per_s"] if ours else None
            entry = {}
            for other in ("baseline", "limit", SCORING_LIMIT):
                row = _find(rows, other, workload, level)
                if row is not None:
                    entry[f"chainserve_over_{other}"] = _ratio(ours_rate, row["requests_per_s"])
            per_level[str(level)] = entry

        ttft_growth = {}
        for system in SYSTEMS:
            first = _find(rows, system, workload, low)
            last = _find(rows, system, workload, high)
            if first and last:
                ttft_growth[system] = _ratio(last["ttft_p50_s"], first["ttft_p50_s"])

        ratios[workload] = {
            "throughput": per_level,
            f"ttft_p50_c{high}_over_c{low}": ttft_growth,
        }
    return ratios


def _target(
    name: str, workload: str, value: float | None, threshold: float, at_least: bool
) -> dict[str, Any]:
    if value is None:
        return {"target": name, "workload": workload, "value": None, "passed": None}
    passed = value >= threshold if at_least else value <= threshold
    # The margin is the fraction of the threshold by which the value passed (positive) or
    # missed (negative).
    margin = (value - threshold) / threshold if at_least else (threshold - value) / threshold
    return {
        "target": name,
        "workload": workload,
        "value": value,
        "threshold": threshold,
        "passed": passed,
        "margin": margin,
    }


def evaluate_targets(
    ratios: dict[str, Any], workloads: list[str], levels: list[int]
) -> list[dict[str, Any]]:
    """Check the four goals at the highest and lowest levels, which are c=8 and c=1 by default."""
    low, high = str(min(levels)), str(max(levels))
    targets = []
    for workload in workloads:
        throughput = ratios[workload]["throughput"]
        ttft = ratios[workload][f"ttft_p50_c{high}_over_c{low}"]
        if low == high:
            # One level cannot show scaling, so every target stays unmeasured.
            throughput = {high: {}}
            ttft = {}
        targets += [
            _target(
                f"chainserve/baseline throughput at c={high} >= 3.0",
                workload,
                throughput[high].get("chainserve_over_baseline"),
                3.0,
                at_least=True,
            ),
            _target(
                f"chainserve/limit throughput at c={high} >= 0.8",
                workload,
                throughput[high].get("chainserve_over_limit"),
                0.8,
                at_least=True,
            ),
            _target(
                f"chainserve TTFT p50 c={high}/c={low} <= 1.5",
                workload,
                ttft.get("chainserve"),
                1.5,
                at_least=False,
            ),
            _target(
                f"chainserve/baseline throughput at c={low} >= 0.95",
                workload,
                throughput[low].get("chainserve_over_baseline"),
                0.95,
                at_least=True,
            ),
        ]
    return targets


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def plot_throughput(
    path: Path, rows: list[dict[str, Any]], workloads: list[str], levels: list[int], title: str
) -> None:
    """Plot requests/s against concurrency, one panel per workload, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "baseline": {"marker": "o", "color": "tab:gray"},
        "chainserve": {"marker": "s", "color": "tab:blue"},
        "limit": {"marker": "^", "color": "tab:green"},
        SCORING_LIMIT: {"marker": "v", "color": "tab:green", "linestyle": "--"},
    }
    figure, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 4.2))
    axes = np.atleast_1d(axes)

    for axis, workload in zip(axes, workloads, strict=True):
        for system, style in styles.items():
            points = [
                (level, row["requests_per_s"])
                for level in levels
                if (row := _find(rows, system, workload, level)) and row["requests_per_s"]
            ]
            if points:
                x, y = zip(*points, strict=True)
                axis.plot(x, y, label=system, **style)
        axis.set_title(workload)
        axis.set_xlabel("concurrency (closed-loop clients)")
        axis.set_ylabel("requests/s")
        axis.set_xticks(levels)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend()

    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def format_number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Return the measurements as a Markdown table."""
    lines = [
        "| workload | c | system | req/s | gen tok/s | p50 s | p95 s | TTFT p50 s | batch | err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            row["workload"],
            str(row["concurrency"]),
            row["system"],
            format_number(row["requests_per_s"], 3),
            format_number(row["generated_tokens_per_s"], 1),
            format_number(row["latency_p50_s"]),
            format_number(row["latency_p95_s"]),
            format_number(row["ttft_p50_s"]),
            format_number(row.get("mean_batch_size"), 1),
            str(row["errors"] + row.get("stream_errors", 0)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_ratios(ratios: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    """Return the ratios and the target verdicts as plain text lines."""
    lines = []
    for workload, entry in ratios.items():
        for level, values in entry["throughput"].items():
            parts = [
                f"{name.removeprefix('chainserve_over_')} {format_number(value)}"
                for name, value in values.items()
            ]
            lines.append(f"{workload} c={level}: chainserve/ " + ", ".join(parts))
        for key, values in entry.items():
            if key.startswith("ttft"):
                parts = [f"{system} {format_number(v)}" for system, v in values.items()]
                lines.append(f"{workload} {key}: " + ", ".join(parts))

    lines.append("")
    for target in targets:
        if target["passed"] is None:
            verdict = "NOT MEASURED"
        else:
            outcome = "PASS, passed" if target["passed"] else "FAIL, missed"
            verdict = f"{outcome} by {abs(target['margin']):.0%}"
        lines.append(
            f"{verdict:26} {target['workload']}: {target['target']}, "
            f"measured {format_number(target['value'])}"
        )
    return "\n".join(lines)
