"""In-process generation engine for a local transformers model, with batching across requests.

Generation requests from all clients go into one bounded queue. A single worker thread takes
the requests that arrived within `batch_wait_ms` of the first one (at most `max_batch_size`),
left-pads them into one `model.generate` call and routes each row's tokens back to its own
request as they are produced. Label-scoring requests are grouped the same way: one forward pass
over the waiting prompts scores every candidate's first token, and one more pass over copies of
the prompts' cache scores the later tokens of longer candidates (`score_plans`).

We wrote this ourselves because no maintained library fits a CPU-first, in-process server:
transformers' continuous batching (`generate_batch`, paged attention) runs on CPU but was about
10x slower than one static padded `generate` for Gemma 3 270M on 2 cores (10.8 against 103
tokens/s for 8 prompts of 32 new tokens, transformers 5.24, torch 2.13 CPU). vLLM and TGI are
separate servers, which chainserve reaches through its OpenAI backend instead.

Per-row control lives in one stopping criterion that runs after every decode step. It appends
the row's new token, decodes the row's text, holds back any suffix that may start a stop
string, sends the rest to the request, and finishes the row on end of sequence, a stop string,
its own token limit or cancellation. A finished row only costs padding until the batch ends.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria

logger = logging.getLogger(__name__)

SCORE_BUDGET_BYTES = 512 * 1024 * 1024
"""Default memory for the cache copies and logits of one label continuation pass (bytes)."""


class EngineError(RuntimeError):
    """Base class of the errors that the engine reports to a request."""


class QueueFullError(EngineError):
    """The engine's queue already contains `max_queue_size` requests."""


class PromptTooLongError(EngineError):
    """The prompt leaves no room for output in the engine's context token limit."""


class GenerationCancelled(EngineError):
    """The request was cancelled, usually because its client disconnected."""


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings that must be equal for requests to share one `generate` call."""

    temperature: float = 0.0
    top_p: float = 1.0

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0.0


@dataclass
class GenerationEvent:
    """One message from the worker to a request: a text delta, the end, or an error."""

    text: str = ""
    done: bool = False
    error: BaseException | None = None
    finish_reason: str | None = None
    scores: list[float] | None = None
    input_tokens: int = 0
    output_tokens: int = 0


Sink = Callable[[GenerationEvent], None]


@dataclass
class _Request:
    kind: str  # "generate" or "score"
    prompt: str
    sink: Sink
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int = 1
    stop: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()
    prompt_ids: list[int] = field(default_factory=list)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)

    def group_key(self) -> tuple[Any, ...]:
        return (self.kind, self.sampling) if self.kind == "generate" else (self.kind,)


class RequestHandle:
    """A caller's reference to a submitted request: its id, and a way to cancel it."""

    def __init__(self, request: _Request, engine: Engine) -> None:
        self._request = request
        self._engine = engine

    @property
    def request_id(self) -> str:
        return self._request.request_id

    def cancel(self) -> None:
        """Stop the request's row within one decode step, or drop it from the queue."""
        if not self._request.cancelled.is_set():
            self._request.cancelled.set()
            self._engine._note_cancel(self._request)


@dataclass
class _Row:
    request: _Request
    prompt_tokens: int
    token_ids: list[int] = field(default_factory=list)
    sent_chars: int = 0
    finished: bool = False
    finish_reason: str | None = None


@dataclass
class ScorePlan:
    """The token layout of one scoring request: a shared context and one tail per candidate."""

    context: list[int]
    tails: list[list[int]]
    first_scored: list[int]  # per tail, the index of its first scored token
    prompt_tokens: int


class _RowController(StoppingCriteria):
    """Stopping criterion that also streams each row's text to its request."""

    def __init__(self, engine: Engine, rows: list[_Row]) -> None:
        self.engine = engine
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        new_tokens = input_ids[:, -1].tolist()
        done = []

        for row, token in zip(self.rows, new_tokens, strict=True):
            if not row.finished:
                self.engine._advance_row(row, token)
            done.append(row.finished)

        return cast(torch.BoolTensor, torch.tensor(done, dtype=torch.bool, device=input_ids.device))


