"""``dataset: npz``: the user's own arrays in one ``.npz`` file, read without unpickling.

The file (``numpy.savez(path, x_train=…, y_train=…, x_test=…, y_test=…)``) holds

- ``x_train``, ``x_test``: numbers, one sample a row: ``(n, features)``, or images
  ``(n, H, W)`` (one channel) or ``(n, C, H, W)`` (channels first; an ``(n, H, W, C)``
  array must be transposed first), which are flattened to rows and give ``image_shape``;
- ``y_train``, ``y_test``: integer class labels, one per row, in ``[0, n_classes)``;
- optionally ``image_shape``: three integers (C, H, W) whose product is the row length,
  saying how image models lay a flat row out (channels first, then rows of pixels);
- optionally ``n_classes``: one integer; without it, the largest label + 1 over both splits.

Any other array is ignored. x becomes float32 exactly as given: the engine does not
standardise a user's arrays (CIFAR and digits are standardised by their loaders), so
standardise them yourself, e.g. with the training split's mean and std. y becomes int64.

Every refusal is a ``DataError`` naming the file and the array, raised before anything is
written. ``numpy.load(..., allow_pickle=False)`` never unpickles, so a file crafted to run
code is refused as holding an object array.

This module sits below ``config`` (the import layers), so ``sizing`` may use ``npz_dims``
and ``task_dims`` for its memory estimate without importing the torch side of ``engine.data``.
"""
from __future__ import annotations

import hashlib
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataError

if TYPE_CHECKING:  # annotations only: config is a layer above this module
    from .config import AuditConfig

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
MAX_CLASSES = 10_000  # as synthetic.classes: a label of 10⁹ would make a 10⁹-wide head
SAVE_HINT = ("save it with numpy.savez(path, x_train=…, y_train=…, x_test=…, y_test=…) "
             "(optionally image_shape=(C, H, W) and n_classes=k)")
CHUNK = 1 << 20

# (in_dim, n_classes, n_train, n_test) of the built-in sources, for estimates made without loading them
DIGITS_DIMS = (64, 10, 1437, 360)  # engine.data.digits_task's split of scikit-learn's 1,797 digits
CIFAR_DIMS = {"cifar10": (3072, 10, 50_000, 10_000), "cifar100": (3072, 100, 50_000, 10_000)}


