"""Feedback alignment as Lillicrap et al. (2016) define it: layer by layer, not block by block.

The error travels back through the whole network as backprop's does: through every
nonlinearity's true derivative (GELU, ReLU, max-pool), every LayerNorm and BatchNorm, the
attention's activation–activation products (softmax(QKᵀ)V) and every skip connection. Only
the transposes of the weight matrices are replaced: where backprop's input gradient of a
layer y = W x + b is gᵀ·W, this method uses gᵀ·B with a fixed random B of W's shape
(``nn.Linear``: g·B; ``nn.Conv2d``: the input gradient is the transposed convolution with a
fixed random kernel B of the weight's shape). The weight gradients are the ordinary ones,
gᵀx, from the signal g that arrives at each layer's output. With every B set to its W the
backward pass is backprop's, exactly.

Which layers: every ``nn.Linear`` and ``nn.Conv2d`` of the model except the embedding's
(layer 0, ``block_parameters(0)``: its input is the data, so its input gradient is never
formed and needs no B). That is the head, and for the ResMLP W1/W2 of every block; for
ViT-Mini qkv, the attention's output projection and the MLP; for the CNN every block's
convolution and the fully connected block; for the MLP every layer. A module with another
weight matrix of its own (``nn.MultiheadAttention``'s packed projections, a ``Conv1d``) is
refused when the method is built, naming it: its transpose would silently stay exact.

B's distribution: uniform on [−1/√fan_in, +1/√fan_in], fan_in = W's inputs (in_features,
or in_channels·k² for a convolution), the bound every forward weight of ``engine.models``
is initialised with: at init a B is distributed exactly as its W, so the B-path keeps
backprop's scale. Drawn once, in ``named_modules`` order, from the run's feedback
generator (``derive_seed(seed, "feedback")``), fixed for the run, stored in float32 on the
host in the checkpoint (``state["method"] == {"B": [...], "modules": [names]}``). The null
band redraws all of them from the diagnostics generator.

The credit a_l is what arrives at h_l: the backward pass of the summed per-sample loss
through this B-path, as ``Probe.grads`` is backprop's (so a_l[n] is per-sample, and equal to
``probe.grads`` when every B is its W). The training step is ``bp_step`` with the B-path in
place: loss + λ·Σ_l mean_n ‖f_l‖², the penalty's gradient also carried back through it.

Mechanism: ``feedback_path`` swaps each such module's ``forward`` for a custom autograd
Function (``_LinearFeedback``, ``_Conv2dFeedback``) for the duration of a step or a credit,
and restores it afterwards; the model's classes are untouched, and outside these calls the
model is backprop's.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Method, Probe, bp_step, chunk_rows

FEEDBACK_TYPES = (nn.Linear, nn.Conv2d)


class _LinearFeedback(torch.autograd.Function):
    """y = x·Wᵀ + b forward; backward: g·B to the input, gᵀx and Σg to W and b."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor) -> Tensor:
        ctx.save_for_backward(x, feedback)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, feedback = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        rows = grad.reshape(-1, grad.shape[-1])  # tokens and samples alike: (…, out) → (m, out)
        gx = grad @ feedback.to(grad.dtype) if need_x else None
        gw = rows.T @ x.reshape(-1, x.shape[-1]).to(grad.dtype) if need_w else None
        gb = rows.sum(0) if need_b and ctx.has_bias else None
        return gx, gw, gb, None


class _Conv2dFeedback(torch.autograd.Function):
    """conv2d(x, W, b) forward; backward: the transposed convolution with kernel B to the input,
    the ordinary weight and bias gradients."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor, stride: Any,
                padding: Any, dilation: Any, groups: int) -> Tensor:
        ctx.save_for_backward(x, feedback)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.weight_shape = weight.shape
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        x, feedback = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = (torch.nn.grad.conv2d_input(x.shape, feedback.to(grad.dtype), grad, stride, padding, dilation, groups)
              if need_x else None)
        gw = (torch.nn.grad.conv2d_weight(x.to(grad.dtype), ctx.weight_shape, grad, stride, padding, dilation,
                                          groups) if need_w else None)
        gb = grad.sum((0, 2, 3)) if need_b and ctx.has_bias else None
        return gx, gw, gb, None, None, None, None, None


def feedback_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer whose transpose the B-path replaces, in ``named_modules``
    order: each ``nn.Linear`` and ``nn.Conv2d`` outside the embedding. Raises ``ValueError`` for
    a module outside the embedding with a weight matrix of another kind."""
    embedding = {id(p) for p in model.block_parameters(0)}  # type: ignore[operator]
    out = []
    for name, module in model.named_modules():
        if isinstance(module, FEEDBACK_TYPES):
            if id(module.weight) in embedding:
                continue
            if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
                raise ValueError(f"fa_lillicrap: {name or 'the model'} is a Conv2d with padding "
                                 f"{module.padding!r} ({module.padding_mode}); it handles zero padding given in pixels")
            out.append((name, module))
        elif any(p.dim() >= 2 and id(p) not in embedding for p in module.parameters(recurse=False)):
            raise ValueError(f"fa_lillicrap: {name or 'the model'} ({type(module).__name__}) has a weight matrix "
                             "that is neither an nn.Linear's nor an nn.Conv2d's; its transpose cannot be replaced")
    if not out:
        raise ValueError("fa_lillicrap: the model has no nn.Linear or nn.Conv2d outside its embedding")
    return out


