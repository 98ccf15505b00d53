"""Lookahead: slow weights move towards the fast ones every k steps, and the fast ones go back."""

from __future__ import annotations

import pytest
import torch

from service.core.errors import InvalidConfig
from training.lookahead import Lookahead


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def _move(model: torch.nn.Module, by: float) -> None:
    """A stand-in for an optimizer step (and the batch-norm statistics moving with it)."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(by)


def test_slow_weights_take_a_decayed_step_towards_the_fast_ones_every_k_steps() -> None:
    model = _model()
    lookahead = Lookahead(model, every=2, final_decay=0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    total = 4
    _move(model, 1.0)
    lookahead.step(1, total)  # not a sync step: nothing happens
    assert torch.equal(model.state_dict()["0.weight"], start["0.weight"] + 1.0)
    _move(model, 1.0)
    lookahead.step(2, total)  # decay 0.5 * (2/4)**3 = 1/16 of the slow weights kept
    decay = 0.5 * (2 / 4) ** 3
    expected = decay * start["0.weight"] + (1 - decay) * (start["0.weight"] + 2.0)
    torch.testing.assert_close(model.state_dict()["0.weight"], expected)  # fast went back to slow
    torch.testing.assert_close(lookahead.slow[0], expected)
    running = decay * start["1.running_mean"] + (1 - decay) * (start["1.running_mean"] + 2.0)
    torch.testing.assert_close(
        model.state_dict()["1.running_mean"], running
    )  # buffers move with the weights
    assert model.state_dict()["1.num_batches_tracked"].item() == 0  # integer buffers are left alone


def test_decay_ramps_cubically_from_zero_so_early_syncs_change_nothing() -> None:
    model = _model()
    lookahead = Lookahead(model, every=1, final_decay=0.77)
    assert lookahead.decay(0, 100) == 0.0
    assert lookahead.decay(50, 100) == pytest.approx(0.77 / 8)
    assert lookahead.decay(100, 100) == pytest.approx(0.77)
    _move(model, 3.0)
    moved = model.state_dict()["0.weight"].clone()
    lookahead.step(1, 10**6)  # decay ~ 0: the slow weights jump to the fast ones
    torch.testing.assert_close(model.state_dict()["0.weight"], moved)


def test_finish_puts_the_slow_weights_into_the_model_and_state_round_trips() -> None:
    model = _model()
    lookahead = Lookahead(model, every=3, final_decay=0.5)
    slow = [t.clone() for t in lookahead.slow]
    _move(model, 5.0)
    state = lookahead.state_dict()
    lookahead.finish()
    assert torch.equal(model.state_dict()["0.weight"], slow[0])
    other = Lookahead(_model(), every=3, final_decay=0.5)
    other.load_state_dict(state)
    for a, b in zip(other.slow, slow, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("every", "decay"), [(0, 0.5), (5, 1.0), (5, -0.1)])
def test_bad_settings_are_refused(every: int, decay: float) -> None:
    with pytest.raises(InvalidConfig, match="lookahead"):
        Lookahead(_model(), every=every, final_decay=decay)
