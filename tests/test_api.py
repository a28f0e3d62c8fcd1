"""audit_model: the engine's record and verdict for a user's model, credit and data."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.api import AuditResult, CreditFunction, HiddenStateAdapter, audit_model
from engine.config import Thresholds
from engine.data import derive_seed, load_task
from engine.diagnostics import DiagnosticSettings
from engine.methods import get_method
from engine.model import ResMLP
from engine.records import Epoch
from engine.trainer import RunParts, diagnostic_settings
from tests.conftest import train

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
    assert rec.cos == pytest.approx([1.0] * 4, abs=1e-9) and rec.gamma == pytest.approx(1.0)
    assert min(rec.rho) > 0.99  # the protocol's control: BP credit gives ρ ≈ 1
    # nothing fires, but without a frozen baseline (d) is unmeasured: never TRUSTWORTHY
    assert result.verdict.label == "UNVERIFIED: no baseline for (d)" and not rec.degenerate
    assert rec.null_mean is None and rec.baseline_acc is None and len(rec.h_norm) == 4
    assert rec.unmeasured == ["d"] and rec.fired == []
    below = audit_model(resmlp, *data, credit="bp", settings=fast(), frozen_acc=rec.test_acc + 0.01)
    above = audit_model(resmlp, *data, credit="bp", settings=fast(), frozen_acc=rec.test_acc - 0.01)
    assert below.verdict.label == "WALKED BACK via (d)" and above.verdict.label == "TRUSTWORTHY"


def _float64_reference(model: ResMLP, x, y):
    """h_l, g_l = ∂(mean_n ℓ_n)/∂h_l and the logits, by hand: a float64 copy of the model run
    block by block with torch's own GELU, differentiated by autograd (no engine code)."""
    m = copy.deepcopy(model).double().eval()
    hs = [m.embed(x.double())]
    for block in m.blocks:
        hs.append(hs[-1] + block.fc2(F.gelu(block.fc1(block.ln(hs[-1])))))
    logits = m.head(m.ln_out(hs[-1]))
    loss = F.cross_entropy(logits, y)  # the mean over samples
    grads = torch.autograd.grad(loss, hs)
    return [h.detach() for h in hs], list(grads), logits.detach()


def test_the_bp_record_agrees_with_an_independent_float64_computation(resmlp, data):
    x, y = data
    settings = fast()
    result = audit_model(resmlp, x, y, credit="bp", seed=3, settings=settings)
    rec = result.record
    hs, g, logits = _float64_reference(resmlp, x, y)
    h_norm = [h.norm(dim=1).mean().item() for h in hs]
    g_norm = [gl.norm(dim=1).mean().item() for gl in g]
    assert rec.h_norm == pytest.approx(h_norm, rel=1e-5)
    assert rec.g_norm == pytest.approx(g_norm, rel=1e-4)
    # bp's credit is the per-sample gradient ∂ℓ_n/∂h_l: n times the mean-loss gradient, cosine 1
    assert rec.a_norm == pytest.approx([N * v for v in g_norm], rel=1e-4)
    assert rec.cos == pytest.approx([1.0] * 4, abs=1e-6) and rec.cos_excluded == [0] * 4
    growth = max(h_norm[l] / h_norm[l - 1] for l in range(1, 4))
    assert rec.growth == pytest.approx(growth, rel=1e-5) and rec.g_L == pytest.approx(g_norm[-1], rel=1e-4)
    # (c): mean pairwise cosine of the batch means of g_L over the stability batches
    means = torch.stack([c.mean(0) for c in g[-1].chunk(settings.stability_batches)])
    unit = F.normalize(means, dim=1)
    k = means.shape[0]
    pairs = [(unit[i] @ unit[j]).item() for i in range(k) for j in range(i + 1, k)]
    stab = sum(pairs) / len(pairs)
    assert rec.stability == pytest.approx(stab, abs=1e-5)
    assert rec.test_acc == pytest.approx((logits.argmax(1) == y).double().mean().item())
    assert rec.test_loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    # the fired set under the protocol's thresholds, decided here from the values above
    th = Thresholds()
    expected = [k for k, hit in (("a", growth > th.growth), ("b", g_norm[-1] < th.g_floor),
                                 ("c", stab > th.stability)) if hit]
    assert rec.fired == expected and rec.degenerate == ("b" in expected)
    assert rec.stability_mode == ("drift" if "c" in expected else "noise")
    # nothing trained: the trainer-only fields are empty, the rest is an ordinary epoch record
    assert isinstance(rec, Epoch) and rec.epoch == 0
    assert (rec.train_loss, rec.lr, rec.train_s, rec.baseline_acc) == (None, None, None, None)


