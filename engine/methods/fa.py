"""Block-level feedback alignment: a_L = e·B_out, a_{l−1} = a_l·B_l (fixed random).

For states of one shape (the ResMLP's (d,), ViT-Mini's tokens (T, d)) B_l is a d×d matrix
applied at every position. Between states of different shapes (a CNN's pooled maps, its
flattening into the fully connected block) B_l mixes the features, f_l × f_{l−1}, and a
fixed nearest-neighbour map carries the positions back (``feedback.resize_positions``):
still one fixed linear map per block, so every credit stays a linear function of e.
"""
from __future__ import annotations

from torch import Tensor

from .feedback import FeedbackMethod, grid, layout, resize_positions, ungrid


def features(shape: tuple[int, ...]) -> int:
    """The feature count of a state: d of (d,) and (T, d), C of (C, H, W)."""
    return shape[0] if len(shape) == 3 else shape[-1]


class FeedbackAlignment(FeedbackMethod):
    name = "fa"
    description = "feedback alignment through fixed random d×d matrices"

    def shapes(self):
        # B[0] = B_out (C × |h_L|), then B_1..B_L with B[l] carrying a_l down to a_{l−1}
        f = [features(shape) for shape in self.state_shapes]
        return [(self.n_classes, self.sizes[-1])] + [(f[l], f[l - 1]) for l in range(1, self.depth + 1)]

    def propagate(self, e: Tensor, B: list[Tensor]) -> list[Tensor]:
        a = [e @ B[0]]
        for l in range(self.depth, 0, -1):
            here, below = self.state_shapes[l], self.state_shapes[l - 1]
            moved = resize_positions(grid(a[-1], here) @ B[l], layout(here), layout(below))
            a.append(ungrid(moved, below))
        return a[::-1]
