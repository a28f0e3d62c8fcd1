"""ViT-Mini: a pre-LN vision transformer on patches, read out from its cls token.

h_0 = [cls; P x_patches + b] + pos, shape (T + 1, d) with T = (H/p)(W/p) patches of
p×p×C (flattened channel-first, as a convolution's weight is), the cls token first.
Block l (both sublayers residual, pre-LN):

    a = MHSA(LN1(h)),  m = W2 · GELU(W1 · LN2(h + a)),  f_l = a + m,  h_l = h_{l-1} + f_l

with the MLP's hidden width round(r·d) (``specs.hidden_width``: r = 1 is a d-wide MLP,
ViT's usual 4× is r = 4). Readout: z = H · LN_out(h_L[:, 0]), LN_out optional.
Attention is ``scaled_dot_product_attention`` (float64 works on CPU: the math kernel).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Stack, _embedding, _linear, gelu
from .specs import hidden_width


class PatchEmbed(nn.Module):
    """h_0: the linear patch projection, the cls token and the position embedding."""

    def __init__(self, image_shape: tuple[int, int, int], patch: int, d: int, gen: torch.Generator) -> None:
        super().__init__()
        c, h, w = image_shape
        self.image_shape = (c, h, w)
        self.patch = patch
        self.grid = (h // patch, w // patch)
        self.tokens = self.grid[0] * self.grid[1]
        self.proj = _linear(c * patch * patch, d, gen)
        self.cls = _embedding((1, 1, d), gen)
        self.pos = _embedding((1, self.tokens + 1, d), gen)

    def patches(self, x: Tensor) -> Tensor:
        """(n, C·H·W) flat rows → (n, T, C·p·p) patches, row-major over the grid."""
        n, (c, _, _), p, (gh, gw) = x.shape[0], self.image_shape, self.patch, self.grid
        x = x.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, self.tokens, c * p * p)

    def forward(self, x: Tensor) -> Tensor:
        t = self.proj(self.patches(x))
        cls = self.cls.expand(t.shape[0], -1, -1).to(t.dtype)
        return torch.cat([cls, t], dim=1) + self.pos.to(t.dtype)


class Attention(nn.Module):
    """Multi-head self-attention over all tokens: proj(softmax(QKᵀ/√(d/heads)) V)."""

    def __init__(self, d: int, heads: int, gen: torch.Generator) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = _linear(d, 3 * d, gen)
        self.proj = _linear(d, d, gen)

    def forward(self, h: Tensor) -> Tensor:
        n, N, d = h.shape
        q, k, v = self.qkv(h).reshape(n, N, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v)  # (n, heads, N, d / heads)
        return self.proj(o.transpose(1, 2).reshape(n, N, d))


class ViTBlock(nn.Module):
    """f_l = a + m: a = MHSA(LN1(h)), m = W2 · GELU(W1 · LN2(h + a))."""

    def __init__(self, d: int, hidden: int, heads: int, gen: torch.Generator) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads, gen)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = _linear(d, hidden, gen)
        self.fc2 = _linear(hidden, d, gen)

    def forward(self, h: Tensor) -> Tensor:
        a = self.attn(self.ln1(h))
        return a + self.fc2(gelu(self.fc1(self.ln2(h + a))))


class ViTMini(Stack, nn.Module):
    """h_0 = patch tokens + cls + positions; h_l = h_{l-1} + f_l; z = H · LN_out(h_L[:, 0])."""

    residual = True

    def __init__(self, image_shape: tuple[int, int, int], n_classes: int, d: int = 128, L: int = 4,
                 r: float = 1.0, heads: int = 4, patch: int = 4, terminal_ln: bool = True,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        c, h, w = image_shape
        if d % heads or h % patch or w % patch:
            raise ValueError(f"ViTMini: heads {heads} must divide d {d} and patch {patch} the {h}×{w} image")
        self.depth = L
        self.d = d
        self.n_classes = n_classes
        self.heads = heads
        self.embed = PatchEmbed((c, h, w), patch, d, gen)
        self.state_shapes: list[tuple[int, ...]] = [(self.embed.tokens + 1, d)] * (L + 1)
        self.blocks = nn.ModuleList(ViTBlock(d, hidden_width(d, r), heads, gen) for _ in range(L))
        self.ln_out: nn.Module = nn.LayerNorm(d) if terminal_ln else nn.Identity()
        self.head = _linear(d, n_classes, gen)

    def readout(self, h: Tensor) -> Tensor:
        return self.head(self.ln_out(h[:, 0]))  # the cls token
