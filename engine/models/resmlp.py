"""The protocol's ResMLP: h_0 = E x + b; h_l = h_{l-1} + f_l(h_{l-1}); z = H · LN_out(h_L).

Numerics and the order parameters are drawn in are fixed: records of existing audits
are compared bit for bit against models built from the same seed.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import Stack, _linear, gelu

__all__ = ["Block", "ResMLP", "_linear", "gelu"]


class Block(nn.Module):
    """f_l = W2 · GELU(W1 · LN(h))."""

    def __init__(self, d: int, hidden: int, gen: torch.Generator) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = _linear(d, hidden, gen)
        self.fc2 = _linear(hidden, d, gen)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc2(gelu(self.fc1(self.ln(h))))


class ResMLP(Stack, nn.Module):
    """h_0 = E x + b; h_l = h_{l-1} + f_l(h_{l-1}); z = H · LN_out(h_L) (LN_out optional)."""

    residual = True

    def __init__(self, in_dim: int, n_classes: int, d: int = 256, L: int = 4, r: float = 1.0,
                 terminal_ln: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self.depth = L
        self.d = d
        self.n_classes = n_classes
        self.state_shapes: list[tuple[int, ...]] = [(d,)] * (L + 1)
        self.embed = _linear(in_dim, d, gen)
        hidden = max(1, int(round(r * d)))
        self.blocks = nn.ModuleList(Block(d, hidden, gen) for _ in range(L))
        self.ln_out: nn.Module = nn.LayerNorm(d) if terminal_ln else nn.Identity()
        self.head = _linear(d, n_classes, gen)