def test_audit_model_of_a_trained_run_reproduces_the_trainers_own_record(tmp_path, new_audit):
    """The last epoch of a trained dfa run, measured again through audit_model with the run's
    checkpoint, B's, diagnostic set, settings and diagnostic seed: the same record."""
    audit = new_audit("methods=[dfa]")
    assert train(audit) == {"dfa-s42": "finished"}
    cfg, task = audit.cfg, load_task(audit.cfg)
    spec = next(s for s in audit.planned() if s.run_id == "dfa-s42")
    parts = RunParts(cfg, spec, task, torch.device("cpu"))
    parts.load(audit.run_dir("dfa-s42") / "checkpoint.pt", spec)
    x, y = task.diagnostic_set(cfg.diagnostics.n_samples)
    assert x.shape[0] == task.x_test.shape[0]  # TINY: the diagnostic set is the whole test set
    stored = audit.log("dfa-s42").final
    again = audit_model(parts.model, x, y, credit=parts.method, epoch=stored.epoch,
                        settings=diagnostic_settings(cfg, stored.epoch),
                        seed=derive_seed(42, "diagnostics", stored.epoch)).record
    assert stored.rho is not None and stored.null_mean is not None  # the last epoch measures everything
    for key in ("test_acc", "test_loss", "growth", "g_L", "stability", "gamma", "deep_cos", "deep_rho"):
        assert getattr(again, key) == pytest.approx(getattr(stored, key), rel=1e-6, abs=1e-12), key
    for key in ("h_norm", "g_norm", "a_norm", "cos", "cos_std", "rho", "null_mean", "null_std"):
        assert getattr(again, key) == pytest.approx(getattr(stored, key), rel=1e-6, abs=1e-9), key
    assert again.cos_excluded == stored.cos_excluded and again.fired == stored.fired
    assert again.stability_mode == stored.stability_mode


def test_a_method_instance_keeps_its_own_feedback_and_gets_the_null_band(resmlp, data):
    dfa = get_method("dfa")(resmlp, 5, torch.Generator().manual_seed(7))
    first = audit_model(resmlp, *data, credit=dfa, settings=fast())
    again = audit_model(resmlp, *data, credit=dfa, seed=1, settings=fast())
    assert first.record.cos == again.record.cos  # same B's: the cosine does not depend on the seed
    assert len(first.record.null_mean) == 4 and first.name == "dfa"
    assert all(abs(c) < 0.5 for c in first.record.cos)


def test_a_plain_callable_is_a_credit(resmlp, data):
    doubled = audit_model(resmlp, *data, credit=lambda probe: [2 * g for g in probe.grads], method="2xbp",
                          settings=fast())
    assert doubled.record.cos == pytest.approx([1.0] * 4, abs=1e-9) and doubled.name == "2xbp"

    def noise_credit(probe):
        gen = torch.Generator().manual_seed(5)
        return [torch.randn(h.shape, generator=gen) for h in probe.hs]

    noise = audit_model(resmlp, *data, credit=noise_credit, settings=fast())
    assert abs(noise.record.gamma) < 0.1 and abs(noise.record.deep_rho) < 0.2
    with pytest.raises(NotImplementedError):
        CreditFunction(lambda p: p.grads).step(resmlp, *data, 0.0)


def test_frozen_accuracy_and_thresholds_drive_the_verdict(resmlp, data):
    below = audit_model(resmlp, *data, frozen_acc=1.0, settings=fast())
    assert below.verdict.label == "WALKED BACK via (d)" and below.record.fired[-1] == "d"
    strict = audit_model(resmlp, *data, thresholds=Thresholds(growth=1.0, g_floor=1.0), settings=fast())
    assert strict.verdict.label == "WALKED BACK via (a)+(b)" and strict.record.degenerate
    assert strict.verdict.first_fire == {"a": 0, "b": 0, **({"c": 0} if "c" in strict.record.fired else {})}


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
    result = audit_model(model, x, y, credit="bp", settings=fast(), frozen_acc=0.0)
    assert result.record.cos == pytest.approx([1.0] * 3, abs=1e-9) and min(result.record.rho) > 0.99
    assert result.verdict.label == "TRUSTWORTHY"
    fa = audit_model(model, x, y, credit="fa", settings=fast())  # fa sizes its feedback from d
    assert len(fa.record.null_std) == 3


def test_an_adapter_of_whole_state_blocks_needs_no_width_the_states_shapes_size_the_feedback(data):
    net = UserNet()
    model = HiddenStateAdapter(net, embed=lambda m, x: m.stem(x),
                               blocks=[lambda m, h, i=i: h + m.layers[i](h) for i in range(2)],
                               head=lambda m, h: m.fc(m.norm(h)))
    assert torch.allclose(model(data[0]), net(data[0]))
    assert audit_model(model, *data, settings=fast()).record.cos == pytest.approx([1.0] * 3, abs=1e-9)
    dfa = audit_model(model, *data, credit="dfa", settings=fast())
    width = model.hidden_states(data[0][:1])[0][0].shape[1]
    assert model.state_shapes == [(width,)] * 3 and len(dfa.record.cos) == 3 and len(dfa.record.null_std) == 3


def test_the_result_renders_as_a_per_layer_table(resmlp, data):
    result = audit_model(resmlp, *data, credit="bp", method="bp", settings=fast(), frozen_acc=0.0)
    assert isinstance(result, AuditResult) and result.label == "TRUSTWORTHY"
    table = result.table()
    assert [r[2] for r in table.rows] == ["0", "1", "2", "3"]
    assert table.rows[0][4].startswith("1.00 ± ") and table.rows[0][0] == "bp"
    assert not math.isnan(table.data[0]["rho"]["mean"])
