"""Loading of the benchmarked model for the baseline server and the raw-generate limit."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from app.backends.loading import ensure_default_model
from app.settings import DEFAULT_LOCAL_MODEL, Settings

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_model_folder(name: str) -> Path:
    """Return the model folder for `name`, where `gemma3-270m` is chainserve's converted default."""
    if name == DEFAULT_LOCAL_MODEL:
        cache_dir = Settings(_env_file=None).cache_dir  # type: ignore[call-arg]
        return ensure_default_model(cache_dir)

    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model folder {folder} has no config.json; pass a local model folder or "
            f"{DEFAULT_LOCAL_MODEL} (the benchmark never downloads models)"
        )
    return folder


def load_plain_model(
    name: str, dtype: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Path]:
    """Load the model and tokenizer with stock `from_pretrained` calls and no other changes."""
    folder = resolve_model_folder(name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=_DTYPES[dtype])
    model.eval()
    return model, tokenizer, folder
