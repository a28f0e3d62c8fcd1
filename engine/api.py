"""Audit your own model from Python: one call, the same record and verdict the engine writes.

    from engine.api import audit_model, HiddenStateAdapter
    result = audit_model(model, x, y, credit="bp")           # a ResMLP or any Auditable
    result.verdict.label, result.record.cos, result.table()

A model that is not laid out like the protocol's ResMLP is wrapped in a
``HiddenStateAdapter`` that names its embedding, its blocks and its head. The
measurements are ``diagnostics.measure`` and the fired set ``verdicts.evaluate``,
so nothing here re-implements the protocol.

The thresholds assume a diagnostic batch of n = 1024 samples: the reference g_l is
∂(mean_n ℓ_n)/∂h_l and shrinks as 1/n, so with another n the (b) floor moves with it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor, nn

from .config import Thresholds
from .diagnostics import DiagnosticSettings, epoch_record
from .methods import Method, Probe, get_method
from .model import Auditable
from .records import End, Epoch, Header
from .runstore import RunLog
from .tables import Table, layer_table
from .verdicts import Verdict, verdict

Step = Union[str, Callable[[nn.Module, Tensor], Tensor]]
CreditFn = Callable[[Probe], Sequence[Tensor]]


class HiddenStateAdapter(nn.Module):
    """Expose a user model's hidden states h_0..h_L by naming the parts that make them.

    ``embed``, each of ``blocks`` and ``head`` is either the dotted name of a submodule
    of ``module`` (``"layers.0"``) or a callable ``(module, tensor) -> tensor``. The
    callable receives the module rather than closing over it because the ρ
    measurement runs a float64 deep copy of the adapter, and a closure would still
    call the float32 original. With ``residual=True`` a block returns f_l and the
    adapter adds the skip (h_l = h_{l−1} + f_l); otherwise it returns h_l itself.
    The fa/dfa credits size their feedback matrices from the states' shapes, which
    ``audit_model`` reads off one forward pass (``d`` is still accepted: every h_l of width d).
    """

    def __init__(self, module: nn.Module, embed: Step, blocks: Sequence[Step], head: Step,
                 residual: bool = False, d: int | None = None) -> None:
        super().__init__()
        self.module = module
        self._embed, self._blocks, self._head = embed, list(blocks), head
        self.residual = residual
        self.depth = len(self._blocks)
        if d is not None:
            self.d = d

    def _run(self, step: Step, h: Tensor) -> Tensor:
        if isinstance(step, str):
            return self.module.get_submodule(step)(h)
        return step(self.module, h)

    def _block(self, layer: int, h: Tensor) -> tuple[Tensor, Tensor]:
        """(h_layer, f_layer) from h_{layer−1}."""
        out = self._run(self._blocks[layer - 1], h)
        return (h + out, out) if self.residual else (out, out - h)

    def hidden_states(self, x: Tensor, detach_inputs: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        hs, fs = [self._run(self._embed, x)], []
        for layer in range(1, self.depth + 1):
            h_in = hs[-1].detach() if detach_inputs else hs[-1]
            h, f = self._block(layer, h_in)
            hs.append(h)
            fs.append(f)
        return hs, fs

    def forward_from(self, layer: int, h: Tensor) -> Tensor:
        for l in range(layer + 1, self.depth + 1):
            h = self._block(l, h)[0]
        return self._run(self._head, h)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_from(0, self._run(self._embed, x))

    def _params(self, step: Step) -> list[nn.Parameter]:
        return list(self.module.get_submodule(step).parameters()) if isinstance(step, str) else []

    def block_parameters(self, layer: int) -> list[nn.Parameter]:
        return self._params(self._embed if layer == 0 else self._blocks[layer - 1])

    def readout_parameters(self) -> list[nn.Parameter]:
        return self._params(self._head)


class CreditFunction(Method):
    """A plain ``probe -> [a_0..a_L]`` callable as a method: it measures, it does not train."""

    name = "custom"
    description = "a user-supplied credit function"

    def __init__(self, fn: CreditFn) -> None:
        self.fn = fn

    def credit(self, probe: Probe) -> list[Tensor]:
        return [a.detach() for a in self.fn(probe)]

    def step(self, model, x, y, penalty):
        raise NotImplementedError("a credit function only measures; train with a registered Method")


@dataclass(frozen=True)
class AuditResult:
    """One epoch record (the same fields the trainer writes) and its verdict."""

    record: Epoch
    verdict: Verdict
    name: str = "model"

    @property
    def label(self) -> str:
        return self.verdict.describe()

    def table(self) -> Table:
        """The per-layer table of this record (cos_l ± std over samples, null band, ρ_l, norms)."""
        header = Header(run_id=self.name, method=self.name, seed=0, epochs=self.record.epoch, dataset="custom")
        log = RunLog(self.name, header=header, epochs=[self.record], end=End(status="finished"))
        return layer_table([log], by="run")


def prepare_model(model: Auditable, x: Tensor) -> int:
    """The model's class count, from one eval-mode forward pass of ``x[:1]``; a model with
    neither ``state_shapes`` nor a width ``d`` (a ``HiddenStateAdapter``) is given the shapes of
    its hidden states, which fa/dfa size their feedback matrices from."""
    with torch.no_grad():
        was_training = model.training  # type: ignore[attr-defined]
        model.eval()  # type: ignore[attr-defined]
        try:
            hs = model.hidden_states(x[:1])[0]
            n_classes = model.forward_from(model.depth, hs[-1]).shape[-1]
        finally:
            model.train(was_training)  # type: ignore[attr-defined]
    if getattr(model, "state_shapes", None) is None and not hasattr(model, "d"):
        model.state_shapes = [tuple(h.shape[1:]) for h in hs]  # what fa/dfa size their feedback from
    return int(n_classes)


def _method(credit: Method | CreditFn | str, model: Auditable, n_classes: int,
            generator: torch.Generator) -> Method:
    if isinstance(credit, Method):
        return credit
    if isinstance(credit, str):
        return get_method(credit)(model, n_classes, generator)
    if callable(credit):
        return CreditFunction(credit)
    raise TypeError(f"credit must be a Method, a method name or a callable probe -> list of tensors, "
                    f"got {type(credit).__name__}")


def audit_model(model: Auditable, x: Tensor, y: Tensor, credit: Method | CreditFn | str = "bp", *,
                frozen_acc: float | None = None, thresholds: Thresholds | None = None, method: str | None = None,
                epoch: int = 0, settings: DiagnosticSettings | None = None, seed: int = 0) -> AuditResult:
    """Measure one model on one evaluation batch, as the trainer does at the end of an epoch.

    ``model``: a ResMLP, any ``Auditable``, or a ``HiddenStateAdapter`` around your own
    module. ``x, y``: the diagnostic batch (the thresholds assume 1024 samples).
    ``credit``: a ``Method`` instance (e.g. a trained run's method with its B's), a
    registered method name (``"bp"``; ``"fa"``/``"dfa"`` draw fresh feedback from
    ``seed``), or a callable ``probe -> [a_0..a_L]`` (see ``engine.methods.Probe``).
    ``frozen_acc``: the frozen-blocks baseline's accuracy; without it (d) cannot fire.
    ``thresholds``: defaults to the protocol's. ``method``: a name for tables.
    Returns the record (the trainer's fields; ``train_loss``, ``lr`` and ``train_s``
    are None since nothing trained) and the verdict from it. No parameter changes.
    """
    gen = torch.Generator().manual_seed(seed)
    th = thresholds or Thresholds()
    n_classes = prepare_model(model, x)
    meth = _method(credit, model, n_classes, gen)
    settings = settings or DiagnosticSettings(rho_samples=min(1024, x.shape[0]),
                                              stability_batches=min(8, x.shape[0]))
    record = epoch_record(model, meth, [], x, y, settings, gen, th, epoch=epoch, baseline_acc=frozen_acc,
                          diagnostic_set_in_test=True)  # the accuracy is the probe's, on the same batch
    name = method or (credit if isinstance(credit, str) else getattr(meth, "name", "model"))
    return AuditResult(record, verdict([record]), name)
