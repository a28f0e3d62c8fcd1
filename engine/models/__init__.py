"""The networks the engine audits, built from an ``engine.config.ModelSpec``.

    model = build_model(spec, in_dim, n_classes, image_shape, generator)

``spec.model`` picks one of ``resmlp`` (the protocol's ResMLP), ``vit_mini``, ``cnn`` and
``mlp``; each is an ``Auditable`` (see ``protocol``): hidden states h_0..h_L with
per-sample ``state_shapes`` of (d,), (T, d) or (C, H, W), ``forward_from`` any layer, and
its parameters split into the embedding, the blocks and the readout. Inputs are flat rows,
(n, in_dim); the image models view them as (n, *image_shape), image_shape = (C, H, W).

Importing this package does not import torch: the spec arithmetic (``check_spec``,
``patch_size``, ``model_args``, ``param_count``, ``activation_floats``, ``describe``) is
torch-free, so the config's memory check can use it; ``build_model`` and the classes
(``ResMLP``, ``ViTMini``, ``CNN``, ``MLP``, ``Auditable``) import torch when first used.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .specs import (
    IMAGE_MODELS,
    MODELS,
    RESIDUAL,
    activation_floats,
    check_spec,
    cnn_channels,
    describe,
    hidden_width,
    model_args,
    param_count,
    patch_size,
    state_shapes,
)

if TYPE_CHECKING:  # annotations only: engine.config is a higher layer
    import torch
    from torch import nn

    from ..config import ModelSpec

_LAZY = {"Auditable": "protocol", "ResMLP": "resmlp", "Block": "resmlp", "ViTMini": "vit_mini",
         "CNN": "cnn", "MLP": "mlp", "gelu": "layers"}

__all__ = [
    "CNN", "IMAGE_MODELS", "MLP", "MODELS", "RESIDUAL", "Auditable", "Block", "ResMLP", "ViTMini",
    "activation_floats", "build_from_args", "build_model", "check_spec", "cnn_channels", "describe", "gelu",
    "hidden_width", "model_args", "param_count", "patch_size", "state_shapes",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def build_model(spec: ModelSpec, in_dim: int, n_classes: int, image_shape: tuple[int, int, int] | None,
                generator: torch.Generator) -> nn.Module:
    """The network ``spec`` describes, every parameter drawn from ``generator`` (same seed,
    same parameters). Raises ``ConfigError`` for a spec ``check_spec`` refuses, or an image
    shape whose C·H·W is not ``in_dim``."""
    check_spec(spec, image_shape)
    return build_from_args(model_args(spec, in_dim, n_classes, image_shape), generator)


def build_from_args(args: dict, generator: torch.Generator) -> nn.Module:
    """The network a ``model_args`` dict (as saved in a checkpoint) describes."""
    model = args.get("model", "resmlp")
    in_dim, n_classes, d, L = int(args["in_dim"]), int(args["n_classes"]), int(args["d"]), int(args["L"])
    ln = bool(args["terminal_ln"])
    if model == "resmlp":
        from .resmlp import ResMLP

        return ResMLP(in_dim, n_classes, d, L, float(args["r"]), ln, generator=generator)
    if model == "mlp":
        from .mlp import MLP

        return MLP(in_dim, n_classes, d, L, ln, generator=generator)
    if model not in IMAGE_MODELS:
        raise ConfigError(f"model = {model!r} is not a network the engine builds",
                          f"set model to one of {', '.join(MODELS)}")
    shape = tuple(int(s) for s in args["image_shape"])
    c, h, w = shape
    if c * h * w != in_dim:
        raise ConfigError(f"image_shape {list(shape)} holds {c * h * w} values, but the rows have {in_dim}",
                          "give the dataset's image_shape as (channels, height, width) of its rows")
    if model == "cnn":
        from .cnn import CNN

        return CNN((c, h, w), n_classes, d, L, ln, generator=generator)
    from .vit_mini import ViTMini

    return ViTMini((c, h, w), n_classes, d, L, float(args["r"]), int(args["heads"]), int(args["patch"]), ln,
                   generator=generator)
