"""The interface every credit-assignment method implements: its credit and its update.

A method is one module in ``engine/methods/`` (or any module that calls
``register_method``) defining a ``Method`` subclass with a unique ``name``. It then
gets every diagnostic of the protocol for free.

``credit`` answers "what signal does this method assign to h_l?" for the
diagnostics; ``step`` performs one training update's backward pass. The trainer
owns the model's optimizer (built over ``trainable_parameters``); a method with
its own machinery (a learned-feedback probe's auxiliary networks and optimizers,
an equilibrium method's two phases) keeps it inside the instance and exposes it
through ``state_dict`` so checkpoints and resume cover it.

A method with settings of its own names the audit config's section that holds them in
``config_section`` (``ep`` reads ``ep: {beta, steps, ...}``); ``engine.methods.build_method``
then passes that section to the constructor as the keyword ``options``. A method without
one is built as ``cls(model, n_classes, generator)``, as every plugin always was.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import Auditable


@dataclass
class Probe:
    """One eval-mode forward pass on the diagnostic set, shared by all measurements.

    ``hs`` are the hidden states h_0..h_L (detached), ``logits`` the output, and
    ``grads`` the per-sample BP gradients ∂ℓ_n/∂h_l (the reference g_l times n).
    """

    model: Auditable
    x: Tensor
    y: Tensor
    hs: list[Tensor]
    logits: Tensor
    grads: list[Tensor]

    @property
    def error(self) -> Tensor:
        """e = softmax(z) − onehot(y), per sample: ∂ℓ_n/∂z."""
        return output_error(self.logits, self.y)


CHUNK_FLOATS = 8 << 20  # hidden-state floats per credit chunk: as diagnostics.PROBE_FLOATS (tested)


def chunk_rows(probe: Probe) -> int:
    """Samples per chunk for a credit that runs the model again on the diagnostic set (the
    relaxation of ep, the B-path of fa_lillicrap): all at once while h_0..h_L fit
    ``CHUNK_FLOATS``."""
    n = probe.x.shape[0]
    per_sample = sum(h[0].numel() for h in probe.hs)
    return n if n * per_sample <= CHUNK_FLOATS else max(1, CHUNK_FLOATS // per_sample)


def output_error(logits: Tensor, y: Tensor) -> Tensor:
    e = torch.softmax(logits.detach(), dim=-1)
    return e.scatter_add(1, y[:, None], torch.full_like(e[:, :1], -1.0))


def block_penalty(fs: list[Tensor]) -> Tensor:
    """Σ_l mean_n ‖f_l‖² (multiply by λ)."""
    n = fs[0].shape[0]
    # summed in at least float32 (bfloat16 block outputs under autocast are widened; float64 stays)
    return sum(f.to(torch.promote_types(f.dtype, torch.float32)).square().sum() for f in fs) / n


class Method(ABC):
    """Base class: subclass, set ``name``, implement ``credit`` and ``step``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    # the AuditConfig section handed to __init__ as ``options`` (None: the constructor takes none)
    config_section: ClassVar[str | None] = None

    def __init__(self, model: Auditable, n_classes: int, generator: torch.Generator) -> None:
        self.n_classes = n_classes

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters the trainer's optimizer updates (default: all)."""
        return [p for p in model.parameters() if p.requires_grad]

    @abstractmethod
    def credit(self, probe: Probe) -> list[Tensor]:
        """a_0..a_L, per sample, each shaped like h_l (no graph)."""

    @abstractmethod
    def step(self, model: Auditable, x: Tensor, y: Tensor, penalty: float) -> Tensor:
        """Forward + backward for one batch: leave gradients in ``.grad`` and return the
        (undetached-free, scalar) training loss without syncing to the host."""

    def null_credits(self, probe: Probe, generator: torch.Generator, draws: int) -> Iterator[list[Tensor]] | None:
        """Credits under fresh draws of the method's random parts, or None when that has no meaning."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to re-measure or resume (feedback matrices, aux nets, their optimizers)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def bp_step(model: Auditable, x: Tensor, y: Tensor, penalty: float) -> Tensor:
    """Ordinary backprop on loss + λ Σ_l mean_n ‖f_l‖²."""
    if penalty:
        hs, fs = model.hidden_states(x)
        loss = F.cross_entropy(model.forward_from(model.depth, hs[-1]), y)
        (loss + penalty * block_penalty(fs)).backward()
    else:
        loss = F.cross_entropy(model(x), y)  # type: ignore[operator]
        loss.backward()
    return loss.detach()
