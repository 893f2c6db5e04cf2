"""Task metrics, computed with scikit-learn, sacrebleu and rouge-score where they fit.

Scales: accuracy, precision, recall, F1, ROUGE-L and exact match are fractions in [0, 1].
BLEU and chrF are on sacrebleu's 0-100 scale. A metric over an empty group is None.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU, CHRF
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from chains.language import detect_language, language_name

# Han, kana and Hangul: scripts written without spaces, where one character is one token.
_CJK_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_TOKEN = re.compile(f"[{_CJK_CHARS}]|[^\\W_{_CJK_CHARS}]+")
_ENGLISH_ARTICLES = re.compile(r"\b(a|an|the)\b")

# sacrebleu tokenizers by target language; '13a' is its default for space-separated text.
_BLEU_TOKENIZERS = {"Chinese": "zh", "Japanese": "char", "Korean": "char"}


def mixed_tokens(text: str) -> list[str]:
    """Split text into lowercase tokens: one per CJK character, one per word elsewhere.

    Punctuation (ASCII and full-width) is dropped, so `"你好，世界"` gives 4 tokens and
    `"Hello, world!"` gives 2.
    """
    return _TOKEN.findall(text.lower())


class MixedTokenizer:
    """rouge-score tokenizer for Chinese and English: see `mixed_tokens`.

    rouge-score's default tokenizer keeps only [a-z0-9] runs, so Chinese text becomes no
    tokens at all and every Chinese summary would score 0.
    """

    def tokenize(self, text: str) -> list[str]:
        return mixed_tokens(text)


@dataclass
class TaskMetrics:
    """Metrics of one run: headline numbers, task details and a score per row."""

    metrics: dict[str, float | None]
    details: dict[str, Any] = field(default_factory=dict)
    row_scores: dict[int, float] = field(default_factory=dict)
    wrong_rows: set[int] = field(default_factory=set)


def _mean(values: Sequence[float]) -> float | None:
    return mean(values) if values else None


# --- classify -------------------------------------------------------------------------


def classify_metrics(
    rows: Sequence[int], golds: Sequence[str], predictions: Sequence[str], labels: Sequence[str]
) -> TaskMetrics:
    """Compute accuracy, macro and per-label precision/recall/F1 and the confusion matrix.

    The label order is `labels` followed by any other gold or predicted label, so the
    matrix keeps the dataset's order.
    """
    order = list(labels)
    for label in [*golds, *predictions]:
        if label not in order:
            order.append(label)

    if not golds:
        return TaskMetrics(
            {"accuracy": None, "macro_precision": None, "macro_recall": None, "macro_f1": None},
            {"labels": order},
        )

    precision, recall, f1, support = precision_recall_fscore_support(
        golds, predictions, labels=order, zero_division=0
    )
    macro = precision_recall_fscore_support(
        golds, predictions, labels=order, average="macro", zero_division=0
    )
    matrix = confusion_matrix(golds, predictions, labels=order)

    per_label = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(order)
    }
    metrics: dict[str, float | None] = {
        "accuracy": float(accuracy_score(golds, predictions)),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
    }
    details = {
        "labels": order,
        "per_label": per_label,
        "confusion_matrix": matrix.tolist(),
    }
    scores = {
        row: float(gold == pred) for row, gold, pred in zip(rows, golds, predictions, strict=True)
    }
    wrong = {row for row, score in scores.items() if score < 1.0}
    return TaskMetrics(metrics, details, scores, wrong)


# --- translate ------------------------------------------------------------------------


def bleu_tokenizer(target_language: str) -> str:
    """Return the sacrebleu tokenizer for a target language: 'zh' for Chinese, else '13a'."""
    return _BLEU_TOKENIZERS.get(language_name(target_language), "13a")


def translation_metrics(
    rows: Sequence[int],
    target_languages: Sequence[str],
    references: Sequence[str],
    hypotheses: Sequence[str],
) -> TaskMetrics:
    """Compute corpus BLEU and chrF per target language, and chrF over all rows.

    BLEU is only reported per target language, because each language needs its own
    tokenizer and one corpus score over mixed tokenizations means nothing. chrF works on
    characters, so the overall chrF mixes languages safely.
    """
    groups: dict[str, list[int]] = {}
    for index, language in enumerate(target_languages):
        groups.setdefault(language_name(language), []).append(index)

    chrf = CHRF()
    metrics: dict[str, float | None] = {
        "chrf": chrf.corpus_score(list(hypotheses), [list(references)]).score
        if hypotheses
        else None
    }
    details: dict[str, Any] = {"groups": {}}
    for language, indexes in sorted(groups.items()):
        hyps = [hypotheses[i] for i in indexes]
        refs = [references[i] for i in indexes]
        tokenizer = bleu_tokenizer(language)
        bleu = BLEU(tokenize=tokenizer).corpus_score(hyps, [refs])
        metrics[f"bleu[{language}]"] = bleu.score
        metrics[f"chrf[{language}]"] = chrf.corpus_score(hyps, [refs]).score
        details["groups"][language] = {
            "rows": len(indexes),
            "bleu_tokenizer": tokenizer,
            "bleu_signature": str(bleu),
        }

    scores = {
        row: chrf.sentence_score(hyp, [ref]).score
        for row, ref, hyp in zip(rows, references, hypotheses, strict=True)
    }
    wrong = {
        row
        for row, ref, hyp in zip(rows, references, hypotheses, strict=True)
        if hyp.strip() != ref.strip()
    }
    return TaskMetrics(metrics, details, scores, wrong)


# --- summarize ------------------------------------------------------------------------


def rouge_l_f1(reference: str, prediction: str) -> float:
    """Return ROUGE-L F1 of one summary: characters for Chinese, words for English."""
    scorer = RougeScorer(["rougeL"], tokenizer=MixedTokenizer())
    return float(scorer.score(reference, prediction)["rougeL"].fmeasure)


def summary_metrics(
    rows: Sequence[int], references: Sequence[str], predictions: Sequence[str]
) -> TaskMetrics:
    """Compute the mean ROUGE-L F1, overall and per reference language, and the length ratio."""
    scorer = RougeScorer(["rougeL"], tokenizer=MixedTokenizer())
    scores: dict[int, float] = {}
    by_language: dict[str, list[float]] = {}
    ratios: list[float] = []
    for row, reference, prediction in zip(rows, references, predictions, strict=True):
        score = float(scorer.score(reference, prediction)["rougeL"].fmeasure)
        scores[row] = score
        by_language.setdefault(detect_language(reference), []).append(score)
        reference_length = len(mixed_tokens(reference))
        if reference_length:
            ratios.append(len(mixed_tokens(prediction)) / reference_length)

    metrics: dict[str, float | None] = {"rouge_l_f1": _mean(list(scores.values()))}
    for language, values in sorted(by_language.items()):
        metrics[f"rouge_l_f1[{language}]"] = _mean(values)
    metrics["length_ratio"] = _mean(ratios)
    details = {"rows_per_language": {language: len(v) for language, v in by_language.items()}}
    wrong = {
        row
        for row, reference, prediction in zip(rows, references, predictions, strict=True)
        if prediction.strip() != reference.strip()
    }
    return TaskMetrics(metrics, details, scores, wrong)


# --- qa -------------------------------------------------------------------------------


def qa_tokens(text: str) -> list[str]:
    """Tokenize an answer for exact match and F1, in the SQuAD way but CJK-aware.

    The SQuAD evaluation script lowercases, drops punctuation and English articles and
    splits on whitespace, which makes a whole Chinese answer one token. Here each CJK
    character is a token instead, so a partly right Chinese answer gets partial F1.
    """
    text = text.lower()
    text = "".join(" " if char in string.punctuation else char for char in text)
    text = _ENGLISH_ARTICLES.sub(" ", text)
    return mixed_tokens(text)


def qa_exact_match(gold: str, prediction: str) -> float:
    """Return 1.0 when both answers have the same tokens (see `qa_tokens`), else 0.0."""
    return float(qa_tokens(gold) == qa_tokens(prediction))


def qa_f1(gold: str, prediction: str) -> float:
    """Return the token-overlap F1 of two answers (characters for Chinese)."""
    gold_tokens = qa_tokens(gold)
    predicted_tokens = qa_tokens(prediction)
    if not gold_tokens or not predicted_tokens:
        return float(gold_tokens == predicted_tokens)

    common = Counter(gold_tokens) & Counter(predicted_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_metrics(
    rows: Sequence[int],
    golds: Sequence[dict[str, Any]],
    predictions: Sequence[dict[str, Any]],
) -> TaskMetrics:
    """Compute exact match and F1 in the SQuAD 2.0 way, and accuracy on unanswerable rows.

    A row whose gold answer is unanswerable scores 1 when the prediction is also
    unanswerable and 0 otherwise. `has_answer_*` average only the answerable rows, and
    `no_answer_accuracy` only the unanswerable ones.
    """
    exact: dict[int, float] = {}
    f1: dict[int, float] = {}
    has_answer: list[int] = []
    no_answer: list[int] = []
    flag_correct: list[float] = []

    for row, gold, prediction in zip(rows, golds, predictions, strict=True):
        gold_answerable = bool(gold["answerable"])
        predicted_answerable = bool(prediction.get("answerable"))
        flag_correct.append(float(gold_answerable == predicted_answerable))

        if not gold_answerable:
            no_answer.append(row)
            exact[row] = f1[row] = float(not predicted_answerable)
            continue

        has_answer.append(row)
        if not predicted_answerable:
            exact[row] = f1[row] = 0.0
            continue
        exact[row] = qa_exact_match(gold["answer"], str(prediction.get("answer", "")))
        f1[row] = qa_f1(gold["answer"], str(prediction.get("answer", "")))

    metrics: dict[str, float | None] = {
        "exact_match": _mean(list(exact.values())),
        "f1": _mean(list(f1.values())),
        "has_answer_exact_match": _mean([exact[row] for row in has_answer]),
        "has_answer_f1": _mean([f1[row] for row in has_answer]),
        "no_answer_accuracy": _mean([exact[row] for row in no_answer]),
        "answerable_accuracy": _mean(flag_correct),
    }
    details = {"has_answer_rows": len(has_answer), "no_answer_rows": len(no_answer)}
    wrong = {row for row, value in exact.items() if value < 1.0}
    return TaskMetrics(metrics, details, f1, wrong)


# --- dispatch -------------------------------------------------------------------------


def compute_metrics(
    task: str, records: Sequence[dict[str, Any]], labels: Sequence[str] | None = None
) -> TaskMetrics:
    """Compute the metrics of `task` over prediction records that have a prediction."""
    rows = [record["row"] for record in records]
    golds = [record["gold"] for record in records]
    predictions = [record["prediction"] for record in records]

    if task == "classify":
        return classify_metrics(
            rows,
            [gold["label"] for gold in golds],
            [str(prediction.get("label", "")) for prediction in predictions],
            labels or [],
        )
    if task == "translate":
        return translation_metrics(
            rows,
            [record["input"]["target_language"] for record in records],
            [gold["reference"] for gold in golds],
            [str(prediction.get("translation", "")) for prediction in predictions],
        )
    if task == "summarize":
        return summary_metrics(
            rows,
            [gold["reference"] for gold in golds],
            [str(prediction.get("summary", "")) for prediction in predictions],
        )
    if task == "qa":
        return qa_metrics(rows, golds, predictions)
    raise ValueError(f"unknown task {task!r}")
