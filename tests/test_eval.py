"""Tests of `chainserve eval` and `chainserve data split`: metrics, rows, reports and resume.

Every chain here runs on a fake chat model, so nothing loads model weights. The remote
tests start a small LangServe app of fake chains on a free 127.0.0.1 port.
"""

from __future__ import annotations

import csv
import json
import math
import signal
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langserve import add_routes
from pydantic import Field
from typer.testing import CliRunner

from app.evaluation import (
    DatasetError,
    EvaluationError,
    compare_reports,
    prepare_rows,
    read_records,
    register,
    run_evaluation,
)
from app.evaluation import commands as eval_commands
from app.evaluation.metrics import (
    classify_metrics,
    mixed_tokens,
    qa_exact_match,
    qa_f1,
    qa_metrics,
    rouge_l_f1,
    summary_metrics,
    translation_metrics,
)
from app.evaluation.plots import cjk_font_name, plot_confusion_matrix
from app.evaluation.tasks import TASKS
from chains import CHAIN_BUILDERS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RAISE_INTERRUPT = "<raise KeyboardInterrupt>"
RAISE_ERROR = "<raise ValueError>"


class RuleChatModel(BaseChatModel):
    """Fake chat model that replies by rule: the reply of the first key in the last message.

    The reply RAISE_INTERRUPT sends SIGINT to this process, as Ctrl-C does during a call,
    and RAISE_ERROR raises ValueError. Every last message it receives is kept in `received`.
    """

    replies: dict[str, str] = Field(default_factory=dict)
    default: str = ""
    received: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "rule-fake"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = messages[-1].text
        self.received.append(text)
        reply = next((value for key, value in self.replies.items() if key in text), self.default)
        if reply == RAISE_INTERRUPT:
            # Ctrl-C: SIGINT reaches the main thread, where asyncio.run cancels the run.
            signal.raise_signal(signal.SIGINT)
            time.sleep(1.0)
        if reply == RAISE_ERROR:
            raise ValueError(f"fake failure for {text!r}")
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=reply))])


SENTIMENT_ROWS = [
    {"text": "I love this phone.", "label": "positive"},
    {"text": "这家餐厅太差了。", "label": "negative"},
    {"text": "The meeting is at 3 pm.", "label": "neutral"},
    {"text": "我很喜欢这本书。", "label": "positive"},
    {"text": "The box arrived broken.", "label": "negative"},
    {"text": "快递明天到。", "label": "neutral"},
]

# Right on every row but row 5, which it calls positive.
SENTIMENT_REPLIES = {
    "I love": "positive",
    "太差": "negative",
    "3 pm": "neutral",
    "喜欢": "positive",
    "broken": "positive",
    "快递": "neutral",
}


