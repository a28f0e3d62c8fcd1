"""The trainer's optimizer: ``torch.optim.AdamW`` without its torch.compile guards.

``torch.optim``'s ``step``, ``zero_grad``, ``add_param_group`` and ``(load_)state_dict``
are wrapped so torch.compile can trace around them, and the wrappers import
``torch._dynamo`` (about 800 modules with sympy and mpmath) the first time one is
called: +68 MiB of RSS in a bp training process (anonymous memory 142 → 210 MiB on torch
2.13.0+cpu), +35 MiB in fa/dfa ones (their ``autograd.backward`` with explicit gradients
imports sympy anyway), and a second or more of start-up. Nothing here is
compiled, so this subclass calls the same implementations unwrapped (``__wrapped__``,
which ``functools.wraps`` keeps) and the same ``torch.optim.adam.adam`` step, fused
kernel and all. The parameters, optimizer state and ``state_dict`` it produces are
bit-identical to ``torch.optim.AdamW``'s, and checkpoints load in either
(tests/test_optim.py). Should a future torch drop ``__wrapped__``, the guarded methods
are used as they are: the same numbers, only the memory comes back.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.adam import adam


def _unguarded(method: Callable[..., Any]) -> Callable[..., Any]:
    return getattr(method, "__wrapped__", method)


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` (same arguments, same state), stepping without importing torch._dynamo."""

    add_param_group = _unguarded(Optimizer.add_param_group)
    zero_grad = _unguarded(Optimizer.zero_grad)
    state_dict = _unguarded(Optimizer.state_dict)
    load_state_dict = _unguarded(Optimizer.load_state_dict)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """``torch.optim.Adam.step`` as torch 2.13 writes it, minus the dynamo guard."""
        if any(group["differentiable"] for group in self.param_groups):
            raise ValueError("engine.optim.AdamW steps without autograd: use torch.optim.AdamW for differentiable=True")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                params: list[torch.Tensor] = []
                grads: list[torch.Tensor] = []
                exp_avgs: list[torch.Tensor] = []
                exp_avg_sqs: list[torch.Tensor] = []
                max_exp_avg_sqs: list[torch.Tensor] = []
                steps: list[torch.Tensor] = []
                has_complex = self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
                beta1, beta2 = group["betas"]
                adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                     amsgrad=group["amsgrad"], has_complex=has_complex, beta1=beta1, beta2=beta2, lr=group["lr"],
                     weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                     foreach=group["foreach"], capturable=group["capturable"],
                     differentiable=group["differentiable"], fused=group["fused"],
                     grad_scale=getattr(self, "grad_scale", None), found_inf=getattr(self, "found_inf", None),
                     decoupled_weight_decay=group["decoupled_weight_decay"])
        return loss
