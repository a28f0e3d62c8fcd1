"""Direct feedback alignment: a_l = e·B_l with one fixed random C×|h_l| matrix per layer
(|h_l| = d for a vector state; B_l maps the output error onto h_l's whole shape)."""
from __future__ import annotations

from torch import Tensor

from .feedback import FeedbackMethod


class DirectFeedbackAlignment(FeedbackMethod):
    name = "dfa"
    description = "direct feedback alignment, one random C×d matrix per layer"

    def shapes(self):
        return [(self.n_classes, size) for size in self.sizes]

    def propagate(self, e: Tensor, B: list[Tensor]) -> list[Tensor]:
        return [e @ b for b in B]
