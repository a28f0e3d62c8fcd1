"""The protocol's per-epoch measurements, model-agnostic and side-effect free.

Everything here runs in eval mode on the fixed diagnostic set and never changes a
parameter. It needs only ``Auditable.hidden_states`` and ``forward_from`` and the
method's ``credit``. Cosines, norms and ρ are computed in float64 so a residual
stream at 1e8 and a reference gradient at 1e-9 still resolve.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import Thresholds
from .methods.base import Method, Probe
from .model import Auditable
from .records import Epoch
from .verdicts import evaluate, needs_baseline

PROBE_FLOATS = 8 << 20  # hidden-state floats per probe chunk (8M: every ResMLP preset fits in one)


def probe_chunk(model: Auditable, n: int) -> int:
    """Samples per probe chunk: all n while their hidden states hold ≤ PROBE_FLOATS floats
    (every ResMLP preset), else fewer, so a ViT's graph over 1024 samples is not held at
    once. Exact either way: in eval mode each sample's measurements depend on it alone."""
    shapes = getattr(model, "state_shapes", None)
    if not shapes:
        return n
    per_sample = sum(math.prod(shape) for shape in shapes)
    return n if n * per_sample <= PROBE_FLOATS else max(1, PROBE_FLOATS // per_sample)


def make_probe(model: Auditable, x: Tensor, y: Tensor) -> Probe:
    """Forward the diagnostic set once and take the per-sample BP gradients ∂ℓ_n/∂h_l."""
    was_training = model.training  # type: ignore[attr-defined]
    model.eval()  # type: ignore[attr-defined]
    parts = []
    try:
        step = probe_chunk(model, x.shape[0])
        for i in range(0, x.shape[0], step):
            parts.append(_probe_part(model, x[i:i + step], y[i:i + step]))
    finally:
        model.train(was_training)  # type: ignore[attr-defined]
    if len(parts) == 1:
        hs, logits, grads = parts[0]
    else:
        hs = [torch.cat(layer) for layer in zip(*(p[0] for p in parts))]
        logits = torch.cat([p[1] for p in parts])
        grads = [torch.cat(layer) for layer in zip(*(p[2] for p in parts))]
    return Probe(model=model, x=x, y=y, hs=hs, logits=logits, grads=grads)


def _probe_part(model: Auditable, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor, list[Tensor]]:
    with torch.enable_grad():
        hs, _ = model.hidden_states(x)
        logits = model.forward_from(model.depth, hs[-1])
        # sum, not mean: the gradient row of sample n is then ∂ℓ_n/∂h_l itself
        if hs[0].requires_grad:
            grads = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), hs)
        else:  # no parameter upstream needs a gradient: differentiate from each h_l as a leaf
            grads = tuple(_grad_from(model, layer, h, y) for layer, h in enumerate(hs))
    return [h.detach() for h in hs], logits.detach(), [g.detach() for g in grads]


def _grad_from(model: Auditable, layer: int, h: Tensor, y: Tensor) -> Tensor:
    leaf = h.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model.forward_from(layer, leaf), y, reduction="sum"), leaf)
    return grad


def row_norms(t: Tensor) -> Tensor:
    return t.double().flatten(1).norm(dim=1)


def per_sample_cos(a: Tensor, g: Tensor) -> tuple[Tensor, int]:
    """cos(a[n], g[n]) without an eps clamp; samples with a zero (or non-finite) norm are
    excluded and counted."""
    a64, g64 = a.double().flatten(1), g.double().flatten(1)
    na, ng = a64.norm(dim=1), g64.norm(dim=1)
    ok = (na > 0) & (ng > 0) & torch.isfinite(na) & torch.isfinite(ng)
    cos = (a64[ok] * g64[ok]).sum(1) / (na[ok] * ng[ok])
    return cos, int((~ok).sum())


def mean_std(t: Tensor) -> tuple[float, float]:
    if t.numel() == 0:
        return math.nan, math.nan
    std = t.std(unbiased=True).item() if t.numel() > 1 else math.nan
    return t.mean().item(), std


def stability(g_last: Tensor, n_batches: int) -> float:
    """(c): mean pairwise cosine between the batch means of g_L over ``n_batches`` batches."""
    means = torch.stack([c.mean(0) for c in g_last.double().flatten(1).chunk(n_batches)])
    norms = means.norm(dim=1, keepdim=True)
    unit = means / norms
    sims = unit @ unit.T
    k = means.shape[0]
    iu = torch.triu_indices(k, k, offset=1)
    return sims[iu[0], iu[1]].mean().item()


