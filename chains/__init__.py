"""LCEL chains for chainserve's tasks; each `build_<task>_chain(model)` returns a runnable."""

from pydantic import BaseModel

from chains.classify import ClassifyInput, build_classify_chain
from chains.qa import QAInput, build_qa_chain
from chains.summarize import SummarizeInput, build_summarize_chain
from chains.translate import TranslateInput, build_translate_chain

CHAIN_BUILDERS = {
    "classify": build_classify_chain,
    "summarize": build_summarize_chain,
    "translate": build_translate_chain,
    "qa": build_qa_chain,
}

CHAIN_INPUTS: dict[str, type[BaseModel]] = {
    "classify": ClassifyInput,
    "summarize": SummarizeInput,
    "translate": TranslateInput,
    "qa": QAInput,
}

__all__ = [
    "CHAIN_BUILDERS",
    "CHAIN_INPUTS",
    "build_classify_chain",
    "build_qa_chain",
    "build_summarize_chain",
    "build_translate_chain",
]
