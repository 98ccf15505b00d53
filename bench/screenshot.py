"""The README's screenshot of the explorer page: the shipped lecture model classifying a real
CIFAR-10 test image (a cat), its feature maps below; with ``--monitor``, the monitoring panel
after test images re-encoded at JPEG quality 50 were classified and labelled through feedback.

    python -m bench screenshot             # writes docs/images/explorer.png
    python -m bench screenshot --monitor   # writes docs/images/explorer-monitor.png

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


IMAGES = ROOT / "docs" / "images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="default docs/images/explorer[-monitor].png")
    parser.add_argument("--monitor", action="store_true", help="the monitoring panel instead")
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="model repository")
    parser.add_argument("--images", type=int, default=500, help="--monitor: test images sent")
    parser.add_argument(
        "--jpeg-quality", type=int, default=50, help="--monitor: 0 sends them as they are"
    )


def send_labelled_stream(address: str, count: int, jpeg_quality: int) -> None:
    """``count`` test images (seed 0; re-encoded at ``jpeg_quality`` unless 0) through v2 infer to
    cifar10_cnn, each then labelled with its true class through ``POST /v1/feedback``."""
    import httpx

    from bench.drift import reencode, sample

    images, labels = sample(count, 0)
    images = reencode(images, jpeg_quality) if jpeg_quality else images
    feedback = []
    for start in range(0, count, 100):
        batch, request_id = images[start : start + 100], f"screenshot-{start}"
        body = {"id": request_id, "inputs": [{"name": "images", "shape": list(batch.shape),
                "datatype": "UINT8", "data": batch.ravel().tolist()}]}  # fmt: skip
        url = f"http://{address}/v2/models/cifar10_cnn/infer"
        httpx.post(url, json=body, timeout=60).raise_for_status()
        feedback += [{"id": request_id, "item": i, "label": int(label)}
                     for i, label in enumerate(labels[start : start + 100])]  # fmt: skip
    httpx.post(f"http://{address}/v1/feedback", json=feedback, timeout=60).raise_for_status()


def main(args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or not IMAGE.is_file():
        sys.exit("needs chromium (make browser) and the data (make data)")
    out = args.out or IMAGES / ("explorer-monitor.png" if args.monitor else "explorer.png")
    env = {"MODEL_REPOSITORY": str(args.models), "PROVIDERS": "CPUExecutionProvider"}
    with tempfile.TemporaryDirectory() as tmp:
        if args.monitor:  # a log of its own, feedback from this process without a token
            env |= {"PREDICTION_LOG": "true", "DATA_DIR": tmp, "FEEDBACK_OPEN": "true"}
        with (
            running_service(env, Path(tmp) / "server.log", grpc=False) as server,
            sync_playwright() as playwright,
        ):
            if args.monitor:
                send_labelled_stream(server.address, args.images, args.jpeg_quality)
                time.sleep(1.5)  # the log's writer and the monitor's 1 s answer cache
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://{server.address}/")
            page.select_option("#model", "cifar10_cnn")
            if args.monitor:
                page.click("#tab-monitor")
                shown = "!document.getElementById('monitor-body').hidden"
            else:
                page.set_input_files("#file", IMAGE)
                shown = "document.querySelectorAll('#feature-maps img').length > 0"
            deadline = time.monotonic() + 30
            while not page.evaluate(shown):
                if time.monotonic() > deadline:
                    sys.exit(f"the page did not show {shown} within 30 s")
                time.sleep(0.2)
            time.sleep(1.0)  # the grids' images finish loading
            page.screenshot(path=out, full_page=args.monitor)
            browser.close()
    print(f"wrote {out}")
