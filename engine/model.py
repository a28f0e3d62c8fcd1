"""The protocol's ResMLP and the small interface the diagnostics need from any model.

The diagnostics never look inside a model: they need the hidden states h_0..h_L
(``hidden_states``) and a way to run the network on from any h_l (``forward_from``).
A ViT or CNN that provides those two gets every diagnostic.
"""
from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@runtime_checkable
class Auditable(Protocol):
    """What the diagnostics and the local methods need from a model."""

    depth: int  # L: hidden states are h_0..h_L

    def hidden_states(self, x: Tensor, detach_inputs: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        """(hs, fs): hs = [h_0..h_L], fs = [f_1..f_L] block outputs.

        With ``detach_inputs`` each block sees stopgrad(h_{l-1}) (the local methods'
        objective) while the values are unchanged.
        """

    def forward_from(self, layer: int, h: Tensor) -> Tensor:
        """Logits from hidden state h_layer."""

    def block_parameters(self, layer: int) -> list[nn.Parameter]:
        """Parameters of layer ``layer`` (0 = embedding, 1..L = blocks)."""

    def readout_parameters(self) -> list[nn.Parameter]:
        """Parameters trained on the true loss with h_L detached (LN_out and head)."""


def _linear(n_in: int, n_out: int, gen: torch.Generator) -> nn.Linear:
    """nn.Linear with PyTorch's default init drawn from ``gen``: runs in parallel threads
    must not share the global RNG, or seeds stop meaning anything."""
    lin = nn.Linear(n_in, n_out)
    bound = 1.0 / math.sqrt(n_in)
    with torch.no_grad():
        lin.weight.copy_(torch.rand(lin.weight.shape, generator=gen) * 2 * bound - bound)
        lin.bias.copy_(torch.rand(lin.bias.shape, generator=gen) * 2 * bound - bound)
    return lin


def gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU. In float64, the one dtype ρ runs in, it is written out as
    x·erfc(−x/√2)/2: torch's float64 GELU kernel took 4.8 ms per 1024×256 chunk on this
    CPU against 1.8 ms for its erfc, and ρ spent almost half its time there. erfc, not
    1 + erf, so the negative tail has no cancellation; it matches libm's erfc to 1e-12."""
    if x.dtype == torch.float64:
        return 0.5 * x * torch.erfc(x * -_SQRT_HALF)
    return F.gelu(x)


_SQRT_HALF = 0.7071067811865476


class Block(nn.Module):
    """f_l = W2 · GELU(W1 · LN(h))."""

    def __init__(self, d: int, hidden: int, gen: torch.Generator) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = _linear(d, hidden, gen)
        self.fc2 = _linear(hidden, d, gen)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc2(gelu(self.fc1(self.ln(h))))


class ResMLP(nn.Module):
    """h_0 = E x + b; h_l = h_{l-1} + f_l(h_{l-1}); z = H · LN_out(h_L) (LN_out optional)."""

    def __init__(self, in_dim: int, n_classes: int, d: int = 256, L: int = 4, r: float = 1.0,
                 terminal_ln: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self.depth = L
        self.d = d
        self.n_classes = n_classes
        self.embed = _linear(in_dim, d, gen)
        hidden = max(1, int(round(r * d)))
        self.blocks = nn.ModuleList(Block(d, hidden, gen) for _ in range(L))
        self.ln_out: nn.Module = nn.LayerNorm(d) if terminal_ln else nn.Identity()
        self.head = _linear(d, n_classes, gen)

    def hidden_states(self, x: Tensor, detach_inputs: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        h = self.embed(x)
        hs, fs = [h], []
        for block in self.blocks:
            h_in = h.detach() if detach_inputs else h
            f = block(h_in)
            h = h_in + f
            hs.append(h)
            fs.append(f)
        return hs, fs

    def forward_from(self, layer: int, h: Tensor) -> Tensor:
        for block in self.blocks[layer:]:
            h = h + block(h)
        return self.head(self.ln_out(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_from(0, self.embed(x))

    def block_parameters(self, layer: int) -> list[nn.Parameter]:
        module = self.embed if layer == 0 else self.blocks[layer - 1]
        return list(module.parameters())

    def readout_parameters(self) -> list[nn.Parameter]:
        return list(self.ln_out.parameters()) + list(self.head.parameters())

