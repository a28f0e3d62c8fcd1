"""fa_lillicrap, layer-by-layer feedback alignment: with every B set to its W it is backprop
exactly (weight gradients, penalty and credits, on all four networks); its B's are drawn from
the seed, stay fixed while the weights train, survive a checkpoint, and a null draw is new."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine.diagnostics import make_probe
from engine.methods import available_methods, get_method
from engine.methods.base import block_penalty
from tests.conftest import train
from tests.test_architectures import CLASSES, NETS, net


def lillicrap(model, seed: int = 7):
    return get_method("fa_lillicrap")(model, CLASSES, torch.Generator().manual_seed(seed))


def with_B_equal_to_W(method, model) -> None:
    """Every B replaced by (a copy of) the forward weight it stands for: the B-path is then Wᵀ."""
    state = method.state_dict()
    method.load_state_dict({**state, "B": [model.get_submodule(name).weight.detach().clone()
                                           for name in state["modules"]]})


def step_grads(method_name_or_instance, name: str, penalty: float, prepare=None) -> list[torch.Tensor]:
    model, x, y = net(name)
    model.train()
    method = (get_method(method_name_or_instance)(model, CLASSES, torch.Generator().manual_seed(7))
              if isinstance(method_name_or_instance, str) else method_name_or_instance(model))
    if prepare is not None:
        prepare(method, model)
    method.step(model, x, y, penalty)
    return [p.grad.clone() if p.grad is not None else None for p in model.parameters()]


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("penalty", [0.0, 0.05])
def test_with_every_B_set_to_its_W_the_step_is_backprops_on_every_network(name, penalty):
    want = step_grads("bp", name, penalty)
    got = step_grads(lillicrap, name, penalty, prepare=with_B_equal_to_W)
    assert len(got) == len(want) and all(g is not None for g in got)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(NETS))
def test_with_every_B_set_to_its_W_the_credits_are_the_probes_gradients(name):
    model, x, y = net(name)
    method = lillicrap(model)
    with_B_equal_to_W(method, model)
    probe = make_probe(model, x, y)
    got = method.credit(probe)
    assert [tuple(a.shape) for a in got] == [tuple(g.shape) for g in probe.grads]
    for a, g in zip(got, probe.grads):
        torch.testing.assert_close(a, g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(NETS))
def test_random_feedback_changes_the_gradients_and_leaves_the_model_as_it_was(name):
    """The B-path is in force inside step and credit only: afterwards the model is backprop's."""
    model, x, y = net(name)
    method = lillicrap(model)
    probe = make_probe(model, x, y)
    credits = method.credit(probe)
    assert all(not torch.allclose(a, g) for a, g in zip(credits, probe.grads))  # h_L's too: the head has a B
    assert all("forward" not in vars(m) for m in model.modules())  # each module's class forward again
    torch.testing.assert_close(make_probe(model, x, y).grads, probe.grads, rtol=0, atol=0)
    model.train()
    method.step(model, x, y, 0.0)
    assert all("forward" not in vars(m) for m in model.modules())
    with pytest.raises(RuntimeError, match="inside"), method.feedback_path(model, method.B):
        raise RuntimeError("inside")  # an error on the B-path restores the model too
    assert all("forward" not in vars(m) for m in model.modules())


def test_the_layers_with_feedback_are_every_linear_and_conv_outside_the_embedding():
    expected = {
        "resmlp": ["blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2", "blocks.2.fc1", "blocks.2.fc2",
                   "head"],
        "vit_mini": ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.fc1", "blocks.0.fc2",
                     "blocks.1.attn.qkv", "blocks.1.attn.proj", "blocks.1.fc1", "blocks.1.fc2", "head"],
        "cnn": ["blocks.0.conv", "blocks.1.conv", "blocks.2.conv", "blocks.3.fc", "head"],
        "mlp": ["blocks.0.fc", "blocks.1.fc", "blocks.2.fc", "head"],
    }
    for name, layers in expected.items():
        model, _, _ = net(name)
        method = lillicrap(model)
        assert method.layers == layers, name
        assert [tuple(b.shape) for b in method.B] == [tuple(model.get_submodule(n).weight.shape) for n in layers]


def test_a_weight_matrix_of_another_kind_is_refused_naming_it():
    model, _, _ = net("resmlp")
    model.blocks[1].gate = nn.Bilinear(6, 6, 6)
    with pytest.raises(ValueError, match=r"blocks\.1\.gate \(Bilinear\)"):
        lillicrap(model)


