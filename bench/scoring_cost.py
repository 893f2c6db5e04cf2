"""Time label scoring with one sequence per label against one pass over the prompts alone.

    python -m bench.scoring_cost [--model gemma3-270m] [--batch 8] [--repeats 3]

chainserve's engine scores classify labels with one sequence per (prompt, label) pair. When
every label is a single token after the prompt, one forward pass over the prompts gives the
same log-probabilities from the last position. This script times both forward passes on
the benchmark's classify prompts and checks that they pick the same labels.
"""

from __future__ import annotations

import argparse
import time

import torch

from app.backends.loading import load_model
from app.settings import Settings
from bench.workloads import CLASSIFY_TEXTS, render_prompt
from chains.classify import DEFAULT_LABELS
from chains.prompts import load_prompt_file


def _forward(model, tokenizer, texts: list[str], keep: int) -> tuple[float, torch.Tensor]:
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    position_ids = (encoded["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
    started = time.perf_counter()
    with torch.inference_mode():
        logits = model(**encoded, position_ids=position_ids, logits_to_keep=keep).logits
    return time.perf_counter() - started, logits.float()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scoring_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="gemma3-270m", help="Model folder or gemma3-270m.")
    parser.add_argument("--batch", type=int, default=8, help="Classify requests per batch.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed repetitions.")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads.")
    args = parser.parse_args(argv)

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    cache_dir = Settings(_env_file=None).cache_dir  # type: ignore[call-arg]
    loaded = load_model(args.model, cache_dir=cache_dir, device="cpu", dtype="bfloat16")
    tokenizer, model = loaded.tokenizer, loaded.model

    prompt_file = load_prompt_file("classify")
    texts = [CLASSIFY_TEXTS[index % len(CLASSIFY_TEXTS)] for index in range(args.batch)]
    prompts = [render_prompt(prompt_file, "classify", text, tokenizer) for text in texts]
    labels = [" " + label for label in DEFAULT_LABELS]
    label_ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
    if any(len(ids) != 1 for ids in label_ids):
        raise SystemExit(f"the labels {labels} are not single tokens for this tokenizer")

    pairs = [prompt + label for prompt in prompts for label in labels]
    for repeat in range(1, args.repeats + 1):
        pair_seconds, pair_logits = _forward(model, tokenizer, pairs, keep=2)
        prompt_seconds, prompt_logits = _forward(model, tokenizer, prompts, keep=1)
        print(
            f"repeat {repeat}: {len(pairs)} label sequences {pair_seconds:.2f} s, "
            f"{len(prompts)} prompts alone {prompt_seconds:.2f} s"
        )

    # Each label sequence's score is its label token's log-probability after the prompt.
    ids = torch.tensor([ids[0] for ids in label_ids])
    pair_scores = torch.log_softmax(pair_logits[:, 0], dim=-1)
    per_pair = pair_scores[torch.arange(len(pairs)), ids.repeat(len(prompts))]
    pair_choice = per_pair.view(len(prompts), len(labels)).argmax(dim=1)
    prompt_choice = torch.log_softmax(prompt_logits[:, -1], dim=-1)[:, ids].argmax(dim=1)
    print(f"same labels from both passes: {bool((pair_choice == prompt_choice).all())}")


if __name__ == "__main__":
    main()
