"""The data sources: scikit-learn's digits, the user's npz file (validated, pinned by its
SHA-256), image shapes, the diagnostic set of a small test split, dimensions without
loading, and a TaskData handed in from Python (pinned by its fingerprint)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import engine.data
import engine.userdata
from engine.audit import Audit
from engine.checkpoint import UNCOMPARED, config_changes
from engine.cifar import _safe_extractall
from engine.config import load_config
from engine.data import (
    DIGITS_SPLIT_SEED,
    TaskData,
    cifar_task,
    diagnostic_n,
    diagnostic_n_for,
    digits_task,
    load_task,
    npz_task,
    synthetic_task,
    task_dims,
    task_fingerprint,
)
from engine.errors import DataError
from engine.events import EpochDone
from engine.runstore import RECORDS, read_run
from engine.scheduler import AuditRunner
from faeval_tui.cli import app
from tests.cifar_fixtures import make_cifar_archive
from tests.conftest import tiny

cli = CliRunner()


def invoke(*args: str):
    return cli.invoke(app, list(args), prog_name="faeval-tui")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` but the lock (which holds the pid of whoever took it last)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "audit.lock"}


def good_arrays(seed: int = 0, n_train: int = 256, n_test: int = 64, dim: int = 16, classes: int = 3) -> dict:
    """A learnable little task: the label is the argmax of a fixed projection of x."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(dim, classes))
    x_train, x_test = rng.normal(size=(n_train, dim)), rng.normal(size=(n_test, dim))
    return {"x_train": x_train.astype(np.float32), "y_train": (x_train @ w).argmax(1),
            "x_test": x_test.astype(np.float32), "y_test": (x_test @ w).argmax(1)}


def save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def npz_sets(path: Path, *sets: str) -> list[str]:
    out = []
    for s in tiny("epochs=1", "methods=[bp]", "dataset=npz", f"data_path='{path}'", *sets):
        out += ["--set", s]
    return out


# --- digits -------------------------------------------------------------------------------

def test_digits_split_is_1437_train_360_test_stratified_and_the_same_every_time() -> None:
    from sklearn.datasets import load_digits

    a, b = digits_task(), digits_task()
    assert (a.x_train.shape, a.x_test.shape) == ((1437, 64), (360, 64))
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64 and a.n_classes == 10
    for t in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, t), getattr(b, t)), t
    _, y = load_digits(return_X_y=True)
    total = np.bincount(y, minlength=10)
    test = torch.bincount(a.y_test, minlength=10).numpy()
    train = torch.bincount(a.y_train, minlength=10).numpy()
    assert (train + test == total).all()
    assert (abs(test - total * 360 / 1797) <= 1).all(), test
    assert DIGITS_SPLIT_SEED == 0


def test_digits_pixels_are_standardised_with_the_train_splits_mean_and_std() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    raw_train, raw_test, _, _ = train_test_split(x, y, test_size=360, stratify=y, random_state=DIGITS_SPLIT_SEED)
    mean, std = raw_train.mean(), raw_train.std()
    assert (round(mean, 3), round(std, 3)) == (4.886, 6.018)
    task = digits_task()
    assert abs(task.x_train.double().mean().item()) < 1e-6
    assert abs(task.x_train.double().std(unbiased=False).item() - 1) < 1e-6
    # the test split is scaled with the train split's numbers, not its own
    assert np.allclose(task.x_test.numpy() * std + mean, raw_test, atol=1e-4)
    assert np.allclose(task.x_train.numpy() * std + mean, raw_train, atol=1e-4)


# --- image shapes -------------------------------------------------------------------------

