"""One ablation of the airbench recipe (issue 18): `make train-94`'s run with one method removed.

    make ablate-94 ABLATE=no-lookahead          # RETRAIN_FLAGS="--seed 1" for another seed
    python scripts/ablate_94.py no-dirac -- --data data/cifar10-jpeg <make train-94's flags>

The run trains, tests and exports into runs/ like `python -m training train --no-publish`; the
flags after ``--`` are the recipe's, the ablation's own flags come after them and win. Removing
Dirac init or the whitening layer needs a changed architecture: it is registered here, under
its own name, for this process only.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.__main__ import main as training_main  # noqa: E402
from training.architectures import ARCHITECTURES, CIFAR_94  # noqa: E402


def _without_dirac() -> list[dict[str, Any]]:
    layers = copy.deepcopy(CIFAR_94)
    for layer in layers:
        if layer.get("init") == "dirac":
            del layer["init"]
    return layers


def _without_whitening() -> list[dict[str, Any]]:
    """The 2x2 stem stays, trained from a random start like every other convolution."""
    layers = copy.deepcopy(CIFAR_94)
    stem = layers[0]
    del stem["init"], stem["trainable"]
    return layers


# name: (extra flags, architecture override or None)
ABLATIONS: dict[str, tuple[list[str], list[dict[str, Any]] | None]] = {
    "none": ([], None),
    "no-lookahead": (["--lookahead-every", "0"], None),
    "random-flip": (["--flip", "random"], None),
    "no-bn-bias-scale": (["--bn-bias-lr-scale", "1"], None),
    "no-whiten-bias": (["--whiten-bias-epochs", "0"], None),
    "no-label-smoothing": (["--label-smoothing", "0"], None),
    "no-dirac": ([], _without_dirac()),
    "no-whitening": (["--whiten-bias-epochs", "0"], _without_whitening()),
}


def main(argv: list[str]) -> int:
    if "--" not in argv or len(argv[: argv.index("--")]) != 1:
        sys.exit(f"usage: ablate_94.py {{{','.join(ABLATIONS)}}} -- <training flags>")
    name, recipe = argv[0], argv[argv.index("--") + 1 :]
    if name not in ABLATIONS:
        sys.exit(f"unknown ablation {name!r}; one of: {', '.join(ABLATIONS)}")
    flags, layers = ABLATIONS[name]
    if layers is not None:
        arch = "cifar_94_" + name.replace("-", "_")
        ARCHITECTURES[arch] = layers
        flags = [*flags, "--arch", arch]
    print(f"ablation {name}: {' '.join(flags) or 'the recipe as it is'}", flush=True)
    return training_main(["train", "--no-publish", *recipe, *flags])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
