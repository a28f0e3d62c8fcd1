"""Equilibrium propagation (Scellier & Bengio, 2017) for the feed-forward networks here.

Energy. For one sample, with x clamped and the network's own maps
F_0 = embed(x) and F_l(h) = h + f_l(h) (residual) or f_l(h) (no skip),

    E_β(h_0..h_L) = Σ_{l=0}^{L} ½‖ε_l‖² + β·ℓ(readout(h_L), y),    ε_l = h_l − F_l(h_{l−1})

(ε_0 = h_0 − F_0), summed over the batch. ε_l is layer l's prediction error.

Free phase (β = 0): E_0 ≥ 0 and it is 0 exactly at the forward pass, so the free
equilibrium is the forward pass itself; nothing is relaxed.

Nudged phase (β > 0): starting from the free state, ``steps`` = T steps of gradient
descent on E_β with step size η = ``step_size``. ``relaxation`` says in which coordinates:

- ``errors`` (default): in the prediction errors ε_0..ε_L, the states following from them,
  h_0 = F_0 + ε_0, h_l = F_l(h_{l−1}) + ε_l (a one-to-one change of coordinates: the same
  energy, the same minimum). There E_β = ½‖ε‖² + β·ℓ(h_L(ε)), with gradient
  ε_l + β·∂ℓ/∂h_l (backprop's gradient at the current states), so its Hessian is I + β·K,
  K the curvature of ℓ seen from the ε's. Each step is one backward sweep; the first one
  from the free state gives ε_l = −β·g_l exactly; the steps contract towards the minimum
  when β·λ_max(K) < (2 − η)/η (η = 1: β·λ_max(K) < 1). Training sharpens ℓ: on the
  digits default's trained ResMLPs, β = 0.01 with η = 1 no longer converges (the fixed-point
  residual stays ~1 for some samples, ρ drops to 0.6–0.85 while cos stays 0.999), while
  β = 1e-3 converges to ~1e-7 in 8 steps (ρ ≥ 0.994). On ReLU networks (mlp, cnn) a gate
  flipping between steps can leave a small 2-cycle instead of a fixed point (at init on
  digits, β = 0.01: credits alternate at cos ≈ 0.999 to backprop).
- ``states``: in the states h_l themselves, the local dynamics of the EP literature
  (h_l moves by −η(ε_l − J_{l+1}ᵀ ε_{l+1}); layer L by −η(ε_L + β∂ℓ/∂h_L)). Its Hessian
  (I − J)ᵀ(I − J) is ill conditioned: gradient descent is stable only for η < 2/λ_max and
  needs ~1/(η·λ_min) steps. Measured at init on digits: the ResMLP (d = 64, L = 4) diverges
  at η ≥ 0.5 and needs ~100 steps at η = 0.3 for cos > 0.99; ViT-Mini diverges even at 0.3.

Equilibrium. At the nudged minimum ε_L = −β·∂ℓ/∂h_L and ε_l = J_{l+1}ᵀ ε_{l+1}
(J_{l+1} = ∂F_{l+1}/∂h_l at the nudged states): backprop's recursion, so −ε_l/β tends to
the per-sample gradient g_l = ∂ℓ_n/∂h_l as β → 0. Hence the credit:

    a_l = −ε_l/β = −(h_l^β − F_l(h_{l−1}^β))/β

"−(h_nudged − h_free)/β" read layer-locally: h_free is what the free dynamics put at layer
l given the (nudged) layer below. The raw state difference −(h_l^β − h_l^free)/β is not the
credit: since Δh_l = ε_l + J_l Δh_{l−1}, it accumulates every lower layer's error and equals
g_l only at l = 0 (F_0 is clamped) or under the fixed-prediction approximation (F_l held at
its free value); at init on digits its cosine to g_l falls to 0.90 at layer 4 (−ε_l/β: 0.99999).

Update. (1/β)·(∂E_β/∂θ at the nudged state − ∂E_0/∂θ at the free state); the second term is
0 (E_0 ≡ 0 at the forward pass), and ∂E_β/∂θ_l = −(∂F_l/∂θ_l)ᵀ ε_l, so block l and the
embedding get (1/n)·(∂F_l/∂θ_l)ᵀ a_l with F_l evaluated at the nudged input h_{l−1}^β
(as fa/dfa's local objective with a_l), and the readout the mean loss at h_L^β
(1/β·∂(βℓ)/∂θ). With a penalty λ, each block also gets λ·Σ mean_n ‖f_l‖² of its own output
(f_l on stopgrad h_{l−1}^β) as in fa/dfa: (a_l + 2λ f_l)/n at f_l; it is not in the energy.
The reported loss is the free phase's (the model's own prediction).

Defaults (``engine.config.EPConfig``): β = 1e-3, T = 8, η = 1, errors: converged on the
trained digits networks, where the finite-β error leaves cos ≈ 0.99999, ρ ≥ 0.994 and each
sample's ‖a_l‖/‖g_l‖ within 0.75–1.07. A larger β shows EP's own bias and needs η < 1:
β = 0.01, η = 0.5, T = 20 converges there to ρ 0.86–0.94 (‖a_l‖/‖g_l‖ down to 0.26).

Cost: T + 1 forward and backward passes a step (the relaxation and the update) plus the
free forward pass: about 8× a bp epoch on the digits default at T = 8. BatchNorm's running
statistics follow the free phase only (they are restored after the relaxation and the
update). EP runs in float32 whatever ``precision`` says: β-sized differences of states do not
survive bfloat16.

Settings come from the audit config's ``ep`` section (``config_section``) and are kept in
the checkpoint: ``state["method"] == {"beta", "steps", "step_size", "relaxation"}``.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Method, Probe, chunk_rows

RELAXATIONS = ("errors", "states")


@dataclass(frozen=True)
class EPSettings:
    """β, T, η and the coordinates of the relaxation; the defaults are engine.config.EPConfig's."""

    beta: float = 1e-3
    steps: int = 8
    step_size: float = 1.0
    relaxation: str = "errors"

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"ep: beta must be a finite number > 0, not {self.beta!r}")
        if not (isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 1):
            raise ValueError(f"ep: steps must be an integer ≥ 1, not {self.steps!r}")
        if not (isinstance(self.step_size, (int, float)) and 0 < self.step_size < 2):
            raise ValueError(f"ep: step_size must be in (0, 2), not {self.step_size!r}")
        if self.relaxation not in RELAXATIONS:
            raise ValueError(f"ep: relaxation must be one of {', '.join(RELAXATIONS)}, not {self.relaxation!r}")

    @classmethod
    def of(cls, options: Any) -> EPSettings:
        """From None (the defaults), a mapping, or an object with these attributes (EPConfig)."""
        if options is None or isinstance(options, EPSettings):
            return options or cls()
        names = [f.name for f in fields(cls)]
        if isinstance(options, Mapping):
            return cls(**{k: options[k] for k in names if k in options})
        return cls(**{k: getattr(options, k) for k in names if hasattr(options, k)})


