"""Audit configuration: defaults, then a preset's YAML, then ``--set`` overrides.

One pydantic model validates all three, so a typo in a file and on the command line
get the same message: the key, the value and what is allowed.

Types are strict: a bool is never a number (``--set d=true`` is refused, not read as 1), a
string is never a number or a bool, and a float is never an int; an int is a float
(``lr: 1``), as YAML writes it.

Presets are read defensively (``engine.yamlsafe``): UTF-8 only, bounded in size, depth
and alias expansion.
"""
from __future__ import annotations

import math
import re
import reprlib
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .models import check_spec
from .sizing import check_fits, image_shape
from .yamlsafe import YAMLLimitError, limit_hint, read_yaml, safe_load, where

PRESETS_PACKAGE = "engine.presets"  # the repository's presets/, mapped into the package (pyproject.toml)
DEFAULT_PRESET = "digits_default"
STANDARD_PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1)


CIFAR_TEST_SAMPLES = 10_000  # both CIFAR test sets; the diagnostic set is their first n_samples


class _Strict(BaseModel):
    # strict: no bool as a number, no "3" as 3 (ints are still accepted as floats); the input
    # stays out of pydantic's own messages (``_format_errors`` shows a bounded repr of it)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, strict=True,
                              hide_input_in_errors=True)


class SyntheticConfig(_Strict):
    """The teacher task: x ~ N(0, I), labels = argmax of a fixed random tanh MLP."""

    n_train: int = Field(8192, ge=16, le=10_000_000)
    n_test: int = Field(2048, ge=16, le=10_000_000)
    in_dim: int = Field(32, ge=1, le=100_000)
    classes: int = Field(10, ge=2, le=10_000)
    teacher_width: int = Field(128, ge=1, le=100_000)
    teacher_depth: int = Field(3, ge=1, le=64)
    teacher_gain: float = Field(2.0, gt=0, le=100)
    seed: int = Field(0, ge=0)


class DiagnosticsConfig(_Strict):
    """Protocol measurement settings; the thresholds assume n_samples = 1024."""

    n_samples: int = Field(1024, ge=16, le=100_000)
    stability_batches: int = Field(8, ge=2, le=1024)
    rho_directions: int = Field(32, ge=1, le=4096)
    rho_eps: float = Field(1e-3, gt=0, le=1)
    rho_samples: int = Field(1024, ge=2, le=100_000, description="samples used for rho (≤ n_samples)")
    rho_every: int = Field(1, ge=1, description="measure rho every k epochs (always at the last)")
    null_draws: int = Field(20, ge=2, le=1000)
    null_every: int = Field(1, ge=1, description="null band every k epochs (always at the last)")


class EPConfig(_Strict):
    """Equilibrium propagation's nudged phase (method ``ep``; docs/protocol.md §3a). The defaults
    are engine.methods.ep.EPSettings' (tested to agree)."""

    beta: float = Field(1e-3, gt=0, le=10, description="nudge strength β of the loss in the energy; the credit "
                        "−ε_l/β tends to the gradient as β → 0")
    steps: int = Field(8, ge=1, le=10_000, description="gradient steps T of the nudged relaxation (each about "
                       "one forward and backward pass)")
    step_size: float = Field(1.0, gt=0, lt=2, description="the relaxation's step size η (errors: 1 converges on "
                             "smooth networks; states: stable only well below 1)")
    relaxation: Literal["errors", "states"] = Field(
        "errors", description="descend in the prediction errors ε_l (fast, one backward sweep a step) or in the "
                              "states h_l (the local dynamics; ill conditioned)")


class SlurmConfig(_Strict):
    """``executor: slurm``: one SLURM job per run, submitted with submitit (docs/slurm.md)."""

    partition: str | None = Field(None, max_length=200, description="the partition (unset: the cluster's default)")
    time_min: int = Field(60, ge=1, le=60 * 24 * 30, description="each job's time limit in minutes; a job that "
                          "reaches it is requeued and resumes from its run's checkpoint")
    cpus_per_run: int = Field(1, ge=1, le=256, description="CPUs per job (the run's threads follow it)")
    gpus_per_run: int = Field(0, ge=0, le=16, description="GPUs per job")
    mem_gb: float = Field(4.0, gt=0, le=4096, description="memory per job in GB")
    extra: list[str] = Field(default_factory=list, description="extra #SBATCH lines, e.g. '--account=ml' or "
                             "'--qos=low'")
    folder: str | None = Field(None, description="where submitit keeps job scripts and logs (unset: "
                               "<audit>/slurm/)")
    cluster: Literal["slurm", "local"] = Field("slurm", description="submitit's backend: slurm, or local "
                                               "(subprocesses, for tests without a cluster)")


