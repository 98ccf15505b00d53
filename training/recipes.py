"""The training recipes by name, each hyperparameter with its reason (airbench's ``hyp`` dict).

    python -m training train --recipe cifar_94 --seed 1      # a flag overrides one field
    python -m training ablate no-lookahead                   # cifar_94 with one method removed

A field a recipe does not name keeps ``TrainConfig``'s default (``training/config.py``: the
lecture's value, or off). Without ``--recipe`` a run gets those defaults: the lecture's recipe
in float32.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from training.config import TrainConfig

# The lecture's CNN as the lecture trained it (Keras' defaults): `make train`, the retrain job.
LECTURE = TrainConfig(
    arch="lecture",  # 3x3 convs of 32-64-64 filters, max pools, dense 64: 122,570 parameters
    init="keras",  # Glorot-uniform weights, zero biases, as Keras starts
    optimizer="adam",
    lr=1e-3,  # Adam's Keras default
    batch_size=32,  # Keras' default batch
    epochs=10,
    schedule="constant",
    augment="none",
    val_size=5000,  # held out of the train split; the test split gives only the final figure
    keep="best",  # the weights of the best validation epoch: the lecture's checkpoint habit
    autocast="bf16",  # 2.4x float32's step here, the same accuracy over 3 seeds (docs/training.md)
)

# A stronger CNN from the lecture's own toolbox (issue 8): `make train-best`, about 0.90.
CIFAR_BN = TrainConfig(
    arch="cifar_bn",  # conv/BN/GELU blocks of 32-64-128-256 filters: 1.2 M parameters, 86 M MACs
    init="keras",  # the lecture's initialisation, kept
    optimizer="sgd",
    nesterov=True,
    momentum=0.9,
    lr=0.1,  # the one-cycle schedule's peak
    weight_decay=5e-4,  # L2 through the optimizer
    batch_size=128,
    epochs=40,  # 27-32 minutes on 2 cores
    schedule="onecycle",  # up over a quarter of the steps, then down; cycles momentum too
    label_smoothing=0.1,
    augment="flip-crop",  # random mirror and a shift of up to crop_pad pixels
    crop_pad=4,
    flip="random",
    ema=0.999,  # the moving average of the weights is what is validated, tested and exported
    val_size=1000,  # a small validation split: 1,000 more images to train on
    keep="last",  # where the schedule ends; 1,000 validation images would pick on noise
    autocast="bf16",  # about twice float32's convolutions on this CPU
)

# airbench94's methods (Jordan 2024, arXiv 2404.00498; issue 18) on its network: `make train-94`.
# The loss is the batch mean, not airbench's sum, so lr and weight decay are its per-example
# rates times the batch (docs/training-94.md: what differs from the paper).
CIFAR_94 = TrainConfig(
    arch="cifar_94",  # frozen 2x2 whitening, Dirac-initialised 64-256-256 blocks, logits / 9
    init="torch",  # PyTorch's default for what the spec leaves open
    optimizer="sgd",
    nesterov=True,
    momentum=0.85,  # held through the run (the linear schedule leaves it alone)
    lr=1.5,  # the peak; the schedule starts at 0.2x and ends at 0.07x
    weight_decay=1.33e-3,  # coupled: 0.002 of the weights per step at the peak rate
    bn_bias_lr_scale=64.0,  # batch-norm biases learn 64x faster, their weight decay / 64
    batch_size=1024,
    epochs=10,  # the paper: 9.9
    schedule="linear",  # up to the peak over 23% of the steps, then linearly down
    label_smoothing=0.2,
    lookahead_every=5,  # every 5 steps the weights go back to slow weights that step to them
    lookahead_decay=0.95**5,  # the slow weights' share at the end of a cubic ramp from 0
    whiten_bias_epochs=3,  # the frozen whitening layer's bias trains for the first 3 epochs
    augment="flip-crop",  # mirror and shift, no cutout
    crop_pad=2,  # shifts of up to 2 pixels, reflected borders
    flip="alternate",  # a coin per image once, then every image mirrored every other epoch
    tta="flip-translate",  # 6 views averaged in evaluation and in the exported graph
    val_size=1000,
    keep="last",  # the run ends on Lookahead's slow weights, where the schedule ends
    autocast="bf16",  # the whitening layer stays float32 (model.py: FullPrecisionConv2d)
)

RECIPES: dict[str, TrainConfig] = {
    "lecture": LECTURE,
    "cifar_bn": CIFAR_BN,
    "cifar_94": CIFAR_94,
}


@dataclass(frozen=True)
class Ablation:
    """The cifar_94 recipe with one method removed (``make ablate-94 ABLATE=<name>``)."""

    removes: str
    fields: dict[str, Any]  # the recipe's fields that remove it; they win over any flag

    def flags(self) -> str:
        """The fields as the flags that would set them, for the run's log."""
        return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in self.fields.items())


ABLATIONS: dict[str, Ablation] = {
    "none": Ablation("nothing: the recipe as it is", {}),
    "no-lookahead": Ablation("Lookahead", {"lookahead_every": 0}),
    "random-flip": Ablation("the alternating flip (a random one instead)", {"flip": "random"}),
    "no-bn-bias-scale": Ablation("the 64x batch-norm bias rate", {"bn_bias_lr_scale": 1.0}),
    "no-whiten-bias": Ablation("training the whitening bias", {"whiten_bias_epochs": 0}),
    "no-label-smoothing": Ablation("label smoothing", {"label_smoothing": 0.0}),
    "no-dirac": Ablation("Dirac init", {"arch": "cifar_94_no_dirac"}),
    "no-whitening": Ablation(
        "the whitening layer (the 2x2 stem trained from a random start)",
        {"whiten_bias_epochs": 0, "arch": "cifar_94_no_whitening"},
    ),
}


def recipe(name: str | None) -> TrainConfig:
    """The named recipe; None: ``TrainConfig``'s defaults (the lecture's recipe in float32)."""
    return TrainConfig() if name is None else RECIPES[name]


def ablated(config: TrainConfig, name: str) -> TrainConfig:
    """``config`` (cifar_94, with any flags) with the ablation's fields set."""
    return dataclasses.replace(config, **ABLATIONS[name].fields)
