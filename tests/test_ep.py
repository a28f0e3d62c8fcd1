"""ep, equilibrium propagation: its credit −ε_l/β tends to the BP gradient as β → 0 (per layer,
on every network, in both relaxations), its update to bp's, its settings come from the config's
``ep`` section and the checkpoint, and one training step works on all four networks."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from engine.config import EPConfig, load_config
from engine.diagnostics import make_probe, per_sample_cos
from engine.errors import ConfigError
from engine.methods import available_methods, build_method, get_method
from engine.methods.base import block_penalty
from engine.methods.ep import EPSettings
from tests.conftest import tiny, train
from tests.test_architectures import CLASSES, NETS, net

BETAS = [1e-1, 1e-2, 1e-3, 1e-4]


def ep(model, **options):
    return get_method("ep")(model, CLASSES, torch.Generator().manual_seed(0), options=options)


def credit_vs_bp(name: str, **options) -> tuple[list[float], list[float], list[float]]:
    """Per layer: mean per-sample cos(a_l, g_l), the smallest, and ‖a_l − g_l‖/‖g_l‖ (float64)."""
    model, x, y = net(name)
    probe = make_probe(model, x, y)
    credits = ep(model, **options).credit(probe)
    cos = [per_sample_cos(a, g)[0] for a, g in zip(credits, probe.grads)]
    err = [((a - g).norm() / g.norm()).item() for a, g in zip(credits, probe.grads)]
    return [c.mean().item() for c in cos], [c.min().item() for c in cos], err


@pytest.mark.parametrize("name", sorted(NETS))
def test_the_credit_tends_to_the_bp_gradient_as_beta_shrinks(name):
    rows = [credit_vs_bp(name, beta=beta, steps=30) for beta in BETAS]
    mean_cos, min_cos, err = rows[-1]
    assert all(c > 0.99 for c in mean_cos), mean_cos  # every layer, the audit's cos
    assert all(c > 0 for c in min_cos), min_cos  # every sample points the way the gradient does
    for (cos_a, _, err_a), (cos_b, _, err_b) in zip(rows, rows[1:]):  # β ten times smaller each row
        assert all(b < a for a, b in zip(err_a, err_b)), (err_a, err_b)
        assert all(b >= a - 1e-9 for a, b in zip(cos_a, cos_b)), (cos_a, cos_b)
    if name == "resmlp":  # smooth (GELU, LN) and mildly curved: the finite-nudge error is linear in β
        assert all(0.05 < b / a < 0.2 for a, b in zip(rows[1][2], rows[2][2])), (rows[1][2], rows[2][2])


@pytest.mark.parametrize("name", ["resmlp", "cnn", "mlp"])
def test_the_local_dynamics_in_the_states_reach_the_same_equilibrium(name):
    """relaxation: states (small steps, many of them) and errors (step size 1) minimise the same
    energy: the same credits. (ViT-Mini's states dynamics diverge at these step sizes.)"""
    model, x, y = net(name)
    probe = make_probe(model, x, y)
    fast = ep(model, beta=1e-2, steps=30).credit(probe)
    local = ep(model, beta=1e-2, steps=800, step_size=0.3, relaxation="states").credit(probe)
    for a, b in zip(local, fast):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(NETS))
def test_one_step_of_the_errors_relaxation_is_a_backward_sweep_whatever_beta(name):
    """From the free state the first step (η = 1) gives ε_l = −β·g_l: the credit is backprop's."""
    model, x, y = net(name)
    probe = make_probe(model, x, y)
    for a, g in zip(ep(model, beta=0.5, steps=1).credit(probe), probe.grads):
        torch.testing.assert_close(a, g, rtol=1e-9, atol=1e-12)


def test_the_raw_state_difference_is_the_credit_only_at_the_embedding():
    """−(h_l^β − h_l^free)/β accumulates the errors of every layer below (Δh_l = ε_l + J_l Δh_{l−1}):
    it equals a_0, not the deeper credits."""
    model, x, y = net("resmlp")
    probe = make_probe(model, x, y)
    method = ep(model, beta=1e-3, steps=30)
    errors = method.relax(model, probe.hs, y)
    with torch.no_grad():
        h = probe.hs[0] + errors[0]
        raw = [(h - probe.hs[0]) / -1e-3]
        for layer in range(1, model.depth + 1):
            h = h + model.blocks[layer - 1](h) + errors[layer]
            raw.append((h - probe.hs[layer]) / -1e-3)
    credits = method.credit(probe)
    torch.testing.assert_close(raw[0], credits[0], rtol=1e-9, atol=1e-12)
    for layer in range(1, model.depth + 1):
        assert ((raw[layer] - credits[layer]).norm() / credits[layer].norm()).item() > 0.1
        assert ((credits[layer] - probe.grads[layer]).norm() / probe.grads[layer].norm()).item() < 0.01


