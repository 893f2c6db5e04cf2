"""The offline default model, Gemma 3 270M, end to end through a running server.

These tests load the real default model (converted once into the cache folder, about a
minute the first time) and check its quality on clear cases. They are marked slow and run
in CI all the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from langserve import RemoteRunnable

from app.settings import Settings
from tests.conftest import LiveServer, running_server
from tests.sse import join_chunks, parse_sse

pytestmark = pytest.mark.slow

SENTIMENT = [
    ("I absolutely love this new laptop, it is fast and beautiful.", "positive"),
    ("The hotel room was dirty and the staff were rude.", "negative"),
    ("What a wonderful concert, the band was amazing!", "positive"),
    ("This is the worst meal I have ever eaten.", "negative"),
    ("My new headphones sound fantastic and feel great.", "positive"),
    ("The app crashes every time I open it, total waste of money.", "negative"),
    ("Thank you so much, your help made my day!", "positive"),
    ("I am very disappointed, the package arrived broken.", "negative"),
    ("这家餐厅的菜非常好吃，服务也很热情。", "positive"),
    ("这个手机质量太差了，用了两天就坏了。", "negative"),
    ("今天的演出太精彩了，我非常喜欢！", "positive"),
    ("客服态度恶劣，我再也不会买他们的东西了。", "negative"),
    ("这本书写得很好，强烈推荐给大家。", "positive"),
    ("电影又长又无聊，浪费了我的时间。", "negative"),
    ("新房子又大又漂亮，我们全家都很开心。", "positive"),
    ("快递晚了一个星期，包装还破了，非常失望。", "negative"),
]

QUESTIONS = [
    (
        "In which year did the company move its headquarters to Berlin?",
        "The company was founded in Munich in 2001 and moved its headquarters to Berlin in 2015.",
        "2015",
    ),
    (
        "What is the capital of Australia?",
        "Many people think Sydney is the capital of Australia, but the capital is Canberra.",
        "Canberra",
    ),
    (
        "张伟在哪家公司工作？",
        "张伟今年三十岁，在华为公司担任软件工程师。",
        "华为",
    ),
    (
        "这本书的作者是谁？",
        "《活着》是作家余华创作的长篇小说，出版于1993年。",
        "余华",
    ),
]


@pytest.fixture(scope="module")
def gemma_server() -> Iterator[LiveServer]:
    settings = Settings(backend="local", openai_api_key=None, _env_file=None)  # type: ignore[call-arg]
    with running_server(settings) as server:
        yield server


def test_gemma_sentiment_accuracy(gemma_server: LiveServer) -> None:
    remote = RemoteRunnable(f"{gemma_server.url}/classify", timeout=120)

    outputs = remote.batch([{"text": text} for text, _ in SENTIMENT])
    results = [
        (text, gold, output["label"])
        for (text, gold), output in zip(SENTIMENT, outputs, strict=True)
    ]
    correct = sum(1 for _, gold, label in results if gold == label)
    wrong = [(text, gold, label) for text, gold, label in results if gold != label]

    print(f"\ngemma sentiment: {correct}/{len(SENTIMENT)} correct; wrong: {wrong}")
    assert correct >= 14, wrong


def test_gemma_extractive_qa(gemma_server: LiveServer) -> None:
    remote = RemoteRunnable(f"{gemma_server.url}/qa", timeout=120)

    outputs = remote.batch([{"question": q, "context": c} for q, c, _ in QUESTIONS])
    results = [
        (question, expected, output)
        for (question, _, expected), output in zip(QUESTIONS, outputs, strict=True)
    ]
    correct = sum(1 for _, expected, output in results if expected in output["answer"])

    print(f"\ngemma qa: {correct}/{len(QUESTIONS)} correct; outputs: {results}")
    assert correct == len(QUESTIONS), results


def test_gemma_unanswerable_question(gemma_server: LiveServer) -> None:
    output = RemoteRunnable(f"{gemma_server.url}/qa", timeout=120).invoke(
        {
            "question": "What is the name of the company's CEO?",
            "context": "The company was founded in Munich in 2001 and moved to Berlin in 2015.",
        }
    )

    assert output == {"answer": "", "answerable": False}


def test_gemma_streams_chinese_translation(gemma_server: LiveServer) -> None:
    body = {"input": {"text": "The weather is very nice today.", "target_language": "Chinese"}}

    with httpx.stream("POST", f"{gemma_server.url}/translate/stream", json=body, timeout=120) as r:
        events = parse_sse(r.read().decode("utf-8"))
    translation = join_chunks([data for name, data in events if name == "data"])["translation"]

    print(f"\ngemma translation: {translation!r}")
    assert r.status_code == 200
    assert events[-1][0] == "end"
    # Gemma 3 270M translates loosely ("今天的天空很漂亮。" here), so check only the script.
    assert re.search(r"[\u4e00-\u9fff]", translation)
    assert not re.search(r"[A-Za-z]", translation)
