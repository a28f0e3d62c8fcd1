"""How much memory an audit needs, estimated from its configuration before anything is allocated.

``estimate_bytes`` is a pure function of the config (no torch, no allocation); ``check_fits``
compares it with the machine's available memory and refuses, as a ``ConfigError``, an audit
that cannot fit. ``load_config`` calls it, so ``faeval-tui run`` and the console refuse before
the audit directory exists.

The estimate aims at the peak resident memory within a factor of two (it counts what the
engine holds at its high points, not every transient):

- per process: the interpreter with torch loaded (``RUNTIME_BYTES``, measured ~300 MiB);
- the task, held once (workers share it): synthetic x and y plus the teacher's activations
  while it labels them, or CIFAR's uint8 images (twice while the archives are concatenated);
- per run trained at the same time (``min(workers, runs)``): parameters, gradients and
  AdamW's two moments (16 bytes per parameter, +2 for bfloat16 autocast's weight copies),
  a method's feedback matrices (fa_lillicrap's: a copy of the weight matrices), and the largest of
  (a) a training batch's activations,
  (b) the diagnostic probe on ``n_samples`` (graph, hidden states, gradients, credits, a null
      draw) plus ρ's float64 model copy (8 bytes per parameter) and one chunk of perturbed rows,
  (c) the checkpoint's serialised model and optimizer (12 bytes per parameter);
  ep adds its relaxation's copies of the hidden states to (a) and (b).

``device: cuda`` counts on the host only what is built there (the runtime, the task and each
model before it moves); the GPU's memory is not checked. ``device: auto`` is estimated as the
CPU (on a CUDA machine that over-counts the host's share).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # only for annotations: config.load_config calls check_fits, so no import cycle
    from .config import AuditConfig, ModelSpec

MiB = 1 << 20
GiB = 1 << 30
RUNTIME_BYTES = 300 * MiB  # one Python process with torch imported (docs/bench.md: ~1.2 GiB PSS over 3 processes)
RHO_CHUNK_ROWS = 1024  # diagnostics.perturbation_rho's chunk_rows
PROBE_FLOATS = 8 << 20  # diagnostics.PROBE_FLOATS: hidden-state floats per probe chunk
F32, F64, I64 = 4, 8, 8


def task_shape(cfg: AuditConfig) -> tuple[int, int, int, int]:
    """(in_dim, classes, n_train, n_test) of the audit's task, without loading it (an npz file
    that cannot be read counts as empty: its loader refuses it with the reason)."""
    from .userdata import task_dims

    return task_dims(cfg) or (1, 2, 0, 0)


def image_shape(cfg: AuditConfig) -> tuple[int, int, int] | None:
    """The images the audit's rows hold, as engine.data lays them out (an npz's, unknown here:
    estimated as flat rows)."""
    if cfg.dataset == "synthetic":
        side = math.isqrt(cfg.synthetic.in_dim)
        return (1, side, side) if side * side == cfg.synthetic.in_dim else None
    return {"digits": (1, 8, 8), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}.get(cfg.dataset)


def hidden_width(d: int, r: float) -> int:
    return max(1, int(round(r * d)))  # as model.ResMLP


def param_count(in_dim: int, classes: int, d: int, L: int, r: float, terminal_ln: bool) -> int:
    """Parameters of ``model.ResMLP(in_dim, classes, d, L, r, terminal_ln)``."""
    h = hidden_width(d, r)
    block = 2 * d + (d * h + h) + (h * d + d)  # LN, fc1, fc2
    return (in_dim * d + d) + L * block + (2 * d if terminal_ln else 0) + (d * classes + classes)


def run_count(cfg: AuditConfig) -> int:
    """Runs in the audit's plan (``plan.plan_runs``): methods × seeds plus the penalty reruns."""
    return len(cfg.seeds) * (len(cfg.methods) + len(cfg.penalty_methods) * len(cfg.penalties))


def _methods(cfg: AuditConfig) -> set[str]:
    """Every method the audit trains (penalty reruns included)."""
    return set(cfg.methods) | (set(cfg.penalty_methods) if cfg.penalties else set())


