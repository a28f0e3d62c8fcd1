"""Block-level feedback alignment: a_L = e·B_out, a_{l−1} = a_l·B_l (fixed random).

For states of one shape (the ResMLP's (d,), ViT-Mini's tokens (T, d)) B_l is a d×d matrix
applied at every position. Between maps of different sizes (a CNN's pooled blocks) B_l
mixes the channels, C_l × C_{l−1}, and a fixed nearest-neighbour map carries the pixels
back over what was pooled (``feedback.resize_positions``). Where a block flattens maps
into a vector (the CNN's fully connected block) B_l is a full |h_l| × |h_{l−1}| matrix.
Each block keeps one fixed linear map, so every credit stays a linear function of e.
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

    def _flattens(self, l: int) -> bool:
        """Block l turns positions into a vector (a CNN's fully connected block): its B_l is a
        full |h_l| × |h_{l−1}| matrix, the flattening's transpose replaced by a random one, so
        the credit below has spatial structure."""
        return len(self.state_shapes[l]) == 1 and len(self.state_shapes[l - 1]) > 1

    def shapes(self):
        # B[0] = B_out (C × |h_L|), then B_1..B_L with B[l] carrying a_l down to a_{l−1}
        f = [features(shape) for shape in self.state_shapes]
        return [(self.n_classes, self.sizes[-1])] + [
            (self.sizes[l], self.sizes[l - 1]) if self._flattens(l) else (f[l], f[l - 1])
            for l in range(1, self.depth + 1)]

    def propagate(self, e: Tensor, B: list[Tensor]) -> list[Tensor]:
        a = [e @ B[0]]
        for l in range(self.depth, 0, -1):
            here, below = self.state_shapes[l], self.state_shapes[l - 1]
            if self._flattens(l):
                a.append(a[-1] @ B[l])
                continue
            moved = resize_positions(grid(a[-1], here) @ B[l], layout(here), layout(below))
            a.append(ungrid(moved, below))
        return a[::-1]
