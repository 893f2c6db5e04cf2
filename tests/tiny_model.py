"""Build a tiny chat model offline, for tests that need a real local model that runs fast.

`build_tiny_model` trains a byte-level BPE tokenizer on generated English and Chinese text
and initialises a 2-layer Llama with hidden size 64. It then trains the model for a few
seconds on CPU, so that greedy decoding of any ChatML prompt returns one fixed reply and then
`<|im_end|>`. The folder loads with `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained`, and nothing is downloaded.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

PAD_TOKEN = "<pad>"
END_TOKEN = "<|im_end|>"
START_TOKEN = "<|im_start|>"

logger = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

VOCAB_SIZE = 600
MAX_POSITIONS = 4096
CORPUS_BYTES = 15_000

TRAIN_STEPS = 150
# Further training rounds, run only while a held-out check prompt still gets another output.
EXTRA_STEP_ROUNDS = (100, 200)
BATCH_SIZE = 8
LEARNING_RATE = 3e-3
# Training keeps only the last 24 to 96 tokens of each prompt, because the reply depends only
# on the final `<|im_start|>assistant\n` (9 tokens) and short rows make each step cheap.
# Attention under RoPE depends on relative positions, so the model still returns the reply
# for prompts of over 1,000 tokens (2,716 was the longest tried), and `check_conversations`
# includes two of over 1,000.
MIN_TRAIN_PROMPT_TOKENS = 24
MAX_TRAIN_PROMPT_TOKENS = 96

_ENGLISH_WORDS = (
    "the a an this that these my your our their some every no one two three "
    "model server request reply token batch queue stream chain prompt answer question "
    "text label summary translation sentence word number document file folder test "
    "train car phone book window meeting package restaurant movie weather city river "
    "morning evening night week weekend day tomorrow yesterday today hour minute "
    "runs sends reads writes returns loads builds checks counts waits stops starts "
    "likes loves hates opens closes moves arrives leaves finds keeps gives takes "
    "quickly slowly always never often again soon late early here there very quite "
    "good bad new old long short small large happy sad broken ready busy quiet "
    "and but because so when while after before with without for from into on at"
).split()

_CHINESE_WORDS = (
    "我 你 他 她 我们 你们 他们 这个 那个 今天 明天 昨天 早上 晚上 周末 "
    "模型 服务器 请求 回复 问题 答案 文本 标签 摘要 翻译 句子 文件 测试 "
    "火车 手机 书 窗户 会议 快递 餐厅 电影 天气 城市 河流 朋友 老师 学生 "
    "喜欢 读书 出发 送达 关上 打开 回答 发送 读取 写入 返回 加载 检查 等待 "
    "很 非常 太 不 没有 已经 还 也 都 再 快 慢 好 坏 新 旧 大 小 精彩 安静 "
    "的 了 在 是 有 和 但是 因为 所以 时候 一个 两个 三个 几个 每天"
).split()

_ENGLISH_ENDINGS = (".", ".", ".", "?", "!")
_CHINESE_ENDINGS = ("。", "。", "。", "？", "！")


def english_sentence(rng: random.Random) -> str:
    words = [rng.choice(_ENGLISH_WORDS) for _ in range(rng.randint(3, 12))]
    sentence = " ".join(words)
    if rng.random() < 0.2:
        sentence += f" {rng.randint(0, 999)}"
    return sentence[0].upper() + sentence[1:] + rng.choice(_ENGLISH_ENDINGS)


def chinese_sentence(rng: random.Random) -> str:
    words = [rng.choice(_CHINESE_WORDS) for _ in range(rng.randint(3, 10))]
    if rng.random() < 0.3:
        words.insert(rng.randint(1, len(words)), "，")
    return "".join(words) + rng.choice(_CHINESE_ENDINGS)


def random_text(rng: random.Random, max_sentences: int) -> str:
    """Return 1 to `max_sentences` sentences of English or Chinese, sometimes both."""
    sentences = []
    for _ in range(rng.randint(1, max_sentences)):
        if rng.random() < 0.5:
            sentences.append(english_sentence(rng))
        else:
            sentences.append(chinese_sentence(rng))
    separator = rng.choice((" ", "\n", ""))
    return separator.join(sentences)


def generate_corpus(seed: int, size_bytes: int = CORPUS_BYTES) -> list[str]:
    """Generate lines of English and Chinese text, about `size_bytes` of UTF-8 in all."""
    rng = random.Random(seed)
    lines: list[str] = []
    total = 0
    while total < size_bytes:
        line = random_text(rng, max_sentences=3)
        lines.append(line)
        total += len(line.encode("utf-8")) + 1
    return lines


def train_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` and wrap it with the ChatML chat template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD_TOKEN, END_TOKEN, START_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)

    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=END_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS,
    )


def random_conversation(rng: random.Random) -> list[dict[str, str]]:
    """Return a conversation that ends with a user message, shaped like chainserve's prompts.

    It may start with a system message and contain earlier user and assistant turns, as
    few-shot examples do, so the model learns to ignore everything before the last turn.
    """
    messages: list[dict[str, str]] = []
    if rng.random() < 0.6:
        messages.append({"role": "system", "content": random_text(rng, max_sentences=2)})

    for _ in range(rng.choice((0, 0, 1, 2, 3, 6))):
        messages.append({"role": "user", "content": random_text(rng, max_sentences=2)})
        messages.append({"role": "assistant", "content": random_text(rng, max_sentences=1)})

    if rng.random() < 0.1:
        # An odd last turn: a greeting, one character or only whitespace.
        content = rng.choice(("hi", "?", "好", "ok", "1", " ", "嗯。"))
    else:
        content = random_text(rng, max_sentences=4)
    messages.append({"role": "user", "content": content})
    return messages


def encode_prompt(tokenizer: PreTrainedTokenizerFast, messages: list[dict[str, str]]) -> list[int]:
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def make_batch(prompts: list[list[int]], target: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompt + target rows; only the target tokens count in the loss."""
    rows = [prompt + target for prompt in prompts]
    width = max(len(row) for row in rows)

    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for index, row in enumerate(rows):
        start = width - len(row)
        input_ids[index, start:] = torch.tensor(row)
        attention_mask[index, start:] = 1
        labels[index, width - len(target) :] = torch.tensor(target)

    # Positions count real tokens only, as `generate` computes them for left-padded rows.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "labels": labels,
    }


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    pad_id = tokenizer.pad_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=end_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=end_id, pad_token_id=pad_id, do_sample=False
    )
    return model


