"""CIFAR-10 / CIFAR-100 from the official python-pickle archives, without torchvision.

The archives hold Python 2 pickles, and unpickling runs code, so files are read
through a restricted unpickler that admits only numpy's array reconstruction.
Downloads and extraction go through temp names in the data dir and are moved
into place only when complete, so a failure never leaves partial data behind.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import DataError

try:  # numpy >= 2 moved the module; old pickles still name numpy.core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

ROW = 3 * 32 * 32  # one image: 3 channel planes of 32x32, CHW-flattened
CHUNK = 1 << 20


@dataclass(frozen=True)
class CifarSpec:
    """Where an archive comes from and how it is laid out; tests swap url/md5."""

    name: str
    url: str
    md5: str
    filename: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    n_classes: int
    meta_file: str
    names_key: str


CIFAR_SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        "CIFAR-10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a", "cifar-10-python.tar.gz", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels", 10,
        "batches.meta", "label_names"),
    "cifar100": CifarSpec(
        "CIFAR-100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python.tar.gz", "cifar-100-python",
        ("train",), ("test",), "fine_labels", 100, "meta", "fine_label_names"),
}


@dataclass
class CifarArrays:
    """Raw dataset tensors: uint8 rows exactly as pickled, int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    classes: list[str]
    source: Path


def default_data_dir() -> Path:
    """FAEVAL_DATA_DIR, else the XDG cache dir, so data is shared across audits."""
    if os.environ.get("FAEVAL_DATA_DIR"):
        return Path(os.environ["FAEVAL_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "faeval-tui" / "data"


def _complete(folder: Path, spec: CifarSpec) -> bool:
    names = (*spec.train_files, *spec.test_files, spec.meta_file)
    return all((folder / n).is_file() for n in names)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_extractall(tar: tarfile.TarFile, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")  # rejects absolute paths, "..", escaping links
        return
    for m in tar.getmembers():  # older Pythons: only plain files/dirs, inside dest
        if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in Path(m.name).parts:
            raise tarfile.TarError(f"unsafe archive member {m.name!r}")
    tar.extractall(dest)


def _extract(archive: Path, spec: CifarSpec, data_dir: Path, origin: object = None) -> Path:
    """Unpack into a temp dir, then rename into place: all or nothing."""
    origin, target = origin or archive, data_dir / spec.folder
    hint = (f"replace {data_dir / spec.filename} with the official archive from {spec.url} "
            f"(and delete {target} if present), then run again")
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=data_dir))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            _safe_extractall(tar, tmp)
        if not _complete(tmp / spec.folder, spec):
            raise DataError(f"{origin} does not contain a complete {spec.folder}/ folder", hint)
        os.replace(tmp / spec.folder, target)
    except (tarfile.TarError, EOFError, OSError) as e:
        if _complete(target, spec):  # another process won the race; its copy is fine
            return target
        raise DataError(f"cannot extract {origin}: {e}", hint) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def find_cifar(spec: CifarSpec, data_dir: Path) -> Path | None:
    """The complete unpacked folder in data_dir (torchvision layout or the folder itself),
    extracting a verified archive lying there; None if neither is present."""
    data_dir = Path(data_dir)
    for folder in (data_dir / spec.folder, data_dir):
        if _complete(folder, spec):
            return folder
    archive = data_dir / spec.filename
    if not archive.is_file():
        return None
    got = _md5(archive)
    if got != spec.md5:
        raise DataError(f"{archive} has md5 {got}, expected {spec.md5}",
                        f"delete it and run again to re-download, or replace it with the "
                        f"official archive from {spec.url}")
    return _extract(archive, spec, data_dir)


def download_cifar(spec: CifarSpec, data_dir: Path, timeout: float = 60) -> Path:
    """Fetch, verify and unpack the archive; the temp file is removed on any failure, and so
    are the folders this call created for it (a failed download leaves nothing behind)."""
    data_dir = Path(data_dir)
    created = [p for p in (data_dir, *data_dir.parents) if not p.exists()]  # deepest first
    try:
        return _download(spec, data_dir, timeout)
    except BaseException as e:
        for folder in created:
            try:
                folder.rmdir()  # only while empty: nothing another process put there is lost
            except OSError:
                break
        if created and isinstance(e, DataError):
            raise DataError(f"{e.problem} ({data_dir} did not exist; it was created for the download and "
                            "removed again)", e.hint) from e
        raise


def _download(spec: CifarSpec, data_dir: Path, timeout: float) -> Path:
    archive = data_dir / spec.filename
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=data_dir)
    except OSError as e:
        raise DataError(f"cannot write to data dir {data_dir}: {e}",
                        "pass --data-dir DIR (or set FAEVAL_DATA_DIR=DIR) with a writable folder") from e
    part = Path(name)
    try:
        digest = hashlib.md5()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=timeout) as r:
                for chunk in iter(lambda: r.read(CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
            if isinstance(e, urllib.error.HTTPError):
                e.close()  # it holds the open response socket
            raise DataError(
                f"downloading {spec.name} from {spec.url} failed: {e}",
                f"put {spec.filename} (from {spec.url}) into {data_dir}, or pass --data-dir DIR "
                f"(or set FAEVAL_DATA_DIR=DIR) with a folder that holds it or its unpacked {spec.folder}/ "
                f"(e.g. a torchvision download folder)") from e
        if digest.hexdigest() != spec.md5:
            raise DataError(
                f"checksum mismatch for {spec.filename} from {spec.url}: "
                f"expected md5 {spec.md5}, got {digest.hexdigest()}",
                f"run again to re-download, or place the official archive at {archive}")
        folder = _extract(part, spec, data_dir, origin=spec.url)
        os.replace(part, archive)  # keep the verified archive, as torchvision does
        return folder
    finally:
        part.unlink(missing_ok=True)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    """Admits only numpy array reconstruction, so a crafted file cannot run code."""

    def __init__(self, f, path: Path) -> None:
        super().__init__(f, encoding="bytes")  # py2 pickles: str keys come back as bytes
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self.path}: not part of the "
                f"CIFAR format; the file may be corrupt or malicious",
                f"delete {self.path.parent} and re-download the official archive") from None


