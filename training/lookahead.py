"""Lookahead (Zhang et al., 2019) as airbench uses it: slow weights that the optimizer's fast
weights are pulled back to every few steps, the slow weights' share growing towards the end.

Late in training this averages the noise of the last steps away, as an EMA does, but the run
continues from the average instead of beside it.
"""

from __future__ import annotations

from typing import Any

import torch

from service.core.errors import InvalidConfig


class Lookahead:
    """Every ``every`` steps: ``slow = decay * slow + (1 - decay) * fast``, then ``fast = slow``.

    ``decay`` ramps from 0 (plain training: slow follows fast) to ``final_decay`` as
    ``final_decay * progress ** 3``; floating-point buffers (batch-norm statistics) are pulled
    along with the weights so that they match them.
    """

    def __init__(self, model: torch.nn.Module, every: int, final_decay: float):
        if every < 1 or not 0 <= final_decay < 1:
            raise InvalidConfig(
                f"--lookahead-every {every} --lookahead-decay {final_decay}: the sync needs "
                "every >= 1 and 0 <= decay < 1"
            )
        self.every, self.final_decay = every, final_decay
        self.fast = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.slow = [t.detach().clone() for t in self.fast]

    def decay(self, step: int, total_steps: int) -> float:
        return self.final_decay * (step / max(1, total_steps)) ** 3

    @torch.no_grad()
    def step(self, step: int, total_steps: int) -> None:
        """After optimizer step ``step`` (1-based) of ``total_steps``: sync every ``every``."""
        if step % self.every:
            return
        decay = self.decay(step, total_steps)
        for slow, fast in zip(self.slow, self.fast, strict=True):
            slow.lerp_(fast, 1.0 - decay)
            fast.copy_(slow)

    @torch.no_grad()
    def finish(self) -> None:
        """End of training: the model takes the slow weights."""
        for slow, fast in zip(self.slow, self.fast, strict=True):
            fast.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {"slow": [t.clone() for t in self.slow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for slow, saved in zip(self.slow, state["slow"], strict=True):
            slow.copy_(saved)