class KeepCheckpoints(_Strict):
    """Which epochs keep a checkpoint of their own (``<run>/checkpoints/epoch-0001.pt``) beside
    the rolling ``checkpoint.pt``, for ``faeval-tui measure`` to re-measure later. A plain list
    (``--set 'keep_checkpoints=[1,2,3]'``) is read as ``epochs``. Each kept file is a copy of
    that epoch's checkpoint.pt (model, optimizer, method state: about 12 bytes per parameter)."""

    epochs: list[int] = Field(default_factory=list, description="these epochs (each ≥ 1, ≤ epochs)")
    every: int = Field(0, ge=0, le=100_000, description="every k-th epoch (0: none)")
    first_fire: bool = Field(False, description="the epoch at which (a), (b) or (d) first fires for the run")

    @field_validator("epochs")
    @classmethod
    def _plain_epochs(cls, v: list[int]) -> list[int]:
        if any(e < 1 for e in v):
            raise ValueError("epochs are numbered from 1")
        if len(set(v)) != len(v):
            raise ValueError("an epoch is listed twice")
        return sorted(v)

    def keeps(self, epoch: int, first_fired: bool = False) -> bool:
        """Does ``epoch`` keep its checkpoint (``first_fired``: a walk-back diagnostic fired at it for
        the first time in the run)?"""
        return epoch in self.epochs or (self.every > 0 and epoch % self.every == 0) or (self.first_fire and first_fired)


class Persist(_Strict):
    """The alert rule: a walk-back diagnostic alerts once it has fired on this many consecutive
    epochs. Measured on the default audits of 2026-12-02 (docs/protocol.md §8): bp's (d) fired
    on up to 3 epochs in a row and never alerts at 4; fa and dfa's (d) fired on 4 or more from
    epoch 1; no bp run ever fired (a) or (b), and once fired they stayed fired."""

    a: int = Field(1, ge=1, le=1000)
    b: int = Field(1, ge=1, le=1000)
    d: int = Field(4, ge=1, le=1000)


class Thresholds(_Strict):
    """The declared thresholds: alerts, verdicts and chart lines all read these."""

    growth: float = Field(50.0, gt=0, description="(a) fires when growth > this")
    g_floor: float = Field(1e-7, gt=0, description="(b) fires when ‖g_L‖ < this")
    stability: float = Field(0.30, ge=-1, le=1, description="(c) drift when stability > this")
    depth_margin: float = Field(0.0, ge=-1, le=1, description="(d) fires when acc < baseline + margin")
    persist: Persist = Field(default_factory=Persist, description="consecutive epochs a diagnostic fires "
                             "before it alerts")


MODEL_NAMES = ("resmlp", "vit_mini", "cnn", "mlp")
Model = Literal["resmlp", "vit_mini", "cnn", "mlp"]
# a model's terminal LayerNorm when ``terminal_ln`` is not given: the research's networks
# have one (ResMLP, ViT-Mini on the cls token); the cross-architecture controls do not
TERMINAL_LN_DEFAULT = {"resmlp": True, "vit_mini": True, "cnn": False, "mlp": False}


class ModelSpec(_Strict):
    """One network of an audit, fully resolved: what ``engine.models.build_model`` builds."""

    name: str = Field("resmlp", min_length=1, max_length=40)  # the variant's name (run ids carry it)
    model: Model = "resmlp"
    d: int = Field(256, ge=1, le=65_536)
    L: int = Field(4, ge=1, le=256)
    r: float = Field(1.0, gt=0, le=64)
    terminal_ln: bool = True
    patch: int | None = Field(None, ge=1, le=64)
    heads: int = Field(4, ge=1, le=64)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ModelVariant(_Strict):
    """An entry of ``models``: a named network, each key unset taking the audit's top-level value."""

    name: str = Field(min_length=1, max_length=40)
    model: Model | None = None
    d: int | None = Field(None, ge=1, le=65_536)
    L: int | None = Field(None, ge=1, le=256)
    r: float | None = Field(None, gt=0, le=64)
    terminal_ln: bool | None = None
    patch: int | None = Field(None, ge=1, le=64)
    heads: int | None = Field(None, ge=1, le=64)

    @field_validator("name")
    @classmethod
    def _plain(cls, v: str) -> str:
        # it becomes part of run ids and directory names: letters, digits and '_' only
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_]*", v):
            raise ValueError("use letters, digits and '_', starting with a letter or digit")
        return v


