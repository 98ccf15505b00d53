"""The explorer page's model list beside tensor models, in a real headless Chromium: they are
listed, marked as tensor models and not selectable (the page classifies images)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.apps import make_settings
from tests.support.browser import needs_chromium, open_browser
from tests.support.servers import running_server
from tests.support.tensor_models import SIMPLE, tensor_repository

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """The server's URL and how many models its repository holds."""
    repo = tensor_repository(tmp_path_factory.mktemp("kinds") / "models")
    models = sum(1 for folder in repo.iterdir() if folder.is_dir())
    with running_server(make_settings(repo, prediction_log=False), grpc=False) as running:
        yield running.url, models


def test_page_lists_tensor_models_marked_and_unselectable(
    server: tuple[str, int], tmp_path: Path
) -> None:
    url, models = server
    with open_browser() as browser:
        page = browser.page
        page.goto(url + "/")
        options = browser.wait_for(
            f"document.querySelectorAll('#model option').length === {models} && "
            "[...document.querySelectorAll('#model option')]"
            ".map(o => [o.value, o.textContent, o.disabled])"
        )
        assert page.evaluate("$('model').value") == "tiny"  # the one image classifier
        # the tiny graph has no layer table in the lecture's terms: that 422 is expected
        assert not [e for e in browser.errors if "/layers" not in e]
    by_value = {value: (text, disabled) for value, text, disabled in options}
    assert sum(disabled for _, disabled in by_value.values()) == models - 1  # all but tiny
    assert by_value["tiny"] == ("tiny", False)
    text, disabled = by_value[SIMPLE]
    assert disabled and "tensor model" in text
