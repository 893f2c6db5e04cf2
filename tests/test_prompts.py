"""Prompt file loading: every shipped file is valid, and a broken one fails at start-up."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.server import create_app
from app.settings import Settings
from chains import CHAIN_BUILDERS
from chains.prompts import DEFAULT_PROMPTS_DIR, PromptFileError, load_prompt_file


@pytest.mark.parametrize("task", list(CHAIN_BUILDERS))
def test_shipped_prompt_files_load(task: str) -> None:
    prompt = load_prompt_file(task)

    languages = set()
    for example in prompt.examples:
        inputs = "".join(str(value) for key, value in example.items() if key != "output")
        languages.add("zh" if any("\u4e00" <= ch <= "\u9fff" for ch in inputs) else "en")

    assert languages == {"en", "zh"}, f"{task} needs English and Chinese examples"


@pytest.fixture
def prompts_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "prompts"
    shutil.copytree(DEFAULT_PROMPTS_DIR, folder)
    return folder


def rewrite(folder: Path, task: str, old: str, new: str) -> Path:
    path = folder / f"{task}.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_missing_variable_names_file(prompts_copy: Path) -> None:
    path = rewrite(prompts_copy, "qa", "variables: [context, question]", "variables: [context]")

    with pytest.raises(PromptFileError) as error:
        load_prompt_file("qa", prompts_copy)

    assert str(path) in str(error.value)
    assert "question" in str(error.value)
    assert "missing from 'variables'" in str(error.value)


def test_unknown_key_names_key(prompts_copy: Path) -> None:
    rewrite(prompts_copy, "summarize", "stop:", "stopp:")

    with pytest.raises(PromptFileError, match="unknown key 'stopp'"):
        load_prompt_file("summarize", prompts_copy)


def test_empty_examples_rejected(prompts_copy: Path) -> None:
    path = prompts_copy / "translate.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: text.index("examples:")] + "examples: []\n", encoding="utf-8")

    with pytest.raises(PromptFileError, match="examples list is empty"):
        load_prompt_file("translate", prompts_copy)


def test_example_missing_variable_rejected(prompts_copy: Path) -> None:
    rewrite(prompts_copy, "classify", '  - text: "I absolutely', '  - txt: "I absolutely')

    with pytest.raises(PromptFileError, match=r"example 0 is missing variable\(s\) \['text'\]"):
        load_prompt_file("classify", prompts_copy)


def test_unused_variable_rejected(prompts_copy: Path) -> None:
    rewrite(
        prompts_copy, "qa", "variables: [context, question]", "variables: [context, question, x]"
    )

    with pytest.raises(PromptFileError, match="which no template uses"):
        load_prompt_file("qa", prompts_copy)


def test_invalid_yaml_names_file(prompts_copy: Path) -> None:
    (prompts_copy / "qa.yaml").write_text("system: [unclosed\n", encoding="utf-8")

    with pytest.raises(PromptFileError, match="could not be read"):
        load_prompt_file("qa", prompts_copy)


def test_broken_prompt_fails_app_start(prompts_copy: Path, tmp_path: Path) -> None:
    rewrite(prompts_copy, "qa", "variables: [context, question]", "variables: [context]")
    settings = Settings(
        prompts_dir=prompts_copy,
        backend="local",
        openai_api_key=None,
        cache_dir=tmp_path,
        _env_file=None,  # type: ignore[call-arg]
    )

    with pytest.raises(PromptFileError, match="qa.yaml"):
        create_app(settings)


def test_cli_reports_broken_prompt(prompts_copy: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    rewrite(prompts_copy, "qa", "variables: [context, question]", "variables: [context]")
    env = {**os.environ, "CHAINSERVE_PROMPTS_DIR": str(prompts_copy), "CHAINSERVE_PORT": "0"}
    env.pop("OPENAI_API_KEY", None)

    result = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )

    assert result.returncode == 2
    assert "qa.yaml" in result.stderr
    assert "question" in result.stderr
    assert "Traceback" not in result.stderr
