"""Which answers need an image classifier: classify, top-k, image uploads, the layer table,
feature maps and the prediction log refuse a tensor model with a 400 that says why."""

from __future__ import annotations

from service.core.card import TENSOR, ModelCard
from service.core.errors import InvalidInput
from service.engine.runtime import ModelRuntime


def check_image_card(card: ModelCard, what: str) -> None:
    """``InvalidInput`` (400) when ``card`` is a tensor model's; ``what``: the answer asked."""
    if card.kind == TENSOR:
        raise InvalidInput(
            f"model {card.name!r} is a tensor model: {what} needs an image classifier (one UINT8 "
            "[-1, H, W, C] input, class probabilities); ask a tensor model through v2 infer "
            "(REST or gRPC) or :predict with its inputs by name"
        )


def require_image(runtime: ModelRuntime, what: str) -> ModelRuntime:
    """``runtime`` when it is an image classifier's; else the 400 of ``check_image_card``."""
    check_image_card(runtime.card, what)
    return runtime
