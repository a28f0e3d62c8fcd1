"""The plain MLP control: no skips, no normalisation.

h_0 = W_0 x + b_0 (no activation); h_l = ReLU(W_l h_{l-1} + b_l), l = 1..L, all d wide;
z = H · LN_out(h_L), LN_out off unless terminal_ln. Not residual: h_l = f_l.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Stack, _linear


class ReLULayer(nn.Module):
    """ReLU(W h + b)."""

    def __init__(self, n_in: int, n_out: int, gen: torch.Generator) -> None:
        super().__init__()
        self.fc = _linear(n_in, n_out, gen)

    def forward(self, h: Tensor) -> Tensor:
        return F.relu(self.fc(h))


class MLP(Stack, nn.Module):
    """h_0 = W_0 x + b_0; h_l = ReLU(W_l h_{l-1} + b_l); z = H · LN_out(h_L)."""

    residual = False

    def __init__(self, in_dim: int, n_classes: int, d: int = 256, L: int = 4, terminal_ln: bool = False,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self.depth = L
        self.d = d
        self.n_classes = n_classes
        self.state_shapes: list[tuple[int, ...]] = [(d,)] * (L + 1)
        self.embed = _linear(in_dim, d, gen)
        self.blocks = nn.ModuleList(ReLULayer(d, d, gen) for _ in range(L))
        self.ln_out: nn.Module = nn.LayerNorm(d) if terminal_ln else nn.Identity()
        self.head = _linear(d, n_classes, gen)
