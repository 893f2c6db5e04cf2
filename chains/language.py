"""Language names and detection for the `language`, `source_language` fields.

Detection uses langdetect, with two rules in front of it: text with Han characters and no
kana or Hangul is Chinese, because langdetect often calls short Chinese text Korean, and
short ASCII text is English. An unsure guess (probability below 0.7) is English too.
"""

from __future__ import annotations

import re

from langdetect import DetectorFactory, LangDetectException, detect_langs

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA_OR_HANGUL = re.compile(r"[\u3040-\u30ff\uac00-\ud7af]")

_NAMES = {
    "en": "English",
    "zh": "Chinese",
    "zh-cn": "Chinese",
    "zh-tw": "Chinese",
    "zh-hans": "Chinese",
    "zh-hant": "Chinese",
    "中文": "Chinese",
    "汉语": "Chinese",
    "英文": "English",
    "英语": "English",
    "ja": "Japanese",
    "ko": "Korean",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "ru": "Russian",
    "ar": "Arabic",
    "vi": "Vietnamese",
    "th": "Thai",
}


def language_name(value: str) -> str:
    """Return the English name of a language given as a code (zh, en-US) or a name."""
    cleaned = value.strip()
    key = cleaned.lower()
    if key in _NAMES:
        return _NAMES[key]
    base = key.split("-")[0].split("_")[0]
    if base in _NAMES and len(base) == 2:
        return _NAMES[base]
    return cleaned[:1].upper() + cleaned[1:]


def detect_language(text: str) -> str:
    """Return the English name of the language of `text`, English when unsure."""
    if _HAN.search(text) and not _KANA_OR_HANGUL.search(text):
        return "Chinese"

    # langdetect guesses wildly on a few words ("hello" comes out Finnish), so short
    # plain-ASCII text is taken as English.
    if text.isascii() and len(text.split()) < 4:
        return "English"

    # langdetect is random unless seeded; a fixed seed makes the same text give the same answer.
    DetectorFactory.seed = 0
    try:
        best = detect_langs(text)[0]
    except (LangDetectException, IndexError):
        return "English"
    return language_name(best.lang) if best.prob >= 0.7 else "English"


def is_cjk(language: str) -> bool:
    """Return True for languages written without spaces between words."""
    return language in {"Chinese", "Japanese"}