def classify_chain(replies: dict[str, str], default: str = "neutral") -> tuple[Any, RuleChatModel]:
    model = RuleChatModel(replies=replies, default=default)
    return CHAIN_BUILDERS["classify"](model), model


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as target:
        writer = csv.writer(target)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_sentiment_csv(path: Path) -> Path:
    """Write SENTIMENT_ROWS to `path` as a CSV file with the columns text and label."""
    return write_csv(path, ["text", "label"], [[r["text"], r["label"]] for r in SENTIMENT_ROWS])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def read_csv_dicts(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as source:
        return list(csv.DictReader(source))


def make_cli() -> typer.Typer:
    cli = typer.Typer()

    @cli.callback()
    def main() -> None:
        """Test entry point with the evaluation commands registered."""

    register(cli)
    return cli


@pytest.fixture
def sigint_handler() -> Iterator[None]:
    """Install Python's default SIGINT handler for the test, then restore the old one.

    A background job of a non-interactive shell starts with SIGINT ignored, and asyncio.run
    only turns SIGINT into a cancellation when the default handler is installed.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "200", "CHAINSERVE_API_KEY": None})


@pytest.fixture
def fake_local_chain(monkeypatch: pytest.MonkeyPatch) -> dict[str, RuleChatModel]:
    """Make the in-process path of `chainserve eval` build chains on a RuleChatModel."""
    models: dict[str, RuleChatModel] = {}

    def build(task: str, backend: Any) -> tuple[Any, str, Any]:
        model = models.setdefault(task, RuleChatModel(replies=SENTIMENT_REPLIES, default="neutral"))
        return CHAIN_BUILDERS[task](model), "in-process, fake model", lambda: None

    monkeypatch.setattr(eval_commands, "_local_chain", build)
    return models


# --- metrics --------------------------------------------------------------------------


def test_classify_metrics_hand_computed() -> None:
    result = classify_metrics(
        [1, 2, 3, 4],
        ["positive", "positive", "negative", "neutral"],
        ["positive", "negative", "negative", "neutral"],
        ["positive", "negative", "neutral"],
    )

    assert result.metrics["accuracy"] == pytest.approx(0.75)
    assert result.metrics["macro_precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert result.metrics["macro_recall"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert result.metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert result.details["per_label"]["positive"]["f1"] == pytest.approx(2 / 3)
    assert result.details["per_label"]["negative"]["precision"] == pytest.approx(0.5)
    assert result.details["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert result.wrong_rows == {2}


def test_classify_metrics_keep_label_order() -> None:
    result = classify_metrics([1, 2], ["体育", "科技"], ["体育", "财经"], ["体育", "科技"])

    assert result.details["labels"] == ["体育", "科技", "财经"]
    assert result.details["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]


def test_mixed_tokens_chinese_and_english() -> None:
    assert mixed_tokens("你好，世界") == ["你", "好", "世", "界"]
    assert mixed_tokens("Hello, World! 你好") == ["hello", "world", "你", "好"]


def test_rouge_l_chinese_characters() -> None:
    # LCS of 今天天气很好 and 今天天气不好 is 今天天气好: 5 of 6 characters each way.
    assert rouge_l_f1("今天天气很好", "今天天气不好") == pytest.approx(5 / 6)
    assert rouge_l_f1("你好，世界", "你好世界") == pytest.approx(1.0)
    assert rouge_l_f1("今天天气很好", "明年") == 0.0


def test_rouge_l_english_words() -> None:
    # LCS is "the cat on the mat": 5 of 6 words each way.
    assert rouge_l_f1("The cat sat on the mat.", "the cat lay on the mat") == pytest.approx(5 / 6)


def test_summary_metrics_per_language() -> None:
    result = summary_metrics(
        [1, 2],
        ["今天天气很好", "The cat sat on the mat."],
        ["今天天气不好", "The cat sat on the mat."],
    )

    assert result.metrics["rouge_l_f1"] == pytest.approx((5 / 6 + 1.0) / 2)
    assert result.metrics["rouge_l_f1[Chinese]"] == pytest.approx(5 / 6)
    assert result.metrics["rouge_l_f1[English]"] == pytest.approx(1.0)
    assert result.metrics["length_ratio"] == pytest.approx(1.0)
    assert result.wrong_rows == {1}


def test_qa_f1_chinese_characters() -> None:
    # 4 shared characters (两万公里): precision 4/5, recall 4/6, F1 8/11.
    assert qa_f1("两万一千公里", "约两万公里") == pytest.approx(8 / 11)
    assert qa_exact_match("两万一千公里", "两万一千公里。") == 1.0


def test_qa_f1_english_tokens() -> None:
    assert qa_exact_match("The Warsaw.", "warsaw") == 1.0
    assert qa_f1("Dr. Helen Park", "Helen Park") == pytest.approx(0.8)
    assert qa_f1("Denver", "Chicago") == 0.0


def test_qa_metrics_with_unanswerable_rows() -> None:
    golds = [
        {"answer": "Warsaw", "answerable": True},
        {"answer": "Dr. Helen Park", "answerable": True},
        {"answer": "", "answerable": False},
        {"answer": "", "answerable": False},
        {"answer": "1902", "answerable": True},
    ]
    predictions = [
        {"answer": "Warsaw", "answerable": True},
        {"answer": "Helen Park", "answerable": True},
        {"answer": "", "answerable": False},
        {"answer": "1990", "answerable": True},
        {"answer": "", "answerable": False},
    ]
    result = qa_metrics([1, 2, 3, 4, 5], golds, predictions)

    assert result.metrics["exact_match"] == pytest.approx(2 / 5)
    assert result.metrics["f1"] == pytest.approx((1 + 0.8 + 1 + 0 + 0) / 5)
    assert result.metrics["has_answer_exact_match"] == pytest.approx(1 / 3)
    assert result.metrics["has_answer_f1"] == pytest.approx(1.8 / 3)
    assert result.metrics["no_answer_accuracy"] == pytest.approx(0.5)
    assert result.metrics["answerable_accuracy"] == pytest.approx(3 / 5)
    assert result.wrong_rows == {2, 4, 5}


def test_translation_metrics_chinese_bleu_tokenizer() -> None:
    result = translation_metrics(
        [1, 2], ["zh", "English"], ["我喜欢狗", "I like dogs"], ["我喜欢猫", "I like dogs"]
    )

    # Character tokens 我 喜 欢 猫: n-gram precisions 3/4, 2/3, 1/2, and 0/1 smoothed to 1/2.
    expected = 100 * math.prod([3 / 4, 2 / 3, 1 / 2, 1 / 2]) ** 0.25
    assert result.metrics["bleu[Chinese]"] == pytest.approx(expected, abs=0.01)
    assert result.details["groups"]["Chinese"]["bleu_tokenizer"] == "zh"
    assert result.details["groups"]["English"]["bleu_tokenizer"] == "13a"
    assert result.metrics["chrf[English]"] == pytest.approx(100.0)
    assert 0 < result.metrics["chrf"] < 100
    assert result.wrong_rows == {1}


# --- reading and preparing rows --------------------------------------------------------


def test_bad_csv_rows_listed_with_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "text,label\n"
        "I love it,positive\n"
        ",negative\n"
        '"three",neutral,fields\n'
        "No label here,\n"
        '"two\nlines",neutral\n'
        "   ,positive\n"
        "Fine day,neutral\n",
        encoding="utf-8",
    )
    prepared = prepare_rows(TASKS["classify"], read_records(path))

    skipped = [(item.row, item.line) for item in prepared.skipped]
    assert skipped == [(2, 3), (3, 4), (4, 5), (6, 8)]
    reasons = [item.reason for item in prepared.skipped]
    assert "missing or empty 'text'" in reasons[0]
    assert "has 3 fields but the header has 2" in reasons[1]
    assert "gold column 'label'" in reasons[2]
    assert [(example.row, example.line) for example in prepared.examples] == [
        (1, 2),
        (5, 6),
        (7, 9),
    ]


def test_bad_jsonl_rows_listed_with_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"question": "Q1?", "context": "C1", "answer": "C1"}\n'
        "\n"
        '{"question": "Q2?", "context": \n'
        '["not", "an", "object"]\n'
        '{"question": "Q3?", "context": "C3", "answer": "", "answerable": "maybe"}\n'
        '{"question": "Q4?", "context": "C4", "answer": "", "answerable": true}\n'
        '{"question": "Q5?", "context": "C5", "answer": ""}\n',
        encoding="utf-8",
    )
    prepared = prepare_rows(TASKS["qa"], read_records(path))

    assert [(item.row, item.line) for item in prepared.skipped] == [(2, 3), (3, 4), (4, 5), (5, 6)]
    assert prepared.skipped[0].reason.startswith("invalid JSON")
    assert "expected a JSON object" in prepared.skipped[1].reason
    assert "invalid 'answerable'" in prepared.skipped[2].reason
    assert "answerable is true" in prepared.skipped[3].reason
    assert [example.gold for example in prepared.examples] == [
        {"answer": "C1", "answerable": True},
        {"answer": "", "answerable": False},
    ]


def test_classify_gets_dataset_label_set() -> None:
    rows = [
        {"text": "The striker scored twice.", "label": "sports"},
        {"text": "新芯片发布了。", "label": "technology"},
        {"text": "Parliament passed the bill.", "label": "politics"},
        {"text": "球队赢了。", "label": "sports"},
    ]
    prepared = prepare_rows(TASKS["classify"], rows)

    assert prepared.labels == ["sports", "technology", "politics"]
    for example in prepared.examples:
        assert example.input["labels"] == ["sports", "technology", "politics"]


def test_classify_labels_column_checked() -> None:
    rows = [
        {"text": "a", "label": "x", "labels": "x|y"},
        {"text": "b", "label": "z", "labels": '["x", "y"]'},
    ]
    prepared = prepare_rows(TASKS["classify"], rows)

    assert [example.input["labels"] for example in prepared.examples] == [["x", "y"]]
    assert prepared.skipped[0].row == 2
    assert "not one of the row's labels" in prepared.skipped[0].reason


def test_single_label_dataset_rejected() -> None:
    with pytest.raises(DatasetError, match="at least 2 labels"):
        prepare_rows(TASKS["classify"], [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}])


def test_missing_column_names_the_option() -> None:
    with pytest.raises(DatasetError, match="--column text=NAME"):
        prepare_rows(TASKS["classify"], [{"review": "a", "label": "x"}])
    with pytest.raises(DatasetError, match="--gold-column NAME"):
        prepare_rows(TASKS["translate"], [{"text": "a", "target_language": "en"}])


# --- run_evaluation -------------------------------------------------------------------


def test_run_writes_report_files(tmp_path: Path) -> None:
    chain, model = classify_chain(SENTIMENT_REPLIES)
    result = run_evaluation(
        "classify", SENTIMENT_ROWS, chain, tmp_path / "out", show_progress=False
    )

    out = tmp_path / "out"
    for name in [
        "report.json",
        "report.md",
        "errors.csv",
        "predictions.jsonl",
        "confusion_matrix.png",
        "per_label_f1.png",
    ]:
        assert (out / name).is_file(), name
    assert (out / "confusion_matrix.png").read_bytes().startswith(PNG_SIGNATURE)

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report == result.report
    assert report["metrics"]["accuracy"] == pytest.approx(5 / 6)
    assert report["rows"] == {
        "total": 6,
        "evaluated": 6,
        "skipped": 0,
        "request_errors": 0,
        "not_run": 0,
        "wrong": 1,
    }
    assert "| accuracy | 0.8333 |" in (out / "report.md").read_text(encoding="utf-8")
    assert len(model.received) == 6
    for record in read_jsonl(out / "predictions.jsonl"):
        assert record["input"]["labels"] == ["positive", "negative", "neutral"]

    errors = read_csv_dicts(out / "errors.csv")
    assert [(e["row"], e["kind"], e["gold"], e["prediction"]) for e in errors] == [
        ("5", "wrong", "negative", "positive")
    ]


def test_run_rejects_existing_predictions(tmp_path: Path) -> None:
    chain, _ = classify_chain(SENTIMENT_REPLIES)
    run_evaluation("classify", SENTIMENT_ROWS, chain, tmp_path, show_progress=False)

    with pytest.raises(EvaluationError, match="--resume"):
        run_evaluation("classify", SENTIMENT_ROWS, chain, tmp_path, show_progress=False)


def test_interrupt_keeps_done_rows(tmp_path: Path, sigint_handler: None) -> None:
    replies = {**SENTIMENT_REPLIES, "喜欢": RAISE_INTERRUPT}
    chain, _ = classify_chain(replies)
    result = run_evaluation(
        "classify", SENTIMENT_ROWS, chain, tmp_path, batch_size=2, show_progress=False
    )

    assert result.interrupted
    assert [record["row"] for record in read_jsonl(tmp_path / "predictions.jsonl")] == [1, 2]
    assert result.report["interrupted"] is True
    assert result.report["rows"]["evaluated"] == 2
    assert result.report["rows"]["not_run"] == 4
    assert result.report["metrics"]["accuracy"] == pytest.approx(1.0)
    assert (tmp_path / "report.json").is_file()


def test_resume_skips_done_rows(tmp_path: Path, sigint_handler: None) -> None:
    interrupting, _ = classify_chain({**SENTIMENT_REPLIES, "喜欢": RAISE_INTERRUPT})
    run_evaluation(
        "classify", SENTIMENT_ROWS, interrupting, tmp_path, batch_size=2, show_progress=False
    )

    chain, model = classify_chain(SENTIMENT_REPLIES)
    result = run_evaluation(
        "classify",
        SENTIMENT_ROWS,
        chain,
        tmp_path,
        batch_size=2,
        resume=True,
        show_progress=False,
    )

    assert len(model.received) == 4
    assert not any("I love this phone." in text or "太差" in text for text in model.received)
    assert result.report["rows"]["evaluated"] == 6
    assert result.report["timing"]["rows_this_run"] == 4
    assert not result.interrupted


def test_resume_retries_failed_rows(tmp_path: Path) -> None:
    failing, _ = classify_chain({**SENTIMENT_REPLIES, "3 pm": RAISE_ERROR})
    first = run_evaluation("classify", SENTIMENT_ROWS, failing, tmp_path, show_progress=False)

    assert [item["row"] for item in first.report["request_errors"]] == [3]
    assert "ValueError: fake failure" in first.report["request_errors"][0]["error"]
    errors = read_csv_dicts(tmp_path / "errors.csv")
    assert ("3", "request_error") in [(e["row"], e["kind"]) for e in errors]

    chain, model = classify_chain(SENTIMENT_REPLIES)
    second = run_evaluation(
        "classify", SENTIMENT_ROWS, chain, tmp_path, resume=True, show_progress=False
    )

    assert len(model.received) == 1
    assert "3 pm" in model.received[0]
    assert second.report["request_errors"] == []
    assert second.report["rows"]["evaluated"] == 6


def test_resume_rejects_changed_dataset(tmp_path: Path) -> None:
    chain, _ = classify_chain(SENTIMENT_REPLIES)
    run_evaluation("classify", SENTIMENT_ROWS, chain, tmp_path, show_progress=False)
    changed = [{**SENTIMENT_ROWS[0], "text": "Another text."}, *SENTIMENT_ROWS[1:]]

    with pytest.raises(EvaluationError, match="row"):
        run_evaluation("classify", changed, chain, tmp_path, resume=True, show_progress=False)


def test_limit_counts_file_rows(tmp_path: Path) -> None:
    rows = [SENTIMENT_ROWS[0], {"text": "", "label": "neutral"}, *SENTIMENT_ROWS[1:]]
    chain, model = classify_chain(SENTIMENT_REPLIES)
    result = run_evaluation("classify", rows, chain, tmp_path, limit=3, show_progress=False)

    assert result.report["rows"]["total"] == 3
    assert result.report["rows"]["evaluated"] == 2
    assert result.report["rows"]["skipped"] == 1
    assert len(model.received) == 2
    # The label set still comes from the whole dataset.
    assert result.report["labels"] == ["positive", "negative", "neutral"]


def test_fake_list_model_qa_run(tmp_path: Path) -> None:
    rows = [
        {"question": "李白被称为什么？", "context": "李白被后人称为“诗仙”。", "answer": "诗仙"},
        {"question": "How old is Maria?", "context": "Maria lives in Lyon.", "answer": ""},
        {"question": "Where?", "context": "The ferry goes to the island.", "answer": "the island"},
    ]
    model = FakeListChatModel(responses=["诗仙", "unanswerable", "goes to the island"])
    chain = CHAIN_BUILDERS["qa"](model)
    result = run_evaluation("qa", rows, chain, tmp_path, batch_size=1, show_progress=False)

    metrics = result.report["metrics"]
    assert metrics["exact_match"] == pytest.approx(2 / 3)
    assert metrics["no_answer_accuracy"] == pytest.approx(1.0)
    # "goes to the island" against "the island": tokens goes, to, island against island.
    assert metrics["has_answer_f1"] == pytest.approx((1.0 + 0.5) / 2)
    assert (tmp_path / "row_scores.png").read_bytes().startswith(PNG_SIGNATURE)


def test_translate_and_summarize_runs(tmp_path: Path) -> None:
    translate_model = RuleChatModel(replies={"今天": "It is nice today.", "cat": "我喜欢猫"})
    translate_rows = [
        {
            "text": "今天天气很好",
            "source_language": "zh",
            "target_language": "en",
            "reference": "The weather is nice today.",
        },
        {"text": "I like cats", "target_language": "zh", "reference": "我喜欢猫"},
    ]
    translated = run_evaluation(
        "translate",
        translate_rows,
        CHAIN_BUILDERS["translate"](translate_model),
        tmp_path / "translate",
        show_progress=False,
    )
    assert translated.report["metrics"]["bleu[Chinese]"] == pytest.approx(100.0)
    assert translated.report["wrong_rows"] == [1]

    summary_model = RuleChatModel(default="今天天气不好")
    summarized = run_evaluation(
        "summarize",
        [{"text": "今天天气很好，我们去公园。", "reference": "今天天气很好"}],
        CHAIN_BUILDERS["summarize"](summary_model),
        tmp_path / "summarize",
        show_progress=False,
    )
    assert summarized.report["metrics"]["rouge_l_f1"] == pytest.approx(5 / 6)


# --- plots ----------------------------------------------------------------------------


def test_confusion_png_renders_chinese(tmp_path: Path) -> None:
    if cjk_font_name() is None:
        pytest.skip("no CJK font installed; install the Debian package fonts-noto-cjk")
    path = tmp_path / "confusion.png"

    with warnings.catch_warnings():
        # matplotlib warns "Glyph ... missing from font(s)" for each character it cannot draw.
        warnings.filterwarnings("error", message=".*missing from font.*")
        plot_confusion_matrix([[2, 1], [0, 3]], ["正面", "负面"], path, "情感")

    assert path.read_bytes().startswith(PNG_SIGNATURE)


# --- CLI ------------------------------------------------------------------------------


def test_cli_eval_tiny_csv(tmp_path: Path, runner: CliRunner, fake_local_chain: Any) -> None:
    data = write_csv(
        tmp_path / "tiny.csv",
        ["review", "sentiment"],
        [[row["text"], row["label"]] for row in SENTIMENT_ROWS] + [["", "neutral"]],
    )
    out = tmp_path / "report"
    result = runner.invoke(
        make_cli(),
        [
            "eval",
            "classify",
            str(data),
            "--out",
            str(out),
            "--column",
            "text=review",
            "--gold-column",
            "sentiment",
            "--batch-size",
            "4",
        ],
    )

    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    assert "0.8333" in result.output
    assert "skipping 1 invalid row(s)" in result.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["skipped_rows"] == [{"row": 7, "line": 8, "reason": "missing or empty 'review'"}]
    assert (out / "confusion_matrix.png").is_file()


def test_cli_eval_missing_column(tmp_path: Path, runner: CliRunner, fake_local_chain: Any) -> None:
    data = write_csv(tmp_path / "tiny.csv", ["review", "label"], [["good", "positive"]])
    result = runner.invoke(make_cli(), ["eval", "classify", str(data), "--out", str(tmp_path)])

    assert result.exit_code == 2
    assert "column 'text' not found" in result.output


def test_cli_eval_interrupt_exit_code(
    tmp_path: Path,
    runner: CliRunner,
    fake_local_chain: dict[str, RuleChatModel],
    sigint_handler: None,
) -> None:
    fake_local_chain["classify"] = RuleChatModel(
        replies={**SENTIMENT_REPLIES, "3 pm": RAISE_INTERRUPT}, default="neutral"
    )
    data = write_sentiment_csv(tmp_path / "tiny.csv")
    out = tmp_path / "out"
    result = runner.invoke(
        make_cli(), ["eval", "classify", str(data), "--out", str(out), "--batch-size", "2"]
    )

    assert result.exit_code == 130, result.output
    assert "--resume --out" in result.output
    assert (out / "report.json").is_file()

    fake_local_chain["classify"] = RuleChatModel(replies=SENTIMENT_REPLIES, default="neutral")
    resumed = runner.invoke(
        make_cli(), ["eval", "classify", str(data), "--out", str(out), "--resume"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert len(fake_local_chain["classify"].received) == 4


def test_cli_compare_prints_differences(
    tmp_path: Path, runner: CliRunner, fake_local_chain: Any
) -> None:
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps({"task": "classify", "metrics": {"accuracy": 0.5, "macro_f1": 0.9}}),
        encoding="utf-8",
    )
    data = write_sentiment_csv(tmp_path / "tiny.csv")
    result = runner.invoke(
        make_cli(),
        ["eval", "classify", str(data), "--out", str(tmp_path / "out"), "--compare", str(other)],
    )

    assert result.exit_code == 0, result.output
    assert "compared with" in result.output
    # Accuracy 5/6 against 0.5. Macro F1 (0.8 + 2/3 + 1) / 3 against 0.9.
    assert "+0.3333" in result.output
    assert "-0.0778" in result.output
    assert "f1[positive]" in result.output


def test_compare_reports_pairs_metrics() -> None:
    current = {
        "metrics": {"accuracy": 0.8, "macro_f1": 0.7},
        "details": {"per_label": {"正面": {"f1": 0.9}}},
    }
    other = {"metrics": {"accuracy": 0.6, "bleu[Chinese]": 20.0}}
    differences = {item.name: item for item in compare_reports(current, other)}

    assert differences["accuracy"].difference == pytest.approx(0.2)
    assert differences["macro_f1"].difference is None
    assert differences["f1[正面]"].current == 0.9
    assert differences["bleu[Chinese]"].current is None


# --- data split -----------------------------------------------------------------------


def test_split_stratifies(tmp_path: Path, runner: CliRunner) -> None:
    rows = [[f"文本 {i}", "正面" if i % 2 else "负面"] for i in range(20)]
    data = write_csv(tmp_path / "reviews.csv", ["text", "label"], rows)
    result = runner.invoke(
        make_cli(),
        [
            "data",
            "split",
            str(data),
            "--test-size",
            "0.3",
            "--stratify",
            "label",
            "--seed",
            "7",
            "--out",
            str(tmp_path / "split"),
        ],
    )

    assert result.exit_code == 0, result.output
    train = read_csv_dicts(tmp_path / "split" / "reviews.train.csv")
    test = read_csv_dicts(tmp_path / "split" / "reviews.test.csv")
    assert len(test) == 6
    assert len(train) == 14
    assert sorted(row["label"] for row in test) == ["正面"] * 3 + ["负面"] * 3
    assert sorted(row["text"] for row in train + test) == sorted(row[0] for row in rows)


def test_split_same_seed_same_parts(tmp_path: Path, runner: CliRunner) -> None:
    lines = [json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) for i in range(10)]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    parts = []
    for folder in ["first", "second"]:
        result = runner.invoke(
            make_cli(),
            [
                "data",
                "split",
                str(data),
                "--test-size",
                "4",
                "--stratify",
                "label",
                "--out",
                str(tmp_path / folder),
            ],
        )
        assert result.exit_code == 0, result.output
        parts.append((tmp_path / folder / "rows.test.jsonl").read_text(encoding="utf-8"))

    assert parts[0] == parts[1]
    assert len(parts[0].splitlines()) == 4


def test_split_rejects_single_member_class(tmp_path: Path, runner: CliRunner) -> None:
    data = write_csv(
        tmp_path / "rows.csv", ["text", "label"], [["a", "x"], ["b", "x"], ["c", "x"], ["d", "y"]]
    )
    result = runner.invoke(make_cli(), ["data", "split", str(data), "--stratify", "label"])

    assert result.exit_code == 2
    assert "least populated class" in result.output


# --- remote server --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fake_server() -> Iterator[tuple[str, list[str | None]]]:
    """A LangServe app of the classify chain on a RuleChatModel that needs a Bearer key.

    Yields the base URL and the Authorization headers it received.
    """
    model = RuleChatModel(replies={**SENTIMENT_REPLIES, "3 pm": RAISE_ERROR}, default="neutral")
    app = FastAPI()
    seen: list[str | None] = []

    @app.middleware("http")
    async def check_key(request: Request, call_next: Any) -> Any:
        header = request.headers.get("authorization")
        seen.append(header)
        if header != "Bearer test-key":
            return JSONResponse({"detail": "invalid API key"}, status_code=401)
        return await call_next(request)

    add_routes(app, CHAIN_BUILDERS["classify"](model), path="/classify")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, f"the test server at {url} did not start"
    try:
        yield url, seen
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_cli_eval_remote_server(
    tmp_path: Path, runner: CliRunner, fake_server: tuple[str, list[str | None]]
) -> None:
    url, seen = fake_server
    data = write_sentiment_csv(tmp_path / "tiny.csv")
    result = runner.invoke(
        make_cli(),
        ["eval", "classify", str(data), "--server", url + "/", "--out", str(tmp_path / "out")],
        env={"CHAINSERVE_API_KEY": "test-key", "COLUMNS": "200"},
    )

    assert result.exit_code == 0, result.output
    assert set(seen) == {"Bearer test-key"}
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    # Row 3 fails on the server; the batch is retried row by row, so only row 3 is an error.
    assert [item["row"] for item in report["request_errors"]] == [3]
    assert report["rows"]["evaluated"] == 5
    assert report["source"] == f"server {url}/classify"


def test_cli_eval_remote_wrong_key(
    tmp_path: Path, runner: CliRunner, fake_server: tuple[str, list[str | None]]
) -> None:
    url, _ = fake_server
    data = write_sentiment_csv(tmp_path / "tiny.csv")
    result = runner.invoke(
        make_cli(),
        [
            "eval",
            "classify",
            str(data),
            "--server",
            url,
            "--api-key",
            "wrong",
            "--out",
            str(tmp_path / "out"),
        ],
    )

    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["rows"]["request_errors"] == 6
    assert "401" in report["request_errors"][0]["error"]
    assert httpx.get(url + "/classify/input_schema").status_code == 401
