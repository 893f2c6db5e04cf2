"""Browser tests of the LangServe playground of every chain, with Playwright driving chromium.

The tests use Debian's chromium at /usr/bin/chromium (`apt-get install chromium
fonts-noto-cjk`) and Playwright's Python package, so no browser build is downloaded. Without
them the tests skip, but they fail when the environment variable CI is `true` or `1`.

The LangServe 0.3.3 playground renders the output as the JSON of each streamed chunk, one after
another, so the tests parse those chunks and join them before comparing with the reply.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from app.settings import Settings
from tests.conftest import TINY_REPLY, LiveServer, running_server
from tests.sse import join_chunks

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # Without Playwright the tests skip, or fail under CI.
    sync_playwright = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from playwright.sync_api import (
        BrowserContext,
        ConsoleMessage,
        Error,
        Locator,
        Page,
        Playwright,
    )

CHROMIUM_PATH = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

# Limits for one chain run. With the tiny model a whole run took under 5 s in local runs.
ACTION_TIMEOUT_MS = 15_000
PAGE_LOAD_TIMEOUT_S = 15.0
STREAM_TIMEOUT_S = 30.0
# How long a filled field must keep its value: well past JSONForms' 10 ms change debounce and
# the render that follows it.
FORM_SETTLE_MS = 200

PLAYGROUND_INPUTS: dict[str, dict[str, str]] = {
    # The labels list keeps its default, because the playground's list control needs a click
    # on + and a fill for each item. NOTE: the form starts from the schema's `default`, which
    # a pydantic `default_factory` does not emit, so today the playground sends `labels: []`.
    "classify": {"text": "这家餐厅的菜很好吃！"},
    "summarize": {"text": "今天上午，市政府宣布将在明年建设三座新公园。The parks open in 2027."},
    "translate": {"text": "我明天要去上海出差。", "target_language": "English"},
    "qa": {"question": "What does the model reply?", "context": f"The model replies {TINY_REPLY}."},
}

TEXT_FIELD = {"summarize": "summary", "translate": "translation", "qa": "answer"}
DEFAULT_LABELS = {"positive", "negative", "neutral"}


def find_missing_requirements() -> list[str]:
    """List what the browser tests need but this machine lacks."""
    missing = []
    if sync_playwright is None:
        missing.append("the Python package playwright (pip install playwright)")
    if not CHROMIUM_PATH.is_file():
        missing.append(f"chromium at {CHROMIUM_PATH} (apt-get install chromium fonts-noto-cjk)")
    return missing


MISSING_REQUIREMENTS = find_missing_requirements()
MISSING_REASON = "playground browser tests need " + " and ".join(MISSING_REQUIREMENTS)
CI_REQUIRES_BROWSER = os.environ.get("CI", "").lower() in {"true", "1"}

# Skip through a mark, so a skipped test starts no server. Under CI the fixture fails instead.
pytestmark = pytest.mark.skipif(
    bool(MISSING_REQUIREMENTS) and not CI_REQUIRES_BROWSER, reason=MISSING_REASON
)


def launch_chromium(
    playwright: Playwright, user_data_dir: Path, **context_options: Any
) -> BrowserContext:
    """Launch headless chromium with a fresh profile in `user_data_dir`.

    `context_options` go to `launch_persistent_context`, for example `extra_http_headers`.
    """
    context = playwright.chromium.launch_persistent_context(
        user_data_dir,
        executable_path=CHROMIUM_PATH,
        args=CHROMIUM_ARGS,
        headless=True,
        **context_options,
    )
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    return context


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    if MISSING_REQUIREMENTS:
        pytest.fail(f"{MISSING_REASON}; CI is set, so they must run", pytrace=False)
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser_context(
    playwright_driver: Playwright, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrowserContext]:
    context = launch_chromium(playwright_driver, tmp_path_factory.mktemp("chromium-profile"))
    yield context
    context.close()


@pytest.fixture
def page(browser_context: BrowserContext) -> Iterator[Page]:
    page = browser_context.new_page()
    yield page
    page.close()


def wait_until(
    page: Page, condition: Callable[[], bool], errors: list[str], what: str, timeout_s: float
) -> None:
    """Poll `condition` until it holds. Raise AssertionError on a browser error or a timeout."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if errors:
            raise AssertionError(f"browser errors while waiting for {what}:\n" + "\n".join(errors))
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        page.wait_for_timeout(100)


