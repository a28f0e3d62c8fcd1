"""Build small CIFAR archives in the real on-disk format, and serve them over local HTTP.

The official files are Python 2 cPickle (protocol 2) dumps: keys and array bytes are
py2 ``str`` (SHORT_BINSTRING/BINSTRING opcodes) and arrays name
``numpy.core.multiarray._reconstruct``. Python 3's pickler would instead write bytes as
``_codecs.encode`` calls and name ``numpy._core``, so ``py2_pickle`` emits the py2 form
to test the loader against what it will really read.

The layout table is written out here, independent of engine/cifar.py, so a wrong
constant in the engine shows up as a test failure.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]

LAYOUT = {
    "cifar10": dict(filename="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", n_classes=10),
    "cifar100": dict(filename="cifar-100-python.tar.gz", folder="cifar-100-python",
                     train=["train"], test=["test"], meta="meta", n_classes=100),
}


class _Py2Pickler(pickle._Pickler):
    """Pure-Python pickler patched to write str/bytes and globals as Python 2 cPickle did."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str

    def save_global(self, obj, name=None):
        if obj is _reconstruct:  # the name numpy 1.x (and so the real files) used
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def py2_pickle(obj) -> bytes:
    """Pickle ``obj`` the way the CIFAR files were written (py2 cPickle, protocol 2)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _batch(rng, n: int, n_classes: int, name: str, label: str) -> tuple[dict, np.ndarray, np.ndarray]:
    x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    y = rng.integers(0, n_classes, size=n)
    d = {b"batch_label": label.encode(), b"data": x,
         b"filenames": [f"img_{i:05d}.png".encode() for i in range(n)]}
    if name == "cifar10":
        d[b"labels"] = [int(v) for v in y]  # the real files hold plain lists of ints
    else:
        d[b"fine_labels"] = [int(v) for v in y]
        d[b"coarse_labels"] = [int(v) // 5 for v in y]
    return d, x, y.astype(np.int64)


def make_cifar_archive(tmp_path: Path, name: str = "cifar10", n_per_batch: int = 4,
                       seed: int = 0) -> tuple[Path, str, dict]:
    """Write ``tmp_path/<official filename>``; return (path, md5, expected arrays).

    expected holds numpy x_train/y_train/x_test/y_test (concatenated in file order),
    classes, n_classes, folder and filename.
    """
    lay = LAYOUT[name]
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    expected: dict = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for i, fname in enumerate(lay[split]):
            d, x, y = _batch(rng, n_per_batch, lay["n_classes"], name, f"{split} batch {i + 1}")
            files[fname] = py2_pickle(d)
            xs.append(x)
            ys.append(y)
        expected[f"x_{split}"] = np.concatenate(xs)
        expected[f"y_{split}"] = np.concatenate(ys)
    if name == "cifar10":
        classes = list(CIFAR10_NAMES)
        meta = {b"num_cases_per_batch": n_per_batch, b"num_vis": 3072,
                b"label_names": [c.encode() for c in classes]}
    else:
        classes = [f"fine_{i:02d}" for i in range(100)]
        meta = {b"fine_label_names": [c.encode() for c in classes],
                b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)]}
    files[lay["meta"]] = py2_pickle(meta)
    expected.update(classes=classes, n_classes=lay["n_classes"], folder=lay["folder"],
                    filename=lay["filename"])

    archive = Path(tmp_path) / lay["filename"]
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        folder = tarfile.TarInfo(lay["folder"])
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for fname, data in files.items():
            info = tarfile.TarInfo(f"{lay['folder']}/{fname}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    return archive, md5, expected


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass


@contextlib.contextmanager
def serve_directory(path: Path) -> Iterator[str]:
    """Serve ``path`` on 127.0.0.1 (free port) in a thread; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
