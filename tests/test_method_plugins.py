"""The method interface takes the next methods without changing: a learned-feedback probe
(its own auxiliary networks and optimizer) and a two-phase, equilibrium-style credit
(free and nudged phases, credit −(h_nudged − h_free)/β), each one class in one module."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.checkpoint import load_checkpoint
from engine.methods import Method, Probe, available_methods
from engine.methods.base import block_penalty, output_error
from tests.conftest import train


def local_update(model, x, y, penalty, credit_fn):
    """The local objective of the protocol with a given credit: blocks on ⟨f_l, a_l⟩."""
    hs, fs = model.hidden_states(x, detach_inputs=True)
    logits = model.forward_from(model.depth, hs[-1].detach())
    loss = F.cross_entropy(logits, y)
    a = [t.detach() for t in credit_fn(output_error(logits, y), hs)]
    n = x.shape[0]
    local = (hs[0] * a[0]).sum() + sum((f * al).sum() for f, al in zip(fs, a[1:]))
    (loss + local / n + (penalty * block_penalty(fs) if penalty else 0)).backward()
    return loss.detach()


class LearnedFeedbackProbe(Method):
    """Per-layer linear feedback e → a_l, learned online to match the BP gradient."""

    name = "test_learned_fb"

    def __init__(self, model, n_classes, generator):
        super().__init__(model, n_classes, generator)
        ref = next(model.parameters())
        self.aux = nn.ModuleList(nn.Linear(n_classes, model.d, bias=False) for _ in range(model.depth + 1))
        with torch.no_grad():
            for lin in self.aux:
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=generator) / math.sqrt(n_classes))
        self.aux.to(ref.device, ref.dtype)
        self.aux_opt = torch.optim.Adam(self.aux.parameters(), lr=1e-2)

    def credit(self, probe: Probe):
        with torch.no_grad():
            return [lin(probe.error) for lin in self.aux]

    def step(self, model, x, y, penalty):
        # the probe's own update: regress feedback onto the true per-sample gradients
        hs, _ = model.hidden_states(x)
        target = torch.autograd.grad(F.cross_entropy(model.forward_from(model.depth, hs[-1]), y, reduction="sum"),
                                     hs)
        e = output_error(model.forward_from(model.depth, hs[-1].detach()), y)
        self.aux_opt.zero_grad(set_to_none=True)
        sum(F.mse_loss(lin(e), t.detach()) for lin, t in zip(self.aux, target)).backward()
        self.aux_opt.step()
        return local_update(model, x, y, penalty, lambda err, _: [lin(err) for lin in self.aux])

    def state_dict(self):
        return {"aux": self.aux.state_dict(), "aux_opt": self.aux_opt.state_dict()}

    def load_state_dict(self, state):
        self.aux.load_state_dict(state["aux"])
        self.aux_opt.load_state_dict(state["aux_opt"])


class TwoPhaseNudge(Method):
    """Equilibrium-style credit: a free phase and a phase nudged by β toward lower loss;
    a_l = −(h_nudged − h_free)/β. Here the nudged phase relaxes each h_l by one step on
    the output loss run forward from h_l (``forward_from``), so it needs only the
    interface every model provides."""

    name = "test_two_phase"
    beta = 1e-2

    def _credit(self, model, hs, y):
        out = []
        for layer, h_free in enumerate(hs):
            h = h_free.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model.forward_from(layer, h), y, reduction="sum"), h)
            h_nudged = h_free.detach() - self.beta * grad
            out.append(-(h_nudged - h_free.detach()) / self.beta)
        return out

    def credit(self, probe: Probe):
        return self._credit(probe.model, probe.hs, probe.y)

    def step(self, model, x, y, penalty):
        with torch.no_grad():
            hs, _ = model.hidden_states(x)
        credits = self._credit(model, hs, y)
        return local_update(model, x, y, penalty, lambda err, _: credits)


@pytest.fixture(autouse=True)
def plugins(registered):
    """Both plugin methods, registered for each test and removed after it."""
    registered(LearnedFeedbackProbe)
    registered(TwoPhaseNudge)


@pytest.fixture
def run(new_audit):
    def go(method):
        audit = new_audit(f"methods=[{method}]")
        return audit, train(audit)

    return go


def test_registered_methods_are_valid_preset_values():
    assert {"test_learned_fb", "test_two_phase", "bp", "fa", "dfa", "frozen"} <= set(available_methods())


def test_an_unregistered_method_is_no_longer_a_preset_value():
    from engine.config import load_config
    from engine.errors import ConfigError
    from engine.methods import unregister_method

    assert load_config(None, ["methods=[test_two_phase]"]).methods == ["test_two_phase"]
    unregister_method("test_two_phase")  # what the `registered` fixture does after each test
    assert "test_two_phase" not in available_methods()
    with pytest.raises(ConfigError, match="test_two_phase"):
        load_config(None, ["methods=[test_two_phase]"])


def test_learned_feedback_probe_trains_gets_every_diagnostic_and_checkpoints_its_aux_state(run):
    audit, statuses = run("test_learned_fb")
    assert statuses == {"test_learned_fb-s42": "finished"}
    rec = audit.log("test_learned_fb-s42").epochs[-1]
    for key in ("h_norm", "g_norm", "a_norm", "cos", "rho"):
        assert len(getattr(rec, key)) == 5 and all(math.isfinite(v) for v in getattr(rec, key))
    assert rec.null_mean is None  # no random feedback to redraw: no null band
    state = load_checkpoint(audit.path / "test_learned_fb-s42" / "checkpoint.pt")["method"]
    assert set(state) == {"aux", "aux_opt"} and state["aux_opt"]["state"]  # Adam moments were saved


def test_two_phase_credit_is_the_gradient_in_the_small_beta_limit(run):
    audit, statuses = run("test_two_phase")
    assert statuses == {"test_two_phase-s42": "finished"}
    rec = audit.log("test_two_phase-s42").epochs[-1]
    # one relaxation step on the loss is exactly the BP direction: cos = 1, ρ ≈ 1
    assert rec.cos == pytest.approx([1.0] * 5, abs=1e-5)
    assert all(r > 0.99 for r in rec.rho)