def perturbation_rho(model: Auditable, probe: Probe, credits: list[Tensor], n_samples: int, directions: int,
                     eps: float, generator: torch.Generator, chunk_rows: int = 1024) -> list[float]:
    """ρ_l: Pearson correlation over (sample, direction) of the true loss change
    ℓ_n(h_l + δ) − ℓ_n(h_l) against the predicted ⟨a_l[n], δ⟩, δ = ε·‖h_l[n]‖·u,
    in a float64 copy of the model so a residual stream at 1e8 still resolves.

    Samples go through in chunks of about ``chunk_rows`` perturbed rows, so each chunk's
    activations stay in cache. The directions u are drawn in float32 and normalised in
    float64: uniform on the sphere either way, and δ is exact once drawn (a float64 draw
    cost a quarter of ρ's time)."""
    model64 = float64_copy(model)
    y = probe.y[:n_samples]
    rhos = []
    with torch.no_grad():
        for layer, (h, a) in enumerate(zip(probe.hs, credits)):
            shape = h.shape[1:]  # (d,), tokens (T, d) or maps (C, H, W): δ perturbs the whole state
            h64 = h[:n_samples].double()
            a64 = a[:n_samples].double().flatten(1)
            base = F.cross_entropy(model64.forward_from(layer, h64), y, reduction="none")
            size = a64.shape[1]
            per_chunk = max(1, _chunk_rows(size, chunk_rows, directions) // directions)
            h64 = h64.flatten(1)
            # filled in place: per-chunk results appended to lists sat between the chunks'
            # freed megabytes and fragmented the heap (+120 MiB peak RSS at CIFAR size)
            predicted = torch.empty(n_samples * directions, dtype=torch.float64, device=h64.device)
            true = torch.empty_like(predicted)
            for i in range(0, n_samples, per_chunk):
                hc, ac, yc = h64[i:i + per_chunk], a64[i:i + per_chunk], y[i:i + per_chunk]
                rows = slice(i * directions, (i + hc.shape[0]) * directions)
                u = torch.randn((hc.shape[0], directions, hc.shape[1]), generator=generator)
                u = u.to(hc.device, torch.float64)
                u /= u.norm(dim=2, keepdim=True)
                delta = eps * hc.norm(dim=1)[:, None, None] * u
                predicted[rows] = torch.bmm(delta, ac[:, :, None]).flatten()
                hp = (hc[:, None, :] + delta).flatten(0, 1).view(-1, *shape)
                loss = F.cross_entropy(model64.forward_from(layer, hp), yc.repeat_interleave(directions),
                                       reduction="none")
                true[rows] = loss - base[i:i + per_chunk].repeat_interleave(directions)
            rhos.append(pearson(predicted, true))
    return rhos


def float64_copy(model: Auditable) -> Any:
    """An eval-mode float64 deep copy of ``model``, for the measurements that perturb h_l."""
    model64 = copy.deepcopy(model).double()  # type: ignore[attr-defined]
    model64.eval()
    return model64


def _chunk_rows(size: int, chunk_rows: int, per_sample: int) -> int:
    """Rows per chunk: about ``chunk_rows`` states of up to 512 floats (bigger states, fewer
    rows), never fewer than one sample's ``per_sample`` rows."""
    return chunk_rows if size <= 512 else max(per_sample, chunk_rows * 512 // size)


NUDGE_ETA = 0.01  # the protocol's η


def nudge_test(model: Auditable, probe: Probe, credits: list[Tensor], eta: float = NUDGE_ETA,
               n_samples: int | None = None, chunk_rows: int = 1024) -> dict[str, list[Any]]:
    """The protocol's on-demand nudging test, per layer l: move each sample's h_l against its
    credit by a fraction η of its own norm and run the rest of the network from there,

        Δℓ_n = ℓ_n(h_l[n] − η·‖h_l[n]‖·a_l[n]/‖a_l[n]‖) − ℓ_n(h_l[n]),

    (norms per sample, as ρ's δ = ε·‖h_l[n]‖·u; ℓ_n the cross-entropy of sample n through
    ``forward_from(l, ·)``), in a float64 copy of the model so a state at 1e8 still resolves.
    Returns per layer ``nudge`` = mean_n Δℓ_n (negative: the credit points downhill),
    ``nudge_std`` (over samples, ddof = 1) and ``nudge_excluded``, the samples left out
    because ‖a_l[n]‖ is 0 or non-finite (no eps clamp, as for cos_l). On the first
    ``n_samples`` samples (None: all), in chunks of about ``chunk_rows`` rows. Deterministic:
    it draws nothing, so running it changes no other measurement."""
    model64 = float64_copy(model)
    n = probe.y.shape[0] if n_samples is None else min(n_samples, probe.y.shape[0])
    y = probe.y[:n]
    out: dict[str, list[Any]] = {"nudge": [], "nudge_std": [], "nudge_excluded": []}
    with torch.no_grad():
        for layer, (h, a) in enumerate(zip(probe.hs, credits)):
            shape = h.shape[1:]
            h64, a64 = h[:n].double().flatten(1), a[:n].double().flatten(1)
            na = a64.norm(dim=1)
            ok = (na > 0) & torch.isfinite(na)
            step = max(1, _chunk_rows(h64.shape[1], chunk_rows, 2) // 2)  # two rows a sample
            deltas = []
            for i in range(0, n, step):
                hc, ac, okc = h64[i:i + step], a64[i:i + step], ok[i:i + step]
                unit = ac / torch.where(okc, na[i:i + step], 1.0)[:, None]
                moved = hc - eta * hc.norm(dim=1, keepdim=True) * unit
                both = torch.cat([hc, moved]).view(-1, *shape)  # one pass: the state and its nudge
                loss = F.cross_entropy(model64.forward_from(layer, both), y[i:i + step].repeat(2), reduction="none")
                deltas.append((loss[hc.shape[0]:] - loss[:hc.shape[0]])[okc])
            m, s = mean_std(torch.cat(deltas))
            out["nudge"].append(m)
            out["nudge_std"].append(s)
            out["nudge_excluded"].append(int((~ok).sum()))
    return out


def pearson(x: Tensor, y: Tensor) -> float:
    ok = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    denom = (x.norm() * y.norm()).item()
    if not denom or not math.isfinite(denom):
        return math.nan
    return ((x * y).sum() / (x.norm() * y.norm())).item()


@dataclass
class DiagnosticSettings:
    stability_batches: int = 8
    rho_samples: int = 1024
    rho_directions: int = 32
    rho_eps: float = 1e-3
    null_draws: int = 20
    measure_rho: bool = True
    measure_null: bool = True
    # draw ρ's directions after the null band's, not before: a re-measurement (engine.remeasure)
    # of an epoch whose training skipped ρ then draws that epoch's null band again exactly
    rho_last: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def measure(model: Auditable, method: Method, x: Tensor, y: Tensor, settings: DiagnosticSettings,
            generator: torch.Generator, probe: Probe | None = None) -> dict[str, Any]:
    """Every per-layer field and scalar of the protocol's "every epoch" section, except
    accuracy and the fired set (see ``verdicts.evaluate``). Timings go to ``settings.timings``
    (``probe`` adds to what is there: the caller may have timed building it)."""
    t = settings.timings
    built = t.get("probe", 0.0) if probe is not None else 0.0  # a new call without a probe starts at 0
    t0 = time.perf_counter()
    probe = probe if probe is not None else make_probe(model, x, y)
    n = x.shape[0]
    g = [gr / n for gr in probe.grads]  # the reference g_l = ∂(mean_n ℓ_n)/∂h_l
    credits = method.credit(probe)
    L = len(probe.hs) - 1
    rec: dict[str, Any] = {
        "h_norm": [row_norms(h).mean().item() for h in probe.hs],
        "g_norm": [row_norms(gl).mean().item() for gl in g],
        "a_norm": [row_norms(a).mean().item() for a in credits],
    }
    cos, cos_std, excluded = [], [], []
    for a, gl in zip(credits, g):
        c, k = per_sample_cos(a, gl)
        m, s = mean_std(c)
        cos.append(m)
        cos_std.append(s)
        excluded.append(k)
    rec.update(cos=cos, cos_std=cos_std, cos_excluded=excluded)
    ratios = [rec["h_norm"][l] / rec["h_norm"][l - 1] if rec["h_norm"][l - 1] else math.inf
              for l in range(1, L + 1)]
    rec["growth"] = max(ratios, key=lambda v: -math.inf if math.isnan(v) else v)
    rec["g_L"] = rec["g_norm"][L]
    t["probe"] = built + time.perf_counter() - t0

    t0 = time.perf_counter()
    rec["stability"] = stability(g[L], settings.stability_batches)
    t["stability"] = time.perf_counter() - t0

    def rho() -> None:
        t0 = time.perf_counter()
        if settings.measure_rho:
            rec["rho"] = perturbation_rho(model, probe, credits, min(settings.rho_samples, n),
                                          settings.rho_directions, settings.rho_eps, generator)
            t["rho"] = time.perf_counter() - t0
        else:
            rec["rho"] = None

    if not settings.rho_last:
        rho()
    t0 = time.perf_counter()
    null = method.null_credits(probe, generator, settings.null_draws) if settings.measure_null else None
    if null is not None:
        units = [_unit_rows(gl) for gl in g]  # shared by every draw
        draws = torch.stack([torch.stack([_cos_mean(a, *unit) for a, unit in zip(draw, units)])
                             for draw in null]).cpu()  # one host sync for all draws
        rec["null_mean"] = draws.mean(0).tolist()
        rec["null_std"] = draws.std(0, unbiased=True).tolist()
        t["null"] = time.perf_counter() - t0
    else:
        rec["null_mean"] = rec["null_std"] = None
    if settings.rho_last:
        rho()
    rec["gamma"] = _nanmean(cos)
    rec["deep_cos"] = _nanmean(cos[1:])
    rec["deep_rho"] = _nanmean(rec["rho"][1:]) if rec["rho"] is not None else None
    return rec


def _unit_rows(g: Tensor) -> tuple[Tensor, Tensor]:
    """g's rows divided by their norms in float64, then stored as float32 (unit rows lose
    nothing there, however small g is), and which rows have a usable norm."""
    g64 = g.double().flatten(1)
    ng = g64.norm(dim=1)
    ok = (ng > 0) & torch.isfinite(ng)
    return (g64 / torch.where(ok, ng, 1.0)[:, None]).to(g.dtype), ok


def _cos_mean(a: Tensor, g_unit: Tensor, g_ok: Tensor) -> Tensor:
    """``per_sample_cos(a, g).mean()`` for a null-band draw, on the device. The draws' credits
    e·B are O(1), so with g already normalised in float64 the rest runs in a's dtype
    (cosines agree with the float64 path to ~1e-7, far inside the band's width)."""
    a = a.flatten(1)
    na = a.norm(dim=1)
    ok = g_ok & (na > 0) & torch.isfinite(na)
    cos = (a * g_unit).sum(1) / na
    return (torch.where(ok, cos, 0.0).sum() / ok.sum()).double()  # NaN when no sample is usable


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


@torch.no_grad()
def evaluate_accuracy(model: Auditable, batches, seen: tuple[Tensor, Tensor] | None = None) -> tuple[float, float]:
    """(accuracy, mean loss) over an iterable of (x, y) batches, plus ``seen`` = (logits, y)
    of samples already forwarded in eval mode: one host sync at the end."""
    was_training = model.training  # type: ignore[attr-defined]
    model.eval()  # type: ignore[attr-defined]
    correct = loss = None
    count = 0

    def outputs():  # lazily: one prepared batch at a time
        if seen is not None:
            yield seen
        for xb, yb in batches:
            yield model(xb), yb  # type: ignore[operator]

    for logits, yb in outputs():
        c = (logits.argmax(1) == yb).sum()
        l_ = F.cross_entropy(logits.float(), yb, reduction="sum")
        correct = c if correct is None else correct + c
        loss = l_ if loss is None else loss + l_
        count += yb.shape[0]
    model.train(was_training)  # type: ignore[attr-defined]
    return correct.item() / count, loss.item() / count


def epoch_record(model: Auditable, method: Method, test_batches, x: Tensor, y: Tensor,
                 settings: DiagnosticSettings, generator: torch.Generator, thresholds: Thresholds, *, epoch: int,
                 baseline_acc: float | None = None, train_loss: float | None = None, lr: float | None = None,
                 train_s: float | None = None, diagnostic_set_in_test: bool = False,
                 probe: Probe | None = None) -> Epoch:
    """The epoch record every writer and reader shares: accuracy over ``test_batches``, every
    measurement on (x, y), and the fired set under ``thresholds``.

    With ``diagnostic_set_in_test`` (x, y) are test samples that ``test_batches`` leaves out:
    the probe's eval-mode forward pass over them counts toward the accuracy, which saves a
    second pass over the diagnostic set (a tenth of CIFAR's test set). ``probe``: the
    caller's ``make_probe(model, x, y)``, to measure more on it afterwards."""
    t0 = time.perf_counter()
    probe = probe if probe is not None else make_probe(model, x, y)
    settings.timings["probe"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    acc, test_loss = evaluate_accuracy(model, test_batches, (probe.logits, y) if diagnostic_set_in_test else None)
    settings.timings["accuracy"] = time.perf_counter() - t0
    diag = measure(model, method, x, y, settings, generator, probe=probe)
    rec = Epoch(epoch=epoch, test_acc=acc, test_loss=test_loss, train_loss=train_loss, lr=lr, **diag,
                baseline_acc=baseline_acc, train_s=train_s,
                diag_s={k: round(v, 4) for k, v in settings.timings.items()})
    return evaluate(rec, thresholds, needs_baseline(getattr(method, "name", "")))