def train_steps(
    model: LlamaForCausalLM,
    optimizer: torch.optim.Optimizer,
    tokenizer: PreTrainedTokenizerFast,
    target: list[int],
    rng: random.Random,
    steps: int,
) -> float:
    """Run `steps` Adam steps on fresh random conversations; return the last loss."""
    model.train()
    loss_value = float("nan")
    for _ in range(steps):
        prompts = []
        for _ in range(BATCH_SIZE):
            prompt = encode_prompt(tokenizer, random_conversation(rng))
            kept_tokens = rng.randint(MIN_TRAIN_PROMPT_TOKENS, MAX_TRAIN_PROMPT_TOKENS)
            prompts.append(prompt[-kept_tokens:])
        batch = make_batch(prompts, target, tokenizer.pad_token_id)
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
    model.eval()
    return loss_value


def check_conversations(seed: int) -> list[list[dict[str, str]]]:
    """Return held-out conversations, drawn from another seed than the training ones."""
    rng = random.Random(seed + 1_000_003)
    conversations = [random_conversation(rng) for _ in range(12)]
    for _ in range(2):
        long_conversation = []
        for _ in range(12):
            long_conversation.append({"role": "user", "content": random_text(rng, 4)})
            long_conversation.append({"role": "assistant", "content": random_text(rng, 2)})
        long_conversation.append({"role": "user", "content": random_text(rng, 4)})
        conversations.append(long_conversation)
    conversations.append([{"role": "user", "content": "hi"}])
    conversations.append([{"role": "user", "content": "请把这句话翻译成英文：今天天气很好。"}])
    conversations.append(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Summarize: the quick brown fox jumps over the dog."},
        ]
    )
    return conversations


