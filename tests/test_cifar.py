"""engine.cifar: download, verify, extract and safely unpickle CIFAR archives.

Archives are small fakes in the real format (tests/cifar_fixtures.py), served over
127.0.0.1 so the real urllib download path runs without internet.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import pickletools
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_fixtures import LAYOUT, make_cifar_archive, py2_pickle, serve_directory

from engine.cifar import (
    CIFAR_SPECS,
    CifarSpec,
    _safe_extractall,
    default_data_dir,
    download_cifar,
    find_cifar,
    load_cifar,
)
from engine.errors import DataError
from tests.conftest import WAIT_S


def spec_for(name: str, url: str, md5: str) -> CifarSpec:
    return dataclasses.replace(CIFAR_SPECS[name], url=url, md5=md5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unpacked(tmp_path: Path, name: str = "cifar10", n: int = 3) -> tuple[Path, dict]:
    """A torchvision-style root holding the extracted folder."""
    archive, _, exp = make_cifar_archive(tmp_path / "src", name, n_per_batch=n)
    root = tmp_path / "tv"
    with tarfile.open(archive) as tar:
        _safe_extractall(tar, root)  # the fixture archive is ours; extract it the engine's way
    return root, exp


def assert_matches(arr, exp: dict) -> None:
    for key in ("x_train", "y_train", "x_test", "y_test"):
        got, want = getattr(arr, key), torch.from_numpy(exp[key])
        assert got.dtype == want.dtype and got.shape == want.shape, key
        assert torch.equal(got, want), key
    assert arr.x_train.dtype == torch.uint8 and arr.y_train.dtype == torch.int64
    assert arr.n_classes == exp["n_classes"]
    assert arr.classes == exp["classes"]


def test_specs_hold_the_official_constants():
    c10, c100 = CIFAR_SPECS["cifar10"], CIFAR_SPECS["cifar100"]
    assert c10.url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert c10.md5 == "c58f30108f718f92721af3b95e74349a"
    assert c100.url == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert c100.md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    for name, spec in CIFAR_SPECS.items():
        lay = LAYOUT[name]
        assert spec.filename == spec.url.rsplit("/", 1)[1] == lay["filename"]
        assert (spec.folder, list(spec.train_files), list(spec.test_files), spec.meta_file,
                spec.n_classes) == (lay["folder"], lay["train"], lay["test"], lay["meta"],
                                    lay["n_classes"])
    assert (c10.label_key, c100.label_key) == ("labels", "fine_labels")


def test_fixture_pickles_look_like_python2_cpickle():
    ops = list(pickletools.genops(py2_pickle({b"data": np.zeros((1, 3072), np.uint8)})))
    names = {op.name for op, _, _ in ops}
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert "SHORT_BINSTRING" in names and "BINSTRING" in names and "BINUNICODE" not in names
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}


@pytest.mark.parametrize("name, n", [("cifar10", 4), ("cifar100", 6)])
def test_download_round_trip_then_loads_offline(tmp_path, name, n):
    archive, md5, exp = make_cifar_archive(tmp_path / "srv", name, n_per_batch=n, seed=7)
    data_dir = tmp_path / "data"
    with serve_directory(tmp_path / "srv") as base:
        spec = spec_for(name, f"{base}/{archive.name}", md5)
        arr = load_cifar(name, data_dir, spec=spec)
    assert_matches(arr, exp)
    assert arr.x_train.shape == (n * len(LAYOUT[name]["train"]), 3072)
    assert arr.source == data_dir / exp["folder"]
    # only the verified archive and the unpacked folder, no temp leftovers
    assert sorted(p.name for p in data_dir.iterdir()) == sorted([exp["filename"], exp["folder"]])
    # server is gone: a second load must come from disk
    assert_matches(load_cifar(name, data_dir, spec=spec), exp)
    assert_matches(load_cifar(name, data_dir, spec=spec, download=False), exp)


def test_checksum_mismatch_leaves_nothing(tmp_path):
    archive, md5, _ = make_cifar_archive(tmp_path / "srv", "cifar10", n_per_batch=2)
    data_dir = tmp_path / "data"
    wrong = "0" * 32
    with serve_directory(tmp_path / "srv") as base:
        with pytest.raises(DataError) as err:
            load_cifar("cifar10", data_dir, spec=spec_for("cifar10", f"{base}/{archive.name}", wrong))
    assert wrong in str(err.value) and md5 in str(err.value)
    assert str(data_dir / archive.name) in err.value.hint
    assert not data_dir.exists()  # made for the download, removed with it


@pytest.mark.parametrize("reachable", [False, True], ids=["refused", "404"])
def test_network_failure_says_where_to_put_the_file(tmp_path, reachable):
    data_dir = tmp_path / "data"
    spec_name = "cifar10"
    filename = CIFAR_SPECS[spec_name].filename
    if reachable:
        (tmp_path / "srv").mkdir()
        with serve_directory(tmp_path / "srv") as base:
            url = f"{base}/{filename}"  # server up, file absent: HTTP 404
            with pytest.raises(DataError) as err:
                download_cifar(spec_for(spec_name, url, "0" * 32), data_dir, timeout=WAIT_S)
    else:
        url = f"http://127.0.0.1:{free_port()}/{filename}"
        with pytest.raises(DataError) as err:
            load_cifar(spec_name, data_dir, spec=spec_for(spec_name, url, "0" * 32))
    assert url in err.value.problem and "failed" in err.value.problem
    assert filename in err.value.hint and str(data_dir) in err.value.hint
    assert "FAEVAL_DATA_DIR" in err.value.hint and "torchvision" in err.value.hint
    # the folder was made for the download: the failure leaves nothing behind, and says so
    assert not data_dir.exists() and f"{data_dir} did not exist" in err.value.problem


def test_a_failed_download_into_an_existing_folder_keeps_the_folder_and_what_it_holds(tmp_path):
    data_dir = tmp_path / "mine"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("kept")
    nested = tmp_path / "new" / "deeper"
    spec = spec_for("cifar10", f"http://127.0.0.1:{free_port()}/x.tar.gz", "0" * 32)
    with pytest.raises(DataError) as err:
        download_cifar(spec, data_dir, timeout=WAIT_S)
    assert [p.name for p in data_dir.iterdir()] == ["notes.txt"] and "did not exist" not in err.value.problem
    with pytest.raises(DataError):
        download_cifar(spec, nested, timeout=WAIT_S)
    assert not (tmp_path / "new").exists()  # every folder it created, removed again


def test_torchvision_root_and_inner_folder_accepted_without_download(tmp_path):
    root, exp = unpacked(tmp_path)
    offline = spec_for("cifar10", "http://127.0.0.1:9/never-used", "0" * 32)
    assert_matches(load_cifar("cifar10", root, download=False, spec=offline), exp)
    inner = root / exp["folder"]
    arr = load_cifar("cifar10", inner, download=False, spec=offline)
    assert_matches(arr, exp)
    assert arr.source == inner


def test_verified_archive_alone_is_extracted(tmp_path):
    archive, md5, exp = make_cifar_archive(tmp_path / "dl", "cifar100", n_per_batch=3)
    spec = spec_for("cifar100", "http://127.0.0.1:9/never-used", md5)
    assert_matches(load_cifar("cifar100", tmp_path / "dl", download=False, spec=spec), exp)
    assert (tmp_path / "dl" / exp["folder"] / "train").is_file()
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted([archive.name, exp["folder"]])


def test_local_archive_with_wrong_md5_is_refused_not_extracted(tmp_path):
    archive, md5, exp = make_cifar_archive(tmp_path / "dl", "cifar10", n_per_batch=2)
    with pytest.raises(DataError) as err:
        find_cifar(spec_for("cifar10", "http://x/", "f" * 32), tmp_path / "dl")
    assert md5 in str(err.value) and "f" * 32 in str(err.value) and str(archive) in str(err.value)
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [archive.name]


@pytest.mark.parametrize("has_data_filter", [True, False], ids=["data-filter", "old-python"])
def test_archive_with_escaping_member_is_rejected(tmp_path, monkeypatch, has_data_filter):
    if not has_data_filter:  # exercise the manual member check used before Python 3.11.4
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    good, _, exp = make_cifar_archive(tmp_path / "src", "cifar10", n_per_batch=1)
    dl = tmp_path / "dl"
    dl.mkdir()
    bad = dl / good.name
    with tarfile.open(good) as src, tarfile.open(bad, "w:gz") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        evil = tarfile.TarInfo("../escaped.txt")
        evil.size = 2
        dst.addfile(evil, io.BytesIO(b"hi"))
    md5 = hashlib.md5(bad.read_bytes()).hexdigest()
    with pytest.raises(DataError) as err:
        find_cifar(spec_for("cifar10", "http://x/", md5), dl)
    assert str(bad) in str(err.value)
    assert not (tmp_path / "escaped.txt").exists()
    assert [p.name for p in dl.iterdir()] == [bad.name]  # no partial folder


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("wrap", [
    lambda evil: pickle.dumps(evil, protocol=2),  # the bare payload
    lambda evil: py2_pickle({b"data": evil, b"labels": []}),  # hidden inside a real-format batch
], ids=["bare", "in-batch"])
def test_restricted_unpickler_refuses_code_execution(tmp_path, wrap):
    root, exp = unpacked(tmp_path)
    marker = tmp_path / "pwned"
    batch = root / exp["folder"] / "data_batch_1"
    batch.write_bytes(wrap(_Evil(marker)))
    with pytest.raises(DataError) as err:
        load_cifar("cifar10", root, download=False)
    assert "refusing to unpickle" in str(err.value) and "system" in str(err.value)
    assert str(batch) in str(err.value)
    assert not marker.exists()
    # the payload is live: a plain unpickler would have run it
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Evil(live), protocol=2))
    assert live.exists()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _rewrite(changes: dict):
    def apply(path: Path) -> None:
        d = pickle.loads(path.read_bytes(), encoding="bytes")
        d.update(changes)
        path.write_bytes(py2_pickle({k: v for k, v in d.items() if v is not None}))
    return apply


@pytest.mark.parametrize("corrupt, words", [
    (_truncate, "cannot read"),
    (lambda p: p.write_bytes(b""), "cannot read"),
    (lambda p: p.write_bytes(py2_pickle([1, 2, 3])), "not a CIFAR dict"),
    (_rewrite({b"data": np.zeros((3, 3071), np.uint8)}), "3072"),
    (_rewrite({b"data": np.zeros((3, 3072), np.float32)}), "uint8"),
    (_rewrite({b"labels": [0, 1, 10]}), "[0, 10)"),
    (_rewrite({b"labels": [0, 1]}), "must be 3 integers"),
    (_rewrite({b"labels": None}), "no 'labels'"),
], ids=["truncated", "empty", "not-dict", "row-width", "dtype", "label-range", "label-count",
        "missing-key"])
def test_corrupt_batch_is_named(tmp_path, corrupt, words):
    root, exp = unpacked(tmp_path)
    batch = root / exp["folder"] / "data_batch_1"
    corrupt(batch)
    with pytest.raises(DataError) as err:
        load_cifar("cifar10", root, download=False)
    assert str(batch) in err.value.problem and words in err.value.problem


def test_default_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FAEVAL_DATA_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "mine"
    monkeypatch.delenv("FAEVAL_DATA_DIR")
    assert default_data_dir() == tmp_path / "xdg" / "faeval-tui" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "faeval-tui" / "data"


def test_load_uses_default_data_dir_and_accepts_name_spellings(monkeypatch, tmp_path):
    root, exp = unpacked(tmp_path)
    monkeypatch.setenv("FAEVAL_DATA_DIR", str(root))
    for name in ("cifar10", "CIFAR-10", "cifar_10"):
        assert_matches(load_cifar(name, download=False), exp)
    with pytest.raises(DataError) as err:
        load_cifar("cifar1000", download=False)
    assert "cifar1000" in err.value.problem and "cifar100" in err.value.hint


def test_missing_data_without_download(tmp_path):
    data_dir = tmp_path / "empty"
    with pytest.raises(DataError) as err:
        load_cifar("cifar100", data_dir, download=False)
    assert str(data_dir) in err.value.problem
    assert "cifar-100-python.tar.gz" in err.value.hint and str(data_dir) in err.value.hint
    assert not data_dir.exists()  # a failed lookup creates nothing
