"""Shared machinery of the fixed-random-feedback methods (FA, DFA).

Each block l is trained on the batch mean of ⟨f_l(stopgrad(h_{l−1})), a_l⟩, the
embedding on ⟨h_0, a_0⟩, and LN_out plus the head on the true loss with h_L
detached, all in one backward pass.

Feedback matrices are drawn from the run's seed: a C×d matrix has entries
N(0, 1/C) and a d×d matrix N(0, 1/d), so ‖e·B‖ ≈ ‖e‖ and a·B keeps the scale of a.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Method, Probe, block_penalty, output_error


class FeedbackMethod(Method):
    has_null_band = True

    def __init__(self, model, n_classes, generator) -> None:
        super().__init__(model, n_classes, generator)
        self.depth = model.depth
        self.d = model.d
        ref = next(model.parameters())
        self.B = [b.to(ref.device, ref.dtype) for b in self.draw(generator)]

    @abstractmethod
    def shapes(self) -> list[tuple[int, int]]:
        """Shapes of the feedback matrices, in the order ``propagate`` uses them."""

    @abstractmethod
    def propagate(self, e: Tensor, B: list[Tensor]) -> list[Tensor]:
        """Credits a_0..a_L from the output error e and feedback matrices B."""

    def draw(self, generator: torch.Generator) -> list[Tensor]:
        return [torch.randn(shape, generator=generator) / shape[0] ** 0.5 for shape in self.shapes()]

    def credit(self, probe: Probe) -> list[Tensor]:
        return self.propagate(probe.error, self.B)

    def null_credits(self, probe: Probe, generator: torch.Generator, draws: int) -> Iterator[list[Tensor]]:
        e = probe.error
        for _ in range(draws):
            yield self.propagate(e, [b.to(e.device, e.dtype) for b in self.draw(generator)])

    def step(self, model, x, y, penalty):
        hs, fs = model.hidden_states(x, detach_inputs=True)
        logits = model.forward_from(model.depth, hs[-1].detach())
        loss = F.cross_entropy(logits, y)
        a = self.propagate(output_error(logits, y), self.B)
        n = x.shape[0]
        local = (hs[0] * a[0]).sum() + sum((f * a_l).sum() for f, a_l in zip(fs, a[1:]))
        objective = loss + local / n
        if penalty:
            objective = objective + penalty * block_penalty(fs)
        objective.backward()
        return loss.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"B": [b.detach().cpu() for b in self.B]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ref = self.B[0]
        loaded = [b.to(ref.device, ref.dtype) for b in state["B"]]
        if [tuple(b.shape) for b in loaded] != [tuple(b.shape) for b in self.B]:
            raise ValueError("feedback matrices in the checkpoint do not match this model's shapes")
        self.B = loaded
