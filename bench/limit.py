"""The limit: raw batched `model.generate` on the same rendered prompts, in-process, no HTTP.

Requests run in back-to-back batches of `concurrency` left-padded rows, so a request's
latency is its batch's time and its TTFT is the time until the first decode step of its
batch. The model and tokenizer come from chainserve's own loader, so padding side, pad token
and end-of-sequence ids equal the engine's.

For classify the limit generates `classify_tokens` tokens, as the baseline does.
`score_labels` is a second, diagnostic limit for classify: chainserve's own label scoring
(`app.backends.engine.score_plans`) called directly on each batch, with no queue and no HTTP.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from app.backends.engine import plan_scores, score_plans
from app.backends.loading import load_model
from app.settings import Settings
from bench.load import PhaseResult, RequestRecord
from bench.workloads import Workload, render_prompt
from chains.classify import DEFAULT_LABELS
from chains.prompts import load_prompt_file


class _FirstStepTimer(StoppingCriteria):
    """Stopping criterion that never stops and records when the first decode step ended."""

    def __init__(self) -> None:
        self.first_step_at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return cast(torch.BoolTensor, done)


class RawGenerateLimit:
    """The model loaded in this process, and the prompt files of the benchmark."""

    def __init__(self, model_name: str, dtype: str, prompts_dir: Path) -> None:
        cache_dir = Settings(_env_file=None).cache_dir  # type: ignore[call-arg]
        loaded = load_model(model_name, cache_dir=cache_dir, device="cpu", dtype=dtype)
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.eos_token_ids = set(loaded.eos_token_ids)
        self.prompts_dir = prompts_dir

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, workload: Workload, total: int) -> list[str]:
        prompt_file = load_prompt_file(workload.name, self.prompts_dir)
        return [
            render_prompt(prompt_file, workload.name, workload.text(index), self.tokenizer)
            for index in range(total)
        ]

    def generate(self, workload: Workload, concurrency: int, total: int) -> PhaseResult:
        """Run `total` requests as batched greedy `generate` calls of `concurrency` rows."""
        prompts = self.render(workload, total)
        result = PhaseResult()
        started = time.perf_counter()

        for start in range(0, total, concurrency):
            batch_started = time.perf_counter()
            encoded = self.tokenizer(
                prompts[start : start + concurrency],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            timer = _FirstStepTimer()
            with torch.inference_mode():
                output = self.model.generate(  # type: ignore[operator]
                    **encoded,
                    max_new_tokens=workload.max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=sorted(self.eos_token_ids),
                    stopping_criteria=StoppingCriteriaList([timer]),
                )
            latency = time.perf_counter() - batch_started
            ttft = (timer.first_step_at or time.perf_counter()) - batch_started

            new_tokens = output[:, encoded["input_ids"].shape[1] :].tolist()
            for row in new_tokens:
                generated = []
                for token in row:
                    if token in self.eos_token_ids:
                        break
                    generated.append(token)
                text = str(self.tokenizer.decode(generated, skip_special_tokens=True))
                result.records.append(
                    RequestRecord(latency, ttft_s=ttft, text=text, tokens=len(generated))
                )

        result.wall_s = time.perf_counter() - started
        return result

    def score_labels(self, workload: Workload, concurrency: int, total: int) -> PhaseResult:
        """Pick each request's label with chainserve's label scoring, one call per batch."""
        prompts = self.render(workload, total)
        labels = list(DEFAULT_LABELS)
        # chainserve puts a space before each label of a completion prompt, none after a
        # chat template's generation prompt.
        separator = "" if getattr(self.tokenizer, "chat_template", None) else " "
        result = PhaseResult()
        started = time.perf_counter()

        for start in range(0, total, concurrency):
            batch_started = time.perf_counter()
            batch = prompts[start : start + concurrency]
            chosen = self._score_batch(batch, [separator + label for label in labels])
            latency = time.perf_counter() - batch_started
            for index in chosen:
                result.records.append(
                    RequestRecord(latency, ttft_s=latency, text=labels[index], tokens=0)
                )

        result.wall_s = time.perf_counter() - started
        return result

    def _score_batch(self, prompts: list[str], candidates: list[str]) -> list[int]:
        plans = [plan_scores(self.tokenizer, prompt, candidates) for prompt in prompts]
        totals = score_plans(self.model, self.tokenizer, plans)
        return [scores.index(max(scores)) for scores in totals]
