"""Block-level feedback alignment: a_L = e·B_out, a_{l−1} = a_l·B_l (fixed random d×d)."""
from __future__ import annotations

from torch import Tensor

from .feedback import FeedbackMethod


class FeedbackAlignment(FeedbackMethod):
    name = "fa"
    description = "feedback alignment through fixed random d×d matrices"

    def shapes(self):
        # B[0] = B_out (C×d), then B_1..B_L (d×d) with B[l] carrying a_l down to a_{l−1}
        return [(self.n_classes, self.d)] + [(self.d, self.d)] * self.depth

    def propagate(self, e: Tensor, B: list[Tensor]) -> list[Tensor]:
        a = [e @ B[0]]
        for l in range(self.depth, 0, -1):
            a.append(a[-1] @ B[l])
        return a[::-1]
