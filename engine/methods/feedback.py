"""Shared machinery of the fixed-random-feedback methods (FA, DFA).

Each block l is trained on the batch mean of ⟨f_l(stopgrad(h_{l−1})), a_l⟩, the
embedding on ⟨h_0, a_0⟩, and LN_out plus the head on the true loss with h_L
detached, all in one backward pass.

Feedback matrices are drawn from the run's seed: a C×d matrix has entries
N(0, 1/C) and a d×d matrix N(0, 1/d): a·B keeps the scale of a for a d×d B, while
e·B for a C×d B is about √(d/C) times ‖e‖ (cosines and ρ do not depend on that scale).

Hidden states of any of the three shapes a model may give (``grid``): a vector (d,),
tokens (T, d), or maps (C, H, W). Credits are flat rows inside, shaped like h_l outside.

Speed: every credit here is linear in e, so a_l = e·P_l with P_l = ``propagate``
applied to the C×C identity. The P_l are computed once per set of B's and
concatenated, so a batch's credits are one (n × C)·(C × (L+1)d) product whatever
the method (FA's chain of d×d products shrinks to C rows, done once).
"""
from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Method, Probe, output_error


def state_shapes(model: Any) -> list[tuple[int, ...]]:
    """Per-sample shapes of h_0..h_L: the model's ``state_shapes``, or (d,) at every layer for a
    model that only gives its width ``d``."""
    shapes = getattr(model, "state_shapes", None)
    if shapes is not None:
        return [tuple(int(k) for k in shape) for shape in shapes]
    if hasattr(model, "d"):
        return [(int(model.d),)] * (model.depth + 1)
    raise ValueError("the feedback methods size their matrices from the model's state_shapes (or its width d): "
                     "give the model a `state_shapes` list, one per-sample shape per hidden state h_0..h_L")


def layout(shape: tuple[int, ...]) -> tuple[int, ...]:
    """How a state's positions are laid out: a vector (d,) is one position on a 1×1 grid,
    tokens (T, d) are T positions without a grid, maps (C, H, W) are an H×W grid."""
    if len(shape) == 1:
        return (1, 1)
    if len(shape) == 2:
        return (shape[0],)
    if len(shape) == 3:
        return (shape[1], shape[2])
    raise ValueError(f"a hidden state of shape {shape} is none of (d,), (T, d) or (C, H, W)")


