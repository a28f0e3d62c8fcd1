"""The engine's fast paths against the straightforward implementations they replaced.

Each test names one optimisation and checks that it leaves the numbers (gradients,
credits, diagnostics, statistics) the same to float tolerance.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.data import channel_stats
from engine.diagnostics import DiagnosticSettings, make_probe, measure, per_sample_cos, perturbation_rho
from engine.methods import get_method
from engine.methods.base import block_penalty, output_error
from engine.model import ResMLP


def tiny(seed: int = 0, n: int = 64, in_dim: int = 12, classes: int = 5, d: int = 16, L: int = 3):
    gen = torch.Generator().manual_seed(seed)
    model = ResMLP(in_dim, classes, d, L, generator=gen)
    x = torch.randn(n, in_dim, generator=gen)
    y = torch.randint(classes, (n,), generator=gen)
    return model, x, y


def reference_feedback_step(method, model, x, y, penalty):
    """The local objective built as graph nodes, credits propagated matrix by matrix."""
    hs, fs = model.hidden_states(x, detach_inputs=True)
    logits = model.forward_from(model.depth, hs[-1].detach())
    loss = F.cross_entropy(logits, y)
    a = method.propagate(output_error(logits, y), method.B)
    n = x.shape[0]
    local = (hs[0] * a[0]).sum() + sum((f * a_l).sum() for f, a_l in zip(fs, a[1:]))
    objective = loss + local / n
    if penalty:
        objective = objective + penalty * block_penalty(fs)
    objective.backward()
    return loss.detach()


def grads_after(fn, model) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    fn()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["fa", "dfa"])
@pytest.mark.parametrize("penalty", [0.0, 1e-2])
def test_feedback_step_gives_the_reference_gradients(name, penalty):
    model, x, y = tiny()
    method = get_method(name)(model, 5, torch.Generator().manual_seed(3))
    fast = grads_after(lambda: method.step(model, x, y, penalty), model)
    ref = grads_after(lambda: reference_feedback_step(method, model, x, y, penalty), model)
    assert fast.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-5, atol=1e-7, msg=k)
    assert not torch.equal(fast["embed.weight"], torch.zeros_like(fast["embed.weight"]))


@pytest.mark.parametrize("name", ["fa", "dfa"])
def test_effective_feedback_equals_propagating_through_each_matrix(name):
    model, x, y = tiny(L=4)
    method = get_method(name)(model, 5, torch.Generator().manual_seed(5))
    e = output_error(model(x), y).double()
    B = [b.double() for b in method.B]
    expected = method.propagate(e, B)
    got = method.credits_from(e, method.effective(B))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_effective_feedback_follows_loaded_matrices():
    model, x, y = tiny()
    method = get_method("fa")(model, 5, torch.Generator().manual_seed(1))
    other = get_method("fa")(model, 5, torch.Generator().manual_seed(2))
    probe = make_probe(model, x, y)
    method.credit(probe)  # fills the cache with the old B's
    method.load_state_dict(other.state_dict())
    for a, b in zip(method.credit(probe), other.credit(probe)):
        torch.testing.assert_close(a, b)


def test_null_band_equals_the_per_draw_reference():
    model, x, y = tiny()
    method = get_method("fa")(model, 5, torch.Generator().manual_seed(0))
    settings = DiagnosticSettings(null_draws=12, measure_rho=False)
    rec = measure(model, method, x, y, settings, torch.Generator().manual_seed(9))
    probe = make_probe(model, x, y)
    g = [gr / x.shape[0] for gr in probe.grads]
    gen = torch.Generator().manual_seed(9)
    draws = torch.tensor([[per_sample_cos(a, gl)[0].mean().item() for a, gl in zip(method.propagate(probe.error, method.draw(gen)), g)]
                          for _ in range(12)], dtype=torch.float64)
    assert rec["null_mean"] == pytest.approx(draws.mean(0).tolist(), rel=1e-5, abs=1e-7)
    assert rec["null_std"] == pytest.approx(draws.std(0).tolist(), rel=1e-4, abs=1e-7)


def reference_rho(model, probe, credits, n, directions, eps, generator):
    """The protocol's ρ written plainly: float64 draws, all rows at once."""
    import copy

    m64 = copy.deepcopy(model).double().eval()
    out = []
    with torch.no_grad():
        for layer, (h, a) in enumerate(zip(probe.hs, credits)):
            h64, a64, y = h[:n].double(), a[:n].double(), probe.y[:n]
            base = F.cross_entropy(m64.forward_from(layer, h64), y, reduction="none")
            u = torch.randn((n, directions, h64.shape[1]), generator=generator, dtype=torch.float64)
            u /= u.norm(dim=2, keepdim=True)
            delta = eps * h64.norm(dim=1)[:, None, None] * u
            pred = (a64[:, None, :] * delta).sum(2).flatten()
            true = F.cross_entropy(m64.forward_from(layer, (h64[:, None, :] + delta).flatten(0, 1)),
                                   y.repeat_interleave(directions), reduction="none") - base.repeat_interleave(directions)
            out.append(torch.corrcoef(torch.stack([pred, true]))[0, 1].item())
    return out


