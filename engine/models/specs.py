"""What a model spec means, without torch: validation, shapes, sizes, descriptions.

Everything here is plain arithmetic on an ``engine.config.ModelSpec`` (duck-typed: this
package sits below ``engine.config`` and never imports it), so the config's memory
check (``engine.sizing``) can use it before torch is imported. The networks in
``resmlp``, ``vit_mini``, ``cnn`` and ``mlp`` take their widths from the same rules.

Width rules (the protocol docs copy these):

- ``hidden_width(d, r)`` = max(1, round(r·d)): the hidden width of ResMLP's blocks and of
  ViT-Mini's MLPs, so r means the same in both (ViT's usual 4× is r = 4).
- ``cnn_channels(d, L)``: the L − 1 conv blocks have c_k = max(min(4, d), d // 2^(L−1−k)),
  k = 1..L−1: doubling up to d channels in the last conv block (d = 64, L = 4: 16/32/64),
  never below 4 (or d, if d < 4). The stem has c_1 channels; the FC block has width d.
- CNN pooling: each conv block ends in a 2×2 max-pool while its map is at least 2×2 on
  both sides (odd sides round down, as ``max_pool2d``); from there on the map keeps its size.
- ``patch_size``: an explicit ``patch``, else the largest of 4, 2, 1 dividing both image
  sides and leaving at least 16 patches (32×32 → 4, 28×28 → 4, 8×8 → 2, 4×4 → 1).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # annotations only: engine.config is a higher layer
    from ..config import ModelSpec

MODELS = ("resmlp", "vit_mini", "cnn", "mlp")
IMAGE_MODELS = ("vit_mini", "cnn")
RESIDUAL = {"resmlp": True, "vit_mini": True, "cnn": False, "mlp": False}
AUTO_PATCHES = (4, 2, 1)
MIN_PATCHES = 16
IMAGE_HINT = ("use digits, CIFAR, an npz with image_shape, or the synthetic task with synthetic.in_dim "
              "a square such as 16 or 64")

Shape = tuple[int, int, int]


def hidden_width(d: int, r: float) -> int:
    """ResMLP's block and ViT-Mini's MLP hidden width."""
    return max(1, int(round(r * d)))


def cnn_channels(d: int, L: int) -> list[int]:
    """Channels of the CNN's conv blocks 1..L−1 (the stem has the first of them)."""
    blocks = L - 1
    floor = min(4, d)
    return [max(floor, d // 2 ** (blocks - k)) for k in range(1, blocks + 1)]


def _pooled(h: int, w: int) -> tuple[int, int]:
    return (h // 2, w // 2) if h >= 2 and w >= 2 else (h, w)


def cnn_pools(image_shape: Shape, L: int) -> list[bool]:
    """Whether conv block k = 1..L−1 ends in a 2×2 max-pool."""
    _, h, w = image_shape
    out = []
    for _ in range(L - 1):
        out.append(h >= 2 and w >= 2)
        h, w = _pooled(h, w)
    return out


def _spec(spec: ModelSpec) -> tuple[str, int, int, float, bool, int | None, int]:
    return (spec.model, int(spec.d), int(spec.L), float(spec.r), bool(spec.terminal_ln),
            getattr(spec, "patch", None), int(getattr(spec, "heads", 1)))


def _image(image_shape: tuple[int, ...] | None) -> Shape | None:
    if image_shape is None:
        return None
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"image_shape {list(shape)} is not (channels, height, width)",
                          "give image_shape as three positive integers, channels first, such as [1, 8, 8]")
    return shape  # type: ignore[return-value]


def _divisors(n: int, limit: int = 64) -> list[int]:
    return [k for k in range(1, min(n, limit) + 1) if n % k == 0]


def check_spec(spec: ModelSpec, image_shape: tuple[int, int, int] | None) -> None:
    """Refuse, as a ``ConfigError`` naming the key and the fix, a spec that cannot be built."""
    model, d, L, _, _, patch, heads = _spec(spec)
    if model not in MODELS:
        raise ConfigError(f"model = {model!r} is not a network the engine builds",
                          f"set model to one of {', '.join(MODELS)}")
    shape = _image(image_shape)
    if model in IMAGE_MODELS and shape is None:
        raise ConfigError(f"model = {model} needs images, and this dataset's rows have no image shape", IMAGE_HINT)
    if model == "vit_mini":
        if d % heads:
            some = ", ".join(str(k) for k in _divisors(d, 16)[-4:])
            raise ConfigError(f"heads = {heads} does not divide d = {d}: ViT-Mini splits its width evenly "
                              "across its attention heads",
                              f"set heads to a divisor of d ({some}), or d to a multiple of {heads}")
        assert shape is not None
        _, h, w = shape
        if patch is not None and (h % patch or w % patch):
            bad = " and ".join(f"{name} {side}" for name, side in (("height", h), ("width", w)) if side % patch)
            good = sorted(set(_divisors(h)) & set(_divisors(w)))
            which = f"{h}" if h == w else f"both {h} and {w}"
            raise ConfigError(f"patch = {patch} does not divide the {h}×{w} images' {bad}",
                              f"set patch to a size that divides {which} ({', '.join(map(str, good))}), "
                              "or leave it unset to take the largest of 4, 2, 1 that leaves 16 patches")
    if model == "cnn" and L < 2:
        raise ConfigError(f"model = cnn needs L ≥ 2, not L = {L}: blocks 1..L−1 are the convolutions and "
                          "block L the fully connected layer",
                          "set L to 2 or more (the research's CNN has L = 4: three conv blocks and one FC)")


def patch_size(spec: ModelSpec, image_shape: tuple[int, int, int] | None) -> int:
    """ViT-Mini's patch side: ``spec.patch``, else the largest of 4, 2, 1 that divides both
    sides and leaves at least 16 patches (1 when none does)."""
    shape = _image(image_shape)
    if shape is None:
        raise ConfigError("model = vit_mini needs images, and this dataset's rows have no image shape", IMAGE_HINT)
    patch = getattr(spec, "patch", None)
    if patch is not None:
        return int(patch)
    _, h, w = shape
    for p in AUTO_PATCHES:
        if h % p == 0 and w % p == 0 and (h // p) * (w // p) >= MIN_PATCHES:
            return p
    return 1


def vit_tokens(spec: ModelSpec, image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(patch side p, number of patch tokens T); the states have T + 1 tokens (cls first)."""
    p = patch_size(spec, image_shape)
    _, h, w = image_shape
    return p, (h // p) * (w // p)


def cnn_state_shapes(d: int, L: int, image_shape: Shape) -> list[tuple[int, ...]]:
    """Per-sample shapes of the CNN's h_0..h_L."""
    chans = cnn_channels(d, L)
    _, h, w = image_shape
    shapes: list[tuple[int, ...]] = [(chans[0], h, w)]
    for c, pool in zip(chans, cnn_pools(image_shape, L)):
        if pool:
            h, w = _pooled(h, w)
        shapes.append((c, h, w))
    return shapes + [(d,)]


def state_shapes(spec: ModelSpec, in_dim: int, image_shape: tuple[int, int, int] | None) -> list[tuple[int, ...]]:
    """Per-sample shapes of h_0..h_L of the network ``spec`` describes."""
    check_spec(spec, image_shape)
    model, d, L, *_ = _spec(spec)
    if model == "vit_mini":
        assert image_shape is not None
        _, T = vit_tokens(spec, image_shape)
        return [(T + 1, d)] * (L + 1)
    if model == "cnn":
        assert image_shape is not None
        return cnn_state_shapes(d, L, _image(image_shape))  # type: ignore[arg-type]
    return [(d,)] * (L + 1)


def model_args(spec: ModelSpec, in_dim: int, n_classes: int, image_shape: tuple[int, int, int] | None) -> dict:
    """What the network is built from, JSON-able: saved beside its weights and compared on resume.

    ResMLP's is the legacy dict (in_dim, n_classes, d, L, r, terminal_ln) so checkpoints
    written before there were other models still resume; the others add ``model`` and
    what they depend on (image_shape as a list, ViT-Mini's resolved patch and heads)."""
    check_spec(spec, image_shape)
    model, d, L, r, ln, _, heads = _spec(spec)
    args: dict = {"in_dim": int(in_dim), "n_classes": int(n_classes), "d": d, "L": L}
    if model == "resmlp":
        return {**args, "r": r, "terminal_ln": ln}
    args = {"model": model, **args}
    if model == "mlp":
        return {**args, "terminal_ln": ln}
    shape = list(_image(image_shape))  # type: ignore[arg-type]
    if model == "cnn":
        return {**args, "terminal_ln": ln, "image_shape": shape}
    return {**args, "r": r, "terminal_ln": ln, "image_shape": shape,
            "patch": patch_size(spec, image_shape), "heads": heads}


def _assumed_image(in_dim: int) -> Shape:
    """A layout for rows whose image shape is unknown (an npz before it is read), for the
    estimates only: 1×s×s or 3×s×s when in_dim is such a square, else 1×1×in_dim."""
    for c in (1, 3):
        s = math.isqrt(in_dim // c)
        if in_dim % c == 0 and c * s * s == in_dim:
            return (c, s, s)
    return (1, 1, in_dim)


def _estimate_shape(spec: ModelSpec, in_dim: int, image_shape: tuple[int, int, int] | None) -> Shape | None:
    if spec.model not in IMAGE_MODELS:
        return None
    return _image(image_shape) if image_shape is not None else _assumed_image(int(in_dim))


def param_count(spec: ModelSpec, in_dim: int, n_classes: int, image_shape: tuple[int, int, int] | None) -> int:
    """Exactly sum(p.numel()) of ``build_model(spec, in_dim, n_classes, image_shape)``, without
    building it. (An image model without an image shape is counted on ``_assumed_image``.)"""
    model, d, L, r, ln, _, _ = _spec(spec)
    shape = _estimate_shape(spec, in_dim, image_shape)
    check_spec(spec, shape)
    readout = (2 * d if ln else 0) + d * n_classes + n_classes
    if model == "resmlp":
        h = hidden_width(d, r)
        return (in_dim * d + d) + L * (2 * d + (d * h + h) + (h * d + d)) + readout
    if model == "mlp":
        return (in_dim * d + d) + L * (d * d + d) + readout
    assert shape is not None
    c_in = shape[0]
    if model == "vit_mini":
        p, T = vit_tokens(spec, shape)
        h = hidden_width(d, r)
        embed = (c_in * p * p * d + d) + d + (T + 1) * d  # patch projection, cls token, positions
        block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * h + h) + (h * d + d)
        return embed + L * block + readout
    chans = cnn_channels(d, L)
    total = c_in * 9 * chans[0] + chans[0]  # stem (with bias)
    prev = chans[0]
    for c in chans:
        total += prev * 9 * c + 2 * c  # conv without bias, BatchNorm's affine
        prev = c
    flat = math.prod(cnn_state_shapes(d, L, shape)[L - 1])
    return total + (flat * d + d) + readout


def activation_floats(spec: ModelSpec, in_dim: int, image_shape: tuple[int, int, int] | None) -> int:
    """About how many floats one sample holds through a training forward pass: the input and
    every tensor autograd keeps or the pass returns (hidden states, normalisation outputs and
    statistics, pre- and post-activations, block outputs, residual sums; ViT-Mini's unfolded
    patches, q/k/v, the attention probabilities heads×(T+1)²; the CNN's conv,
    BatchNorm and ReLU maps and max-pool indices, counted as 2 floats for their int64).
    Logits and parameters are not counted. Within a factor of about 2 of the truth."""
    model, d, L, r, ln, _, heads = _spec(spec)
    shape = _estimate_shape(spec, in_dim, image_shape)
    check_spec(spec, shape)
    out_ln = d + 2 if ln else 0
    if model == "resmlp":
        h = hidden_width(d, r)
        return in_dim + d + L * (3 * d + 2 * h + 2) + out_ln  # per block: LN out, fc1, GELU, fc2, h + f
    if model == "mlp":
        return in_dim + d + L * 2 * d + out_ln  # per layer: pre-activation, ReLU
    assert shape is not None
    if model == "vit_mini":
        p, T = vit_tokens(spec, shape)
        N, h = T + 1, hidden_width(d, r)
        embed = 2 * in_dim + T * d + 2 * N * d  # input, unfolded patches, projection, cat, + pos
        # per block and token: LN1 out, q/k/v, attention out and its merged heads, h + a, LN2 out,
        # fc1, GELU, f = a + m, h + f, LayerNorm statistics; the attention probabilities, heads×N²,
        # which the math kernel keeps (float64, or no fused kernel) and the fused ones do not
        block = N * (9 * d + 2 * h + 4) + heads * N * N
        return embed + L * block + out_ln
    states = cnn_state_shapes(d, L, shape)
    total = in_dim + math.prod(states[0])
    for k, pool in enumerate(cnn_pools(shape, L), start=1):
        c = states[k][0]
        full = c * math.prod(states[k - 1][1:])
        total += 3 * full + (3 * math.prod(states[k]) if pool else 0)  # conv, BN, ReLU; pooled + indices
    return total + 2 * d + out_ln  # FC: pre-activation, ReLU


def describe(spec: ModelSpec, image_shape: tuple[int, int, int] | None) -> str:
    """One line for reports, e.g. ``ResMLP d = 256, L = 4, r = 1, terminal LayerNorm``."""
    model, d, L, r, ln, _, heads = _spec(spec)
    no_ln = "no terminal LayerNorm"
    if model == "resmlp":
        return f"ResMLP d = {d}, L = {L}, r = {r:g}, " + ("terminal LayerNorm" if ln else no_ln)
    if model == "mlp":
        return f"MLP d = {d}, L = {L}, ReLU, no skips, " + ("terminal LayerNorm" if ln else no_ln)
    if model == "cnn":
        chans = "/".join(str(c) for c in cnn_channels(d, L)) if L >= 2 else "none"
        return f"CNN channels {chans}, fc {d}, L = {L}, BatchNorm, " + ("terminal LayerNorm" if ln else no_ln)
    if model == "vit_mini":
        shape = _image(image_shape)
        if shape is None:
            patches = f"patches {spec.patch}×{spec.patch}" if getattr(spec, "patch", None) else "patches auto"
        else:
            p, T = vit_tokens(spec, shape)
            patches = f"patches {p}×{p} ({T} + cls tokens)"
        return (f"ViT-Mini d = {d}, L = {L}, {heads} heads, {patches}, "
                + ("terminal LayerNorm on the cls token" if ln else no_ln))
    return f"{model} d = {d}, L = {L}"
