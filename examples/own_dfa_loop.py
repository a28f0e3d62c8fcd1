"""Audit a hand-written DFA loop, live: your model, your training loop, the engine's measurements.

The network and the DFA update below are written here, not taken from the engine: the
tracker only measures them. Each epoch it measures both runs on the fixed diagnostic set
(the digits test split) and appends the same records `faeval-tui run` writes, so

    python examples/own_dfa_loop.py --epochs 40 --sleep 1 &
    faeval-tui watch runs/own-dfa-<time>          # charts, alerts, inspector, while it trains
    faeval-tui export runs/own-dfa-<time> --format markdown

The frozen-blocks baseline trains in the same loop: same network and init, blocks frozen
(``freeze_blocks``), embedding and readout trained by backprop. (d) fires when DFA's
accuracy is no better than that.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from engine.tracker import Tracker, freeze_blocks


class DigitsNet(nn.Module):
    """h_0 = E x; h_l = h_{l-1} + W2 tanh(W1 LN(h_{l-1})); logits = H LN(h_L).

    The four methods below are all the tracker needs (engine.models.protocol.Auditable):
    the hidden states h_0..h_L, their shapes, and the network run on from any h_l."""

    def __init__(self, in_dim: int = 64, d: int = 64, depth: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.depth = depth
        self.state_shapes = [(d,)] * (depth + 1)
        self.embed = nn.Linear(in_dim, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def hidden_states(self, x, detach_inputs=False):
        hs, fs = [self.embed(x)], []
        for block in self.blocks:
            h = hs[-1].detach() if detach_inputs else hs[-1]
            f = block(h)
            hs.append(hs[-1] + f)
            fs.append(f)
        return hs, fs

    def forward_from(self, layer, h):
        for block in self.blocks[layer:]:
            h = h + block(h)
        return self.head(self.norm(h))

    def forward(self, x):
        return self.forward_from(0, self.embed(x))

    def block_parameters(self, layer):
        return list((self.embed if layer == 0 else self.blocks[layer - 1]).parameters())

    def readout_parameters(self):
        return [*self.norm.parameters(), *self.head.parameters()]


def dfa_step(model: DigitsNet, B: list[torch.Tensor], x, y) -> torch.Tensor:
    """One hand-written DFA update: each block gets e·B_l (e = softmax − onehot) instead of the
    backpropagated gradient; the readout trains on the true loss with h_L detached."""
    hs, fs = model.hidden_states(x, detach_inputs=True)
    logits = model.forward_from(model.depth, hs[-1].detach())
    loss = F.cross_entropy(logits, y)
    e = (logits.softmax(-1) - F.one_hot(y, logits.shape[-1])).detach()
    credits = [e @ b / x.shape[0] for b in B]  # the batch mean of ⟨f_l, a_l⟩ has gradient a_l / n
    torch.autograd.backward([loss, hs[0], *fs], [None, *credits])
    return loss.detach()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
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

    dfa_net = DigitsNet()
    frozen_net = DigitsNet()
    frozen_net.load_state_dict(dfa_net.state_dict())  # same init: only the blocks' training differs
    trained = freeze_blocks(frozen_net)
    gen = torch.Generator().manual_seed(args.seed)
    B = [torch.randn(10, 64, generator=gen) / 10 ** 0.5 for _ in range(dfa_net.depth + 1)]  # fixed, random

    def dfa_credit(probe):  # what DFA assigns to each h_l on the diagnostic set: a_l = e·B_l
        return [probe.error @ b for b in B]

    opt_dfa = torch.optim.Adam(dfa_net.parameters(), lr=2e-3)
    opt_frozen = torch.optim.Adam(trained, lr=2e-3)
    with Tracker(x_te, y_te, epochs=args.epochs, runs_dir=args.out, name="own-dfa", dataset="sklearn digits") as tr:
        base = tr.run("frozen", seed=args.seed)
        run = tr.run("own-dfa", seed=args.seed, baseline=base, credit=dfa_credit)
        print(tr.path, flush=True)
        for epoch in range(1, args.epochs + 1):
            perm = torch.randperm(x_tr.shape[0])
            losses = {"dfa": 0.0, "frozen": 0.0}
            for i in range(0, x_tr.shape[0], 64):
                xb, yb = x_tr[perm[i:i + 64]], y_tr[perm[i:i + 64]]
                opt_frozen.zero_grad()
                loss = F.cross_entropy(frozen_net(xb), yb)
                loss.backward()
                opt_frozen.step()
                losses["frozen"] += loss.item()
                opt_dfa.zero_grad()
                losses["dfa"] += dfa_step(dfa_net, B, xb, yb).item()
                opt_dfa.step()
            steps = -(-x_tr.shape[0] // 64)
            b = base.log(frozen_net, test_acc=accuracy(frozen_net, x_te, y_te), train_loss=losses["frozen"] / steps)
            r = run.log(dfa_net, test_acc=accuracy(dfa_net, x_te, y_te), train_loss=losses["dfa"] / steps)
            print(f"epoch {epoch:3d}  frozen {b.test_acc:.3f}  own-dfa {r.test_acc:.3f}  deep cos {r.deep_cos:.3f}"
                  f"  fired {','.join(r.fired) or '-'}", flush=True)
            time.sleep(args.sleep)


if __name__ == "__main__":
    main()
