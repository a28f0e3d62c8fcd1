"""The plain MLP control: no skips, no normalisation.

h_0 = W_0 x + b_0 (no activation); h_l = ReLU(W_l h_{l-1} + b_l), l = 1..L, all d wide;
z = H · LN_out(h_L), LN_out off unless terminal_ln. Not residual: h_l = f_l.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import _linear


class ReLULayer(nn.Module):
    """ReLU(W h + b)."""

    def __init__(self, n_in: int, n_out: int, gen: torch.Generator) -> None:
        super().__init__()
        self.fc = _linear(n_in, n_out, gen)

    def forward(self, h: Tensor) -> Tensor:
        return F.relu(self.fc(h))


class MLP(nn.Module):
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

    def hidden_states(self, x: Tensor, detach_inputs: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        h = self.embed(x)
        hs = [h]
        for block in self.blocks:
            h = block(h.detach() if detach_inputs else h)
            hs.append(h)
        return hs, hs[1:]

    def forward_from(self, layer: int, h: Tensor) -> Tensor:
        for block in self.blocks[layer:]:
            h = block(h)
        return self.head(self.ln_out(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_from(0, self.embed(x))

    def block_parameters(self, layer: int) -> list[nn.Parameter]:
        module = self.embed if layer == 0 else self.blocks[layer - 1]
        return list(module.parameters())

    def readout_parameters(self) -> list[nn.Parameter]:
        return list(self.ln_out.parameters()) + list(self.head.parameters())
