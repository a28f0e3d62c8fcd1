"""Audit a model that knows nothing of the engine, through a HiddenStateAdapter.

``Net`` is an ordinary PyTorch module with a ``forward`` and nothing else. The adapter names
the parts that make its hidden states (the stem, each residual block, the readout), and the
tracker measures it through them. Three runs train in one loop:

    bp      your usual backprop loop on ``net`` itself
    fa      the engine's feedback alignment as the update (``run.rule(model).step``), so the
            tracker measures the very B's that train it
    frozen  the (d) baseline: blocks frozen with ``freeze_blocks``, stem and readout by backprop

    python examples/adapter_loop.py --epochs 30 --sleep 1 &
    faeval-tui watch runs/adapter-<time>
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from engine.api import HiddenStateAdapter
from engine.tracker import Tracker, freeze_blocks


class Net(nn.Module):
    """A residual MLP as anyone would write it: no hidden-state interface of its own."""

    def __init__(self, d: int = 48, depth: int = 3) -> None:
        super().__init__()
        self.stem = nn.Linear(64, d)
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(),
                                                  nn.Linear(2 * d, d)) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 10)

    def forward(self, x):
        h = self.stem(x)
        for layer in self.layers:
            h = h + layer(h)
        return self.fc(self.norm(h))


def adapt(net: Net) -> HiddenStateAdapter:
    """h_0 = stem(x), h_l = h_{l-1} + layers[l-1](h_{l-1}), logits = fc(norm(h_L))."""
    return HiddenStateAdapter(net, embed="stem", blocks=[f"layers.{i}" for i in range(len(net.layers))],
                              head=lambda m, h: m.fc(m.norm(h)), residual=True)


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs", help="runs directory (the audit is created inside it)")
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds to wait after each epoch (to watch it)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(digits.data / 16.0, digits.target, test_size=0.2,
                                              stratify=digits.target, random_state=0)
    x_tr, x_te = torch.tensor(x_tr, dtype=torch.float32), torch.tensor(x_te, dtype=torch.float32)
    y_tr, y_te = torch.tensor(y_tr), torch.tensor(y_te)

    init = Net().state_dict()
    models = {}
    for name in ("frozen", "bp", "fa"):
        net = Net()
        net.load_state_dict(init)  # one init for all three: only the update rule differs
        models[name] = adapt(net)
    trained = {"frozen": freeze_blocks(models["frozen"]), "bp": list(models["bp"].parameters()),
               "fa": list(models["fa"].parameters())}
    opts = {name: torch.optim.Adam(params, lr=2e-3) for name, params in trained.items()}

    with Tracker(x_te, y_te, epochs=args.epochs, runs_dir=args.out, name="adapter", dataset="sklearn digits") as tr:
        runs = {"frozen": tr.frozen(seed=args.seed)}
        runs["bp"] = tr.run("bp", seed=args.seed, baseline=runs["frozen"])
        runs["fa"] = tr.run("fa", seed=args.seed, baseline=runs["frozen"])
        fa_rule = runs["fa"].rule(models["fa"])  # the engine's FA, its B's drawn from the run's seed
        print(tr.path, flush=True)
        for epoch in range(1, args.epochs + 1):
            perm = torch.randperm(x_tr.shape[0])
            for i in range(0, x_tr.shape[0], 64):
                xb, yb = x_tr[perm[i:i + 64]], y_tr[perm[i:i + 64]]
                for name, model in models.items():
                    opts[name].zero_grad()
                    if name == "fa":
                        fa_rule.step(model, xb, yb, 0.0)
                    else:
                        F.cross_entropy(model.module(xb), yb).backward()  # the plain module, as you train it
                    opts[name].step()
            line = [f"epoch {epoch:3d}"]
            for name in ("frozen", "bp", "fa"):  # the baseline first: (d) reads its accuracy of this epoch
                rec = runs[name].log(models[name], test_acc=accuracy(models[name], x_te, y_te))
                line.append(f"{name} {rec.test_acc:.3f} (cos {rec.deep_cos:.2f})")
            print("  ".join(line), flush=True)
            time.sleep(args.sleep)


if __name__ == "__main__":
    main()
