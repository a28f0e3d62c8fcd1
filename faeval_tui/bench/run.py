"""``faeval-tui bench``: every figure of issue #5 measured in one process on one machine.

Ratios (fa/bp, conventional/ours) are medians over rounds of the ratio within a round
(methods interleaved, order reversed every other round), so load from elsewhere shifts
numerator and denominator alike; epoch times are the best round.
"""
from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
from dataclasses import dataclass
from typing import Any

import torch

from engine.config import load_config

from . import shapes
from .diagnostics import diag_seconds, shares, shares_by_method
from .memory import peak_rss
from .training import Shape, cifar_shaped_task, epoch_times, paired_epoch_times
from .ui_lag import console_lag

METHODS = ["bp", "fa", "dfa", "frozen"]
# at one thread (how an audit's runs train) also the rules added since: Lillicrap's layer-wise
# FA (bp's products, each B in its W's place) and EP (T + 1 sweeps a step: a multiple of bp)
ONE_THREAD_METHODS = ["bp", "fa", "dfa", "fa_lillicrap", "ep"]
FLAGSHIP = {"seeds": 3, "epochs": 100}
FLAGSHIP_PRESET = "cifar100_d256_L4"


@dataclass(frozen=True)
class Plan:
    shape: Shape
    batches: int  # timed per round (of shape.steps), then scaled to the epoch
    rounds: int
    diag_rounds: int
    ui_seconds: float
    ui_epochs: int
    mem: dict[str, Any]


FULL = Plan(Shape(), batches=100, rounds=7, diag_rounds=3, ui_seconds=15.0, ui_epochs=60,
            mem={"n_train": 50_000, "n_test": 10_000})
# one thread: a quick run must not stall on a core another process holds (OpenMP barriers do)
QUICK = Plan(Shape(n_train=1024, n_test=256, d=64, L=2), batches=3, rounds=1, diag_rounds=0, ui_seconds=1.0,
             ui_epochs=3, mem={"n_train": 1024, "n_test": 1024, "threads": 1, "seeds": (42,),
                       "sets": ("d=64", "L=2", "diagnostics.rho_directions=2")})