def test_chunked_rho_agrees_with_the_plain_computation():
    model, x, y = tiny(n=256)
    probe = make_probe(model, x, y)
    method = get_method("dfa")(model, 5, torch.Generator().manual_seed(0))
    for credits, lo in ((probe.grads, 0.99), (method.credit(probe), None)):
        fast = perturbation_rho(model, probe, credits, 256, 32, 1e-3, torch.Generator().manual_seed(4), chunk_rows=512)
        ref = reference_rho(model, probe, credits, 256, 32, 1e-3, torch.Generator().manual_seed(4))
        # different random directions: the two estimates agree to their sampling error (8192 pairs)
        assert fast == pytest.approx(ref, abs=0.05)
        if lo is not None:
            assert min(fast) > lo


@pytest.mark.parametrize("credit", ["bp", "dfa"])
def test_chunked_rho_does_not_depend_on_the_chunk_size(credit):
    """The chunks draw the same directions in the same order, so ρ is the same number (to
    float64 rounding) whether one sample, six or all 128 go through at a time."""
    model, x, y = tiny(n=128)
    probe = make_probe(model, x, y)
    credits = get_method(credit)(model, 5, torch.Generator().manual_seed(2)).credit(probe)
    rho = {rows: perturbation_rho(model, probe, credits, 128, 16, 1e-3, torch.Generator().manual_seed(1),
                                  chunk_rows=rows) for rows in (16, 100, 4096)}  # 1, 6 and 128 samples a chunk
    assert len(rho[16]) == model.depth + 1 and all(math.isfinite(r) for r in rho[16])
    assert rho[100] == pytest.approx(rho[16], rel=0, abs=1e-9)
    assert rho[4096] == pytest.approx(rho[16], rel=0, abs=1e-9)
    if credit == "bp":
        assert min(rho[16]) > 0.99
    else:  # a random-feedback credit: far from the gradient, so the test is not about 1 ≈ 1
        assert max(rho[16][1:]) < 0.9


@pytest.mark.parametrize("name", ["bp", "fa", "dfa", "frozen"])
def test_the_trainer_steps_a_fused_adamw_over_exactly_the_methods_parameters(name):
    from engine.config import load_config
    from engine.data import load_task
    from engine.plan import RunSpec
    from engine.trainer import RunParts
    from tests.conftest import tiny as tiny_sets

    cfg = load_config(None, tiny_sets(f"methods=[{name}]", "lr=3e-3", "weight_decay=0.05"))
    parts = RunParts(cfg, RunSpec(f"{name}-s42", name, 42), load_task(cfg), torch.device("cpu"))
    opt = parts.optimizer
    from engine.optim import AdamW

    assert type(opt) is AdamW and isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert group["fused"] is True and group["foreach"] in (None, False)
    assert (group["lr"], group["weight_decay"]) == (3e-3, 0.05)
    trainable = list(parts.method.trainable_parameters(parts.model))
    assert [id(p) for p in group["params"]] == [id(p) for p in trainable]
    if name == "frozen":  # the frozen baseline's blocks never reach the optimizer
        blocks = {id(p) for layer in range(1, cfg.L + 1) for p in parts.model.block_parameters(layer)}
        assert blocks and not blocks & {id(p) for p in group["params"]}
    else:
        assert {id(p) for p in group["params"]} == {id(p) for p in parts.model.parameters()}


