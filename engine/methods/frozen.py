"""Frozen-blocks baseline: backprop with every block kept at its initial values.

The embedding, LN_out and the head train; this is the depth-utility baseline (d).
"""
from __future__ import annotations

from torch import Tensor

from .base import Method, Probe, bp_step


class FrozenBlocks(Method):
    name = "frozen"
    description = "bp with blocks frozen at init (depth-utility baseline)"

    def __init__(self, model, n_classes, generator) -> None:
        super().__init__(model, n_classes, generator)
        for layer in range(1, model.depth + 1):
            for p in model.block_parameters(layer):
                p.requires_grad_(False)  # no weight gradients computed for blocks at all

    def credit(self, probe: Probe) -> list[Tensor]:
        return list(probe.grads)

    def step(self, model, x, y, penalty):
        return bp_step(model, x, y, penalty)