def test_Bs_come_from_the_seed_within_the_forward_inits_bound():
    model, _, _ = net("cnn")
    a, b, c = lillicrap(model, 7).B, lillicrap(model, 7).B, lillicrap(model, 8).B
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert all(not torch.equal(p, q) for p, q in zip(a, c))
    for B in a:
        bound = 1 / math.sqrt(B[0].numel())  # fan_in: in_features, or in_channels·k²
        assert B.abs().max() <= bound and B.abs().max() > 0.8 * bound
        assert abs(B.mean().item()) < 0.2 * bound


def test_Bs_stay_fixed_while_the_weights_train():
    model, x, y = net("resmlp")
    model.train()
    method = lillicrap(model)
    before = [b.clone() for b in method.B]
    weights = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        method.step(model, x, y, 0.0)
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(before, method.B))
    assert any(not torch.equal(w, p) for w, p in zip(weights, model.parameters()))


def test_the_Bs_survive_a_state_dict_round_trip_and_a_mismatch_is_refused():
    model, x, y = net("vit_mini", dtype=torch.float32)
    method = lillicrap(model, 7)
    state = method.state_dict()
    assert set(state) == {"B", "modules"} and all(b.dtype == torch.float32 and b.device.type == "cpu"
                                                   for b in state["B"])
    other = lillicrap(model, 99)
    other.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(method.B, other.B))
    probe = make_probe(model, x, y)
    for a, b in zip(method.credit(probe), other.credit(probe)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="do not match"):
        other.load_state_dict({**state, "B": state["B"][:-1]})
    with pytest.raises(ValueError, match="do not match"):
        other.load_state_dict({**state, "modules": list(reversed(state["modules"]))})


def test_a_null_draw_is_fresh_feedback_and_leaves_the_runs_own():
    model, x, y = net("resmlp")
    method = lillicrap(model)
    before = [b.clone() for b in method.B]
    probe = make_probe(model, x, y)
    own = method.credit(probe)
    draws = list(method.null_credits(probe, torch.Generator().manual_seed(1), 3))
    assert len(draws) == 3
    for draw in draws:
        assert [tuple(a.shape) for a in draw] == [tuple(a.shape) for a in own]
        assert all(not torch.allclose(a, b) for a, b in zip(draw, own))
    assert not torch.allclose(draws[0][0], draws[1][0])
    assert all(torch.equal(p, q) for p, q in zip(before, method.B))


def test_a_penalty_reaches_the_blocks_through_the_B_path():
    """loss + λ·Σ‖f_l‖² backpropagated along the B's: the term's own gradient, carried back by B."""
    lam = 0.05
    model, x, y = net("resmlp")
    model.train()
    method = lillicrap(model)
    with method.feedback_path(model, method.B):
        _, fs = model.hidden_states(x)
        block = [p for layer in range(1, model.depth + 1) for p in model.block_parameters(layer)]
        term = torch.autograd.grad(lam * block_penalty(fs), block)
    with_pen = step_grads(lillicrap, "resmlp", lam)
    without = step_grads(lillicrap, "resmlp", 0.0)
    params = dict(zip([id(p) for p in model.parameters()], range(len(with_pen))))
    for p, t in zip(block, term):
        i = params[id(p)]
        torch.testing.assert_close(with_pen[i] - without[i], t, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("name", sorted(NETS))
def test_a_bfloat16_step_leaves_finite_float32_gradients(name):
    model, x, y = net(name, dtype=torch.float32)
    model.train()
    method = lillicrap(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.step(model, x, y, 0.01)
    assert torch.isfinite(loss)
    for p in model.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", ["vit_mini", "cnn"])
def test_the_credit_in_chunks_equals_the_credit_in_one_piece(name, monkeypatch):
    import engine.diagnostics as diagnostics
    import engine.methods.base as module  # where the credit chunk size lives

    assert module.CHUNK_FLOATS == diagnostics.PROBE_FLOATS
    model, x, y = net(name)
    method = lillicrap(model)
    probe = make_probe(model, x, y)
    whole = method.credit(probe)
    monkeypatch.setattr(module, "CHUNK_FLOATS", 1)  # one sample per chunk
    for a, b in zip(method.credit(probe), whole):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fa_lillicrap_trains_in_an_audit_with_a_null_band_and_checkpoints_its_Bs(new_audit):
    from engine.checkpoint import load_checkpoint

    assert "fa_lillicrap" in available_methods()
    audit = new_audit("methods=[fa_lillicrap]")
    assert train(audit) == {"fa_lillicrap-s42": "finished"}
    rec = audit.log("fa_lillicrap-s42").epochs[-1]
    for key in ("cos", "rho", "null_mean", "null_std"):
        assert len(getattr(rec, key)) == 5 and all(math.isfinite(v) for v in getattr(rec, key))
    state = load_checkpoint(audit.path / "fa_lillicrap-s42" / "checkpoint.pt")["method"]
    assert state["modules"][-1] == "head" and len(state["B"]) == len(state["modules"]) == 2 * 4 + 1
