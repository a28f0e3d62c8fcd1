"""Which runs an audit trains, what they are called, and the header each one starts with.

Runs of one seed compare against the frozen-blocks run of the same seed at the same
epoch, so frozen runs come first in the plan.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .config import AuditConfig
from .records import Header


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    method: str
    seed: int
    penalty: float = 0.0
    parent: str | None = None
    model: str | None = None  # the network's name in an audit of several (``models``); None: the only one
    baseline: str | None = None  # (d)'s baseline when the header names one (``Header.baseline``)

    @classmethod
    def of(cls, header: Header) -> RunSpec:
        return cls(header.run_id, header.method, header.seed, header.penalty, header.parent, header.model,
                   header.baseline)


def run_id(method: str, seed: int, penalty: float = 0.0, model: str | None = None) -> str:
    """``dfa-s42``, ``dfa-lam0.001-s42``; in an audit of several networks ``cnn.dfa-s42``."""
    base = f"{method}-s{seed}" if not penalty else f"{method}-lam{penalty:g}-s{seed}"
    return f"{model}.{base}" if model else base


def parse_run_id(rid: str) -> RunSpec | None:
    """The spec a run id names (``dfa-s42``, ``dfa-lam0.001-s42``, ``cnn.dfa-s42``), or None for
    another name; the parent of a penalty rerun is its unpenalised run."""
    m = re.fullmatch(r"(?:(?P<model>[A-Za-z0-9][A-Za-z0-9_]*)\.)?(?P<method>.+?)(?:-lam(?P<lam>[0-9.eE+-]+))?"
                     r"-s(?P<seed>\d+)", rid)
    if m is None:
        return None
    try:
        lam = float(m["lam"]) if m["lam"] else 0.0
    except ValueError:
        return None
    method, seed, model = m["method"], int(m["seed"]), m["model"]
    return RunSpec(rid, method, seed, lam, run_id(method, seed, model=model) if lam else None, model)


def identity_mismatch(header: Header, spec: RunSpec) -> str | None:
    """What a run's header says about who the run is that its name (and the plan) does not,
    or None when they agree: a hand-edited ``method`` must never move a run into another row."""
    said = RunSpec.of(header)
    # a name holds λ as run_id writes it (6 significant digits): compare it the same way
    same = {"penalty": lambda a, b: f"{a:g}" == f"{b:g}"}
    diffs = [f"{key} {getattr(said, key)!r} (its name says {getattr(spec, key)!r})"
             for key in ("run_id", "method", "seed", "penalty", "model")
             if not same.get(key, lambda a, b: a == b)(getattr(said, key), getattr(spec, key))]
    return "; ".join(diffs) or None


def make_header(cfg: AuditConfig, spec: RunSpec) -> Header:
    """The first line of a run's records: who it is and the whole config it trains under."""
    return Header(run_id=spec.run_id, method=spec.method, seed=spec.seed, penalty=spec.penalty,
                  parent=spec.parent, model=spec.model, epochs=cfg.epochs,
                  dataset=cfg.dataset + ("+random-targets" if cfg.random_targets else ""), config=cfg.dump())


def plan_runs(cfg: AuditConfig) -> list[RunSpec]:
    """frozen first (it is every other run's baseline), then methods × seeds, then penalty reruns;
    in an audit of several networks, all of that for each network in turn."""
    methods = sorted(cfg.methods, key=lambda m: m != "frozen")
    models = [v.name for v in cfg.variants()] if cfg.multi_model else [None]
    specs = []
    for net in models:
        specs += [RunSpec(run_id(m, s, model=net), m, s, model=net) for m in methods for s in cfg.seeds]
        for m in cfg.penalty_methods:
            for lam in cfg.penalties:
                for s in cfg.seeds:
                    parent = run_id(m, s, model=net) if m in cfg.methods else None
                    specs.append(RunSpec(run_id(m, s, lam, net), m, s, lam, parent, net))
    return specs


GIVEN_BASELINE = "given"  # Header.baseline: each epoch's baseline_acc was recorded by the writer itself


def baseline_run(cfg: AuditConfig, spec: RunSpec) -> str | None:
    """The frozen run whose accuracy (d) compares ``spec`` against, if the audit has one: the
    same network's, of the same seed; or the run its header names (``Header.baseline``, written
    by ``engine.tracker``), None when its header says the records hold the baseline themselves."""
    if spec.method == "frozen":
        return None
    if spec.baseline is not None:
        return None if spec.baseline == GIVEN_BASELINE else spec.baseline
    if "frozen" not in cfg.methods:
        return None
    return run_id("frozen", spec.seed, model=spec.model)