def _layered(model: Any) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "residual") and callable(getattr(model, "embed", None))


def _block(model: Any, layer: int, h: Tensor) -> tuple[Tensor, Tensor]:
    """(F_l(h), f_l(h)) for block ``layer`` = 1..L."""
    f = model.blocks[layer - 1](h)
    return (h + f if model.residual else f), f


@contextmanager
def _buffers_kept(model: Any) -> Iterator[None]:
    """BatchNorm's running statistics (every buffer) as they were before the block."""
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved):
                b.copy_(s)


class EquilibriumPropagation(Method):
    name = "ep"
    description = "equilibrium propagation: credit −ε_l/β from a β-nudged relaxation of a layered energy"
    config_section = "ep"

    def __init__(self, model, n_classes, generator, options: Any = None) -> None:
        super().__init__(model, n_classes, generator)
        if not _layered(model):
            raise ValueError("ep relaxes each block on its own: it needs a model with `embed`, `blocks` and "
                             "`residual` (every network in engine.models has them)")
        self.settings = EPSettings.of(options)

    # ------------------------------------------------------------------ the two phases

    def _errors(self, model: Any, pred0: Tensor, v: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """(ε_0..ε_L, h_L) of the relaxation's variables v (errors or states, per ``relaxation``)."""
        if self.settings.relaxation == "errors":
            h = pred0 + v[0]
            for layer in range(1, model.depth + 1):
                h = _block(model, layer, h)[0] + v[layer]
            return v, h
        eps = [v[0] - pred0] + [v[l] - _block(model, l, v[l - 1])[0] for l in range(1, model.depth + 1)]
        return eps, v[-1]

    def relax(self, model: Any, hs_free: list[Tensor], y: Tensor) -> list[Tensor]:
        """The nudged phase: T gradient steps on E_β from the free state hs_free (h_0 = F_0);
        returns the variables (ε's or h's), detached."""
        s = self.settings
        pred0 = hs_free[0].detach()
        v = [torch.zeros_like(h) for h in hs_free] if s.relaxation == "errors" else [h.detach() for h in hs_free]
        with torch.enable_grad():
            for _ in range(s.steps):
                v = [t.detach().requires_grad_(True) for t in v]
                eps, h_last = self._errors(model, pred0, v)
                loss = F.cross_entropy(model.forward_from(model.depth, h_last), y, reduction="sum")
                energy = 0.5 * sum(e.square().sum() for e in eps) + s.beta * loss
                grads = torch.autograd.grad(energy, v)
                v = [t.detach() - s.step_size * g for t, g in zip(v, grads)]
        return v

    def credit(self, probe: Probe) -> list[Tensor]:
        model = probe.model
        n = probe.x.shape[0]
        step = chunk_rows(probe)
        was_training = model.training  # type: ignore[attr-defined]
        model.eval()  # type: ignore[attr-defined]
        parts = []
        try:
            with torch.autocast(probe.x.device.type, enabled=False):
                for i in range(0, n, step):
                    hs = [h[i:i + step] for h in probe.hs]
                    v = self.relax(model, hs, probe.y[i:i + step])
                    if self.settings.relaxation == "errors":
                        eps = v
                    else:
                        with torch.no_grad():
                            eps, _ = self._errors(model, hs[0], v)
                    parts.append([e / -self.settings.beta for e in eps])
        finally:
            model.train(was_training)  # type: ignore[attr-defined]
        return parts[0] if len(parts) == 1 else [torch.cat(layer) for layer in zip(*parts)]

    def _nudged_pass(self, model: Any, x: Tensor, v: list[Tensor]) -> tuple[Tensor, list[Tensor], list[Tensor], Tensor]:
        """The update's forward pass at the nudged states: (F_0 = embed(x), [f_1..f_L], [ε_0..ε_L],
        h_L^β), F_0 and each f_l with a graph to their own parameters only (block l runs on the
        detached h_{l−1}^β); the ε's and h_L^β detached."""
        errors = self.settings.relaxation == "errors"
        pred0 = model.embed(x)
        h = pred0.detach() + v[0] if errors else v[0]
        eps, fs = [h - pred0.detach()], []
        for layer in range(1, model.depth + 1):
            pred, f = _block(model, layer, h)
            h = pred.detach() + v[layer] if errors else v[layer]
            eps.append(h - pred.detach())
            fs.append(f)
        if errors:
            eps = list(v)  # the variables themselves: h − F(h_{l−1}) would lose low bits to cancellation
        return pred0, fs, eps, h

    def step(self, model, x, y, penalty):
        s = self.settings
        n, L = x.shape[0], model.depth
        with torch.autocast(x.device.type, enabled=False):
            with torch.no_grad():  # the free phase: E_0's minimum is the forward pass
                hs_free, _ = model.hidden_states(x)
                loss = F.cross_entropy(model.forward_from(L, hs_free[-1]), y)
            with _buffers_kept(model):
                v = self.relax(model, hs_free, y)
                pred0, fs, eps, h_last = self._nudged_pass(model, x, v)
                readout = F.cross_entropy(model.forward_from(L, h_last), y)
                a = [e / -s.beta for e in eps]
                grads = [a[0] / n] + [(a_l + (2.0 * penalty) * f.detach()) / n if penalty else a_l / n
                                      for f, a_l in zip(fs, a[1:])]
                torch.autograd.backward([readout, pred0, *fs], [None, *grads])
        return loss

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.settings)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.settings = EPSettings.of({**asdict(self.settings), **state})