def _feedback_floats(cfg: AuditConfig, net: ModelSpec, classes: int) -> int:
    """The largest method's feedback matrices: its B's and their product P, twice (a null
    draw holds a fresh set while the run's own stay). fa_lillicrap's B's are one more copy of
    the blocks' and the head's weight matrices (W1, W2 per block, H)."""
    d, L = net.d, net.L
    methods = _methods(cfg)
    sizes = [0]
    product = classes * (L + 1) * d
    if "fa" in methods:
        sizes.append(2 * (classes * d + L * d * d + product))
    if "dfa" in methods:
        sizes.append(2 * ((L + 1) * classes * d + product))
    if "fa_lillicrap" in methods:
        sizes.append(2 * (L * 2 * d * hidden_width(d, net.r) + classes * d))
    return max(sizes)


EP_STATE_COPIES = 4  # ep's relaxation: its variables, their gradients, the free states and the next step's


def _relaxation_floats(cfg: AuditConfig, rows: int, states: int) -> int:
    """Floats ep's nudged phase holds beyond an ordinary pass over ``rows`` samples of ``states``
    hidden-state floats each (0 when the audit has no ep run); its per-step graph is a
    training pass's, counted already."""
    return EP_STATE_COPIES * rows * states if "ep" in _methods(cfg) else 0


def breakdown(cfg: AuditConfig) -> dict[str, int]:
    """The estimate's parts in bytes: ``runtime``, ``data``, ``per_run`` (one run at its peak)
    and ``runs_at_once``; ``estimate_bytes`` is runtime + data + runs_at_once × per_run."""
    in_dim, classes, n_train, n_test = task_shape(cfg)
    n = n_train + n_test
    if cfg.dataset == "synthetic":
        teacher = 3 * n * cfg.synthetic.teacher_width * F32  # h @ w, its scaled copy, tanh
        data = n * in_dim * F32 + 2 * n * I64 + teacher
    elif cfg.dataset in ("cifar10", "cifar100"):
        data = 2 * (n * in_dim + n * I64)  # uint8 images, int64 labels; the archives' batches while concatenated
    else:
        data = 2 * (n * in_dim * F32 + n * I64)  # float32 rows (and the file's arrays while they convert)
    parts = [_per_run(cfg, net, in_dim, classes) for net in cfg.variants()]
    per_run, P = max(p for p, _ in parts), max(q for _, q in parts)
    at_once = max(1, min(cfg.workers, run_count(cfg)))
    processes = 1 + (at_once if cfg.workers > 1 else 0)  # workers > 1: one spawned process per run
    return {"runtime": processes * RUNTIME_BYTES, "data": data, "per_run": per_run, "runs_at_once": at_once,
            "parameters": P}


