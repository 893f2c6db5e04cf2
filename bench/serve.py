"""Serve one benchmarked system under uvicorn on 127.0.0.1; `bench.run` starts this as a subprocess.

    python -m bench.serve chainserve --port 8123 --model gemma3-270m --prompts-dir DIR
    python -m bench.serve baseline --port 8124 --model gemma3-270m --prompts-dir DIR

The chainserve app is `create_app(Settings(...))` unchanged, plus one read-only route,
`GET /bench/engine`, that returns the engine's batch counters so the benchmark can report
the mean batch size.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI

logger = logging.getLogger("bench.serve")


def build_chainserve(args: argparse.Namespace) -> FastAPI:
    from app.server import create_app
    from app.settings import Settings

    settings = Settings(
        local_model=args.model,
        backend="local",
        openai_api_key=None,
        device="cpu",
        dtype=args.dtype,
        prompts_dir=args.prompts_dir,
        torch_threads=args.torch_threads,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        generation_timeout=args.generation_timeout,
        _env_file=None,  # type: ignore[call-arg]
    )
    app = create_app(settings)

    @app.get("/bench/engine")
    async def engine_counters() -> dict[str, Any]:
        engine = app.state.runtime.engine
        if engine is None:
            return {"loaded": False}
        return {
            "loaded": True,
            "batches_run": engine.batches_run,
            "rows_run": engine.rows_run,
            "cancelled_total": engine.cancelled_total,
            "torch_threads": torch.get_num_threads(),
        }

    return app


def build_baseline(args: argparse.Namespace) -> FastAPI:
    from bench.baseline_app import create_baseline_app
    from bench.models import load_plain_model

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    model, tokenizer, folder = load_plain_model(args.model, args.dtype)
    return create_baseline_app(
        model,
        tokenizer,
        model_id=str(folder),
        prompts_dir=args.prompts_dir,
        classify_tokens=args.classify_tokens,
        summarize_tokens=args.summarize_tokens,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("system", choices=("chainserve", "baseline"))
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1.")
    parser.add_argument("--model", required=True, help="Model folder, or gemma3-270m.")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--prompts-dir", type=Path, required=True, help="Prompt files folder.")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: chainserve's or torch's).",
    )
    parser.add_argument("--max-batch-size", type=int, default=8, help="chainserve only.")
    parser.add_argument(
        "--batch-wait-ms", type=float, default=10.0, help="chainserve only (milliseconds)."
    )
    parser.add_argument(
        "--generation-timeout", type=float, default=600.0, help="chainserve only (seconds)."
    )
    parser.add_argument("--classify-tokens", type=int, default=4, help="baseline only.")
    parser.add_argument("--summarize-tokens", type=int, default=48, help="baseline only.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    app = build_chainserve(args) if args.system == "chainserve" else build_baseline(args)
    # No access log for either system: it costs CPU per request and the benchmark needs none.
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
