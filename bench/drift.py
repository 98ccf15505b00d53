"""The monitor's drift score on clean and shifted streams of CIFAR-10 test images, in-process
(onnxruntime, the served probabilities): what ``DRIFT_THRESHOLD`` is set from.

    python -m bench drift --model models/cifar10_cnn/1 --images 500 --seeds 10

Each stream is ``--images`` test images drawn at random (one draw per seed), as they are, or
re-encoded at a JPEG quality, or colour-shifted; its score is the monitor's (the larger JS
distance of the class counts and the top-1 probability histogram to the reference computed on
the whole test split), beside the noise floor the monitor reports at that many predictions.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from bench.results import ROOT
from service.core import quality
from service.core.card import MODEL_FILE
from service.dataplane.monitor import noise_floor

DATA = ROOT / "data" / "cifar10-jpeg"  # make data


@lru_cache(maxsize=1)
def test_split(data: Path = DATA) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Every test image as uint8 (N, 32, 32, 3), its class index, and the class names."""
    classes = tuple(sorted(p.name for p in (data / "test").iterdir() if p.is_dir()))
    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((data / "test" / name).glob("*.jpg")):
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(index)
    return np.stack(images), np.asarray(labels), classes


def sample(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` test images (and their labels) drawn at random without replacement."""
    images, labels, _ = test_split()
    chosen = np.random.default_rng(seed).choice(len(images), count, replace=False)
    return images[chosen], labels[chosen]


def reencode(images: np.ndarray, jpeg_quality: int) -> np.ndarray:
    """``images`` saved as JPEG at ``jpeg_quality`` and read back (what real uploads bring)."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=jpeg_quality)
        out[i] = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return out


def darken(images: np.ndarray, factor: float = 0.6) -> np.ndarray:
    """A colour shift: every channel scaled by ``factor`` (an underexposed camera)."""
    return (images.astype(np.float32) * factor).astype(np.uint8)


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "clean": lambda x: x,
    "jpeg q50": lambda x: reencode(x, 50),
    "jpeg q30": lambda x: reencode(x, 30),
    "jpeg q10": lambda x: reencode(x, 10),
    "dark x0.6": darken,
    "BGR": lambda x: np.ascontiguousarray(x[..., ::-1]),
}


def probabilities(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """The graph's ``probabilities`` for ``images``, 512 at a time."""
    session = ort.InferenceSession(str(model_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    parts = [
        session.run(["probabilities"], {"images": images[i : i + 512]})[0]
        for i in range(0, len(images), 512)
    ]
    return np.concatenate(parts)


@lru_cache(maxsize=4)
def test_reference(model_dir: Path) -> quality.Reference:
    """The card's reference block for ``model_dir``'s graph on the whole test split."""
    images, _, classes = test_split()
    p = probabilities(model_dir, images)
    return quality.reference(p.argmax(axis=1).tolist(), p.max(axis=1).tolist(), len(classes))


def drift_score(model_dir: Path, images: np.ndarray) -> float:
    """The monitor's score for a stream of ``images``: the larger of the two distances."""
    reference = test_reference(model_dir)
    p = probabilities(model_dir, images)
    classes = quality.class_counts(p.argmax(axis=1).tolist(), len(reference["class_frequencies"]))
    histogram = quality.histogram(p.max(axis=1).tolist())
    return max(
        quality.js_distance(classes, reference["class_frequencies"]),
        quality.js_distance(histogram, reference["top1_probability_histogram"]),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=Path("models/cifar10_cnn/1"))
    parser.add_argument("--images", type=int, nargs="+", default=[500], help="stream sizes")
    parser.add_argument("--seeds", type=int, default=10, help="streams drawn per size")


def main(args: argparse.Namespace) -> None:
    model_dir = args.model.resolve()
    reference = test_reference(model_dir)
    references = (
        tuple(reference["class_frequencies"]),
        tuple(reference["top1_probability_histogram"]),
    )
    print(f"{args.model}: drift score, min-max over {args.seeds} streams")
    print("| images | noise floor | " + " | ".join(SHIFTS) + " |")
    print("|---" * (len(SHIFTS) + 2) + "|")
    for count in args.images:
        scores: dict[str, list[float]] = {name: [] for name in SHIFTS}
        for seed in range(args.seeds):
            images, _ = sample(count, seed)
            for name, shift in SHIFTS.items():
                scores[name].append(drift_score(model_dir, shift(images)))
        cells = [f"{min(s):.3f}-{max(s):.3f}" for s in scores.values()]
        floor = noise_floor(references, count)
        print(f"| {count} | {floor:.3f} | " + " | ".join(cells) + " |", flush=True)
