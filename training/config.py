"""A training run's config as one frozen dataclass; every field is a CLI flag and lands in the card.

Defaults are the lecture's: Adam (lr 1e-3), cross-entropy on logits, batch 32, 10 epochs, pixels
scaled to [0, 1] (inside the model), float32. The named recipes are in ``training/recipes.py``;
a flag overrides one field of the recipe it is given with.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass(frozen=True)
class TrainConfig:
    arch: str = _f("lecture", "architecture name (training.model.ARCHITECTURES)")
    epochs: int = _f(10, "passes over the training split (lecture: 10)")
    batch_size: int = _f(32, "images per optimizer step (Keras' default, as the lecture used)")
    lr: float = _f(1e-3, "Adam learning rate (Keras' default)")
    init: str = _f(
        "keras",
        "weight initialisation: keras (Glorot uniform, zero bias) or torch",
        choices=("keras", "torch"),
    )
    weight_decay: float = _f(0.0, "L2 penalty added by the optimizer (0: the lecture's recipe)")
    optimizer: str = _f("adam", "adam (the lecture's) or sgd", choices=("adam", "sgd"))
    momentum: float = _f(0.9, "SGD momentum (with --optimizer sgd)")
    nesterov: bool = _f(True, "Nesterov momentum for SGD")
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing (0: none, the lecture's)")
    schedule: str = _f(
        "constant",
        "learning rate schedule: constant (the lecture's), onecycle (PyTorch's OneCycleLR: up to "
        "--lr over a quarter of the steps, then down; it also cycles momentum 0.95-0.85-0.95 and "
        "ignores --momentum) or linear (airbench's: from 0.2 x --lr up to --lr over 23%% of the "
        "steps, then down to 0.07 x --lr; --momentum held)",
        choices=("constant", "onecycle", "linear"),
    )
    augment: str = _f(
        "none",
        "batch augmentation: none, flip, flip-crop, flip-crop-cutout",
        choices=("none", "flip", "flip-crop", "flip-crop-cutout"),
    )
    crop_pad: int = _f(4, "largest shift in pixels for the random crop (reflected border)")
    flip: str = _f(
        "random",
        "how --augment flips: random (a coin per image per step) or alternate (airbench's "
        "derandomized flip: a coin per image once, then every image flipped every other epoch)",
        choices=("random", "alternate"),
    )
    cutout_size: int = _f(8, "side in pixels of the cutout square")
    jpeg_p: float = _f(
        0.0,
        "JPEG robustness: the share of training images re-encoded as JPEG (Pillow, 4:2:0) at a "
        "random quality each epoch, in a thread while the epoch before trains; 0: off",
    )
    jpeg_min_quality: int = _f(30, "JPEG robustness: the lowest quality drawn")
    jpeg_max_quality: int = _f(95, "JPEG robustness: the highest quality drawn")
    ema: float = _f(
        0.0,
        "decay per step of a moving average of the weights (and batch-norm statistics) that is "
        "validated, tested and exported instead of the last weights; 0: off (the lecture's)",
    )
    lookahead_every: int = _f(
        0,
        "Lookahead: every N steps the weights move back to slow weights that take a step "
        "towards them (airbench: 5); 0: off",
    )
    lookahead_decay: float = _f(
        0.95**5,
        "Lookahead: share of the slow weights kept at each sync, reached at the end of training "
        "on a cubic ramp from 0 (airbench's schedule)",
    )
    bn_bias_lr_scale: float = _f(
        1.0,
        "learning-rate multiplier for batch-norm biases, whose weight decay is divided by it so "
        "the decay per step stays (airbench: 64); 1: plain",
    )
    whiten_bias_epochs: int = _f(
        0,
        "epochs during which a frozen whitening layer's bias is trained (airbench: 3); 0: never",
    )
    tta: str = _f(
        "none",
        "test-time augmentation in evaluation and in the exported graph: none, flip (the image "
        "and its mirror) or flip-translate (also both shifted by one pixel each way, reflected)",
        choices=("none", "flip", "flip-translate"),
    )
    autocast: str = _f(
        "none", "mixed precision: none or bf16 (CPU or CUDA autocast)", choices=("none", "bf16")
    )
    val_size: int = _f(5000, "images held out of the train split for validation")
    keep: str = _f(
        "best",
        "weights kept: best (the epoch of highest validation accuracy, the lecture's checkpoint "
        "habit) or last (where an annealed schedule ends; a small validation split picks on noise)",
        choices=("best", "last"),
    )
    seed: int = _f(0, "seed for the split, the initial weights and the shuffling")
    threads: int = _f(
        0,
        "torch intra-op threads; 0: every core given to the process, or one while that runs "
        "faster (another process holding a core; looked at every 300 steps, training/threads.py)",
    )
    device: str = _f(
        "cpu", "cpu, cuda, or auto (cuda when present)", choices=("cpu", "cuda", "auto")
    )
    limit_train: int = _f(0, "use only the first N training images (0: all); for quick runs")
    limit_test: int = _f(0, "use only the first N test images (0: all); for quick runs")
    eval_batch_size: int = _f(500, "images per forward pass when evaluating")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per field, help from the dataclass. A flag not given stays out of the
    namespace (``SUPPRESS``), so that only the flags given override the recipe's fields."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default)
        help = f"{f.metadata['help']} (default: the recipe's; without one, {f.default})"
        if kind is bool:  # --nesterov / --no-nesterov
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help
            )
            continue
        parser.add_argument(
            flag,
            type=kind,
            default=argparse.SUPPRESS,
            help=help,
            choices=f.metadata.get("choices"),
        )


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (the dataclass's defaults if None) with the fields whose flags were given."""
    fields = dataclasses.fields(TrainConfig)
    given = {f.name: getattr(args, f.name) for f in fields if f.name in args}
    return dataclasses.replace(base or TrainConfig(), **given)