def test_each_source_says_how_its_flat_rows_lay_out_as_an_image(tmp_path: Path) -> None:
    cfg = load_config(None, tiny("synthetic.in_dim=16"))
    assert synthetic_task(cfg.synthetic.model_copy(update={"in_dim": 16})).image_shape == (1, 4, 4)
    assert synthetic_task(cfg.synthetic.model_copy(update={"in_dim": 64})).image_shape == (1, 8, 8)
    assert synthetic_task(cfg.synthetic.model_copy(update={"in_dim": 32})).image_shape is None
    assert digits_task().image_shape == (1, 8, 8)

    flat = good_arrays()
    assert npz_task(save(tmp_path / "flat.npz", **flat)).image_shape is None
    given = npz_task(save(tmp_path / "given.npz", **flat, image_shape=np.array([1, 4, 4])))
    assert given.image_shape == (1, 4, 4) and given.x_train.shape == (256, 16)
    images = {**flat, "x_train": flat["x_train"].reshape(256, 1, 4, 4), "x_test": flat["x_test"].reshape(64, 4, 4)}
    loaded = npz_task(save(tmp_path / "images.npz", **images))
    assert loaded.image_shape == (1, 4, 4)
    assert torch.equal(loaded.x_train, torch.from_numpy(flat["x_train"]))  # flattened row-major, as given
    assert npz_task(save(tmp_path / "chw.npz", **{**flat, "x_train": flat["x_train"].reshape(256, 4, 2, 2),
                                                   "x_test": flat["x_test"].reshape(64, 4, 2, 2)})).image_shape \
        == (4, 2, 2)

    _, _, exp = make_cifar_archive(tmp_path / "src", "cifar10", n_per_batch=2)
    with tarfile.open(tmp_path / "src" / "cifar-10-python.tar.gz") as tar:
        _safe_extractall(tar, tmp_path / "cifar")
    cifar = cifar_task("cifar10", str(tmp_path / "cifar"), download=False)
    assert cifar.image_shape == (3, 32, 32) and cifar.x_train.shape == (10, 3072)
    # CHW: the first 1,024 values of a row are the first channel's plane, as the normalisation reads them
    first = torch.from_numpy(exp["x_train"][:, :1024]).double()
    assert torch.allclose(cifar.prepare(cifar.x_train)[:, :1024].double(),
                          (first / 255 - first.mean() / 255) / (first.std() / 255), atol=1e-4)


# --- the diagnostic set -------------------------------------------------------------------

def test_the_diagnostic_set_is_n_samples_or_the_whole_small_test_split_in_whole_stability_batches() -> None:
    assert diagnostic_n(1024, 8, 10_000) == 1024
    assert diagnostic_n(1024, 8, 1024) == 1024
    assert diagnostic_n(1024, 8, 360) == 360
    assert diagnostic_n(1024, 8, 365) == 360
    assert diagnostic_n(1024, 16, 360) == 352
    x, y = digits_task().diagnostic_set(1024)
    assert x.shape == (360, 64) and y.shape == (360,)
    assert diagnostic_n_for(load_config(None, ["dataset=digits"])) == 360
    assert diagnostic_n_for(load_config(None, tiny())) == 1024
    syn = synthetic_task(load_config(None, tiny()).synthetic)
    assert syn.diagnostic_set(1024)[0].shape[0] == 1024


def test_a_test_split_too_small_for_the_stability_batches_is_refused_before_anything_is_written(tmp_path):
    path = save(tmp_path / "small.npz", **good_arrays(n_test=12))
    runs = tmp_path / "runs"
    res = invoke("run", *npz_sets(path), "--runs-dir", str(runs))
    assert res.exit_code == 2, res.output
    assert "test split has 12 samples: the diagnostic set would have 8" in res.stderr
    assert "lower diagnostics.stability_batches" in res.stderr
    assert not runs.exists() or not any(runs.iterdir())


# --- task_dims, without loading -----------------------------------------------------------