class AuditConfig(_Strict):
    """Everything an audit needs. Flat for the keys users change most (``--set epochs=2``)."""

    name: str = Field(DEFAULT_PRESET, min_length=1, max_length=80)
    description: str = ""
    dataset: Literal["synthetic", "digits", "npz", "cifar10", "cifar100"] = "synthetic"
    data_dir: str | None = None
    data_path: str | None = Field(None, description="dataset npz: the .npz file with x_train, y_train, x_test, "
                                  "y_test (and optionally image_shape)")
    data_sha256: str | None = Field(None, description="filled in when the audit is created from an npz file; "
                                    "resume refuses a file that no longer has it")
    download: bool = True
    random_targets: bool = False
    synthetic: SyntheticConfig = SyntheticConfig()
    model: Model = "resmlp"
    d: int = Field(256, ge=1, le=65_536)
    L: int = Field(4, ge=1, le=256)
    r: float = Field(1.0, gt=0, le=64)
    terminal_ln: bool | None = Field(None, description="unset: on for resmlp and vit_mini, off for cnn and mlp")
    patch: int | None = Field(None, ge=1, le=64, description="vit_mini's patch side (unset: 4 on 32×32 images, "
                              "smaller for smaller images)")
    heads: int = Field(4, ge=1, le=64, description="vit_mini's attention heads (must divide d)")
    models: list[ModelVariant] = Field(default_factory=list, description="several networks in one audit, each "
                                       "trained with every method and seed (the cross-architecture control)")
    epochs: int = Field(100, ge=1, le=100_000)
    batch_size: int = Field(128, ge=1, le=1_000_000)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.01, ge=0, le=10)
    schedule: Literal["cosine", "constant"] = "cosine"
    methods: list[str] = Field(default_factory=lambda: ["bp", "fa", "dfa", "frozen"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [42, 123, 456], min_length=1)
    penalties: list[float] = Field(default_factory=list, description="λ values for penalty reruns")
    penalty_methods: list[str] = Field(default_factory=lambda: ["fa", "dfa"])
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="training steps in float32, or bfloat16 autocast (every measurement stays float32; "
                            "a verdict on a threshold's edge can differ from float32's)")
    workers: int = Field(1, ge=1, le=64, description="runs trained at the same time")
    threads: int = Field(1, ge=1, le=256, description="intra-op threads per training process (1: measured "
                         "fastest or close on an idle 2-core machine and never stalled on a busy one)")
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    thresholds: Thresholds = Thresholds()
    ep: EPConfig = Field(default_factory=EPConfig, description="settings of method ep (equilibrium propagation)")
    keep_checkpoints: KeepCheckpoints = Field(default_factory=KeepCheckpoints, description="epochs whose "
                                              "checkpoint is kept for `faeval-tui measure` (a list of epochs, "
                                              "or {epochs, every, first_fire})")
    executor: Literal["local", "slurm"] = Field("local", description="where runs train: this machine, or one "
                                                "SLURM job per run (slurm: …)")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig, description="the SLURM jobs' options (executor: slurm)")
    reuse: bool = Field(True, description="reuse a finished identical run of another audit under the same runs "
                        "dir instead of training it again (engine/reuse.py)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        # the name becomes a directory under the runs dir: keep it a plain file name
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v) or ".." in v:
            raise ValueError("use letters, digits, '_', '-' and '.', starting with a letter or digit")
        return v

    @field_validator("methods", "penalty_methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        from .methods import method_names  # the names only: validating a config never imports torch

        known = method_names()
        bad = [m for m in v if m not in known]
        if bad:
            raise ValueError(f"unknown method {bad[0]!r}; known methods: {', '.join(known)}")
        if len(set(v)) != len(v):
            raise ValueError("a method is listed twice")
        return v

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("a seed is listed twice")
        if any(s < 0 or s >= 2**63 for s in v):
            raise ValueError("seeds must be in [0, 2^63)")
        return v

    @field_validator("penalties")
    @classmethod
    def _positive_penalties(cls, v: list[float]) -> list[float]:
        if any(not (math.isfinite(x) and x > 0) for x in v):
            raise ValueError("penalty λ values must be finite and > 0")
        return v

    @field_validator("keep_checkpoints", mode="before")
    @classmethod
    def _epoch_list(cls, v: Any) -> Any:
        # the spelling, --set 'keep_checkpoints=[1,2,3]': a list is the epochs to keep
        if isinstance(v, list):
            return {"epochs": v}
        if not isinstance(v, (dict, KeepCheckpoints)):
            raise ValueError("give a list of epochs, like [1, 2, 3], or a mapping of epochs (a list), every (k: "
                             "every k-th epoch) and first_fire (true or false)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _resolve_terminal_ln(cls, data: Any) -> Any:
        # stored resolved, so config.yaml and every header say which the run had
        if isinstance(data, dict) and data.get("terminal_ln") is None:
            model = data.get("model", "resmlp")
            data = {**data, "terminal_ln": TERMINAL_LN_DEFAULT.get(model, True) if isinstance(model, str) else True}
        return data

    def variants(self) -> list[ModelSpec]:
        """The audit's networks, resolved: ``models``' entries over the top-level keys, or the
        top-level model alone (named after it)."""
        top = {"model": self.model, "d": self.d, "L": self.L, "r": self.r, "terminal_ln": self.terminal_ln,
               "patch": self.patch, "heads": self.heads}
        if not self.models:
            return [ModelSpec(name=self.model, **top)]
        out = []
        for v in self.models:
            given = {k: val for k, val in v.model_dump().items() if val is not None and k != "name"}
            model = given.get("model", self.model)
            ln = given.get("terminal_ln", TERMINAL_LN_DEFAULT[model] if "model" in given else self.terminal_ln)
            out.append(ModelSpec(name=v.name, **{**top, **given, "terminal_ln": ln}))
        return out

    def variant(self, name: str | None) -> ModelSpec:
        """The network called ``name`` (None: the audit's only one)."""
        specs = self.variants()
        if name is None:
            return specs[0]
        for spec in specs:
            if spec.name == name:
                return spec
        raise KeyError(f"the audit has no model {name!r} (it has {', '.join(s.name for s in specs)})")

    @property
    def multi_model(self) -> bool:
        """Several networks: run ids and table rows carry the model's name."""
        return len(self.models) > 0

    @model_validator(mode="after")
    def _consistent(self) -> AuditConfig:
        names = [v.name for v in self.models]
        if len(set(names)) != len(names):
            raise ValueError("models: two entries have the same name")
        if self.dataset == "npz" and not self.data_path:
            raise ValueError("dataset npz needs data_path, the .npz file with x_train, y_train, x_test and y_test")
        if self.diagnostics.rho_samples > self.diagnostics.n_samples:
            raise ValueError("diagnostics.rho_samples must be ≤ diagnostics.n_samples")
        if self.diagnostics.n_samples % self.diagnostics.stability_batches:
            raise ValueError("diagnostics.n_samples must be a multiple of diagnostics.stability_batches")
        late = [e for e in self.keep_checkpoints.epochs if e > self.epochs]
        if late:
            raise ValueError(f"keep_checkpoints.epochs: epoch {late[0]} is past the last epoch (epochs = "
                             f"{self.epochs}); the last epoch's checkpoint is checkpoint.pt")
        # the diagnostic set is the first n_samples test samples: a smaller test set fails every run
        n = self.diagnostics.n_samples
        if self.dataset in ("digits", "npz"):
            return self  # a small test split is the whole diagnostic set (engine.data.diagnostic_n)
        if self.dataset == "synthetic" and self.synthetic.n_test < n:
            raise ValueError(f"synthetic.n_test ({self.synthetic.n_test:,}) must be ≥ diagnostics.n_samples "
                             f"({n:,}): the diagnostic set is the first n_samples test samples")
        if self.dataset != "synthetic" and n > CIFAR_TEST_SAMPLES:
            raise ValueError(f"diagnostics.n_samples ({n:,}) must be ≤ {CIFAR_TEST_SAMPLES:,}, the size of "
                             f"{self.dataset}'s test set (the diagnostic set is its first n_samples)")
        return self

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


MAX_SHOWN_ERRORS = 8
_short = reprlib.Repr()  # attributes, not keywords: Repr takes those only from Python 3.12
_short.maxlevel, _short.maxlist, _short.maxtuple, _short.maxdict, _short.maxset = 2, 4, 4, 2, 4
_short.maxstring, _short.maxlong, _short.maxother = 50, 40, 50


def _shown(value: Any) -> str:
    """A repr of at most ~60 characters that never formats more of ``value`` than it shows
    (a value built from aliases can hold 9⁹ elements; a full repr of it is gigabytes)."""
    if isinstance(value, dict):
        return "{…}"
    try:
        text = _short.repr(value)
    except Exception:  # noqa: BLE001 - an int past Python's str limit, a broken __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:59] + "…"


def _format_errors(err: ValidationError, source: str) -> ConfigError:
    lines = []
    listed: set[str] = set()  # sections whose allowed keys the message already lists
    errors = err.errors()
    for e in errors[:MAX_SHOWN_ERRORS]:
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            parent = AuditConfig
            for part in e["loc"][:-1]:
                field = parent.model_fields.get(str(part))
                parent = getattr(field, "annotation", None) if field else None
                if not (isinstance(parent, type) and issubclass(parent, BaseModel)):
                    break
            is_model = isinstance(parent, type) and issubclass(parent, BaseModel)
            allowed = ", ".join(parent.model_fields) if is_model else ""
            section = ".".join(str(p) for p in e["loc"][:-1])
            if section in listed:
                allowed = ""
            listed.add(section)
            lines.append(f"unknown key {key!r:.80}" + (f" (allowed here: {allowed})" if allowed else ""))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if not e["loc"] and e["type"] == "value_error":
                lines.append(msg)  # a rule across keys (``_consistent``): its message names them
            else:
                lines.append(f"{key:.80} = {_shown(value)}: {msg}")
    if len(errors) > MAX_SHOWN_ERRORS:
        lines.append(f"and {len(errors) - MAX_SHOWN_ERRORS} more")
    return ConfigError(f"invalid configuration in {source}: " + "; ".join(lines),
                       "fix the key named above (see `faeval-tui presets` and the README's preset reference)")


# config keys that change neither what a run trains nor what its records measure: an audit
# resumes after they are edited. Where and how fast it trains (device, workers, threads),
# its labels (name, description), where the data comes from (data_dir, download: archives are
# checksummed), the plan (methods, seeds, penalties, penalty_methods: which runs exist, not how
# one trains; baselines are looked up again on reading) and the thresholds (fired, degenerate
# and (d) are derived again from the measurements under the audit's thresholds on reading).
# Where it runs (executor, slurm) and whether a finished identical run may be reused (reuse)
# do not change what a run's training is either, nor which epochs also keep a copy of their
# checkpoint (keep_checkpoints). Every other key (and any key added later) is compared.
# data_path: the file may move; data_sha256, compared, pins what it holds
UNCOMPARED = frozenset({"name", "description", "device", "workers", "threads", "data_dir", "download", "data_path",
                        "methods", "seeds", "penalties", "penalty_methods", "thresholds", "executor", "slurm",
                        "reuse", "keep_checkpoints"})


def config_changes(trained: dict[str, Any], current: dict[str, Any],
                   skip: frozenset[str] = UNCOMPARED) -> list[tuple[str, Any, Any]]:
    """(dotted key, value trained under, value now) for each compared key that differs.

    The one comparison of a run's config (its header's, its checkpoint's) with config.yaml;
    ``skip``: the top-level keys left out (``settings_differ`` leaves out fewer).
    A key only one side has is skipped: a config written before the key existed (a header
    without a config has nothing to compare), or after.
    """
    out: list[tuple[str, Any, Any]] = []

    def walk(old: dict[str, Any], new: dict[str, Any], prefix: str) -> None:
        for key, was in old.items():
            if key not in new or (not prefix and key in skip):
                continue
            now = new[key]
            if isinstance(was, dict) and isinstance(now, dict):
                walk(was, now, f"{prefix}{key}.")
            elif was != now:
                out.append((f"{prefix}{key}", was, now))

    if isinstance(trained, dict) and isinstance(current, dict):
        walk(trained, current, "")
    return out


# keys that say where and how fast an audit trains, not what it trains or how it is judged
EXECUTION_KEYS = frozenset({"workers", "threads", "executor", "slurm", "reuse", "data_dir", "download"})


def settings_differ(a: AuditConfig, b: AuditConfig) -> list[str]:
    """The top-level keys whose values differ between two audits' configs, ``EXECUTION_KEYS`` aside:
    an audit offered for resuming must train what was asked for."""
    return sorted({key.split(".")[0] for key, _, _ in config_changes(a.dump(), b.dump(), skip=EXECUTION_KEYS)})


def validate(data: dict[str, Any], source: str = "preset") -> AuditConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a YAML mapping of keys to values, got {type(data).__name__}",
                          "write the preset as `key: value` lines")
    try:
        return AuditConfig.model_validate(data)
    except ValidationError as err:
        raise _format_errors(err, source) from None


def shipped_presets() -> dict[str, Traversable]:
    """Preset name → its YAML inside the installed package (a wheel, an editable install or the checkout)."""
    files = resources.files(PRESETS_PACKAGE)
    return {f.name.removesuffix(".yaml"): f for f in sorted(files.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".yaml")}


def list_presets() -> dict[str, str]:
    """Shipped preset names with their one-line description."""
    out = {}
    for name, path in shipped_presets().items():
        try:
            out[name] = str(read_yaml(path).get("description", "")).strip()
        except ConfigError as err:
            out[name] = f"(invalid: {err.problem})"
    return out


def resolve_preset_path(preset: str | None) -> Path | Traversable:
    name = preset or DEFAULT_PRESET
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            audit = (path / "config.yaml").is_file()
            raise ConfigError(f"preset {path} is {'an audit directory' if audit else 'a directory'}, not a preset file",
                              f"to continue that audit: faeval-tui resume {path}; to follow it: faeval-tui watch "
                              f"{path}" if audit else "give a shipped preset name or a YAML file's path")
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist", "give a shipped preset name or a YAML path")
        return path
    shipped = shipped_presets()
    if name not in shipped:
        raise ConfigError(f"unknown preset {name!r}",
                          f"choose one of: {', '.join(shipped)}, or give a path to a YAML file")
    return shipped[name]


def parse_set(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], value); the value is read as YAML (``[42]``, ``1e-3``, ``true``)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not key=value", "write it like --set epochs=2 or --set seeds=[42]")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ConfigError(f"--set key {key!r} is not a dotted preset key", "keys look like epochs or thresholds.growth")
    try:
        value = safe_load(raw) if raw.strip() else ""
    except YAMLLimitError as err:
        if not (err.problem or "").startswith("cannot read"):  # nesting or aliases: refused as such
            raise ConfigError(f"--set {key.strip()}: the value is refused{where(err)}: {err.problem}",
                              limit_hint(err)) from None
        value = raw  # a number YAML cannot build (a 5000-digit int, a 13th month): validation names the type
    except yaml.YAMLError:
        value = raw  # not YAML: hand the raw string to validation, which names the expected type
    return parts, value


