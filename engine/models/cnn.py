"""The cross-architecture CNN control: conv blocks, then one fully connected block.

h_0 = stem(x), a 3×3 convolution (padding 1, with bias, no activation) from C_in to c_1
channels. Blocks 1..L−1: conv 3×3 (padding 1, no bias: the BatchNorm's shift replaces it)
→ BatchNorm2d → ReLU → 2×2 max-pool (while the map is at least 2×2), channels
``specs.cnn_channels(d, L)`` (d = 64, L = 4: 16/32/64). Block L: flatten → Linear to d →
ReLU, a (d,) state. Readout: z = H · LN_out(h_L), LN_out off unless terminal_ln. Not
residual: h_l = f_l. BatchNorm's running statistics are buffers, so they are in the
state_dict and checkpoints cover them; eval mode (the probe, ρ) uses them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Stack, _conv, _linear
from .specs import cnn_channels, cnn_pools, cnn_state_shapes


class ConvBlock(nn.Module):
    """maxpool₂(ReLU(BN(conv₃ₓ₃(h)))), the pool only where the map allows it."""

    def __init__(self, c_in: int, c_out: int, pool: bool, gen: torch.Generator) -> None:
        super().__init__()
        self.conv = _conv(c_in, c_out, 3, gen, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.pool = pool

    def forward(self, h: Tensor) -> Tensor:
        h = F.relu(self.bn(self.conv(h)))
        return F.max_pool2d(h, 2) if self.pool else h


class FCBlock(nn.Module):
    """ReLU(W · flatten(h) + b)."""

    def __init__(self, n_in: int, d: int, gen: torch.Generator) -> None:
        super().__init__()
        self.fc = _linear(n_in, d, gen)

    def forward(self, h: Tensor) -> Tensor:
        return F.relu(self.fc(h.flatten(1)))


class CNN(Stack, nn.Module):
    """h_0 = stem(x); h_l = block_l(h_{l-1}) (conv blocks, then the FC block); z = H · LN_out(h_L)."""

    residual = False

    def __init__(self, image_shape: tuple[int, int, int], n_classes: int, d: int = 64, L: int = 4,
                 terminal_ln: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__()
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        if L < 2:
            raise ValueError(f"CNN needs L >= 2 (L - 1 conv blocks and an FC block), not {L}")
        c_in, h, w = image_shape
        self.image_shape = (c_in, h, w)
        self.depth = L
        self.d = d
        self.n_classes = n_classes
        chans = cnn_channels(d, L)
        self.state_shapes: list[tuple[int, ...]] = cnn_state_shapes(d, L, self.image_shape)
        self.stem = _conv(c_in, chans[0], 3, gen, bias=True)
        blocks: list[nn.Module] = []
        prev = chans[0]
        for c, pool in zip(chans, cnn_pools(self.image_shape, L)):
            blocks.append(ConvBlock(prev, c, pool, gen))
            prev = c
        blocks.append(FCBlock(math.prod(self.state_shapes[L - 1]), d, gen))
        self.blocks = nn.ModuleList(blocks)
        self.ln_out: nn.Module = nn.LayerNorm(d) if terminal_ln else nn.Identity()
        self.head = _linear(d, n_classes, gen)

    def embed(self, x: Tensor) -> Tensor:
        return self.stem(x.reshape(x.shape[0], *self.image_shape))

    def embedding(self) -> nn.Module:
        return self.stem
