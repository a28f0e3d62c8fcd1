"""Where a training step's time goes outside the matrix products (``faeval-tui bench --profile``).

torch.profiler records ``steps`` batches of the engine's own ``train_epoch`` per method, on
the benchmark's CIFAR-100-shaped task, after a warm-up. Every op's *self* time (its own
kernel, not its children's) is summed into a category, so the matmul share and the
non-matmul share add up to the profiled time. The profiler's own cost is reported as the
ratio of the profiled steps' wall time to unprofiled ones (it is not subtracted).
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from .training import Shape, bench_config, cifar_shaped_task, run_parts, time_batches

# aten op name -> category; anything else is "other"
CATEGORIES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv", "aten::dot"),
    "optimizer": ("aten::_fused_adamw_", "aten::lerp_", "aten::addcdiv_", "aten::addcmul_",
                  "aten::sqrt", "aten::_fused_adam_"),
    "layernorm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "gelu": ("aten::gelu", "aten::gelu_backward"),
    "loss": ("aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss_forward",
             "aten::nll_loss_backward", "aten::_softmax", "aten::scatter_add"),
    "batch (gather, normalise)": ("aten::index_select", "aten::addcmul", "aten::_to_copy", "aten::copy_",
                                  "aten::randperm"),
    "gradient bookkeeping": ("aten::add_", "aten::add", "aten::sum", "aten::zero_", "aten::fill_",
                             "aten::empty", "aten::empty_strided", "aten::t", "aten::view", "aten::reshape",
                             "aten::as_strided", "aten::transpose", "aten::detach", "aten::mul", "aten::clone"),
}


def category(name: str) -> str:
    if name.startswith("aten::_foreach_"):
        return "optimizer"
    return next((cat for cat, names in CATEGORIES.items() if name in names), "other")


def profile_method(method: str, shape: Shape, steps: int, precision: str = "fp32",
                   task=None) -> dict[str, Any]:
    """Self time per category and the top ops for ``steps`` batches of ``method``."""
    task = task if task is not None else cifar_shaped_task(shape)
    parts = run_parts(bench_config(shape, precision=precision), method, task)
    time_batches(parts, task, shape.batch, 5)  # warm-up: allocations, kernel choice
    plain = time_batches(parts, task, shape.batch, steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        time_batches(parts, task, shape.batch, steps)
        profiled = time.perf_counter() - t0
    ops = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(s for _, s, _ in ops)
    cats: dict[str, float] = {}
    for name, s, _ in ops:
        cats[category(name)] = cats.get(category(name), 0.0) + s
    ops.sort(key=lambda o: -o[1])
    return {"method": method, "precision": precision, "steps": steps, "step_ms": plain / steps * 1e3,
            "profiler_overhead": profiled / plain, "self_s": total,
            "share": {k: v / total for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
            "top": [{"op": n, "share": s / total, "ms_per_step": s / steps * 1e3, "calls_per_step": c / steps}
                    for n, s, c in ops[:12]]}


def run_profile(methods=("bp", "fa", "dfa"), steps: int = 40, precision: str = "fp32", threads: int = 1,
                shape: Shape | None = None) -> dict[str, Any]:
    shape = shape or Shape()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        task = cifar_shaped_task(shape)
        return {"threads": threads, "shape": shape.__dict__,
                "methods": [profile_method(m, shape, steps, precision, task) for m in methods]}
    finally:
        torch.set_num_threads(old)


def markdown(p: dict[str, Any]) -> str:
    lines = []
    for m in p["methods"]:
        lines += [f"**{m['method']}** ({m['precision']}, {p['threads']} thread(s)): {m['step_ms']:.1f} ms a step; "
                  f"matmul {m['share'].get('matmul', 0.0):.0%} of the profiled self time, "
                  f"everything else {1 - m['share'].get('matmul', 0.0):.0%} "
                  f"(profiler overhead {m['profiler_overhead']:.2f}×)", "",
                  "| op | share | ms / step | calls / step |", "|---|---:|---:|---:|"]
        lines += [f"| `{t['op']}` | {t['share']:.1%} | {t['ms_per_step']:.2f} | {t['calls_per_step']:.0f} |"
                  for t in m["top"]]
        lines += ["", "| category | share |", "|---|---:|"]
        lines += [f"| {k} | {v:.1%} |" for k, v in m["share"].items()]
        lines.append("")
    return "\n".join(lines)


def run_profiles(quick: bool = False, log=print) -> dict[str, Any]:
    """``faeval-tui bench --profile``: the profile at one thread and at all of torch's threads."""
    from .run import machine

    shape = Shape(n_train=1024, n_test=256, d=64, L=2) if quick else Shape()
    steps = 3 if quick else 40
    out: dict[str, Any] = {"machine": machine(), "profiles": []}
    for threads in sorted({1, out["machine"]["torch_threads"]}):
        log(f"profiling bp, fa and dfa steps, {threads} thread(s)")
        out["profiles"].append(run_profile(steps=steps, threads=threads, shape=shape))
    return out


def profile_markdown(r: dict[str, Any]) -> str:
    from .run import machine_line

    head = f"Machine: {machine_line(r['machine'])}; {r['machine']['date']}.\n\n"
    return head + "\n".join(markdown(p) for p in r["profiles"])
