"""The OpenAI backend: OpenAI itself or any server that speaks its chat-completions protocol."""

from __future__ import annotations

from typing import Any

import httpx
from langchain_core.language_models import LanguageModelInput
from langchain_openai import ChatOpenAI

from app.settings import Settings
from chains.classify import LABEL_CANDIDATES_KWARG

# Call keywords that chainserve's chains pass to any chat model. The local backend uses them;
# the OpenAI API would reject them as unknown request fields.
_CHAINSERVE_KWARGS = (LABEL_CANDIDATES_KWARG, "request_id")


class OpenAIChatModel(ChatOpenAI):
    """ChatOpenAI that drops chainserve's own call keywords from the request body."""

    def _get_request_payload(
        self,
        input_: LanguageModelInput,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        for name in _CHAINSERVE_KWARGS:
            kwargs.pop(name, None)
        return super()._get_request_payload(input_, stop=stop, **kwargs)


def build_openai_model(settings: Settings) -> OpenAIChatModel:
    """Build the OpenAI chat model from settings; the key must be set."""
    if settings.openai_api_key is None:
        raise ValueError("the openai backend needs OPENAI_API_KEY; set it or use the local backend")

    # Own HTTP clients per model: langchain-openai otherwise shares one cached client per
    # base URL in the process, bound to the event loop that first used it, which fails
    # once that loop is closed (a second server in the same process, as in the tests).
    return OpenAIChatModel(
        http_client=httpx.Client(timeout=settings.openai_timeout),
        http_async_client=httpx.AsyncClient(timeout=settings.openai_timeout),
        model=settings.openai_model,
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        temperature=settings.temperature,
        timeout=settings.openai_timeout,
        max_retries=settings.openai_max_retries,
        max_completion_tokens=settings.max_new_tokens,
        stream_usage=True,
    )