@dataclass
class NpzArrays:
    """A validated npz file: float32 rows, int64 labels, and where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    image_shape: tuple[int, int, int] | None
    sha256: str
    path: Path


def short(digest: str | None) -> str:
    """The first 12 hex digits of a digest, as messages show it."""
    return "(none)" if not digest else digest[:12] + "…"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _err(path: Path, what: str, hint: str = SAVE_HINT) -> DataError:
    return DataError(f"data_path {path}: {what}", hint)


def _check_file(path: Path) -> None:
    """Missing, a directory, or not a zip archive (an npz is one)."""
    if not path.exists():
        raise DataError(f"data_path {path} does not exist",
                        "give the .npz file with x_train, y_train, x_test and y_test: --set data_path=FILE "
                        "for a new audit; for one that trained on it (resume, measure), put the same file back "
                        "at that path")
    if not path.is_file():
        raise DataError(f"data_path {path} is not a file", "give the .npz file itself, not its folder")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise DataError(f"cannot read data_path {path}: {(e.strerror or str(e)).lower()}",
                        "check the file's permissions") from None
    if magic == b"\x93NUMPY":
        raise _err(path, "a single .npy array, not an .npz archive of x_train, y_train, x_test and y_test")
    if not zipfile.is_zipfile(path):
        raise _err(path, "not an .npz file (not a zip archive of .npy arrays)")


def _read(z: Any, name: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(z[name])
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickled" in str(e) or "Object arrays" in str(e):
            raise _err(path, f"array '{name}' is an object (pickled) array, which faeval-tui never unpickles "
                       "(unpickling can run code)",
                       f"save {name} as a numeric array: numpy.asarray({name}, dtype=numpy."
                       f"{'float32' if name.startswith('x_') else 'int64'})") from None
        raise _err(path, f"cannot read array '{name}': {e}", "the file is damaged: save it again") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise _err(path, f"cannot read array '{name}': {e}", "the file is damaged: save it again") from None


def _rows(x: np.ndarray, name: str, path: Path) -> tuple[np.ndarray, tuple[int, int, int] | None]:
    """x as (n, row) and the image shape its dimensions give ((n, H, W) or (n, C, H, W))."""
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.issubdtype(x.dtype, np.complexfloating):
        raise _err(path, f"array '{name}' has dtype {x.dtype}, not real numbers",
                   f"save {name} as numbers, e.g. numpy.asarray({name}, dtype=numpy.float32)")
    if x.ndim < 2 or x.ndim > 4:
        raise _err(path, f"array '{name}' has shape {x.shape}: it must be (n, features), images (n, H, W) or "
                   "(n, C, H, W), one sample per row",
                   f"reshape {name} to one row per sample, e.g. {name}.reshape(len({name}), -1)")
    shape = None
    if x.ndim == 3:
        shape = (1, int(x.shape[1]), int(x.shape[2]))
    elif x.ndim == 4:
        shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    if math.prod(x.shape[1:]) == 0:
        raise _err(path, f"array '{name}' has shape {x.shape}: its rows hold no values",
                   f"give {name} at least one feature per sample")
    return x.reshape(x.shape[0], math.prod(x.shape[1:])), shape


def _labels(y: np.ndarray, name: str, n_rows: int, x_name: str, path: Path) -> np.ndarray:
    if y.ndim != 1:
        raise _err(path, f"array '{name}' has shape {y.shape}: labels must be one integer per sample, shape (n,)",
                   f"flatten it, e.g. {name}.reshape(-1), or take the argmax of one-hot labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise _err(path, f"array '{name}' has dtype {y.dtype}: labels must be integers (class 0, 1, 2, …)",
                   f"save it as integers, e.g. numpy.asarray({name}, dtype=numpy.int64)")
    if len(y) != n_rows:
        raise _err(path, f"'{x_name}' has {n_rows:,} rows but '{name}' has {len(y):,} labels",
                   f"give one label per row of {x_name}")
    if n_rows == 0:
        raise _err(path, f"the {name.split('_')[1]} split is empty ('{x_name}' has 0 rows)",
                   "give at least one sample in each of x_train and x_test")
    if y.min() < 0:
        i = int(np.argmin(y))
        raise _err(path, f"array '{name}' holds a negative label ({int(y[i])} at index {i:,})",
                   "labels are class indices 0, 1, …, n_classes − 1")
    return y


def _finite(x32: np.ndarray, x: np.ndarray, name: str, path: Path) -> None:
    bad = ~np.isfinite(x32)
    count = int(bad.sum())
    if not count:
        return
    i = int(np.argmax(bad.reshape(-1)))
    row, col = divmod(i, x32.shape[1])
    value = x.reshape(-1)[i]
    what = (f"{value}" if not np.isfinite(value) else f"{value:g}, beyond float32's range")
    raise _err(path, f"array '{name}' holds {count:,} NaN or infinite value{'s' if count != 1 else ''} (as "
               f"float32); the first is at row {row:,}, column {col:,} ({what})",
               f"repair or drop those samples (numpy.isfinite({name}.reshape(len({name}), -1)).all(1) marks the "
               "good rows), then save the file again")


def _int_array(value: np.ndarray, name: str, path: Path, count: int) -> list[int]:
    flat = value.reshape(-1)
    if value.ndim > 1 or flat.size != count or not np.issubdtype(value.dtype, np.integer):
        want = "one integer" if count == 1 else f"{count} integers"
        raise _err(path, f"array '{name}' must be {want}, got dtype {value.dtype} shape {value.shape}",
                   f"save {name}=" + ("k (the number of classes)" if count == 1 else "(C, H, W), e.g. (1, 28, 28)"))
    return [int(v) for v in flat]


def load_npz(path: str | Path, expected_sha256: str | None = None) -> NpzArrays:
    """Read and validate the user's npz file (see the module's docstring).

    With ``expected_sha256`` (the digest the audit was created with) a file whose SHA-256
    differs is refused before it is parsed."""
    path = Path(path).expanduser()
    _check_file(path)
    try:
        digest = file_sha256(path)
    except OSError as e:
        raise DataError(f"cannot read data_path {path}: {(e.strerror or str(e)).lower()}",
                        "check the file's permissions") from None
    if expected_sha256 is not None and digest != expected_sha256:
        raise DataError(f"data_path {path} has changed since the audit was created: its SHA-256 is now "
                        f"{short(digest)}, the audit was created with {short(expected_sha256)}",
                        "restore the file the audit was created with, or start a new audit on this file "
                        "(faeval-tui run --set dataset=npz --set data_path=…)")
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise _err(path, f"cannot read it as an .npz file: {e}") from None
    with z:
        files = list(z.files)
        missing = [a for a in REQUIRED if a not in files]
        if missing:
            has = ", ".join(files) if files else "no arrays"
            raise _err(path, f"no array{'s' if len(missing) > 1 else ''} {', '.join(missing)} in it (it has: {has})")
        raw = {name: _read(z, name, path) for name in REQUIRED}
        given_shape = _read(z, "image_shape", path) if "image_shape" in files else None
        given_classes = _read(z, "n_classes", path) if "n_classes" in files else None

    x_train, shape_train = _rows(raw["x_train"], "x_train", path)
    x_test, shape_test = _rows(raw["x_test"], "x_test", path)
    if x_train.shape[1] != x_test.shape[1]:
        raise _err(path, f"the rows of 'x_train' ({raw['x_train'].shape}) hold {x_train.shape[1]:,} values but "
                   f"those of 'x_test' ({raw['x_test'].shape}) {x_test.shape[1]:,}",
                   "give both splits the same features, in the same order")
    if shape_train and shape_test and shape_train != shape_test:
        raise _err(path, f"'x_train' holds images of {raw['x_train'].shape[1:]} but 'x_test' of "
                   f"{raw['x_test'].shape[1:]}", "lay both splits out the same way")
    image_shape = shape_train or shape_test
    row = x_train.shape[1]
    if given_shape is not None:
        c, h, w = _int_array(given_shape, "image_shape", path, 3)
        if min(c, h, w) < 1:
            raise _err(path, f"image_shape ({c}, {h}, {w}) has a dimension below 1: channels, height and width "
                       "must each be at least 1", "save image_shape as (C, H, W), e.g. (1, 8, 8), or leave it out")
        if c * h * w != row:
            raise _err(path, f"image_shape ({c}, {h}, {w}) has {c * h * w:,} values but the rows of 'x_train' "
                       f"have {row:,}", "give image_shape as (C, H, W) with C·H·W equal to the row length, or "
                       "leave it out")
        if image_shape is not None and image_shape != (c, h, w):
            raise _err(path, f"image_shape ({c}, {h}, {w}) disagrees with the images of 'x_train', "
                       f"{raw['x_train'].shape[1:]}", "leave image_shape out, or save x as flat rows")
        image_shape = (c, h, w)

    y_train = _labels(raw["y_train"], "y_train", len(x_train), "x_train", path)
    y_test = _labels(raw["y_test"], "y_test", len(x_test), "x_test", path)
    top = max(int(y_train.max()), int(y_test.max()))
    if given_classes is not None:
        (n_classes,) = _int_array(given_classes, "n_classes", path, 1)
        if not 2 <= n_classes <= MAX_CLASSES:
            raise _err(path, f"n_classes is {n_classes:,}: it must lie in [2, {MAX_CLASSES:,}]",
                       "save n_classes as the number of classes")
        for name, y in (("y_train", y_train), ("y_test", y_test)):
            if int(y.max()) >= n_classes:
                i = int(np.argmax(y))
                raise _err(path, f"array '{name}' holds label {int(y[i]):,} (at index {i:,}), but n_classes is "
                           f"{n_classes:,}: labels must lie in [0, {n_classes:,})",
                           "fix the labels, or save the right n_classes")
    else:
        n_classes = top + 1
        if n_classes > MAX_CLASSES:
            raise _err(path, f"the labels run up to {top:,}: that would make {n_classes:,} classes, more than "
                       f"{MAX_CLASSES:,}", "relabel the classes 0, 1, …, k − 1")
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        kinds = np.unique(y)
        if len(kinds) < 2:
            raise _err(path, f"array '{name}' holds a single class ({int(kinds[0])}): a split needs at least "
                       "two classes", "give each split samples of at least two classes")

    x32 = {}
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        with np.errstate(over="ignore", invalid="ignore"):
            x32[name] = np.ascontiguousarray(x, dtype=np.float32)
        _finite(x32[name], x, name, path)
    return NpzArrays(x32["x_train"], y_train.astype(np.int64), x32["x_test"], y_test.astype(np.int64),
                     int(n_classes), image_shape, digest, path)


def _header(zf: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype in an .npy member's header, reading no more than the header."""
    with zf.open(name + ".npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(int(s) for s in shape), dtype


def npz_dims(path: str | Path | None) -> tuple[int, int, int, int] | None:
    """(in_dim, n_classes, n_train, n_test) of an npz file from its arrays' headers, without
    reading x; the labels are read (8 bytes a sample) only when the file has no ``n_classes``.
    None when the file cannot be read (``load_npz`` then says why)."""
    if path is None:
        return None
    try:
        with zipfile.ZipFile(Path(path).expanduser()) as zf:
            (xtr, _), (xte, _) = _header(zf, "x_train"), _header(zf, "x_test")
            names = set(zf.namelist())
        if len(xtr) < 2 or len(xte) < 2:
            return None
        with np.load(Path(path).expanduser(), allow_pickle=False) as z:
            if "n_classes.npy" in names:
                classes = int(np.asarray(z["n_classes"]).reshape(-1)[0])
            else:
                classes = max(int(np.max(z["y_train"])), int(np.max(z["y_test"]))) + 1
        if not 2 <= classes <= MAX_CLASSES:
            return None  # a label or n_classes out of range: load_npz names it, not a memory estimate
        return math.prod(xtr[1:]), classes, xtr[0], xte[0]
    except Exception:  # noqa: BLE001 - any unreadable file: the loader names what is wrong with it
        return None


def task_dims(cfg: AuditConfig) -> tuple[int, int, int, int] | None:
    """(in_dim, n_classes, n_train, n_test) of ``cfg``'s task, computed without loading it:
    from ``cfg.synthetic``, the built-in sources' constants, or an npz file's headers
    (``npz_dims``; None when the file cannot be read)."""
    if cfg.dataset == "synthetic":
        s = cfg.synthetic
        return s.in_dim, s.classes, s.n_train, s.n_test
    if cfg.dataset == "digits":
        return DIGITS_DIMS
    if cfg.dataset == "npz":
        return npz_dims(cfg.data_path)
    return CIFAR_DIMS[cfg.dataset]


def diagnostic_n(n_samples: int, stability_batches: int, n_test: int) -> int:
    """The diagnostic set's size: the first ``n_samples`` test samples, or, when the test
    split is smaller, all of it rounded down to a multiple of ``stability_batches`` (so the
    stability measure's batches are equal): digits' 360 test samples give 360."""
    if n_test >= n_samples:
        return n_samples
    return n_test // stability_batches * stability_batches


def diagnostic_n_for(cfg: AuditConfig) -> int:
    """``diagnostic_n`` of ``cfg``'s task, without loading it (``task_dims``); the configured
    n_samples when an npz file cannot be read."""
    dims = task_dims(cfg)
    dc = cfg.diagnostics
    return dc.n_samples if dims is None else diagnostic_n(dc.n_samples, dc.stability_batches, dims[3])