def fill_until_kept(
    page: Page, field: Locator, value: str, errors: list[str], field_name: str
) -> None:
    """Fill `field` with `value`, filling again until the form keeps the value.

    JSONForms reports a change to the playground 10 ms after it happens, and the playground
    feeds that data back into the form. So a fill that lands between the report and the next
    render is overwritten with the older data, which Playwright can do when it fills two fields
    in a row.
    """
    deadline = time.monotonic() + PAGE_LOAD_TIMEOUT_S
    while True:
        if field.input_value() != value:
            field.fill(value)
        page.wait_for_timeout(FORM_SETTLE_MS)
        if field.input_value() == value:
            return

        if errors:
            message = f"browser errors while filling the field {field_name}:\n" + "\n".join(errors)
            raise AssertionError(message)
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the form did not keep the value of the field {field_name} "
                f"within {PAGE_LOAD_TIMEOUT_S} s"
            )


def run_playground(
    page: Page, url: str, chain: str, inputs: dict[str, str], query: str = ""
) -> str:
    """Fill the playground form of `chain` at `url`, press Start and return the output text.

    The text is read from the output box after the stream ends. Raises AssertionError when the
    browser reports a page error or a console error (a failed request logs one), or when the
    request that the page sends does not carry `inputs`.
    """
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"console error: {message.text}")

    def on_page_error(error: Error) -> None:
        errors.append(f"page error: {error}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    try:
        page.goto(f"{url}/{chain}/playground/{query}")

        # JSONForms gives each control the id `#/properties/<field>-input`.
        fields = {name: page.locator(f'[id="#/properties/{name}-input"]') for name in inputs}
        first_field = next(iter(fields.values()))
        wait_until(page, first_field.is_visible, errors, "the input form", PAGE_LOAD_TIMEOUT_S)

        for name, value in inputs.items():
            fill_until_kept(page, fields[name], value, errors, name)

        # While the stream runs, the button's accessible name is "Loading... Stop".
        start = page.get_by_role("button", name="Start", exact=True)
        with page.expect_request(lambda request: request.url.endswith("/stream_log")) as sent:
            start.click()
        body = sent.value.post_data_json
        assert body is not None, "the playground sent its request without a JSON body"
        sent_input = body["input"]
        for name, value in inputs.items():
            assert sent_input.get(name) == value, f"the playground sent {sent_input}"

        # The output box appears with the first chunk, and the Start button comes back when the
        # stream ends.
        heading = page.get_by_role("heading", name="Output", exact=True)
        output = heading.locator("xpath=following-sibling::div[1]")
        wait_until(
            page,
            lambda: output.is_visible() and start.is_visible(),
            errors,
            "the end of the output stream",
            STREAM_TIMEOUT_S,
        )
        text = output.text_content() or ""

        if errors:
            raise AssertionError("browser errors during the run:\n" + "\n".join(errors))
        return text
    finally:
        page.remove_listener("console", on_console)
        page.remove_listener("pageerror", on_page_error)


def parse_output_chunks(text: str) -> list[Any]:
    """Decode output text made of JSON values written back to back, such as `{..}{..}`."""
    decoder = json.JSONDecoder()
    chunks = []
    position = 0
    while position < len(text):
        if text[position].isspace():
            position += 1
            continue
        try:
            chunk, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise AssertionError(f"the output is not JSON chunks ({error}): {text!r}") from None
        chunks.append(chunk)
    return chunks


@pytest.mark.parametrize("chain", list(PLAYGROUND_INPUTS))
def test_playground_streams_reply(
    tiny_server: LiveServer, page: Page, artifacts_dir: Path, chain: str
) -> None:
    # Save a screenshot even when the run fails, because it shows what the page rendered.
    try:
        text = run_playground(page, tiny_server.url, chain, PLAYGROUND_INPUTS[chain])
    finally:
        page.screenshot(path=artifacts_dir / f"playground-{chain}.png", full_page=True)
    output = join_chunks(parse_output_chunks(text))

    if chain == "classify":
        assert output["label"] in DEFAULT_LABELS
        assert set(output["scores"]) == DEFAULT_LABELS
    else:
        assert output[TEXT_FIELD[chain]] == TINY_REPLY
    if chain == "qa":
        assert output["answerable"] is True


def test_playground_with_api_key(
    playwright_driver: Playwright,
    tmp_path: Path,
    tiny_settings_factory: Callable[..., Settings],
    artifacts_dir: Path,
) -> None:
    settings = tiny_settings_factory(api_keys=["browser-key"], public_ready=True)
    context = launch_chromium(playwright_driver, tmp_path / "profile")
    page = context.new_page()

    try:
        with running_server(settings) as server:
            rejected = context.request.get(f"{server.url}/translate/playground/")
            assert rejected.status == 401

            text = run_playground(
                page,
                server.url,
                "translate",
                PLAYGROUND_INPUTS["translate"],
                query="?api_key=browser-key",
            )
            page.screenshot(path=artifacts_dir / "playground-api-key.png", full_page=True)
    finally:
        context.close()

    assert join_chunks(parse_output_chunks(text))["translation"] == TINY_REPLY
