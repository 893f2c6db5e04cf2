"""The benchmark workloads: their input texts, prompt files and prompt rendering.

All three systems see the same prompts. The benchmark writes its own copy of `prompts/` in
which `summarize.yaml` has no stop strings and `max_new_tokens` set to the summary length,
so that every system generates that many tokens unless the model emits an end-of-sequence
token. chainserve reads the copy through `Settings.prompts_dir`, the baseline app and the
raw-generate limit read it with `load_prompt_file`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from langchain_core.messages import BaseMessage
from transformers import PreTrainedTokenizerBase

from app.backends.local import render_completion
from chains.classify import DEFAULT_LABELS
from chains.language import detect_language
from chains.prompts import DEFAULT_PROMPTS_DIR, PromptFile, load_prompt_file

WORKLOAD_NAMES = ("classify", "summarize")

CLASSIFY_TEXTS = (
    "The battery died after two days and support never replied to my emails.",
    "这款耳机音质很好，戴着也很舒服，值得购买。",
    "The train to Boston leaves at 9:40 from platform 3.",
    "I was impressed by how quickly the team fixed the leak, great service!",
    "包装破损，里面的杯子碎了两个，非常失望。",
    "The museum is open from Tuesday to Sunday, 10 am to 6 pm.",
    "明天上午十点在三楼会议室开项目例会。",
    "Worst pizza I have ever had: cold, soggy and two hours late.",
)

SUMMARIZE_TEXTS = (
    "The city council voted on Monday to turn the old railway yard into a public park. The "
    "site has been empty for fifteen years, and residents have long complained about litter "
    "and broken fences. The plan includes a playground, a community garden and a cycling path "
    "that links two neighbourhoods. Work is expected to start next spring.",
    "本市图书馆从下个月起延长开放时间，工作日开放至晚上十点，周末开放至晚上八点。"
    "馆方表示，此举是为了方便上班族和学生，同时将增加自习座位和电源插座。",
    "After three years of testing, a small farm in the valley has switched all of its "
    "irrigation to drip lines fed by rainwater tanks. The owner says water use fell by almost "
    "half and that the tomato harvest was the best in a decade. Neighbouring farmers have "
    "visited to see the system.",
    "受冷空气影响，本周末全省大部分地区将出现大风降温天气，最低气温将下降八到十度。"
    "气象部门提醒市民注意添衣保暖，户外作业人员做好防风措施。",
    "The software team released version 4.0 of its photo editor on Thursday. The update adds "
    "automatic background removal, faster export of large files and a dark mode that many "
    "users had asked for. It also drops support for older operating systems.",
    "一家本地面包店推出了用当地小麦制作的全麦面包，上市一周就售出了两千多个。"
    "店主说，他们计划明年在城东再开一家分店。",
    "A regional airline will add three daily flights between the two largest cities in the "
    "north from June. Tickets go on sale next week, and the company says prices will start "
    "at 49 euros for early bookings. The new route is expected to carry 200,000 passengers "
    "a year.",
    "市第一中学的学生设计了一款帮助视障人士过马路的手机应用，获得了全国青少年科技创新大赛一等奖。"
    "应用通过摄像头识别红绿灯，并用语音提示使用者。",
)


@dataclass(frozen=True)
class Workload:
    """One benchmarked task: chainserve chain name, inputs and generation limits."""

    name: str
    texts: tuple[str, ...]
    max_new_tokens: int
    """Token limit of the baseline and of raw `generate` (and of chainserve's summarize)."""

    def request_input(self, index: int) -> dict[str, Any]:
        """Return the chain input of request number `index`, cycling through `texts`."""
        return {"text": self.texts[index % len(self.texts)]}

    def text(self, index: int) -> str:
        return self.texts[index % len(self.texts)]


def build_workloads(
    names: list[str], *, classify_tokens: int, summarize_tokens: int
) -> list[Workload]:
    """Build the requested workloads, or raise ValueError for an unknown name."""
    unknown = [name for name in names if name not in WORKLOAD_NAMES]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {list(WORKLOAD_NAMES)}")

    limits = {"classify": classify_tokens, "summarize": summarize_tokens}
    texts = {"classify": CLASSIFY_TEXTS, "summarize": SUMMARIZE_TEXTS}
    return [Workload(name, texts[name], limits[name]) for name in names]


def write_prompts_dir(target: Path, summarize_tokens: int) -> Path:
    """Copy `prompts/` into `target`, with summarize set to a fixed length and no stop strings."""
    target.mkdir(parents=True, exist_ok=True)
    for source in DEFAULT_PROMPTS_DIR.glob("*.yaml"):
        shutil.copyfile(source, target / source.name)

    summarize_path = target / "summarize.yaml"
    summarize = yaml.safe_load(summarize_path.read_text(encoding="utf-8"))
    summarize["stop"] = []
    summarize["max_new_tokens"] = summarize_tokens
    summarize_path.write_text(
        yaml.safe_dump(summarize, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )

    # Fail here, not in a server subprocess, if the rewritten file is invalid.
    load_prompt_file("summarize", target)
    return target


def prompt_variables(task: str, text: str) -> dict[str, Any]:
    """Return the prompt variables that chainserve's chain computes for `text` alone.

    These match `prepare` in chains/classify.py (default labels, no instructions) and
    chains/summarize.py (detected language, no word limit).
    """
    if task == "classify":
        return {"text": text, "labels": ", ".join(DEFAULT_LABELS), "instructions": ""}
    if task == "summarize":
        return {"text": text, "language": detect_language(text), "length": ""}
    raise ValueError(f"unknown task {task!r}")


def render_messages(messages: list[BaseMessage], tokenizer: PreTrainedTokenizerBase) -> str:
    """Render messages as chainserve's local backend does with `prompt_format=auto`.

    A tokenizer with a chat template gets the template, others (the Gemma default) a plain
    completion prompt from `render_completion`.
    """
    if not getattr(tokenizer, "chat_template", None):
        return render_completion(messages)

    roles = {"human": "user", "ai": "assistant", "system": "system"}
    conversation = [
        {"role": roles.get(message.type, "user"), "content": message.text} for message in messages
    ]
    return str(
        tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    )


def render_prompt(
    prompt_file: PromptFile, task: str, text: str, tokenizer: PreTrainedTokenizerBase
) -> str:
    """Return the model input string that chainserve builds for `text`."""
    messages = prompt_file.chat_prompt().format_messages(**prompt_variables(task, text))
    return render_messages(messages, tokenizer)
