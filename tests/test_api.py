"""audit_model: the engine's record and verdict for a user's model, credit and data."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine.api import AuditResult, CreditFunction, HiddenStateAdapter, audit_model
from engine.config import Thresholds
from engine.diagnostics import DiagnosticSettings, measure
from engine.methods import get_method
from engine.model import ResMLP

N = 128  # small batches keep this fast; the thresholds' n = 1024 only matters for (b)


def fast() -> DiagnosticSettings:
    """Fewer ρ directions and null draws than the protocol's: the same code, a tenth of the time."""
    return DiagnosticSettings(rho_samples=N, rho_directions=8, null_draws=5)


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(N, 12, generator=gen), torch.randint(5, (N,), generator=gen)


@pytest.fixture(scope="module")
def resmlp():
    return ResMLP(12, 5, d=16, L=3, generator=torch.Generator().manual_seed(1))


def test_bp_credit_on_a_resmlp_is_the_reference_itself(resmlp, data):
    result = audit_model(resmlp, *data, credit="bp", settings=fast())
    rec = result.record
    assert rec["cos"] == pytest.approx([1.0] * 4, abs=1e-9) and rec["gamma"] == pytest.approx(1.0)
    assert min(rec["rho"]) > 0.99  # the protocol's control: BP credit gives ρ ≈ 1
    assert result.verdict.label == "TRUSTWORTHY" and not rec["degenerate"]
    assert rec["null_mean"] is None and rec["baseline_acc"] is None and len(rec["h_norm"]) == 4


def test_the_record_is_what_the_engine_measures_and_has_the_trainers_fields(resmlp, data):
    result = audit_model(resmlp, *data, credit="bp", seed=3, settings=fast())
    x, y = data
    direct = measure(resmlp, get_method("bp")(resmlp, 5, torch.Generator()), x, y,
                     fast(), torch.Generator().manual_seed(3))
    for key in ("h_norm", "g_norm", "a_norm", "cos", "growth", "g_L", "stability", "rho"):
        assert result.record[key] == pytest.approx(direct[key], rel=1e-9), key
    assert {"epoch", "test_acc", "test_loss", "train_loss", "lr", "fired", "degenerate", "stability_mode",
            "baseline_acc", "deep_cos", "deep_rho", "cos_std", "cos_excluded", "diag_s"} <= set(result.record)
    with torch.no_grad():
        acc = (resmlp(x).argmax(1) == y).float().mean().item()
    assert result.record["test_acc"] == pytest.approx(acc)


def test_a_method_instance_keeps_its_own_feedback_and_gets_the_null_band(resmlp, data):
    dfa = get_method("dfa")(resmlp, 5, torch.Generator().manual_seed(7))
    first = audit_model(resmlp, *data, credit=dfa, settings=fast())
    again = audit_model(resmlp, *data, credit=dfa, seed=1, settings=fast())
    assert first.record["cos"] == again.record["cos"]  # same B's: the cosine does not depend on the seed
    assert len(first.record["null_mean"]) == 4 and first.name == "dfa"
    assert all(abs(c) < 0.5 for c in first.record["cos"])


def test_a_plain_callable_is_a_credit(resmlp, data):
    doubled = audit_model(resmlp, *data, credit=lambda probe: [2 * g for g in probe.grads], method="2xbp",
                          settings=fast())
    assert doubled.record["cos"] == pytest.approx([1.0] * 4, abs=1e-9) and doubled.name == "2xbp"

    def noise_credit(probe):
        gen = torch.Generator().manual_seed(5)
        return [torch.randn(h.shape, generator=gen) for h in probe.hs]

    noise = audit_model(resmlp, *data, credit=noise_credit, settings=fast())
    assert abs(noise.record["gamma"]) < 0.1 and abs(noise.record["deep_rho"]) < 0.2
    with pytest.raises(NotImplementedError):
        CreditFunction(lambda p: p.grads).step(resmlp, *data, 0.0)


def test_frozen_accuracy_and_thresholds_drive_the_verdict(resmlp, data):
    below = audit_model(resmlp, *data, frozen_acc=1.0, settings=fast())
    assert below.verdict.label == "WALKED BACK via (d)" and below.record["fired"][-1] == "d"
    strict = audit_model(resmlp, *data, thresholds=Thresholds(growth=1.0, g_floor=1.0), settings=fast())
    assert strict.verdict.label == "WALKED BACK via (a)+(b)" and strict.record["degenerate"]
    assert strict.verdict.first_fire == {"a": 0, "b": 0, **({"c": 0} if "c" in strict.record["fired"] else {})}


class UserNet(nn.Module):
    """A model that knows nothing of the protocol: a stem, residual-branch layers, a head."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():  # a fixed init without disturbing the global RNG
            torch.manual_seed(2)
            self.stem = nn.Linear(12, 16)
            self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16), nn.Tanh())
                                        for _ in range(2))
            self.norm = nn.LayerNorm(16)
            self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = self.stem(x)
        for layer in self.layers:
            h = h + layer(h)
        return self.fc(self.norm(h))


def named_adapter(net: UserNet) -> HiddenStateAdapter:
    return HiddenStateAdapter(net, embed="stem", blocks=["layers.0", "layers.1"],
                              head=lambda m, h: m.fc(m.norm(h)), residual=True, d=16)


def test_an_adapter_names_the_hidden_states_of_a_user_model(data):
    net = UserNet()
    model = named_adapter(net)
    x, y = data
    hs, fs = model.hidden_states(x)
    assert len(hs) == 3 and torch.allclose(model(x), net(x)) and torch.allclose(hs[2] - hs[1], fs[1], atol=1e-6)
    assert torch.allclose(model.forward_from(1, hs[1]), net(x))
    assert model.block_parameters(1) == list(net.layers[0].parameters()) and model.readout_parameters() == []
    result = audit_model(model, x, y, credit="bp", settings=fast())
    assert result.record["cos"] == pytest.approx([1.0] * 3, abs=1e-9) and min(result.record["rho"]) > 0.99
    assert result.verdict.label == "TRUSTWORTHY"
    fa = audit_model(model, x, y, credit="fa", settings=fast())  # fa sizes its feedback from d
    assert len(fa.record["null_std"]) == 3


def test_an_adapter_of_whole_state_blocks_and_a_missing_width(data):
    net = UserNet()
    model = HiddenStateAdapter(net, embed=lambda m, x: m.stem(x),
                               blocks=[lambda m, h, i=i: h + m.layers[i](h) for i in range(2)],
                               head=lambda m, h: m.fc(m.norm(h)))
    assert torch.allclose(model(data[0]), net(data[0]))
    assert audit_model(model, *data, settings=fast()).record["cos"] == pytest.approx([1.0] * 3, abs=1e-9)
    with pytest.raises(ValueError, match="HiddenStateAdapter\\(d=...\\)"):
        audit_model(model, *data, credit="dfa", settings=fast())


def test_the_result_renders_as_a_per_layer_table(resmlp, data):
    result = audit_model(resmlp, *data, credit="bp", method="bp", settings=fast())
    assert isinstance(result, AuditResult) and result.label == "TRUSTWORTHY"
    table = result.table()
    assert [r[2] for r in table.rows] == ["0", "1", "2", "3"]
    assert table.rows[0][4].startswith("1.00 ± ") and table.rows[0][0] == "bp"
    assert not math.isnan(table.data[0]["rho"]["mean"])