def test_task_dims_gives_every_sources_sizes_without_loading_it(tmp_path: Path, monkeypatch) -> None:
    def refuse(*_a, **_k):
        raise AssertionError("task_dims loaded the data")

    for name in ("synthetic_task", "digits_task", "npz_task", "cifar_task", "load_task"):
        monkeypatch.setattr(engine.data, name, refuse)
    monkeypatch.setattr(engine.userdata, "load_npz", refuse)
    monkeypatch.setattr("engine.cifar.load_cifar", refuse)

    def dims(*sets: str):
        return task_dims(load_config(None, list(sets)))

    assert dims("dataset=synthetic", "synthetic.in_dim=64", "synthetic.classes=7", "synthetic.n_train=1000",
                "synthetic.n_test=2048") == (64, 7, 1000, 2048)
    assert dims("dataset=digits") == (64, 10, 1437, 360)
    assert dims("dataset=cifar10", "download=false") == (3072, 10, 50_000, 10_000)
    assert dims("dataset=cifar100", "download=false") == (3072, 100, 50_000, 10_000)
    arrays = good_arrays(n_train=300, n_test=40, dim=12, classes=4)
    plain = save(tmp_path / "a.npz", **arrays)
    assert dims("dataset=npz", f"data_path={plain}") == (12, int(max(arrays["y_train"].max(),
                                                                   arrays["y_test"].max())) + 1, 300, 40)
    images = save(tmp_path / "b.npz", **{**arrays, "x_train": arrays["x_train"].reshape(300, 3, 2, 2),
                                         "x_test": arrays["x_test"].reshape(40, 3, 2, 2)}, n_classes=np.array(9))
    assert dims("dataset=npz", f"data_path={images}") == (12, 9, 300, 40)
    compressed = tmp_path / "c.npz"
    np.savez_compressed(compressed, **arrays, n_classes=np.array(5))
    assert dims("dataset=npz", f"data_path={compressed}") == (12, 5, 300, 40)
    (tmp_path / "junk.npz").write_text("not a zip")
    assert dims("dataset=npz", f"data_path={tmp_path / 'junk.npz'}") is None
    assert dims("dataset=npz", f"data_path={tmp_path / 'missing.npz'}") is None


# --- bad npz files, through the CLI -------------------------------------------------------

