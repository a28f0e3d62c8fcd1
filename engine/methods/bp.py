"""Backpropagation: the credit is the true gradient a_l = ∂ℓ_n/∂h_l."""
from __future__ import annotations

from torch import Tensor

from .base import Method, Probe, bp_step


class Backprop(Method):
    name = "bp"
    description = "backpropagation (the reference)"

    def credit(self, probe: Probe) -> list[Tensor]:
        return list(probe.grads)

    def step(self, model, x, y, penalty):
        return bp_step(model, x, y, penalty)