class Engine:
    """A loaded causal language model and the worker thread that batches requests for it."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        eos_token_ids: Sequence[int],
        max_batch_size: int = 8,
        batch_wait_ms: float = 10.0,
        max_queue_size: int = 64,
        max_context_tokens: int | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be 0 or more, got {batch_wait_ms}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be at least 1, got {max_queue_size}")

        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.max_queue_size = max_queue_size
        # Positions past the model's context window give meaningless output at full cost.
        context_window = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        self.max_context_tokens = max_context_tokens or context_window

        self._pending: list[_Request] = []
        self._free_since = time.monotonic()
        self._condition = threading.Condition()
        self._closed = False
        self.active_rows = 0
        self.cancelled_total = 0
        self.batches_run = 0
        self.rows_run = 0

        self._worker = threading.Thread(target=self._run, name="chainserve-engine", daemon=True)
        self._worker.start()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def queue_depth(self) -> int:
        with self._condition:
            return len(self._pending)

    # Submission.

    def submit_generate(
        self,
        prompt: str,
        sink: Sink,
        *,
        max_new_tokens: int,
        sampling: SamplingParams,
        stop: Sequence[str] = (),
        request_id: str | None = None,
    ) -> RequestHandle:
        """Queue a text generation; `sink` receives text deltas, then one `done` event.

        Raises PromptTooLongError when the prompt reaches `max_context_tokens`, the limit of
        prompt plus output. Otherwise `max_new_tokens` is cut to the room left after the prompt.
        """
        prompt_ids = self._check_prompt_length(prompt, 0, "the prompt built from this input")
        if self.max_context_tokens is not None:
            max_new_tokens = min(max_new_tokens, self.max_context_tokens - len(prompt_ids))
        request = _Request(
            kind="generate",
            prompt=prompt,
            sink=sink,
            sampling=sampling,
            max_new_tokens=max_new_tokens,
            stop=tuple(s for s in stop if s),
            prompt_ids=prompt_ids,
        )
        return self._enqueue(request, request_id)

    def submit_score(
        self,
        prompt: str,
        candidates: Sequence[str],
        sink: Sink,
        *,
        request_id: str | None = None,
    ) -> RequestHandle:
        """Queue a scoring of candidate continuations of `prompt`.

        `sink` receives one `done` event whose `scores` are the total log-probabilities of
        the candidates' tokens, in candidate order. Raises PromptTooLongError when the prompt
        and the longest candidate do not fit in `max_context_tokens`.
        """
        if not candidates:
            raise ValueError("submit_score needs at least one candidate")
        longest = max(
            len(self.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in candidates
        )
        self._check_prompt_length(
            prompt, longest, "the prompt built from this input plus its longest label"
        )
        request = _Request(kind="score", prompt=prompt, sink=sink, candidates=tuple(candidates))
        return self._enqueue(request, request_id)

    def _check_prompt_length(self, prompt: str, extra_tokens: int, subject: str) -> list[int]:
        """Return the prompt's token ids; raise PromptTooLongError if it leaves no room.

        `subject` names the counted text in the error message.
        """
        prompt_ids: list[int] = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        prompt_tokens = len(prompt_ids)
        limit = self.max_context_tokens
        if limit is not None and prompt_tokens + extra_tokens >= limit:
            raise PromptTooLongError(
                f"{subject} is {prompt_tokens + extra_tokens} tokens, "
                f"and the local model takes fewer than {limit} "
                "(CHAINSERVE_MAX_CONTEXT_TOKENS or the model's context window); "
                "shorten the text, the instructions or the labels"
            )
        return prompt_ids

    def _enqueue(self, request: _Request, request_id: str | None) -> RequestHandle:
        if request_id:
            request.request_id = request_id

        with self._condition:
            if self._closed:
                raise EngineError("the engine is shut down")
            if len(self._pending) >= self.max_queue_size:
                raise QueueFullError(
                    f"the generation queue is full ({self.max_queue_size} requests waiting)"
                )
            self._pending.append(request)
            self._condition.notify()

        return RequestHandle(request, self)

    def _note_cancel(self, request: _Request) -> None:
        logger.info("cancelled request_id=%s", request.request_id)
        with self._condition:
            self.cancelled_total += 1
            if request in self._pending:
                self._pending.remove(request)
                request.sink(GenerationEvent(done=True, error=GenerationCancelled("cancelled")))

    def close(self) -> None:
        """Stop the worker after the running batch; queued requests get an error."""
        with self._condition:
            self._closed = True
            pending, self._pending = self._pending, []
            self._condition.notify_all()

        for request in pending:
            request.sink(GenerationEvent(done=True, error=EngineError("the engine is shut down")))

        self._worker.join(timeout=30)

    # Worker.

    def _take_batch(self) -> list[_Request] | None:
        with self._condition:
            while not self._pending and not self._closed:
                self._condition.wait()
            if self._closed:
                return None

            # Give requests that arrive close together the chance to share the batch. The wait
            # counts from when the worker became free, not only from the oldest arrival, so
            # clients whose replies the last batch just sent can join the next one.
            started_waiting = max(self._pending[0].enqueued_at, self._free_since)
            deadline = started_waiting + self.batch_wait_s
            while len(self._pending) < self.max_batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            if not self._pending:
                return []

            key = self._pending[0].group_key()
            batch: list[_Request] = []
            for request in self._pending:
                if len(batch) == self.max_batch_size:
                    break
                if request.group_key() == key and self._fits_with(batch, request):
                    batch.append(request)
            for request in batch:
                self._pending.remove(request)
            return batch

    def _fits_with(self, batch: list[_Request], request: _Request) -> bool:
        """Return whether `request` can join `batch` without any row passing the context limit.

        One `generate` call runs every row for the batch's largest `max_new_tokens`, also rows
        that have finished. So a long prompt must not share a batch with a long generation:
        models with learned position embeddings fail for the whole batch past their limit.
        """
        if self.max_context_tokens is None or request.kind != "generate" or not batch:
            return True
        rows = [*batch, request]
        new_tokens = max(r.max_new_tokens for r in rows)
        longest_prompt = max(len(r.prompt_ids) for r in rows)
        return longest_prompt + new_tokens <= self.max_context_tokens

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue

            try:
                if batch[0].kind == "score":
                    self._run_scores(batch)
                else:
                    self._run_generation(batch)
            except Exception as error:  # noqa: BLE001 - the worker must survive any batch
                logger.exception("batch of %d requests failed", len(batch))
                for request in batch:
                    request.sink(GenerationEvent(done=True, error=error))
            finally:
                with self._condition:
                    self._free_since = time.monotonic()

    def _run_generation(self, batch: list[_Request]) -> None:
        # The prompts were tokenized when they were submitted, to check their length.
        input_ids, attention_mask = _left_padded(
            [r.prompt_ids for r in batch], self.tokenizer.pad_token_id or 0, self.device
        )
        rows = [_Row(request=r, prompt_tokens=len(r.prompt_ids)) for r in batch]
        sampling = batch[0].sampling
        max_new_tokens = max(r.max_new_tokens for r in batch)

        generate_kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": sampling.do_sample,
            "stopping_criteria": [_RowController(self, rows)],
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self.eos_token_ids),
        }
        if sampling.do_sample:
            generate_kwargs["temperature"] = sampling.temperature
            generate_kwargs["top_p"] = sampling.top_p
        else:
            # Unset the sampling values a model's generation_config may carry, so greedy
            # decoding does not warn about them.
            generate_kwargs.update(temperature=None, top_p=None, top_k=None)

        with self._condition:
            self.active_rows += len(rows)
            self.batches_run += 1
            self.rows_run += len(rows)
        started = time.perf_counter()

        try:
            with torch.inference_mode():
                self.model.generate(  # type: ignore[operator]
                    input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs
                )
        except Exception as error:
            logger.exception("generation of a batch of %d rows failed", len(rows))
            for row in rows:
                self._finish_row(row, "error", error)
            return

        for row in rows:
            if not row.finished:
                # The batch hit max_new_tokens before this row's criterion ran to the end.
                self._finish_row(row, "length")

        logger.debug(
            "generated batch of %d rows in %.3f s", len(rows), time.perf_counter() - started
        )

    def _advance_row(self, row: _Row, token: int) -> None:
        request = row.request

        if request.cancelled.is_set():
            self._finish_row(row, "cancelled")
            return
        if token in self.eos_token_ids:
            self._flush_row(row, final=True)
            self._finish_row(row, "stop")
            return

        row.token_ids.append(token)
        stop_at = self._flush_row(row, final=False)
        if stop_at:
            self._finish_row(row, "stop")
        elif len(row.token_ids) >= request.max_new_tokens:
            self._flush_row(row, final=True)
            self._finish_row(row, "length")

    def _flush_row(self, row: _Row, *, final: bool) -> bool:
        """Send the row's new text; return True when a stop string ended the row."""
        text = str(self.tokenizer.decode(row.token_ids, skip_special_tokens=True))
        stops = row.request.stop
        end = len(text)
        hit_stop = False

        for stop in stops:
            index = text.find(stop, max(0, row.sent_chars - len(stop) + 1))
            if index != -1 and index < end:
                end = index
                hit_stop = True

        if not hit_stop and not final:
            # Hold back a trailing replacement character, which marks a multi-byte character
            # still incomplete, and then any text that may be the start of a stop string.
            while end > row.sent_chars and text[end - 1] == "\ufffd":
                end -= 1
            end -= _held_back_suffix(text[:end], stops)

        if end > row.sent_chars:
            row.request.sink(GenerationEvent(text=text[row.sent_chars : end]))
            row.sent_chars = end

        return hit_stop

    def _finish_row(self, row: _Row, reason: str, error: BaseException | None = None) -> None:
        if row.finished:
            return

        row.finished = True
        row.finish_reason = reason
        with self._condition:
            self.active_rows -= 1

        if reason == "cancelled":
            error = GenerationCancelled("cancelled")
        row.request.sink(
            GenerationEvent(
                done=True,
                error=error,
                finish_reason=reason,
                input_tokens=row.prompt_tokens,
                output_tokens=len(row.token_ids),
            )
        )

    def _run_scores(self, batch: list[_Request]) -> None:
        """Score every candidate of every request, computing each prompt only once.

        One forward pass over the left-padded prompts keeps their key/value cache, and the
        logits at each prompt's last token score every candidate's first token. Candidates of
        more than one token then run as one batch of continuations over copies of their
        prompt's cache. So a request costs one prompt plus its label tokens, not one prompt per
        label.
        """
        plans = [plan_scores(self.tokenizer, r.prompt, r.candidates) for r in batch]
        with self._condition:
            self.active_rows += len(batch)
            self.batches_run += 1
        try:
            totals = score_plans(self.model, self.tokenizer, plans)
        finally:
            with self._condition:
                self.active_rows -= len(batch)

        for request, plan, values in zip(batch, plans, totals, strict=True):
            if request.cancelled.is_set():
                request.sink(GenerationEvent(done=True, error=GenerationCancelled("cancelled")))
                continue
            request.sink(
                GenerationEvent(
                    done=True,
                    scores=values,
                    finish_reason="stop",
                    input_tokens=plan.prompt_tokens,
                    output_tokens=0,
                )
            )


