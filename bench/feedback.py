"""Feedback traffic for the retrain job's documented run (docs/monitoring.md, "Retraining on
feedback"): test images re-encoded as JPEG sent to the real service with capture on, their true
labels posted back; then both models scored on the test images that were never sent.

    python -m bench feedback send --repository runs/feedback/models --data-dir runs/feedback/log
    python -m bench feedback score --model runs/feedback/models/cifar10_cnn/1 --model ...

Traffic is the test images with an odd index (every class alike: the image folder is sorted by
class), so the images with an even index stay clean of it: ``score`` measures on those.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.server import running_service

BATCH = 32  # images per :classify request (items 0..31 of one request id)
FEEDBACK_BATCH = 1024  # the feedback route's largest list


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("send", "score"))
    parser.add_argument("--data", type=Path, default=Path("data/cifar10-jpeg"))
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    parser.add_argument("--quality", type=int, default=50, help="JPEG quality of the traffic")
    parser.add_argument("--repository", type=Path, help="send: the model repository to serve")
    parser.add_argument("--name", default="cifar10_cnn", help="send: the model to send to")
    parser.add_argument("--data-dir", type=Path, help="send: DATA_DIR, where the log is written")
    parser.add_argument("--limit", type=int, default=0, help="send: only the first N images")
    parser.add_argument(
        "--model", type=Path, action="append", default=[], help="score: a version folder"
    )


def jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """One uint8 (32, 32, 3) image as JPEG bytes (Pillow's 4:2:0, as the data copy was made)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def decoded(images: np.ndarray, quality: int) -> np.ndarray:
    """``images`` after one JPEG round trip at ``quality``: what the service sees of them."""
    out = np.empty_like(images)
    for i, pixels in enumerate(images):
        with Image.open(io.BytesIO(jpeg(pixels, quality))) as image:
            out[i] = np.asarray(image.convert("RGB"))
    return out


def _test_split(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    from training.data import load_cifar10

    test = load_cifar10(args.data, args.cache_dir).test
    return test.images, test.labels


def send(args: argparse.Namespace) -> dict[str, Any]:
    """The odd-index test images at ``--quality`` through ``:classify``, then their labels."""
    images, labels = _test_split(args)
    picked = np.arange(1, len(labels), 2)
    if args.limit:
        picked = picked[: args.limit]
    env = {
        "MODEL_REPOSITORY": str(args.repository.resolve()),
        "PREDICTION_LOG": "true",
        "CAPTURE_IMAGES": "1",
        "DATA_DIR": str(args.data_dir.resolve()),
        "ADMIN_LOOPBACK": "true",
    }
    log = args.data_dir / "service.log"
    args.data_dir.mkdir(parents=True, exist_ok=True)
    correct, started = 0, time.perf_counter()
    with running_service(env, log, grpc=False) as where, httpx.Client(timeout=60) as client:
        base = f"http://{where.address}"
        labels_sent: list[dict[str, Any]] = []
        for first in range(0, len(picked), BATCH):
            chunk = picked[first : first + BATCH]
            request_id = f"q{args.quality}-{first:05d}"
            files = [("file", (f"{i}.jpg", jpeg(images[i], args.quality))) for i in chunk]
            answer = client.post(
                f"{base}/v1/models/{args.name}:classify",
                files=files,
                headers={"X-Request-ID": request_id},
            )
            answer.raise_for_status()
            for item, (i, row) in enumerate(zip(chunk, answer.json()["predictions"], strict=True)):
                correct += int(_top1(row) == int(labels[i]))
                labels_sent.append({"id": request_id, "item": item, "label": int(labels[i])})
        for first in range(0, len(labels_sent), FEEDBACK_BATCH):
            posted = client.post(
                f"{base}/v1/feedback", json=labels_sent[first : first + FEEDBACK_BATCH]
            )
            posted.raise_for_status()
    return {
        "images": len(picked),
        "quality": args.quality,
        "served_accuracy": correct / len(picked),
        "seconds": round(time.perf_counter() - started, 1),
        "database": str(args.data_dir / "predictions.sqlite3"),
    }


def _top1(row: list[dict[str, Any]]) -> int:
    """The class index of a ``:classify`` prediction's first (most probable) class."""
    return int(row[0]["index"])


def score(args: argparse.Namespace) -> dict[str, Any]:
    """Each ``--model``'s accuracy (onnxruntime) on the even-index test images, clean and at
    ``--quality``: images no traffic, feedback or training ever held."""
    from service.core.card import MODEL_FILE
    from training.evaluation import onnx_logits

    images, labels = _test_split(args)
    even = np.arange(0, len(labels), 2)
    clean, shifted = images[even], decoded(images[even], args.quality)
    figures: dict[str, Any] = {"images": len(even), "quality": args.quality}
    for folder in args.model:
        path = folder / MODEL_FILE
        figures[str(folder)] = {
            "clean": float((onnx_logits(path, clean).argmax(1) == labels[even]).mean()),
            f"q{args.quality}": float(
                (onnx_logits(path, shifted).argmax(1) == labels[even]).mean()
            ),
        }
    return figures


def main(args: argparse.Namespace) -> None:
    if args.action == "send" and (args.repository is None or args.data_dir is None):
        raise SystemExit("send needs --repository and --data-dir")
    result = send(args) if args.action == "send" else score(args)
    print(json.dumps(result, indent=2))