def flat_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("name", sorted(NETS))
def test_the_update_is_bps_gradient_at_small_beta(name):
    model, x, y = net(name)
    model.train()
    get_method("bp")(model, CLASSES, None).step(model, x, y, 0.0)
    want = flat_grads(model)
    per_tensor = [p.grad.clone() for p in model.parameters()]
    model, x, y = net(name)
    model.train()
    ep(model, beta=1e-4, steps=30).step(model, x, y, 0.0)
    got = flat_grads(model)
    assert torch.nn.functional.cosine_similarity(got, want, 0).item() > 0.999
    # the scale too, (1/n)·Jᵀa is the mean loss's gradient (the tiny ViT is the most curved: 2% at β = 1e-4)
    assert ((got - want).norm() / want.norm()).item() < 0.05
    for p, w in zip(model.parameters(), per_tensor):
        if w.norm() > 1e-12:
            assert torch.nn.functional.cosine_similarity(p.grad.flatten(), w.flatten(), 0).item() > 0.99


@pytest.mark.parametrize("name", sorted(NETS))
def test_one_training_step_on_every_network_is_finite_and_follows_the_free_phases_statistics(name):
    model, x, y = net(name, dtype=torch.float32)
    model.train()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        free_loss = torch.nn.functional.cross_entropy(reference(x), y)  # one train-mode forward: BN stats move once
    method = build_method("ep", model, CLASSES, torch.Generator().manual_seed(0), load_config(None, tiny()))
    loss = method.step(model, x, y, 0.01)
    torch.testing.assert_close(loss, free_loss)  # the loss reported is the free phase's
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    for a, b in zip(model.buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # ep runs in float32 whatever the precision
        model.zero_grad()
        assert torch.isfinite(method.step(model, x, y, 0.0))
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["resmlp", "vit_mini", "mlp"])
def test_a_penalty_adds_exactly_its_term_at_each_blocks_own_output(name):
    lam = 0.05

    def grads(penalty: float) -> list[torch.Tensor]:
        model, x, y = net(name)
        model.train()
        ep(model, beta=1e-2, steps=5).step(model, x, y, penalty)
        return [p.grad.clone() for layer in range(1, model.depth + 1) for p in model.block_parameters(layer)]

    model, x, y = net(name)
    method = ep(model, beta=1e-2, steps=5)
    with torch.no_grad():
        hs_free, _ = model.hidden_states(x)
    _, fs, _, _ = method._nudged_pass(model, x, method.relax(model, hs_free, y))
    block = [p for layer in range(1, model.depth + 1) for p in model.block_parameters(layer)]
    term = torch.autograd.grad(lam * block_penalty(fs), block)
    for a, b, t in zip(grads(lam), grads(0.0), term):
        torch.testing.assert_close(a - b, t, rtol=1e-6, atol=1e-10)


def test_the_settings_come_from_the_config_section_and_defaults_agree():
    assert EPSettings() == EPSettings.of(EPConfig())  # the two sets of defaults are one
    cfg = load_config(None, tiny("methods=[ep,bp]", "ep.beta=0.05", "ep.steps=3", "ep.relaxation=states",
                                 "ep.step_size=0.25"))
    model, _, _ = net("resmlp")
    method = build_method("ep", model, CLASSES, torch.Generator(), cfg)
    assert method.settings == EPSettings(beta=0.05, steps=3, step_size=0.25, relaxation="states")
    assert get_method("ep")(model, CLASSES, torch.Generator()).settings == EPSettings()  # no config: the defaults
    assert build_method("bp", model, CLASSES, torch.Generator(), cfg).name == "bp"  # no section: built as always


@pytest.mark.parametrize("item, key", [("ep.beta=0", "ep.beta"), ("ep.steps=0", "ep.steps"),
                                       ("ep.step_size=2", "ep.step_size"), ("ep.relaxation=sweep", "ep.relaxation"),
                                       ("ep.steps=2.5", "ep.steps"), ("ep.gamma=1", "ep.gamma")])