def apply_sets(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    data = {**data}
    for item in sets:
        parts, value = parse_set(item)
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise ConfigError(f"--set {item}: {p!r} is not a section", "set a leaf key")
            node[p] = child = {**child}
            node = child
        node[parts[-1]] = value
    return data


def load_config(preset: str | None = None, sets: list[str] | None = None) -> AuditConfig:
    """Defaults ← preset YAML ← ``--set`` overrides, validated once, then checked to fit in
    this machine's memory (``sizing.check_fits``): every caller that starts an audit from a
    preset (``faeval-tui run``, the console) is refused before its directory exists."""
    path = resolve_preset_path(preset)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a mapping of keys to values", "write `key: value` lines")
    if "schema" in data:  # what runstore.write_config puts first in an audit's config.yaml, and no preset has
        raise ConfigError(f"preset {path} is an audit's config.yaml (it has a schema line), not a preset",
                          f"to continue that audit: faeval-tui resume {Path(str(path)).parent}; to start a new "
                          "audit with its settings, copy the file, delete its schema line and pass the copy "
                          "as --preset")
    data = apply_sets(data, sets or [])
    source = str(path) + (" with --set " + " ".join(s[:80] for s in sets) if sets else "")
    cfg = validate(data, source)
    if cfg.dataset != "npz":  # an npz file's images are known once it loads (engine.data.load_task checks)
        for net in cfg.variants():
            check_spec(net, image_shape(cfg))
    check_fits(cfg)
    return cfg