def plan_scores(
    tokenizer: PreTrainedTokenizerBase, prompt: str, candidates: Sequence[str]
) -> ScorePlan:
    """Split the tokens of prompt + candidate into a shared context and per-candidate tails.

    A candidate can merge with the end of the prompt into other tokens, so the context is
    the longest token prefix that every candidate shares with the prompt. A candidate's
    tail may then start with prompt tokens, which are computed but not scored. Raises
    ValueError when the prompt and a candidate form a single token.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids: list[list[int]] = []
    scored_from: list[int] = []
    for candidate in candidates:
        ids = tokenizer(prompt + candidate, add_special_tokens=False)["input_ids"]
        shared = _common_prefix_length(prompt_ids, ids)
        # At least one prompt token must stay as context for the first candidate token, and
        # at least one token of the candidate must be scored.
        full_ids.append(ids)
        scored_from.append(max(1, min(shared, len(ids) - 1)))

    context_length = min(scored_from)
    for candidate, ids in zip(candidates, full_ids, strict=True):
        if len(ids) <= context_length:
            raise ValueError(
                f"the prompt and the candidate {candidate!r} form a single token, so the "
                "candidate has no context to be scored in; use a longer prompt"
            )
    return ScorePlan(
        context=prompt_ids[:context_length],
        tails=[ids[context_length:] for ids in full_ids],
        first_scored=[start - context_length for start in scored_from],
        prompt_tokens=len(prompt_ids),
    )


@torch.inference_mode()
def score_plans(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    plans: Sequence[ScorePlan],
    budget_bytes: float = SCORE_BUDGET_BYTES,
) -> list[list[float]]:
    """Return, per plan, the total log-probability of each candidate's scored tokens.

    `budget_bytes` bounds the prompt cache copies and the logits of one continuation pass.
    """
    input_ids, attention_mask = _left_padded(
        [plan.context for plan in plans], tokenizer.pad_token_id or 0, model.device
    )

    # Left padding shifts every row, so positions must count only real tokens, as
    # `generate` does. Otherwise a row's scores would depend on its batch neighbours.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
    )
    next_log_probs = torch.log_softmax(output.logits[:, -1].float(), dim=-1)

    totals = [[0.0] * len(plan.tails) for plan in plans]
    # (plan index, candidate index) of every tail longer than one token
    continued: list[tuple[int, int]] = []
    for row, plan in enumerate(plans):
        for candidate, tail in enumerate(plan.tails):
            if plan.first_scored[candidate] == 0:
                totals[row][candidate] += float(next_log_probs[row, tail[0]])
            if len(tail) > 1:
                continued.append((row, candidate))
    if not continued:
        return totals

    # Every continued tail needs its own copy of its prompt's cache and its own logits, so
    # long prompts with many multi-token labels run in chunks of rows under a memory budget.
    cache = output.cache
    row_bytes = _cache_bytes(cache) / len(plans) + _logit_bytes(model)
    chunk_rows = max(1, int(budget_bytes // row_bytes))
    for start in range(0, len(continued), chunk_rows):
        chunk = continued[start : start + chunk_rows]
        is_last = start + chunk_rows >= len(continued)
        # The continuation pass reorders and extends the cache in place, so every chunk but
        # the last works on a copy.
        chunk_cache = cache if is_last else copy.deepcopy(cache)
        _score_continuations(
            model, tokenizer, plans, chunk, totals, chunk_cache, attention_mask, budget_bytes
        )
    return totals


def _left_padded(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return token ids left-padded to the longest sequence, and their attention mask."""
    width = max(len(tokens) for tokens in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, tokens in enumerate(sequences):
        input_ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[row, width - len(tokens) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _cache_bytes(cache: Any) -> int:
    """Return the memory taken by the key and value tensors of a transformers cache."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def _score_continuations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    plans: Sequence[ScorePlan],
    continued: list[tuple[int, int]],
    totals: list[list[float]],
    cache: Any,
    context_mask: torch.Tensor,
    budget_bytes: float,
) -> None:
    """Add the scores of the tail tokens after the first, continuing from the prompt cache.

    Each continued tail becomes a right-padded row that feeds its tokens except the last
    over a copy of its prompt's cache. The padding sits after the real tokens, so under the
    causal mask it does not change their logits. The rows run in windows of positions, each
    extending the cache, so the logits of one window (rows x positions x vocabulary) stay
    under `budget_bytes`.
    """
    pad_id = tokenizer.pad_token_id or 0
    owners = [row for row, _ in continued]
    inputs = [plans[row].tails[candidate][:-1] for row, candidate in continued]
    width = max(len(tokens) for tokens in inputs)
    input_ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    tail_mask = torch.zeros((len(inputs), width), dtype=torch.long)
    for index, tokens in enumerate(inputs):
        input_ids[index, : len(tokens)] = torch.tensor(tokens)
        tail_mask[index, : len(tokens)] = 1
    input_ids = input_ids.to(model.device)
    tail_mask = tail_mask.to(model.device)

    owner_index = torch.tensor(owners, device=model.device)
    cache.reorder_cache(owner_index)
    row_context_mask = context_mask[owner_index]
    context_lengths = row_context_mask.sum(dim=1)
    window = max(1, int(budget_bytes // (len(inputs) * _logit_bytes(model))))

    for window_start in range(0, width, window):
        window_end = min(window_start + window, width)
        attention_mask = torch.cat([row_context_mask, tail_mask[:, :window_end]], dim=1)
        positions = torch.arange(window_start, window_end, device=model.device)
        output = model(
            input_ids=input_ids[:, window_start:window_end],
            attention_mask=attention_mask,
            position_ids=context_lengths[:, None] + positions,
            cache=cache,
            use_cache=True,
        )

        # One position at a time, so the float copy covers one token per row.
        for position in range(window_start, window_end):
            logits = output.logits[:, position - window_start].float()
            log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
            scored = position + 1
            for index, (row, candidate) in enumerate(continued):
                tail = plans[row].tails[candidate]
                if scored < len(tail) and scored >= plans[row].first_scored[candidate]:
                    totals[row][candidate] += float(log_probs[index, tail[scored]])


def _logit_bytes(model: PreTrainedModel) -> int:
    """Return the memory of one position's logits and their float32 copy (bytes)."""
    vocabulary = int(model.config.get_text_config().vocab_size)
    return vocabulary * (model.dtype.itemsize + 4)


def _held_back_suffix(text: str, stops: Sequence[str]) -> int:
    """Return the length of the longest end of `text` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def softmax(values: Sequence[float]) -> list[float]:
    """Return the softmax of log-probabilities, as plain floats that sum to 1."""
    peak = max(values)
    weights = [math.exp(v - peak) for v in values]
    total = sum(weights)
    return [w / total for w in weights]
