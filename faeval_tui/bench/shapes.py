"""The matrix products one training step runs, per method, and the machine's rate at them.

FLOP convention (docs/bench.md): 2 FLOPs per multiply-add of every matrix product the
step actually performs; element-wise work (LayerNorm, GELU, softmax, the optimizer) is
not counted. For ``nn.Linear`` (out × in weight W, batch B):

    forward  x·Wᵀ   (B, in, out)     input grad  g·W   (B, out, in)     weight grad  gᵀ·x  (out, B, in)

The embedding never needs its input gradient (x is data), so no method pays it; frozen
skips the blocks' weight gradients; fa/dfa add their one feedback product e·[P_0|…|P_L];
fa_lillicrap runs backprop's products with each B in its W's place, so it counts as bp.
ep's count depends on its relaxation (T + 1 backward sweeps and the free forward): it is
not counted (``counted``), and the benchmark gives its epoch as a multiple of bp's only.
"""
from __future__ import annotations

import time

import torch

Matmul = tuple[int, int, int]  # (m, k, n): an (m × k) · (k × n) product


def _linear(batch: int, n_in: int, n_out: int, dgrad: bool, wgrad: bool) -> list[Matmul]:
    out = [(batch, n_in, n_out)]
    if dgrad:
        out.append((batch, n_out, n_in))
    if wgrad:
        out.append((n_out, batch, n_in))
    return out


COUNTED = ("bp", "fa", "dfa", "frozen", "fa_lillicrap")


def counted(method: str) -> bool:
    """Whether ``step_matmuls`` knows ``method``'s products."""
    return method in COUNTED


def step_matmuls(method: str, batch: int, in_dim: int, n_classes: int, d: int, L: int, hidden: int) -> list[Matmul]:
    """Every matrix product of one training step of ``method`` (see the module docstring)."""
    if not counted(method):
        raise ValueError(f"no matmul count for {method!r}: counted are {', '.join(COUNTED)}")
    blocks_train = method != "frozen"
    shapes = _linear(batch, in_dim, d, dgrad=False, wgrad=True)
    for _ in range(L):
        # fc1's input grad is needed by every method: LN's own weights train (or, frozen, h_0 does)
        shapes += _linear(batch, d, hidden, dgrad=True, wgrad=blocks_train)
        shapes += _linear(batch, hidden, d, dgrad=True, wgrad=blocks_train)
    shapes += _linear(batch, d, n_classes, dgrad=True, wgrad=True)
    if method in ("fa", "dfa"):
        # a_l = e·P_l for all l in one product (engine/methods/feedback.py); FA's chain
        # B_out·B_L⋯ is folded into P once per set of B's, not per step
        shapes.append((batch, n_classes, (L + 1) * d))
    return shapes


def flops(shapes: list[Matmul]) -> int:
    return sum(2 * m * k * n for m, k, n in shapes)


def matmul_rate(shapes: list[Matmul], repeats: int = 7, inner: int = 20) -> tuple[float, dict[str, float]]:
    """float32 GFLOP/s of running ``shapes`` back to back (best of ``repeats``), and the rate of each
    distinct shape on its own. Operands are laid out as nn.Linear's kernels see them."""
    gen = torch.Generator().manual_seed(0)
    ops = []
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=gen)
        b = torch.randn(n, k, generator=gen).t()  # a transposed weight, as in x·Wᵀ
        ops.append((a, b, torch.empty(m, n)))

    def best(items) -> float:
        for a, b, c in items:
            torch.mm(a, b, out=c)
        t_best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                for a, b, c in items:
                    torch.mm(a, b, out=c)
            t_best = min(t_best, (time.perf_counter() - t0) / inner)
        return t_best

    total = flops(shapes) / best(ops) / 1e9
    per_shape = {}
    for shape, op in zip(shapes, ops):
        key = "x".join(map(str, shape))
        if key not in per_shape:
            per_shape[key] = 2 * shape[0] * shape[1] * shape[2] / best([op]) / 1e9
    return total, per_shape
