"""engine.optim.AdamW is torch.optim.AdamW stepping without importing torch._dynamo, and
the memory helpers of engine.device (what the two-worker audit's RSS budget relies on)."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from engine.device import drop_shared_pages, release_freed_memory
from engine.model import ResMLP
from engine.optim import AdamW


def _train(opt_cls, steps: int = 6, state=None, fused: bool = True):
    model = ResMLP(12, 5, 16, 3, generator=torch.Generator().manual_seed(0))
    opt = opt_cls(model.parameters(), lr=3e-3, weight_decay=0.05, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.9 ** k)
    if state is not None:
        state = copy.deepcopy(state)  # load_state_dict keeps the state's tensors: never share them between runs
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        x, y = torch.randn(32, 12, generator=gen), torch.randint(0, 5, (32,), generator=gen)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    return model, opt, sched


def _same_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert a["state"][k].keys() == b["state"][k].keys()
        for name in a["state"][k]:
            assert torch.equal(a["state"][k][name], b["state"][k][name]), (k, name)


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_is_bit_identical_to_torchs(fused):
    ours, theirs = _train(AdamW, fused=fused), _train(torch.optim.AdamW, fused=fused)
    for p, q in zip(ours[0].parameters(), theirs[0].parameters()):
        assert torch.equal(p, q)
    _same_state(ours[1].state_dict(), theirs[1].state_dict())
    assert ours[2].get_last_lr() == theirs[2].get_last_lr()


def test_checkpoints_load_across_the_two_optimizers():
    """A checkpoint written with torch.optim.AdamW (every audit before engine.optim) resumes
    under ours to the same numbers, and the other way round."""
    for first, second in ((torch.optim.AdamW, AdamW), (AdamW, torch.optim.AdamW)):
        model, opt, sched = _train(first, steps=3)
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
        resumed = _train(second, steps=3, state=state)
        straight = _train(first, steps=3, state=state)
        for p, q in zip(resumed[0].parameters(), straight[0].parameters()):
            assert torch.equal(p, q)
        _same_state(resumed[1].state_dict(), straight[1].state_dict())


def test_differentiable_is_refused_not_silently_detached():
    model = ResMLP(12, 5, 16, 2, generator=torch.Generator().manual_seed(0))
    opt = AdamW(model.parameters(), lr=1e-3, differentiable=True)
    F.cross_entropy(model(torch.randn(4, 12)), torch.zeros(4, dtype=torch.long)).backward()
    with pytest.raises(ValueError, match="differentiable"):
        opt.step()


def test_a_training_process_never_imports_torch_dynamo():
    """torch.optim's own AdamW imports torch._dynamo on first use: +35 to +68 MiB a process."""
    code = ("import sys, threading, torch\n"
            "from engine.config import load_config\n"
            "from engine.data import load_task\n"
            "from engine.plan import RunSpec\n"
            "from engine.trainer import RunParts, train_epoch, epoch_record\n"
            "from tests.conftest import tiny\n"
            "cfg = load_config(None, tiny('methods=[fa]'))\n"
            "task = load_task(cfg)\n"
            "parts = RunParts(cfg, RunSpec('fa-s42', 'fa', 42), task, torch.device('cpu'))\n"
            "train_epoch(parts, task, cfg.batch_size, 0.0, threading.Event())\n"
            "epoch_record(parts, cfg, task, 1.0, 1, 42)\n"
            "parts.optimizer.load_state_dict(parts.optimizer.state_dict())\n"
            "bad = [m for m in ('torch._dynamo',) if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssShmem and madvise are Linux's")
def test_dropping_shared_pages_unmaps_them_and_keeps_the_data():
    t = torch.arange(4 << 20, dtype=torch.int32)  # 16 MiB
    expected = t.clone()
    t.share_memory_()
    t.add_(0)  # touch every page of the shared copy
    before = _status_kb("RssShmem:")
    drop_shared_pages(t)
    after = _status_kb("RssShmem:")
    assert before - after >= 15 * 1024  # KiB: nearly all 16 MiB left this process's RSS
    assert torch.equal(t, expected)  # and read back from the shared object, unchanged


def test_dropping_pages_leaves_private_tensors_alone():
    t = torch.arange(1 << 20, dtype=torch.int32)
    expected = t.clone()
    drop_shared_pages(t)  # not shared: must not be unmapped (its pages would read back as zeros)
    assert torch.equal(t, expected)
    release_freed_memory()  # and trimming the heap is always safe
    assert torch.equal(t, expected)