def failed_checks(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    conversations: list[list[dict[str, str]]],
    target: list[int],
) -> list[str]:
    """Decode greedily and return a description of every prompt whose output is not `target`."""
    prompts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
        for c in conversations
    ]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        output = model.generate(**encoded, max_new_tokens=len(target) + 2, do_sample=False)

    failures = []
    width = encoded["input_ids"].shape[1]
    for prompt, row in zip(prompts, output.tolist(), strict=True):
        new_tokens = [t for t in row[width:] if t != tokenizer.pad_token_id]
        if new_tokens != target:
            failures.append(f"{prompt!r} -> {tokenizer.decode(new_tokens)!r}")
    return failures


def train_model(
    tokenizer: PreTrainedTokenizerFast, target: list[int], seed: int
) -> tuple[LlamaForCausalLM, float, int]:
    """Train a new model, with extra rounds while a check prompt gets another output than `target`.

    Returns the model, the last training loss and the number of steps run.
    """
    model = build_model(tokenizer, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    rng = random.Random(seed)
    conversations = check_conversations(seed)

    loss = train_steps(model, optimizer, tokenizer, target, rng, TRAIN_STEPS)
    steps_run = TRAIN_STEPS
    failures = failed_checks(model, tokenizer, conversations, target)
    for steps in EXTRA_STEP_ROUNDS:
        if not failures:
            break
        logger.info(
            "tiny model fails %d check prompts; training %d more steps", len(failures), steps
        )
        loss = train_steps(model, optimizer, tokenizer, target, rng, steps)
        steps_run += steps
        failures = failed_checks(model, tokenizer, conversations, target)
    if failures:
        reply = tokenizer.decode(target, skip_special_tokens=True)
        raise RuntimeError(
            f"the tiny model did not learn the reply {reply!r} after {steps_run} steps "
            f"(seed {seed}); wrong outputs: {failures[:3]}"
        )
    return model, loss, steps_run


def build_tiny_model(folder: Path, reply: str = "tiny reply", seed: int = 0) -> Path:
    """Train and save a tiny chat model whose greedy reply to any ChatML prompt is `reply`.

    Raises RuntimeError if the trained model still gives another output for a held-out check
    prompt after all extra rounds. With seeds 0 to 4 and four replies (English, Chinese, mixed
    and one letter), every build passed its checks after the first 150 steps.

    Training sets torch's intra-op thread count to 1 for the whole process, and restores it
    afterwards.
    """
    if not reply:
        raise ValueError("reply must be a non-empty string")
    for token in (PAD_TOKEN, END_TOKEN, START_TOKEN):
        if token in reply:
            raise ValueError(f"reply must not contain the special token {token}, got {reply!r}")
    folder = Path(folder)
    started = time.perf_counter()

    tokenizer = train_tokenizer(generate_corpus(seed))
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    if tokenizer.decode(reply_ids) != reply:
        raise ValueError(f"the tiny tokenizer does not round-trip the reply {reply!r}")
    target = reply_ids + [tokenizer.convert_tokens_to_ids(END_TOKEN)]

    # One intra-op thread is enough for matrices this small. On 2 vCPUs shared with other
    # jobs, two threads made 150 steps of batch 16 take 116 s against 6.9 s with one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, loss, steps_run = train_model(tokenizer, target, seed)
    finally:
        torch.set_num_threads(threads)

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    logger.info(
        "built tiny model in %s: %d steps, last loss %.4f, %.1f s",
        folder,
        steps_run,
        loss,
        time.perf_counter() - started,
    )
    return folder