def _corrupt(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what}", f"the file is corrupt; delete {path.parent} and re-download")


def _unpickle(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:  # a corrupt pickle can fail in almost any way
        raise _corrupt(path, f"cannot read it ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise _corrupt(path, f"holds a {type(obj).__name__}, not a CIFAR dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _get(d: dict[str, object], key: str, path: Path) -> object:
    if key not in d:
        raise _corrupt(path, f"no '{key}' entry (found: {sorted(map(str, d))})")
    return d[key]


def _read_batch(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    x, y = _get(d, "data", path), np.asarray(_get(d, spec.label_key, path))
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == ROW):
        got = f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}"
        raise _corrupt(path, f"data must be uint8 rows of {ROW}, got {got}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise _corrupt(path, f"{spec.label_key} must be {len(x)} integers, got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= spec.n_classes):
        raise _corrupt(path, f"labels must lie in [0, {spec.n_classes}), got {y.min()}..{y.max()}")
    return x, y.astype(np.int64)


def _read_split(folder: Path, files: tuple[str, ...], spec: CifarSpec) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(_read_batch(folder / f, spec) for f in files))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _read_classes(folder: Path, spec: CifarSpec) -> list[str]:
    path = folder / spec.meta_file
    names = _get(_unpickle(path), spec.names_key, path)
    if not isinstance(names, list) or len(names) != spec.n_classes:
        raise _corrupt(path, f"{spec.names_key} must list {spec.n_classes} names")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def load_cifar(name: str, data_dir: Path | str | None = None, download: bool = True,
               spec: CifarSpec | None = None) -> CifarArrays:
    """Load a CIFAR dataset, using local copies first and downloading only if allowed."""
    if spec is None:
        key = name.lower().replace("-", "").replace("_", "")
        if key not in CIFAR_SPECS:
            raise DataError(f"unknown CIFAR dataset '{name}'", f"use one of {', '.join(CIFAR_SPECS)}")
        spec = CIFAR_SPECS[key]
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    folder = find_cifar(spec, data_dir)
    if folder is None:
        if not download:
            raise DataError(
                f"{spec.name} not found in {data_dir}",
                f"put {spec.filename} (from {spec.url}) or its unpacked {spec.folder}/ into "
                f"{data_dir}, pass --data-dir DIR (or set FAEVAL_DATA_DIR=DIR) with a folder that "
                f"holds it, or allow downloading (--set download=true)")
        folder = download_cifar(spec, data_dir)
    x_train, y_train = _read_split(folder, spec.train_files, spec)
    x_test, y_test = _read_split(folder, spec.test_files, spec)
    return CifarArrays(x_train, y_train, x_test, y_test, spec.n_classes,
                       _read_classes(folder, spec), folder)