class _Payload:
    """Unpickling this would create the marker file: proof that nothing was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _bad_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    g = good_arrays()
    cases: dict[str, tuple[Path, str]] = {}

    def case(name: str, message: str, **arrays) -> None:
        cases[name] = (save(tmp / f"{name}.npz", **arrays), message)

    cases["missing"] = (tmp / "nowhere.npz", "nowhere.npz does not exist")
    (tmp / "text.npz").write_text("x_train,y_train\n1,2\n")
    cases["not_npz"] = (tmp / "text.npz", "text.npz: not an .npz file (not a zip archive of .npy arrays)")
    np.save(tmp / "single.npy", g["x_train"])
    cases["npy"] = (tmp / "single.npy", "single.npy: a single .npy array, not an .npz archive")
    case("missing_arrays", "missing_arrays.npz: no arrays x_test, y_test in it (it has: x_train, y_train)",
         x_train=g["x_train"], y_train=g["y_train"])
    case("x_1d", "array 'x_train' has shape (256,): it must be (n, features)",
         **{**g, "x_train": g["x_train"][:, 0]})
    case("x_5d", "array 'x_test' has shape (64, 1, 1, 4, 4)", **{**g, "x_test": g["x_test"].reshape(64, 1, 1, 4, 4)})
    case("row_lengths", "the rows of 'x_train' ((256, 16)) hold 16 values but those of 'x_test' ((64, 15)) 15",
         **{**g, "x_test": g["x_test"][:, :15]})
    case("lengths", "'x_train' has 256 rows but 'y_train' has 255 labels", **{**g, "y_train": g["y_train"][:-1]})
    case("empty", "the test split is empty ('x_test' has 0 rows)",
         **{**g, "x_test": g["x_test"][:0], "y_test": g["y_test"][:0]})
    case("float_labels", "array 'y_train' has dtype float64: labels must be integers",
         **{**g, "y_train": g["y_train"].astype(np.float64)})
    neg = g["y_test"].copy()
    neg[7] = -1
    case("negative", "array 'y_test' holds a negative label (-1 at index 7)", **{**g, "y_test": neg})
    case("too_big", "array 'y_train' holds label 2 (at index ", **g, n_classes=np.array(2))
    case("one_class", "array 'y_train' holds a single class (0): a split needs at least two classes",
         **{**g, "y_train": np.zeros(256, dtype=np.int64)})
    nan = g["x_train"].copy()
    nan[3, 1] = np.nan
    nan[9, 2] = np.inf
    case("nan", "array 'x_train' holds 2 NaN or infinite values (as float32); the first is at row 3, column 1 (nan)",
         **{**g, "x_train": nan})
    inf = g["x_test"].copy()
    inf[5, 0] = -np.inf
    case("inf", "array 'x_test' holds 1 NaN or infinite value (as float32); the first is at row 5, column 0 (-inf)",
         **{**g, "x_test": inf})
    huge = g["x_train"].astype(np.float64)
    huge[0, 4] = 1e300
    case("overflow", "the first is at row 0, column 4 (1e+300, beyond float32's range)", **{**g, "x_train": huge})
    case("image_shape", "image_shape (3, 4, 4) has 48 values but the rows of 'x_train' have 16",
         **g, image_shape=np.array([3, 4, 4]))
    case("image_shape_not_3", "array 'image_shape' must be 3 integers", **g, image_shape=np.array([4, 4]))
    case("image_shape_negative", "image_shape (-1, 4, -4) has a dimension below 1",
         **g, image_shape=np.array([-1, 4, -4]))
    huge_label = g["y_train"].copy()
    huge_label[11] = 10**9
    # named as a label, not as the memory a 10⁹-class head would take (the size check reads the file first)
    case("huge_label", "the labels run up to 1,000,000,000: that would make 1,000,000,001 classes",
         **{**g, "y_train": huge_label})
    case("strings", "array 'x_train' has dtype <U3, not real numbers",
         **{**g, "x_train": np.full((256, 16), "abc")})
    marker = tmp / "PWNED"
    pickled = np.empty(256, dtype=object)
    pickled[:] = [_Payload(marker)] * 256
    case("pickled", "array 'y_train' is an object (pickled) array, which faeval-tui never unpickles",
         **{**g, "y_train": pickled})
    return cases


BAD = ("missing", "not_npz", "npy", "missing_arrays", "x_1d", "x_5d", "row_lengths", "lengths", "empty",
       "float_labels", "negative", "too_big", "one_class", "nan", "inf", "overflow", "image_shape",
       "image_shape_not_3", "image_shape_negative", "huge_label", "strings", "pickled")


@pytest.mark.parametrize("case", BAD)
def test_a_bad_npz_file_is_refused_with_its_reason_and_leaves_no_audit(tmp_path: Path, case: str) -> None:
    cases = _bad_cases(tmp_path)
    assert set(cases) == set(BAD)
    path, message = cases[case]
    runs = tmp_path / "runs"
    res = invoke("run", *npz_sets(path), "--runs-dir", str(runs))
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert res.stderr.startswith("error: "), res.stderr
    assert message in res.stderr, res.stderr
    assert str(path.name) in res.stderr and "\n  → " in res.stderr
    assert "Traceback" not in res.output
    assert not runs.exists() or not any(runs.iterdir())
    assert not (tmp_path / "PWNED").exists()


# --- a good npz file, pinned by its SHA-256 -----------------------------------------------

def test_a_good_npz_trains_and_config_yaml_pins_its_sha256_and_absolute_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    save(tmp_path / "mine.npz", **good_arrays())
    runs = tmp_path / "runs"
    res = invoke("run", *npz_sets(Path("mine.npz")), "--runs-dir", str(runs))
    assert res.exit_code == 0, res.output + repr(res.exception)
    (audit_dir,) = runs.iterdir()
    cfg = yaml.safe_load((audit_dir / "config.yaml").read_text())
    assert cfg["dataset"] == "npz"
    assert cfg["data_sha256"] == sha256(tmp_path / "mine.npz")
    assert cfg["data_path"] == str(Path.cwd() / "mine.npz")  # absolute: a resume from elsewhere finds it
    audit = Audit.open(audit_dir)
    (log,) = [audit.log(s.run_id) for s in audit.planned()]
    assert log.status(False) == "finished" and log.header.config["data_sha256"] == cfg["data_sha256"]
    assert log.header.dataset == "npz"

    # a different file at that path: resume refuses, naming it and both digests, and changes no file
    before = files_of(audit_dir)
    old = cfg["data_sha256"]
    save(tmp_path / "mine.npz", **good_arrays(seed=1))
    new = sha256(tmp_path / "mine.npz")
    res = invoke("resume", str(audit_dir))
    assert res.exit_code == 2, res.output
    assert (f"error: data_path {cfg['data_path']} has changed since the audit was created: its SHA-256 is "
            f"now {new[:12]}…, the audit was created with {old[:12]}…") in res.stderr
    assert "restore the file the audit was created with, or start a new audit" in res.stderr
    assert "Traceback" not in res.output
    assert files_of(audit_dir) == before


def test_data_sha256_is_a_compared_key_so_editing_it_in_config_yaml_is_caught() -> None:
    assert "data_sha256" not in UNCOMPARED and "dataset" not in UNCOMPARED
    assert config_changes({"data_sha256": "aa", "epochs": 1}, {"data_sha256": "bb", "epochs": 1}) == \
        [("data_sha256", "aa", "bb")]


def test_an_npz_audit_created_from_python_without_its_digest_gets_it_on_its_first_training(tmp_path: Path) -> None:
    path = save(tmp_path / "mine.npz", **good_arrays())
    audit = Audit.create(load_config(None, tiny("epochs=1", "methods=[bp]", "dataset=npz", f"data_path={path}")),
                         tmp_path / "runs")
    assert yaml.safe_load((audit.path / "config.yaml").read_text())["data_sha256"] is None
    runner = AuditRunner(audit)
    runner.submit_unfinished()
    assert runner.run() == {"bp-s42": "finished"}
    assert yaml.safe_load((audit.path / "config.yaml").read_text())["data_sha256"] == sha256(path)


# --- a TaskData handed in from Python, pinned by its fingerprint --------------------------

def _python_task(seed: int) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512 + 256, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
    return TaskData("mine", x[:512], y[:512], x[512:], y[512:], 4)


def test_a_taskdata_from_python_pins_the_audit_which_the_cli_will_not_resume_but_python_will(new_audit) -> None:
    audit = new_audit("epochs=2", "methods=[bp]")
    task = _python_task(0)
    runner = AuditRunner(audit, lambda ev: runner.stop() if isinstance(ev, EpochDone) else None, task=task)
    fingerprint = task_fingerprint(task)
    # pinned before anything trains
    assert yaml.safe_load((audit.path / "config.yaml").read_text())["data_sha256"] == fingerprint
    runner.submit_unfinished()
    assert runner.run() == {"bp-s42": "stopped"}
    assert audit.log("bp-s42").header.config["data_sha256"] == fingerprint

    before = files_of(audit.path)
    res = invoke("resume", str(audit.path))
    assert res.exit_code == 2, res.output
    assert (f"error: this audit trained on data handed in from Python (fingerprint {fingerprint[:12]}…)"
            in res.stderr)
    assert "resume it from Python with the same TaskData: AuditRunner(audit, task=…)" in res.stderr
    assert "Traceback" not in res.output
    assert files_of(audit.path) == before

    with pytest.raises(DataError, match="the TaskData handed in is not the data"):
        AuditRunner(Audit.open(audit.path), task=_python_task(1))
    assert files_of(audit.path) == before

    again = AuditRunner(Audit.open(audit.path), task=_python_task(0))
    again.submit_unfinished()
    assert again.run() == {"bp-s42": "finished"}


def test_the_config_data_handed_in_pins_nothing_and_other_data_after_training_is_refused(new_audit) -> None:
    audit = new_audit("epochs=1", "methods=[bp]")
    task = load_task(audit.cfg)
    runner = AuditRunner(audit, task=task)
    runner.submit_unfinished()
    assert runner.run() == {"bp-s42": "finished"}
    assert yaml.safe_load((audit.path / "config.yaml").read_text())["data_sha256"] is None
    # the same data built by hand is the config's data; other data would mix two tasks in one audit
    AuditRunner(Audit.open(audit.path), task=synthetic_task(audit.cfg.synthetic))
    with pytest.raises(DataError, match="trained on the synthetic data its config names"):
        AuditRunner(Audit.open(audit.path), task=_python_task(0))
    assert yaml.safe_load((audit.path / "config.yaml").read_text())["data_sha256"] is None


# --- the console: the same refusal and the same pin ---------------------------------------

@pytest.mark.asyncio
@pytest.mark.parametrize("detach", [False, True], ids=["in-process", "trainer-process"])
async def test_the_console_refuses_a_bad_npz_before_creating_the_audit_and_pins_a_good_one(
        tmp_path: Path, detach: bool) -> None:
    """The same refusal and pin whether the console loads the data for its own runner or
    has it checked in a process of its own (``faeval_tui.data_check``) for a trainer process."""
    from faeval_tui.app import FaevalApp
    from faeval_tui.dialogs import ErrorScreen
    from tests.test_console import until

    bad = save(tmp_path / "bad.npz", **{**good_arrays(), "y_test": good_arrays()["y_test"][:-1]})
    runs = tmp_path / "runs"
    app = FaevalApp(cfg=load_config(None, tiny("epochs=1", "methods=[bp]", "dataset=npz", f"data_path={bad}")),
                    runs_dir=runs, bell=False, detach=detach, poll_s=0.2)
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ErrorScreen))
    assert type(app.failure) is DataError and "'x_test' has 64 rows but 'y_test' has 63 labels" in app.failure.problem
    assert app.failure.hint  # the check's hint crosses the process boundary with its problem
    assert not runs.exists() or not any(runs.iterdir())

    good = save(tmp_path / "good.npz", **good_arrays())
    app = FaevalApp(cfg=load_config(None, tiny("epochs=1", "methods=[bp]", "dataset=npz", f"data_path={good}")),
                    runs_dir=runs, bell=False, detach=detach, poll_s=0.2)
    async with app.run_test(size=(100, 32)) as pilot:
        if detach:
            await until(pilot, lambda: app.audit is not None and not app.trainer_live())
        else:
            await until(pilot, lambda: bool(app.state.runs) and not app.state.active())
    (config,) = runs.glob("*/config.yaml")
    pinned = yaml.safe_load(config.read_text())
    assert pinned["data_sha256"] == sha256(good) and pinned["data_path"] == str(good.absolute())
    assert read_run(config.parent / "bp-s42" / RECORDS).end.status == "finished"


DETACHED_CONSOLE = """
import asyncio, json, sys, time
from pathlib import Path
from engine.config import load_config
from faeval_tui.app import FaevalApp