def test_fused_adamw_matches_the_per_tensor_loop():
    """What the trainer's fused=True buys must not change the numbers."""
    results = []
    for fused in (False, True):
        model, x, y = tiny()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01, fused=fused)
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for p, q in zip(*results):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_chunked_channel_stats_equal_the_float64_copy():
    x = torch.randint(0, 256, (1000, 3 * 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    xs = x.view(x.shape[0], 3, -1).double() / 255.0
    mean, std = channel_stats(x, chunk=333)
    torch.testing.assert_close(mean, xs.mean(dim=(0, 2)), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(std, xs.std(dim=(0, 2)), rtol=1e-12, atol=1e-14)
    assert math.isfinite(std.sum().item())


# ---------------------------------------------------------------- precision = bf16


@pytest.mark.parametrize("name", ["bp", "fa", "dfa", "frozen"])
@pytest.mark.parametrize("penalty", [0.0, 1e-2])
def test_a_bf16_step_follows_the_float32_step(name, penalty):
    """Under bfloat16 autocast every parameter still gets a float32 gradient pointing the
    way float32's does (bfloat16 keeps ~3 significant digits, so direction, not bits)."""
    model, x, y = tiny(n=256, d=64, in_dim=48)
    method = get_method(name)(model, 5, torch.Generator().manual_seed(3))
    ref = grads_after(lambda: method.step(model, x, y, penalty), model)

    def bf16_step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = method.step(model, x, y, penalty)
        assert loss.dtype == torch.float32

    low = grads_after(bf16_step, model)
    assert low.keys() == ref.keys()
    for k in ref:
        assert low[k].dtype == torch.float32, k
        if ref[k].norm() > 0:
            cos = F.cosine_similarity(low[k].flatten(), ref[k].flatten(), dim=0).item()
            assert cos > 0.99, (k, cos)
            assert low[k].norm() / ref[k].norm() == pytest.approx(1.0, abs=0.05), k


def test_a_bf16_audit_trains_in_bf16_and_measures_in_float32(tmp_path, monkeypatch):
    from engine import Audit, AuditRunner, load_config, trainer
    from engine.records import stable
    from tests.conftest import tiny as tiny_sets

    sets = tiny_sets("d=32", "synthetic.n_train=2048", "methods=[dfa,frozen]")
    seen = {"steps": [], "measure": []}
    step = get_method("dfa").step
    record = trainer.measured_record

    def spy_step(self, model, x, y, penalty):
        seen["steps"].append(torch.is_autocast_enabled("cpu"))
        return step(self, model, x, y, penalty)

    def spy_record(*args, **kwargs):
        seen["measure"].append(torch.is_autocast_enabled("cpu"))
        return record(*args, **kwargs)

    monkeypatch.setattr(get_method("dfa"), "step", spy_step)
    monkeypatch.setattr(trainer, "measured_record", spy_record)
    audits = {}
    for precision in ("fp32", "bf16"):
        audit = Audit.create(load_config(None, sets + [f"precision={precision}"]), tmp_path / precision)
        runner = AuditRunner(audit)
        runner.submit_unfinished()
        statuses = runner.run()
        assert statuses == {"frozen-s42": "finished", "dfa-s42": "finished"}, audit.log("dfa-s42").end
        audits[precision] = audit
    assert audits["bf16"].log("dfa-s42").header.config["precision"] == "bf16"
    steps = len(seen["steps"]) // 2
    assert seen["steps"][:steps] == [False] * steps and seen["steps"][steps:] == [True] * steps
    assert seen["measure"] == [False] * len(seen["measure"])  # every measurement in float32
    a, b = audits["fp32"].log("dfa-s42").epochs[-1], audits["bf16"].log("dfa-s42").epochs[-1]
    assert stable([a]) != stable([b]) and a.h_norm != b.h_norm  # it really trained differently...
    assert b.test_acc == pytest.approx(a.test_acc, abs=0.03)  # ...and learned about as much
    assert b.growth == pytest.approx(a.growth, rel=0.15)


def test_float64_gelu_is_the_exact_gelu():
    """ρ's float64 forward writes GELU out with erfc (torch's float64 GELU kernel is slow):
    checked against libm's erfc element by element, and against torch's GELU where that
    one does not flush the far negative tail to zero."""
    import math

    from engine.model import gelu

    x = torch.cat([torch.linspace(-40, 40, 10001, dtype=torch.float64),
                   torch.randn(10000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1e4])
    ref = torch.tensor([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.tolist()], dtype=torch.float64)
    normal = ref.abs() > 1e-290
    assert ((gelu(x) - ref).abs() / ref.abs())[normal].max() < 1e-12
    assert (gelu(x) - ref)[~normal].abs().max() < 1e-290
    core = x.abs() < 6
    torch.testing.assert_close(gelu(x)[core], F.gelu(x)[core], rtol=1e-14, atol=1e-15)
    xf = x.float()
    assert torch.equal(gelu(xf), F.gelu(xf))  # other dtypes: torch's own
    model, x_in, _ = tiny()
    model64 = model.double()
    with torch.no_grad():
        h = model64.embed(x_in.double())
        for b in model64.blocks:
            h = h + b.fc2(F.gelu(b.fc1(b.ln(h))))
        ref = model64.head(model64.ln_out(h))
        torch.testing.assert_close(model64(x_in.double()), ref, rtol=1e-13, atol=1e-13)