def grid(a: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Flat rows of states of ``shape`` as (rows, positions, features), channels last for maps."""
    m = a.shape[0]
    if len(shape) == 3:
        c, h, w = shape
        return a.reshape(m, c, h, w).permute(0, 2, 3, 1).reshape(m, h * w, c)
    layout(shape)  # refuses other shapes
    return a.reshape(m, -1, shape[-1])


def ungrid(g: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The inverse of ``grid``: (rows, positions, features) back to flat rows of ``shape``."""
    m = g.shape[0]
    if len(shape) == 3:
        c, h, w = shape
        return g.reshape(m, h, w, c).permute(0, 3, 1, 2).reshape(m, -1)
    return g.reshape(m, -1)


def resize_positions(g: Tensor, src: tuple[int, ...], dst: tuple[int, ...]) -> Tensor:
    """Carry (rows, positions, features) from one layout of positions to another: unchanged
    when they agree, else nearest-neighbour on the grid (a pooled map's credit spread back
    over the pixels it pooled; a vector's over every pixel): the transpose of the pooling
    path, with a fixed map, as FA's chain needs between states of different shapes."""
    if src == dst:
        return g
    if len(src) != 2 or len(dst) != 2:
        raise ValueError(f"feedback alignment cannot carry a credit from {src} positions to {dst}")
    m, _, f = g.shape
    maps = g.transpose(1, 2).reshape(m, f, *src)
    return F.interpolate(maps, size=dst, mode="nearest").reshape(m, f, dst[0] * dst[1]).transpose(1, 2)


class FeedbackMethod(Method):
    def __init__(self, model, n_classes, generator) -> None:
        super().__init__(model, n_classes, generator)
        self.depth = model.depth
        self.state_shapes = state_shapes(model)
        self.sizes = [math.prod(shape) for shape in self.state_shapes]
        ref = next(model.parameters())
        self.B = [b.to(ref.device, ref.dtype) for b in self.draw(generator)]
        self._P: tuple[tuple[int, ...], Tensor] | None = None

    @abstractmethod
    def shapes(self) -> list[tuple[int, int]]:
        """Shapes of the feedback matrices, in the order ``propagate`` uses them."""

    @abstractmethod
    def propagate(self, e: Tensor, B: list[Tensor]) -> list[Tensor]:
        """Credits a_0..a_L from the output error e and feedback matrices B (linear in e)."""

    def draw(self, generator: torch.Generator) -> list[Tensor]:
        return [torch.randn(shape, generator=generator) / shape[0] ** 0.5 for shape in self.shapes()]

    def effective(self, B: list[Tensor]) -> Tensor:
        """[P_0 | … | P_L], C × Σ_l |h_l|, with a_l = e·P_l: ``propagate`` of the identity
        (each P_l holds flat rows of h_l's shape)."""
        eye = torch.eye(self.n_classes, device=B[0].device, dtype=B[0].dtype)
        return torch.cat(self.propagate(eye, B), dim=1)

    def credits_from(self, e: Tensor, P: Tensor) -> list[Tensor]:
        """a_0..a_L for the rows of e, each shaped like its h_l."""
        n = e.shape[0]
        return [a.view(n, *shape) for a, shape in zip((e @ P).split(self.sizes, dim=1), self.state_shapes)]

    def _effective_B(self) -> Tensor:
        key = tuple(id(b) for b in self.B)  # recomputed when the B's are replaced (load_state_dict)
        if self._P is None or self._P[0] != key:
            with torch.autocast(self.B[0].device.type, enabled=False):  # P is kept in float32, whoever asks first
                self._P = (key, self.effective(self.B))
        return self._P[1]

    def credit(self, probe: Probe) -> list[Tensor]:
        return self.credits_from(probe.error, self._effective_B())

    def null_credits(self, probe: Probe, generator: torch.Generator, draws: int) -> Iterator[list[Tensor]]:
        e = probe.error
        for _ in range(draws):
            yield self.credits_from(e, self.effective([b.to(e.device, e.dtype) for b in self.draw(generator)]))

    def step(self, model, x, y, penalty):
        hs, fs = model.hidden_states(x, detach_inputs=True)
        logits = model.forward_from(model.depth, hs[-1].detach())
        loss = F.cross_entropy(logits, y)
        a = self.credits_from(output_error(logits, y), self._effective_B())
        # the gradient of (1/n)·Σ⟨f_l, a_l⟩ (+ λ·Σ_l mean_n ‖f_l‖²) with respect to f_l, handed
        # to autograd directly instead of building the inner products as graph nodes
        scale = 1.0 / x.shape[0]
        grads = [a[0] * scale] + [(a_l + (2.0 * penalty) * f.detach()) * scale if penalty else a_l * scale
                                  for f, a_l in zip(fs, a[1:])]
        outputs = [hs[0], *fs]  # bfloat16 under autocast: their gradients must match their dtype
        torch.autograd.backward([loss, *outputs], [None, *(g.to(o.dtype) for g, o in zip(grads, outputs))])
        return loss.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"B": [b.detach().cpu() for b in self.B]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ref = self.B[0]
        loaded = [b.to(ref.device, ref.dtype) for b in state["B"]]
        if [tuple(b.shape) for b in loaded] != [tuple(b.shape) for b in self.B]:
            raise ValueError("feedback matrices in the checkpoint do not match this model's shapes")
        self.B = loaded
