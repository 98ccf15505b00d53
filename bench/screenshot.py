"""The README's screenshot of the explorer page: the shipped lecture model classifying a real
CIFAR-10 test image (a cat), its feature maps below.

    python -m bench screenshot        # writes docs/images/explorer.png

Needs the system Chromium (``make browser``) and ``data/cifar10-jpeg`` (``make data``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.results import ROOT
from bench.server import running_service

IMAGE = ROOT / "data" / "cifar10-jpeg" / "test" / "cat" / "0000.jpg"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "explorer.png")


def main(args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or not IMAGE.is_file():
        sys.exit("needs chromium (make browser) and the data (make data)")
    env = {"MODEL_REPOSITORY": str(ROOT / "models"), "PROVIDERS": "CPUExecutionProvider"}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_service(env, Path(tmp) / "server.log", grpc=False) as server,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"http://{server.address}/")
        page.select_option("#model", "cifar10_cnn")
        page.set_input_files("#file", IMAGE)
        deadline = time.monotonic() + 30
        while page.evaluate("document.querySelectorAll('#feature-maps img').length") < 1:
            if time.monotonic() > deadline:
                sys.exit("the page showed no feature maps within 30 s")
            time.sleep(0.2)
        time.sleep(1.0)  # the grids' images finish loading
        page.screenshot(path=args.out)
        browser.close()
    print(f"wrote {args.out}")
