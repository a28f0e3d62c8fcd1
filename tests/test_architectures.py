"""Every method and diagnostic on every network: fa and dfa credits against a by-hand
computation from the saved B's, the penalty's exact term in the block gradients, the probe
split into chunks, and an audit of several networks (run ids, baselines, table rows,
identical records for the same seed)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.config import ModelSpec
from engine.diagnostics import make_probe
from engine.methods import get_method
from engine.methods.base import block_penalty, output_error
from engine.models import build_model
from engine.plan import parse_run_id, plan_runs
from engine.records import stable
from engine.tables import audit_table, layer_table
from tests.conftest import train

CLASSES, N = 4, 5
NETS = {
    "resmlp": (ModelSpec(model="resmlp", d=6, L=3, terminal_ln=True), 12, None),
    "vit_mini": (ModelSpec(model="vit_mini", d=8, L=2, heads=2, terminal_ln=True), 64, (1, 8, 8)),
    "cnn": (ModelSpec(model="cnn", d=8, L=4, terminal_ln=False), 512, (2, 16, 16)),  # h_3 is 2×2: not constant
    "mlp": (ModelSpec(model="mlp", d=6, L=3, terminal_ln=False), 12, None),
}


def net(name: str, seed: int = 0, dtype=torch.float64):
    spec, in_dim, shape = NETS[name]
    model = build_model(spec, in_dim, CLASSES, shape, torch.Generator().manual_seed(seed)).to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(N, in_dim, generator=gen, dtype=dtype)
    y = torch.randint(CLASSES, (N,), generator=gen)
    return model, x, y


def fa_by_hand(e: torch.Tensor, B: list[torch.Tensor], shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """FA written out per shape kind, independently of engine.methods.feedback: d×d (or C_l ×
    C_{l−1}) feature maps at each position, pixels copied back over what was pooled."""
    L = len(shapes) - 1
    a = [None] * (L + 1)
    a[L] = (e @ B[0]).view(e.shape[0], *shapes[L])
    for l in range(L, 0, -1):
        here, below, b = shapes[l], shapes[l - 1], B[l]
        if len(here) == 1 and len(below) == 1:  # vector → vector
            a[l - 1] = a[l] @ b
        elif len(here) == 1:  # the fc block's vector → maps: one full random matrix
            a[l - 1] = (a[l] @ b).view(e.shape[0], *below)
        elif len(here) == 2:  # tokens → tokens: the same d×d at every token
            a[l - 1] = torch.einsum("ntd,de->nte", a[l], b)
        else:  # maps → maps: mix channels, then repeat each pixel over what it pooled
            mixed = torch.einsum("nchw,ce->nehw", a[l], b)
            rh, rw = below[1] // mixed.shape[2], below[2] // mixed.shape[3]
            a[l - 1] = mixed.repeat_interleave(rh, dim=2).repeat_interleave(rw, dim=3)
    return a


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("method", ["fa", "dfa"])
def test_fa_and_dfa_credits_equal_a_by_hand_computation_from_the_saved_feedback(name, method):
    model, x, y = net(name)
    meth = get_method(method)(model, CLASSES, torch.Generator().manual_seed(7))
    B = [b.double() for b in meth.state_dict()["B"]]
    probe = make_probe(model, x, y)
    e = output_error(probe.logits, y)
    shapes = model.state_shapes
    want = fa_by_hand(e, B, shapes) if method == "fa" else [(e @ b).view(N, *s) for b, s in zip(B, shapes)]
    got = meth.credit(probe)
    if name == "cnn":  # the credits of the maps vary over the pixels (the chain keeps spatial structure)
        assert all(a.flatten(2).std(2).max() > 0 for a in got[:model.depth])
    assert [tuple(a.shape[1:]) for a in got] == [tuple(s) for s in shapes]
    for a, w in zip(got, want):
        torch.testing.assert_close(a.double(), w, rtol=1e-5, atol=1e-7)  # P is kept in float32


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("method", ["bp", "fa", "dfa"])
def test_a_penalty_changes_the_block_gradients_by_exactly_its_term(name, method):
    lam = 0.05

    def grads(penalty: float) -> list[torch.Tensor]:
        model, x, y = net(name)
        model.train()
        meth = get_method(method)(model, CLASSES, torch.Generator().manual_seed(7))
        meth.step(model, x, y, penalty)
        return [p.grad.clone() for l in range(1, model.depth + 1) for p in model.block_parameters(l)
                if p.grad is not None]

    # the term alone: λ·Σ_l mean_n ‖f_l‖², through the whole graph for bp, each block on its own input otherwise
    model, x, y = net(name)
    model.train()
    _, fs = model.hidden_states(x, detach_inputs=method != "bp")
    block = [p for l in range(1, model.depth + 1) for p in model.block_parameters(l)]
    term = torch.autograd.grad(lam * block_penalty(fs), block, allow_unused=True)
    term = [t for t in term if t is not None]
    with_pen, without = grads(lam), grads(0.0)
    assert len(with_pen) == len(without) == len(term) > 0
    for a, b, t in zip(with_pen, without, term):
        torch.testing.assert_close(a - b, t, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("name", ["vit_mini", "cnn"])
def test_the_probe_in_chunks_equals_the_probe_in_one_piece(name, monkeypatch):
    import engine.diagnostics as diagnostics

    model, x, y = net(name)
    whole = make_probe(model, x, y)
    monkeypatch.setattr(diagnostics, "PROBE_FLOATS", 1)  # one sample per chunk
    assert diagnostics.probe_chunk(model, N) == 1
    parts = make_probe(model, x, y)
    torch.testing.assert_close(parts.logits, whole.logits, rtol=1e-12, atol=1e-12)
    for a, b in zip(parts.grads + parts.hs, whole.grads + whole.hs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_sizing_counts_the_probe_chunks_the_diagnostics_use():
    import engine.diagnostics as diagnostics
    import engine.sizing as sizing

    assert sizing.PROBE_FLOATS == diagnostics.PROBE_FLOATS


MULTI = ["epochs=1", "methods=[dfa,frozen]", "synthetic.in_dim=16", "synthetic.n_train=256",
         "models=[{name: res, model: resmlp}, {name: vit, model: vit_mini, d: 8, heads: 2}, "
         "{name: cnn, model: cnn, d: 8}, {name: mlp, model: mlp}]"]


def test_an_audit_of_several_networks_plans_names_and_compares_each_against_its_own_baseline(new_audit):
    audit = new_audit(*MULTI)
    specs = plan_runs(audit.cfg)
    assert [s.run_id for s in specs] == [f"{m}.{meth}-s42" for m in ("res", "vit", "cnn", "mlp")
                                         for meth in ("frozen", "dfa")]
    assert parse_run_id("cnn.dfa-lam0.01-s42").model == "cnn"
    assert parse_run_id("cnn.dfa-lam0.01-s42").parent == "cnn.dfa-s42"
    assert audit.baseline_run(specs[3]) == "vit.frozen-s42"
    assert set(train(audit).values()) == {"finished"}
    for m in ("res", "vit", "cnn", "mlp"):
        dfa, frozen = audit.log(f"{m}.dfa-s42"), audit.log(f"{m}.frozen-s42")
        assert dfa.header.model == m and dfa.final.baseline_acc == frozen.final.test_acc
    t = audit_table(audit)
    assert t.headers[:2] == ["model", "method"]
    assert [(r[0], r[1]) for r in t.rows] == [(m, meth) for m in ("res", "vit", "cnn", "mlp")
                                              for meth in ("dfa", "frozen")]
    layers = layer_table(audit)
    assert {r[0] for r in layers.rows} == {"res", "vit", "cnn", "mlp"}
    # the same seed trains the same records, network by network
    again = new_audit(*MULTI)
    train(again)
    for s in specs:
        assert stable(again.log(s.run_id).epochs) == stable(audit.log(s.run_id).epochs), s.run_id


def test_bp_credit_is_the_reference_and_rho_is_one_on_every_network():
    from engine.diagnostics import DiagnosticSettings, measure

    for name in NETS:
        model, x, y = net(name, dtype=torch.float32)
        x = torch.cat([x] * 4)  # 20 samples: 4 stability batches of 5
        y = torch.cat([y] * 4)
        meth = get_method("bp")(model, CLASSES, torch.Generator().manual_seed(0))
        rec = measure(model, meth, x, y, DiagnosticSettings(stability_batches=4, rho_samples=20, rho_directions=4,
                                                            null_draws=2), torch.Generator().manual_seed(0))
        assert rec["cos"] == pytest.approx([1.0] * (model.depth + 1), abs=1e-6), name
        assert min(rec["rho"]) > 0.99, (name, rec["rho"])


def test_the_cross_entropy_of_the_probe_is_the_models_own():
    model, x, y = net("cnn")
    probe = make_probe(model, x, y)
    model.eval()
    torch.testing.assert_close(probe.logits, model(x))
    assert F.cross_entropy(probe.logits, y).item() > 0


@pytest.mark.parametrize("model", ["vit_mini", "cnn"])
def test_the_image_models_train_and_measure_on_cifar_archives(tmp_path, model, monkeypatch):
    """CIFAR-10 in its real archive format (a few images per batch), as 3×32×32 images."""
    import dataclasses

    import engine.cifar
    from engine.config import load_config
    from engine.data import load_task
    from tests.cifar_fixtures import make_cifar_archive

    _, md5, _ = make_cifar_archive(tmp_path, "cifar10", n_per_batch=16)
    specs = {**engine.cifar.CIFAR_SPECS, "cifar10": dataclasses.replace(engine.cifar.CIFAR_SPECS["cifar10"], md5=md5)}
    monkeypatch.setattr(engine.cifar, "CIFAR_SPECS", specs)  # the small archive's own checksum
    cfg = load_config(None, ["dataset=cifar10", f"data_dir={tmp_path}", "download=false", f"model={model}",
                             "d=8", "heads=2", "diagnostics.n_samples=16", "diagnostics.rho_samples=16"])
    task = load_task(cfg)
    assert task.image_shape == (3, 32, 32)
    net = cfg.variant(None)
    m = build_model(net, task.in_dim, task.n_classes, task.image_shape, torch.Generator().manual_seed(0))
    x, y = task.diagnostic_set(16, 8)
    meth = get_method("dfa")(m, task.n_classes, torch.Generator().manual_seed(1))
    loss = meth.step(m, task.prepare(task.x_train[:8]), task.y_train[:8], 0.0)
    assert torch.isfinite(loss)
    if model == "vit_mini":
        assert m.state_shapes[0] == (65, 8)  # patches of 4: 64 + the cls token
    from engine.diagnostics import DiagnosticSettings, measure

    rec = measure(m, meth, x, y, DiagnosticSettings(stability_batches=8, rho_samples=16, rho_directions=2,
                                                    null_draws=2), torch.Generator().manual_seed(0))
    assert len(rec["cos"]) == len(rec["rho"]) == m.depth + 1 and all(abs(c) <= 1 for c in rec["cos"])