def test_the_config_refuses_ep_values_out_of_range_naming_the_key(item, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, tiny(item))


def test_the_settings_survive_a_state_dict_round_trip():
    model, x, y = net("cnn")
    method = ep(model, beta=0.02, steps=6, step_size=0.75)
    state = method.state_dict()
    assert state == {"beta": 0.02, "steps": 6, "step_size": 0.75, "relaxation": "errors"}
    other = ep(model)
    other.load_state_dict(copy.deepcopy(state))
    assert other.settings == method.settings
    probe = make_probe(model, x, y)
    for a, b in zip(method.credit(probe), other.credit(probe)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="step_size"):
        other.load_state_dict({**state, "step_size": 3.0})


@pytest.mark.parametrize("name", ["vit_mini", "cnn"])
def test_the_credit_in_chunks_equals_the_credit_in_one_piece(name, monkeypatch):
    import engine.diagnostics as diagnostics
    import engine.methods.base as module  # where the credit chunk size lives

    assert module.CHUNK_FLOATS == diagnostics.PROBE_FLOATS
    model, x, y = net(name)
    method = ep(model)
    probe = make_probe(model, x, y)
    whole = method.credit(probe)
    monkeypatch.setattr(module, "CHUNK_FLOATS", 1)  # one sample per chunk
    for a, b in zip(method.credit(probe), whole):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_model_without_blocks_is_refused():
    class Flat(torch.nn.Module):
        depth = 1

    with pytest.raises(ValueError, match="embed"):
        get_method("ep")(Flat(), CLASSES, torch.Generator())


def test_ep_trains_in_an_audit_with_every_diagnostic_and_checkpoints_its_settings(new_audit):
    from engine.checkpoint import load_checkpoint

    assert {"ep", "fa_lillicrap"} <= set(available_methods())
    audit = new_audit("methods=[ep]", "ep.steps=3")
    assert train(audit) == {"ep-s42": "finished"}
    rec = audit.log("ep-s42").epochs[-1]
    for key in ("cos", "rho"):
        assert len(getattr(rec, key)) == 5 and all(math.isfinite(v) for v in getattr(rec, key))
    assert min(rec.cos) > 0.99 and min(rec.rho) > 0.9
    assert rec.null_mean is None  # nothing random to redraw
    state = load_checkpoint(audit.path / "ep-s42" / "checkpoint.pt")["method"]
    assert state == {"beta": 1e-3, "steps": 3, "step_size": 1.0, "relaxation": "errors"}


def test_both_new_methods_are_sized_validated_and_coloured():
    from engine.figures import METHOD_COLOURS, SPARE_COLOURS, method_colours
    from engine.sizing import breakdown, hidden_width

    def per_run(*sets):
        return breakdown(load_config(None, tiny(*sets)))["per_run"]

    cfg = load_config(None, tiny("methods=[bp,fa_lillicrap,ep]"))
    assert cfg.methods == ["bp", "fa_lillicrap", "ep"]
    d, L, C = cfg.d, cfg.L, cfg.synthetic.classes
    # fa_lillicrap: one more copy of the blocks' and the head's weight matrices, twice for a null draw
    assert per_run("methods=[bp,fa_lillicrap]") - per_run("methods=[bp]") == 2 * (L * 2 * d * hidden_width(d, cfg.r)
                                                                                  + C * d) * 4
    assert per_run("methods=[bp,ep]") > per_run("methods=[bp]")  # the relaxation's copies of the states
    for net_sets in (["model=cnn", "d=64"], ["model=vit_mini", "d=32", "heads=2"]):
        base = per_run(*net_sets, "methods=[bp]")
        # the image models count the largest feedback (fa/dfa's maps or fa_lillicrap's 2P), whoever trains
        grown = per_run(*net_sets, "methods=[bp,fa_lillicrap]") - base
        assert grown > 0 if net_sets[0] == "model=cnn" else grown >= 0  # the CNN's weights outgrow the maps
        assert per_run(*net_sets, "methods=[bp,ep]") > base
    colours = method_colours(["bp", "fa", "fa_lillicrap", "dfa", "ep", "frozen", "mine"])
    assert colours["fa_lillicrap"] == METHOD_COLOURS["fa_lillicrap"] and colours["ep"] == METHOD_COLOURS["ep"]
    assert len(set(colours.values())) == len(colours) and not set(SPARE_COLOURS) & set(METHOD_COLOURS.values())
