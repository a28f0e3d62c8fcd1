"""Direct feedback alignment: a_l = e·B_l with one fixed random C×d matrix per layer."""
from __future__ import annotations

from torch import Tensor

from .feedback import FeedbackMethod


class DirectFeedbackAlignment(FeedbackMethod):
    name = "dfa"
    description = "direct feedback alignment, one random C×d matrix per layer"

    def shapes(self):
        return [(self.n_classes, self.d)] * (self.depth + 1)

    def propagate(self, e: Tensor, B: list[Tensor]) -> list[Tensor]:
        return [e @ b for b in B]