async def main():
    app = FaevalApp(cfg=load_config(None, {sets!r}), runs_dir=Path({runs!r}), bell=False, detach=True, poll_s=0.2)
    async with app.run_test(size=(100, 32)) as pilot:
        deadline = time.monotonic() + {wait!r}
        while not (app.audit is not None and not app.trainer_live()):
            assert time.monotonic() < deadline, "the trainer never finished"
            await pilot.pause(0.2)
        await pilot.pause(0.5)
        print(json.dumps({{"torch": "torch" in sys.modules, "audit": str(app.audit.path), "mode": app.mode}}))

asyncio.run(main())
"""


@pytest.mark.slow
def test_a_console_with_a_trainer_process_trains_an_audit_without_ever_importing_torch(tmp_path: Path) -> None:
    from tests.conftest import WAIT_S

    script = DETACHED_CONSOLE.format(sets=tiny("epochs=2", "methods=[bp,frozen]"), runs=str(tmp_path / "runs"),
                                     wait=WAIT_S)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT_S * 2)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["torch"] is False and seen["mode"] == "live"
    for rid in ("bp-s42", "frozen-s42"):
        log = read_run(Path(seen["audit"]) / rid / RECORDS)
        assert log.end.status == "finished" and [e.epoch for e in log.epochs] == [1, 2]


def test_the_class_count_the_tables_and_charts_use_is_the_npz_files_own(tmp_path: Path) -> None:
    from engine.tables import n_classes

    arrays = good_arrays(n_train=300, n_test=40, dim=12, classes=4)
    path = save(tmp_path / "four.npz", **arrays, n_classes=np.array(7))
    assert n_classes(load_config(None, ["dataset=npz", f"data_path={path}"])) == 7  # not synthetic.classes (10)
    assert n_classes(load_config(None, ["dataset=digits"])) == 10
