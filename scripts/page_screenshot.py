"""The README's screenshot of the explorer page: the shipped lecture model classifying a real
CIFAR-10 test image (a cat), its feature maps below.

    python scripts/page_screenshot.py        # writes docs/images/explorer.png

Needs the system Chromium (``make browser``) and ``data/cifar10-jpeg`` (``make data``).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from service.settings import Settings  # noqa: E402
from tests.support.servers import running_server  # noqa: E402

OUT = ROOT / "docs" / "images" / "explorer.png"
IMAGE = ROOT / "data" / "cifar10-jpeg" / "test" / "cat" / "0000.jpg"


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or not IMAGE.is_file():
        sys.exit("needs chromium (make browser) and the data (make data)")
    settings = Settings(model_repository=ROOT / "models", providers=["CPUExecutionProvider"])
    with running_server(settings, grpc=False) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server.url + "/")
        page.select_option("#model", "cifar10_cnn")
        page.set_input_files("#file", IMAGE)
        deadline = time.monotonic() + 30
        while page.evaluate("document.querySelectorAll('#feature-maps img').length") < 1:
            if time.monotonic() > deadline:
                sys.exit("the page showed no feature maps within 30 s")
            time.sleep(0.2)
        time.sleep(1.0)  # the grids' images finish loading
        page.screenshot(path=OUT)
        browser.close()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