def _fan_in(shape: torch.Size | tuple[int, ...]) -> int:
    return math.prod(shape[1:])  # Linear (out, in): in; Conv2d (out, in/groups, k, k): in·k²


def _forward(module: nn.Module, feedback: Tensor):
    if isinstance(module, nn.Conv2d):
        return lambda x: _Conv2dFeedback.apply(x, module.weight, module.bias, feedback, module.stride,
                                               module.padding, module.dilation, module.groups)
    return lambda x: _LinearFeedback.apply(x, module.weight, module.bias, feedback)


class LillicrapFeedbackAlignment(Method):
    name = "fa_lillicrap"
    description = "feedback alignment layer by layer: every Wᵀ of the backward pass a fixed random B"

    def __init__(self, model, n_classes, generator) -> None:
        super().__init__(model, n_classes, generator)
        found = feedback_modules(model)
        self.layers = [name for name, _ in found]
        self.shapes = [tuple(m.weight.shape) for _, m in found]
        self.B = [b.to(m.weight.device, m.weight.dtype) for b, (_, m) in zip(self.draw(generator), found)]

    def draw(self, generator: torch.Generator) -> list[Tensor]:
        """One B per layer, uniform on ±1/√fan_in, float32 on the host, in ``self.layers`` order."""
        out = []
        for shape in self.shapes:
            bound = 1.0 / math.sqrt(_fan_in(shape))
            out.append(torch.rand(shape, generator=generator) * (2 * bound) - bound)
        return out

    @contextmanager
    def feedback_path(self, model: nn.Module, B: list[Tensor]) -> Iterator[None]:
        """Within the block, every listed layer of ``model`` backpropagates through its B."""
        modules = [model.get_submodule(name) for name in self.layers]
        try:
            for module, b in zip(modules, B):
                module.forward = _forward(module, b)  # an instance attribute: the class is untouched
            yield
        finally:
            for module in modules:
                module.__dict__.pop("forward", None)

    def step(self, model, x, y, penalty):
        with self.feedback_path(model, self.B):
            return bp_step(model, x, y, penalty)

    def credit(self, probe: Probe) -> list[Tensor]:
        return self.credits_under(probe, self.B)

    def null_credits(self, probe: Probe, generator: torch.Generator, draws: int) -> Iterator[list[Tensor]]:
        for _ in range(draws):
            yield self.credits_under(probe, [b.to(ref.device, ref.dtype) for b, ref in zip(self.draw(generator),
                                                                                            self.B)])

    def credits_under(self, probe: Probe, B: list[Tensor]) -> list[Tensor]:
        """a_0..a_L: per-sample gradients of the summed loss at each h_l along the B-path, in eval
        mode, in chunks of the diagnostic set (each sample's credit depends on it alone)."""
        model = probe.model
        n = probe.x.shape[0]
        step = chunk_rows(probe)
        was_training = model.training  # type: ignore[attr-defined]
        model.eval()  # type: ignore[attr-defined]
        try:
            with torch.enable_grad(), self.feedback_path(model, B):  # type: ignore[arg-type]
                parts = [_arriving(model, probe.x[i:i + step], probe.y[i:i + step]) for i in range(0, n, step)]
        finally:
            model.train(was_training)  # type: ignore[attr-defined]
        return parts[0] if len(parts) == 1 else [torch.cat(layer) for layer in zip(*parts)]

    def state_dict(self) -> dict[str, Any]:
        return {"B": [b.detach().float().cpu() for b in self.B], "modules": list(self.layers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = state.get("modules", self.layers)
        if list(names) != self.layers or [tuple(b.shape) for b in state["B"]] != self.shapes:
            raise ValueError("fa_lillicrap's feedback matrices in the checkpoint do not match this model's layers")
        self.B = [b.to(ref.device, ref.dtype) for b, ref in zip(state["B"], self.B)]


def _arriving(model: Any, x: Tensor, y: Tensor) -> list[Tensor]:
    """What the backward pass of Σ_n ℓ_n delivers at h_0..h_L (as ``diagnostics.make_probe``)."""
    hs, _ = model.hidden_states(x)
    if hs[0].requires_grad:
        loss = F.cross_entropy(model.forward_from(model.depth, hs[-1]), y, reduction="sum")
        return [g.detach() for g in torch.autograd.grad(loss, hs)]
    out = []  # no parameter upstream needs a gradient: run on from each h_l as a leaf
    for layer, h in enumerate(hs):
        leaf = h.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model.forward_from(layer, leaf), y, reduction="sum"), leaf)
        out.append(g)
    return out
