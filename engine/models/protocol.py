"""The small interface the diagnostics and the local methods need from any model.

The diagnostics never look inside a model: they need the hidden states h_0..h_L
(``hidden_states``), their per-sample shapes (``state_shapes``) and a way to run the
network on from any h_l (``forward_from``). Every network in ``engine.models`` provides
them, and so can any user model (``engine.api.HiddenStateAdapter``).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class Auditable(Protocol):
    """What the diagnostics and the local methods need from a model.

    Input x is flat, (n, in_dim); image models view it as (n, C, H, W) themselves.
    """

    depth: int  # L: hidden states are h_0..h_L
    # per-sample shapes of h_0..h_L, each one of (d,) a vector, (T, d) tokens × features,
    # or (C, H, W) channels-first maps; hs[l] has shape (n, *state_shapes[l])
    state_shapes: list[tuple[int, ...]]

    def hidden_states(self, x: Tensor, detach_inputs: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        """(hs, fs): hs = [h_0..h_L], fs = [f_1..f_L] block outputs.

        Residual models have h_l = h_{l-1} + f_l, the others h_l = f_l (fs is hs[1:]).
        With ``detach_inputs`` each block sees stopgrad(h_{l-1}) (the local methods'
        objective) while the values are unchanged.
        """

    def forward_from(self, layer: int, h: Tensor) -> Tensor:
        """Logits from hidden state h_layer."""

    def block_parameters(self, layer: int) -> list[nn.Parameter]:
        """Parameters of layer ``layer`` (0 = embedding, 1..L = blocks)."""

    def readout_parameters(self) -> list[nn.Parameter]:
        """Parameters trained on the true loss with h_L detached (LN_out and head)."""
