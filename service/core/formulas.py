"""The lecture's layer arithmetic, as formulas: output sizes and parameter counts.

- convolution: ``W2 = (W1 - F + 2P) / S + 1``, ``D2 = K``, parameters ``(F*F*C_in + 1) * K``
- pooling:     ``W2 = (W1 - F) / S + 1``, ``D2 = D1``, no parameters
- dense:       ``(n_in + 1) * units``
- batch norm:  4 per channel (gamma, beta trainable; moving mean and variance not), as in Keras

Pure standard library: training, the service and the calculator share them.
"""

from __future__ import annotations

from service.core.errors import InvalidLayerSpec

MAX_DIM = 1 << 20  # larger sizes are absurd for this service and would overflow later arithmetic


def conv_output_size(w: int, f: int, s: int = 1, p: int = 0, *, strict: bool = False) -> int:
    """``(W - F + 2P) / S + 1``; floors a fractional result (as Keras does) unless ``strict``."""
    if w < 1 or f < 1 or s < 1 or p < 0:
        raise InvalidLayerSpec(f"sizes must be positive: W={w}, F={f}, S={s}, P={p}")
    span = w - f + 2 * p
    if span < 0:
        raise InvalidLayerSpec(
            f"(W - F + 2P) / S + 1 = ({w} - {f} + 2*{p}) / {s} + 1 is below 1: "
            f"the window is larger than the padded input"
        )
    if strict and span % s:
        raise InvalidLayerSpec(
            f"(W - F + 2P) / S + 1 = ({w} - {f} + 2*{p}) / {s} + 1 = {span / s + 1:g} "
            f"is not a whole number"
        )
    return span // s + 1


def pool_output_size(w: int, f: int, s: int, *, strict: bool = False) -> int:
    """``(W - F) / S + 1``: pooling is a convolution without padding or parameters."""
    if w < 1 or f < 1 or s < 1:
        raise InvalidLayerSpec(f"sizes must be positive: W={w}, F={f}, S={s}")
    span = w - f
    if span < 0:
        raise InvalidLayerSpec(
            f"(W - F) / S + 1 = ({w} - {f}) / {s} + 1 is below 1: the pool window is larger "
            f"than the input"
        )
    if strict and span % s:
        raise InvalidLayerSpec(
            f"(W - F) / S + 1 = ({w} - {f}) / {s} + 1 = {span / s + 1:g} is not a whole number"
        )
    return span // s + 1


def conv_params(f: int, c_in: int, k: int, *, bias: bool = True) -> int:
    """``(F*F*C_in + 1) * K``: each of the K filters has F*F*C_in weights and one bias."""
    return (f * f * c_in + (1 if bias else 0)) * k


def dense_params(n_in: int, units: int, *, bias: bool = True) -> int:
    return (n_in + (1 if bias else 0)) * units


def same_padding(w: int, f: int, s: int) -> tuple[int, int]:
    """Keras/TensorFlow 'same' padding (before, after): output ceil(W/S), extra on the far side."""
    out = -(-w // s)
    total = max((out - 1) * s + f - w, 0)
    return total // 2, total - total // 2