# the CPU features that decide which matmul kernels run (oneDNN/MKL pick their code by them)
MATMUL_FLAGS = ("fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


def machine() -> dict[str, Any]:
    """What the figures were measured on: the CPU's model and matmul-relevant flags, so
    figures from two machines are never compared without saying so."""
    model, flags, ident = platform.processor() or "?", set(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("?", platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                elif key in ("cpu family", "model") and key not in ident:
                    ident[key] = value.strip()  # a VM may name only "AMD EPYC": family and model tell which
    except OSError:
        pass
    bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return {"cpu": model, "cpu_family": ident.get("cpu family"), "cpu_model": ident.get("model"),
            "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_flags": [f for f in MATMUL_FLAGS if f in flags],
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_bf16": bool(bf16()) if bf16 is not None else None,
            "loadavg": list(os.getloadavg()), "date": datetime.datetime.now().isoformat(timespec="seconds")}


def machine_line(mc: dict[str, Any]) -> str:
    flags = ", ".join(mc.get("cpu_flags", [])) or "none of " + "/".join(MATMUL_FLAGS[:3])
    amx = "AMX" if any(f.startswith("amx") for f in mc.get("cpu_flags", [])) else "no AMX"
    ident = f" (family {mc['cpu_family']} model {mc['cpu_model']})" if mc.get("cpu_family") else ""
    return (f"{mc['cpu']}{ident}, {mc['cores']} cores ({flags}; {amx}; torch kernels "
            f"{mc.get('cpu_capability', '?')}), torch {mc['torch']}")


def run_bench(quick: bool = False, log=print) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    threads = torch.get_num_threads()
    if quick:
        torch.set_num_threads(1)
    try:
        return _run(plan, quick, log)
    finally:
        torch.set_num_threads(threads)


def _run(plan: Plan, quick: bool, log) -> dict[str, Any]:
    s = plan.shape
    hidden = s.d  # r = 1
    result: dict[str, Any] = {"quick": quick, "machine": machine(),
                              "settings": {"shape": s.__dict__, "batches_timed": plan.batches, "rounds": plan.rounds,
                                           "steps_per_epoch": s.steps}}

    log("(1) matmul rate at the model's shapes")
    bp_shapes = shapes.step_matmuls("bp", s.batch, s.in_dim, s.n_classes, s.d, s.L, hidden)
    samples = [shapes.matmul_rate(bp_shapes, repeats=3 if quick else 9)]

    def reference() -> None:
        """The machine's rate is the best of samples taken at the start, middle and end: a
        sample caught in a burst of load from elsewhere must not lower the bar."""
        rate, per_shape = max(samples, key=lambda s_: s_[0])
        hot = shapes.flops(bp_shapes) / sum(2 * m * k * n / per_shape["x".join(map(str, (m, k, n)))]
                                            for m, k, n in bp_shapes)
        result.update(matmul_gflops=rate, matmul_gflops_hot_cache=hot, matmul_shapes=per_shape,
                      matmul_gflops_samples=[s_[0] for s_ in samples])

    log("(2, 3) epoch times: engine train_epoch per method, and the conventional loop")
    task = cifar_shaped_task(s)
    times = epoch_times(s, task, METHODS, plan.batches, plan.rounds)
    samples.append(shapes.matmul_rate(bp_shapes, repeats=3 if quick else 9))
    reference()
    rate = result["matmul_gflops"]
    methods = {}
    for m in METHODS:
        fl = shapes.flops(shapes.step_matmuls(m, s.batch, s.in_dim, s.n_classes, s.d, s.L, hidden)) * s.steps
        best = min(times[m])
        methods[m] = {"epoch_s": best, "epoch_s_median": statistics.median(times[m]), "rounds_s": times[m],
                      "gflop_per_epoch": fl / 1e9, "gflops": fl / best / 1e9, "frac_of_matmul": fl / best / 1e9 / rate}
    for m in METHODS:
        methods[m]["ratio_to_bp"] = paired_ratio(times[m], times["bp"])
    conv = min(times["conventional"])
    result.update(methods=methods, conventional={"epoch_s": conv, "rounds_s": times["conventional"],
                                                 "ratio_of_best": conv / methods["bp"]["epoch_s"]},
                  conventional_ratio=paired_ratio(times["conventional"], times["bp"]))

    log("(2a) the same at one thread, each run's thread policy (threads = 1), against the one-thread matmul rate")
    result["one_thread"] = one_thread(s, task, bp_shapes, plan, quick)

    cadence = load_config(FLAGSHIP_PRESET).diagnostics  # the cadence the CIFAR presets ship with
    log(f"(4) diagnostics per epoch (rho every {cadence.rho_every} epochs, null band every {cadence.null_every})")
    diag = diag_seconds(s, task, METHODS, plan.diag_rounds, rho_every=cadence.rho_every,
                        null_every=cadence.null_every, n_samples=min(1024, s.n_test))
    epoch_s = {m: methods[m]["epoch_s"] for m in METHODS}
    result.update(diag_s=diag, diag_share=shares(diag, epoch_s), diag_share_by_method=shares_by_method(diag, epoch_s))
    per_epoch = sum(epoch_s[m] + sum(diag[m].values()) for m in METHODS)
    result["flagship_projection_min"] = per_epoch * FLAGSHIP["seeds"] * FLAGSHIP["epochs"] / 60

    log("(2b) two runs side by side, one process and one thread each (an audit with workers = 2)")
    pairs = paired_epoch_times(s, METHODS, plan.batches, plan.rounds)
    pair_s = {k: min(v) for k, v in pairs.items()}  # two epochs of that method, side by side
    # diagnostics run side by side too; both cores are busy either way, so their sum is kept
    per_epoch_2x1 = sum(pair_s.values()) / 2 + sum(sum(diag[m].values()) for m in METHODS)
    result.update(paired_epoch_s=pair_s, flagship_projection_min_2x1=per_epoch_2x1 * FLAGSHIP["seeds"]
                  * FLAGSHIP["epochs"] / 60)

    log("(2c) the same pairs with precision = bf16 (opt-in: bfloat16 steps, float32 measurements)")
    pairs16 = paired_epoch_times(s, METHODS, plan.batches, plan.rounds, precision="bf16")
    pair16_s = {k: min(v) for k, v in pairs16.items()}
    per_epoch_bf16 = sum(pair16_s.values()) / 2 + sum(sum(diag[m].values()) for m in METHODS)
    result.update(paired_epoch_s_bf16=pair16_s, flagship_projection_min_2x1_bf16=per_epoch_bf16
                  * FLAGSHIP["seeds"] * FLAGSHIP["epochs"] / 60,
                  diag_share_bf16=sum(sum(diag[m].values()) for m in METHODS) / per_epoch_bf16)
    del task

    log("(5) console event-loop lag while two runs train")
    result.update(console_lag(plan.ui_seconds, epochs=plan.ui_epochs))

    log("(6) peak memory of a CIFAR-100-shaped audit with two workers (its whole process tree), "
        "headless and from the console")
    result.update(peak_rss(**plan.mem))
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    samples.append(shapes.matmul_rate(bp_shapes, repeats=3 if quick else 9))
    reference()
    for m in result["methods"].values():
        m["frac_of_matmul"] = m["gflops"] / result["matmul_gflops"]
    result["goals"] = goals(result)
    return result


def one_thread(s: Shape, task, bp_shapes, plan: Plan, quick: bool) -> dict[str, Any]:
    """bp, fa, dfa, fa_lillicrap and ep epochs and the matmul reference, all with one intra-op
    thread: how an audit trains (``threads: 1``, a second core used by a second run, not a
    second thread). ep's products are not counted (``shapes.counted``): its GFLOP/s and share
    are None and its cost is its ratio to bp."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rates = [shapes.matmul_rate(bp_shapes, repeats=3 if quick else 9)[0]]
        methods = ONE_THREAD_METHODS
        times = epoch_times(s, task, methods, plan.batches, max(1, plan.rounds // 2), conventional=False)
        rates.append(shapes.matmul_rate(bp_shapes, repeats=3 if quick else 9)[0])
    finally:
        torch.set_num_threads(threads)
    rate = max(rates)
    out: dict[str, Any] = {"matmul_gflops": rate, "matmul_gflops_samples": rates, "methods": {}}
    for m in methods:
        best = min(times[m])
        gflops = (shapes.flops(shapes.step_matmuls(m, s.batch, s.in_dim, s.n_classes, s.d, s.L, s.d)) * s.steps
                  / best / 1e9) if shapes.counted(m) else None
        out["methods"][m] = {"epoch_s": best, "rounds_s": times[m], "gflops": gflops,
                             "frac_of_matmul": None if gflops is None else gflops / rate,
                             "ratio_to_bp": paired_ratio(times[m], times["bp"])}
    return out


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a/b, each pair timed in the same round."""
    return statistics.median(x / y for x, y in zip(a, b))


def goals(r: dict[str, Any]) -> list[dict[str, Any]]:
    m = r["methods"]
    one = r["one_thread"]["methods"]
    n = r["machine"]["torch_threads"]
    rows = [
        ("bp share of the matmul rate, 1 thread (an audit's runs: threads = 1)", one["bp"]["frac_of_matmul"],
         ">= 0.60", one["bp"]["frac_of_matmul"] >= 0.60),
        ("fa / dfa epoch / bp epoch, 1 thread", max(one["fa"]["ratio_to_bp"], one["dfa"]["ratio_to_bp"]), "<= 1.10",
         max(one["fa"]["ratio_to_bp"], one["dfa"]["ratio_to_bp"]) <= 1.10),
        ("fa_lillicrap epoch / bp epoch, 1 thread (bp's products, each B in its W's place)",
         one["fa_lillicrap"]["ratio_to_bp"], "<= 1.10", one["fa_lillicrap"]["ratio_to_bp"] <= 1.10),
        ("ep epoch / bp epoch, 1 thread (T + 1 sweeps a step)", one["ep"]["ratio_to_bp"], "—", None),
        (f"bp share of the matmul rate, {n} threads in one process", m["bp"]["frac_of_matmul"], ">= 0.60",
         m["bp"]["frac_of_matmul"] >= 0.60),
        ("fa epoch / bp epoch", m["fa"]["ratio_to_bp"], "<= 1.10", m["fa"]["ratio_to_bp"] <= 1.10),
        ("dfa epoch / bp epoch", m["dfa"]["ratio_to_bp"], "<= 1.10", m["dfa"]["ratio_to_bp"] <= 1.10),
        ("conventional / ours (bp)", r["conventional_ratio"], ">= 1.30", r["conventional_ratio"] >= 1.30),
        ("diagnostics share of the epoch", r["diag_share"]["total"], "<= 0.05", r["diag_share"]["total"] <= 0.05),
        ("protocol diagnostics without the test-accuracy pass", r["diag_share"]["total_without_accuracy"],
         "<= 0.05", r["diag_share"]["total_without_accuracy"] <= 0.05),
        ("console lag p99 (ms)", r["ui_lag_p99_ms"], "<= 50", r["ui_lag_p99_ms"] <= 50),
        # RSS counts the shared images and torch's libraries once per process that maps them
        ("peak memory of the two-worker audit, summed RSS (MB)", r["peak_rss_mb"], "<= 1536",
         r["peak_rss_mb"] <= 1536),
        ("the same as summed PSS (MB, shared pages split among their users)", r["peak_pss_mb"], "—", None),
        ("the same audit from the console: console + trainer tree, summed RSS (MB)", r["console_peak_rss_mb"],
         "<= 1536", r["console_peak_rss_mb"] <= 1536),
        ("the console's own process, RSS (MB)", r["console_own_rss_mb"], "—", None),
        ("flagship audit, 12 runs x 100 epochs, 1 worker (min)", r["flagship_projection_min"], "< 60",
         r["flagship_projection_min"] < 60),
        ("flagship audit, 2 workers (processes) x 1 thread (min)", r["flagship_projection_min_2x1"], "< 60",
         r["flagship_projection_min_2x1"] < 60),
        ("the same with precision = bf16, opt-in (min)", r["flagship_projection_min_2x1_bf16"], "< 60",
         r["flagship_projection_min_2x1_bf16"] < 60),
    ]
    return [{"goal": g, "measured": v, "target": t, "met": None if ok is None else bool(ok)} for g, v, t, ok in rows]


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _met(met: bool | None) -> str:
    return "—" if met is None else "yes" if met else "**no**"


ONE_THREAD_COLUMNS = ("method", "epoch (s)", "GFLOP/s", "of matmul rate", "epoch / bp")


def one_thread_rows(one: dict[str, Any]) -> list[tuple[str, ...]]:
    """The one-thread table's cells; a method whose products are not counted (ep) shows no rate."""
    return [(name, f"{m['epoch_s']:.2f}", "—" if m["gflops"] is None else f"{m['gflops']:.0f}",
             "—" if m["frac_of_matmul"] is None else f"{100 * m['frac_of_matmul']:.0f}%", f"{m['ratio_to_bp']:.2f}")
            for name, m in one["methods"].items()]


def markdown(r: dict[str, Any]) -> str:
    """The tables for docs/bench.md and the README."""
    mc = r["machine"]
    one = r["one_thread"]
    lines = [f"Machine: {machine_line(mc)} ({mc['torch_threads']} threads); "
             f"{mc['date']}; load average {mc['loadavg'][0]:.2f} at start, {mc['loadavg_end'][0]:.2f} at end.",
             "",
             f"One thread (each run of an audit: `threads: 1`): matmul **{one['matmul_gflops']:.0f} GFLOP/s**.",
             "",
             "| " + " | ".join(ONE_THREAD_COLUMNS) + " |", "|---|---:|---:|---:|---:|",
             *("| " + " | ".join(row) + " |" for row in one_thread_rows(one)),
             "",
             f"All {mc['torch_threads']} threads in one process:",
             "",
             f"Dense float32 matmul at the model's shapes: **{r['matmul_gflops']:.0f} GFLOP/s** back to back "
             f"({r['matmul_gflops_hot_cache']:.0f} GFLOP/s each shape alone, caches hot).",
             "",
             "| method | epoch (s) | GFLOP/epoch | GFLOP/s | of matmul rate | epoch / bp | diagnostics / epoch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in r["methods"].items():
        lines.append(f"| {name} | {m['epoch_s']:.2f} | {m['gflop_per_epoch']:.0f} | {m['gflops']:.0f} | "
                     f"{100 * m['frac_of_matmul']:.0f}% | {m['ratio_to_bp']:.2f} | "
                     f"{100 * r['diag_share_by_method'][name]:.1f}% |")
    lines.append(f"| conventional (bp) | {r['conventional']['epoch_s']:.2f} | | | | "
                 f"{r['conventional_ratio']:.2f} | |")
    ds = r["diag_share"]
    lines += ["", "| diagnostic | share of the epoch |", "|---|---:|"]
    lines += [f"| {k} | {100 * v:.1f}% |" for k, v in ds.items()]
    lines += ["", "| goal | target | measured | met |", "|---|---|---:|---|"]
    lines += [f"| {g['goal']} | {g['target']} | {_fmt(g['measured'])} | {_met(g['met'])} |"
              for g in r["goals"]]
    return "\n".join(lines) + "\n"


def print_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{machine_line(r['machine'])}[/]")
    one = r["one_thread"]
    t1 = Table(title=f"1 thread (an audit's runs) · matmul {one['matmul_gflops']:.0f} GFLOP/s")
    for col in ONE_THREAD_COLUMNS:
        t1.add_column(col, justify="right" if col != "method" else "left")
    for row in one_thread_rows(one):
        t1.add_row(*row)
    console.print(t1)
    t = Table(title=f"{r['machine']['torch_threads']} threads in one process · "
                    f"matmul {r['matmul_gflops']:.0f} GFLOP/s")
    for col in ("method", "epoch s", "GFLOP/s", "of matmul", "÷ bp", "diag share"):
        t.add_column(col, justify="right" if col != "method" else "left")
    for name, m in r["methods"].items():
        t.add_row(name, f"{m['epoch_s']:.2f}", f"{m['gflops']:.0f}", f"{100 * m['frac_of_matmul']:.0f}%",
                  f"{m['ratio_to_bp']:.2f}", f"{100 * r['diag_share_by_method'][name]:.1f}%")
    t.add_row("conventional", f"{r['conventional']['epoch_s']:.2f}", "", "", f"{r['conventional_ratio']:.2f}", "")
    console.print(t)
    g = Table(title="goals")
    for col in ("goal", "target", "measured", "met"):
        g.add_column(col)
    for row in r["goals"]:
        g.add_row(row["goal"], row["target"], _fmt(row["measured"]),
                  "" if row["met"] is None else "[green]yes[/]" if row["met"] else "[red]no[/]")
    console.print(g)