def _per_run(cfg: AuditConfig, net: ModelSpec, in_dim: int, classes: int) -> tuple[int, int]:
    """(bytes of one run of network ``net`` at its peak, its parameter count)."""
    dg = cfg.diagnostics
    if net.model != "resmlp":
        from .models import activation_floats, state_shapes
        from .models import param_count as model_params

        shape = image_shape(cfg)
        P = model_params(net, in_dim, classes, shape)
        act = activation_floats(net, in_dim, shape)  # floats one sample's training graph holds
        sizes = [math.prod(s) for s in state_shapes(net, in_dim, shape)]
        states = sum(sizes)
        train = cfg.batch_size * act * F32
        # the probe's graph over one chunk (diagnostics.probe_chunk), and h_l, g_l, a_l over the whole set
        chunk = min(dg.n_samples, max(1, PROBE_FLOATS // states))
        probe = chunk * act * F32 + 3 * dg.n_samples * states * F32
        big = max(sizes)  # ρ's chunks: about RHO_CHUNK_ROWS perturbed states of up to 512 floats
        rows = RHO_CHUNK_ROWS if big <= 512 else max(dg.rho_directions, RHO_CHUNK_ROWS * 512 // big)
        rho = P * F64 + max(1, rows // dg.rho_directions) * dg.rho_directions * act * F64
        feedback = 4 * classes * states + net.L * net.d ** 2 + max(sizes) * net.d  # DFA: B, P twice; FA: maps, fc
        if "fa_lillicrap" in _methods(cfg):
            feedback = max(feedback, 2 * P)  # a B per weight matrix (at most P floats), twice for a null draw
        train += _relaxation_floats(cfg, cfg.batch_size, states) * F32
        probe += _relaxation_floats(cfg, dg.n_samples, states) * F32
        state = 4 * P * F32 + (2 * P if cfg.precision == "bf16" else 0) + feedback * F32
        return state + max(train, probe + rho, 3 * P * F32), P
    d, L, h = net.d, net.L, hidden_width(net.d, net.r)
    P = param_count(in_dim, classes, d, L, net.r, net.terminal_ln)

    # activations per sample kept for backward: each block's LN in/out, fc1, GELU, fc2, residual sum
    per_layer = 6 * d + 3 * h
    train = cfg.batch_size * (2 * in_dim + L * per_layer + 2 * (L + 1) * d + 4 * classes) * F32
    probe = dg.n_samples * (2 * in_dim + L * per_layer + 6 * (L + 1) * d + 4 * classes) * F32
    train += _relaxation_floats(cfg, cfg.batch_size, (L + 1) * d) * F32
    probe += _relaxation_floats(cfg, dg.n_samples, (L + 1) * d) * F32
    rows = max(1, RHO_CHUNK_ROWS // dg.rho_directions) * dg.rho_directions
    rho = (P * F64 + 2 * dg.rho_samples * d * F64 + 2 * dg.rho_samples * dg.rho_directions * F64
           + rows * (28 * d + (3 * d + 2 * h) * F64))
    checkpoint = 3 * P * F32

    on_gpu = cfg.device == "cuda"
    if on_gpu:  # built on the host, then moved: the init's temporaries at most
        return 2 * P * F32, P
    state = 4 * P * F32 + (2 * P if cfg.precision == "bf16" else 0) + _feedback_floats(cfg, net, classes) * F32
    return state + max(train, probe + rho, checkpoint), P


def estimate_bytes(cfg: AuditConfig) -> int:
    """The audit's peak host memory, estimated (within ~2×) from its configuration alone."""
    b = breakdown(cfg)
    return b["runtime"] + b["data"] + b["runs_at_once"] * b["per_run"]


def fmt_bytes(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 1024:,.1f} KiB"


def available_bytes() -> int | None:
    """Memory the machine can give without swapping, or None when it cannot be read."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no figure: the check is skipped rather than guessed
        return None


def check_fits(cfg: AuditConfig, available: int | None = None, resuming: bool = False) -> None:
    """Refuse (``ConfigError``) an audit whose estimate exceeds ``available`` bytes (default:
    the machine's available memory now). ``resuming``: the sizes are fixed by the runs already
    trained, so the advice is about memory and workers only."""
    available = available_bytes() if available is None else available
    if available is None:
        return
    need = estimate_bytes(cfg)
    if need <= available:
        return
    b = breakdown(cfg)
    runs = b["runs_at_once"]
    data_part = f"the {cfg.dataset} data {fmt_bytes(b['data'])}"
    problem = (f"this audit needs about {fmt_bytes(need)} of memory, more than the {fmt_bytes(available)} "
               f"available on this machine: d={cfg.d}, L={cfg.L}, r={cfg.r:g} make {b['parameters']:,} parameters, "
               f"{fmt_bytes(b['per_run'])} per run with its optimizer state and activations"
               + (f" × {runs} runs at once (workers={cfg.workers})" if runs > 1 else "")
               + f"; {data_part}")
    if resuming:
        hint = ("free memory, lower workers in config.yaml (the one size key a resume may change), or resume "
                "on a machine with more memory; the other sizes are those the audit's runs trained under")
    elif b["data"] > runs * b["per_run"]:
        hint = ("make the synthetic task smaller: synthetic.n_train, synthetic.n_test, synthetic.in_dim or "
                "synthetic.teacher_width (and keep d, L and batch_size within what the memory allows)")
    else:
        hint = ("make the model smaller: lower d or L (parameters grow as L·d²·2r), or r; then batch_size, "
                "diagnostics.n_samples" + (" or workers" if runs > 1 else "") + "; or free memory")
    raise ConfigError(problem, hint)
