"""fastgen.data on awkward real-world arrays (issue 11): value ranges (binary uint8, K levels,
8-bit grey, ambiguous), channels-last layouts, empty and damaged files."""
import gzip
import struct

import numpy as np
import pytest
import torch

from fastgen import data
from fastgen.data import DataError


def _npz(tmp_path, name="a.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def _all(path):
    """Every image of an "all"-style source, in a fixed order (the three splits concatenated)."""
    return torch.cat([data.load(path, s)[0] for s in data.SPLITS])


def test_uint8_binary_images_stay_binary(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (20, 5, 5), dtype=np.uint8)  # 0/1 stored as uint8 (divided by 255 before)
    path = _npz(tmp_path, images=x)
    grey = _all(path)
    assert set(grey.unique().tolist()) == {0.0, 1.0} and grey.sum() == x.sum()
    thr, _ = data.load(path, "train", binarize=True)
    assert thr.sum() > 0  # thresholding keeps the ones


def test_k_level_integers_map_to_levels(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, (30, 4, 4)).astype(np.int64)
    x[0, 0, 0] = 3
    path = _npz(tmp_path, x=x)
    q, _ = data.load(path, "train", levels=4)
    grey, _ = data.load(path, "train")
    assert torch.equal(q, grey * 3) and q.max() == 3  # levels 0..3 come back exactly
    # digits-like 0..16 stored as floats
    path = _npz(tmp_path, "f.npz", x=rng.integers(0, 17, (30, 4, 4)).astype(np.float32))
    q17, _ = data.load(path, "val", levels=17)
    assert set(q17.unique().tolist()) <= set(range(17)) and q17.max() > 1


def test_8bit_grey_and_ambiguous_ranges(tmp_path):
    x = np.arange(25 * 16, dtype=np.int64).reshape(25, 4, 4) % 256
    grey = _all(_npz(tmp_path, x=x.astype(np.uint8)))
    assert grey.max() == 1.0 and torch.allclose(torch.sort(grey.flatten())[0],
                                                torch.sort(torch.from_numpy(x).float().flatten() / 255)[0])
    dark = (x % 100).astype(np.uint8)  # 0..99: 8-bit with no bright pixel, or 100 levels?
    with pytest.raises(DataError, match="ambiguous"):
        data.load(_npz(tmp_path, "d.npz", x=dark))
    # an explicit levels entry settles it
    q, _ = data.load(_npz(tmp_path, "l.npz", x=dark, levels=np.array(100)), "train", levels=100)
    assert q.max() <= 99 and q.max() > 50
    with pytest.raises(DataError, match="levels=4"):
        data.load(_npz(tmp_path, "bad.npz", x=dark, levels=np.array(4)))
    with pytest.raises(DataError, match="0..255"):
        data.load(_npz(tmp_path, "w.npz", x=np.full((5, 4, 4), 1000, dtype=np.int32)))
    with pytest.raises(DataError, match="NaN"):
        data.load(_npz(tmp_path, "n.npz", x=np.full((5, 4, 4), np.nan, dtype=np.float32)))
    with pytest.raises(DataError, match=">= 0"):
        data.load(_npz(tmp_path, "m.npz", x=-np.ones((5, 4, 4), dtype=np.float32)))


def test_split_files_share_one_value_scale(tmp_path):
    rng = np.random.default_rng(2)
    train = rng.integers(0, 4, (20, 3, 3)).astype(np.uint8)
    train[0, 0, 0] = 3
    test = np.full((5, 3, 3), 2, dtype=np.uint8)  # its own maximum is 2: levels 0..3 all the same
    path = _npz(tmp_path, x_train=train, x_test=test)
    x, _ = data.load(path, "test", levels=4)
    assert torch.equal(x, torch.full((5, 1, 3, 3), 2.0))


def test_channels_last_read_where_unambiguous(tmp_path):
    rng = np.random.default_rng(3)
    nhwc = rng.random((20, 8, 8, 4)).astype(np.float32)  # (N, H, W, C=4): read as NCHW before
    got = _all(_npz(tmp_path, x=nhwc))
    want = torch.from_numpy(nhwc).permute(0, 3, 1, 2)
    assert got.shape[1:] == (4, 8, 8)
    key = lambda t: sorted(map(tuple, t.flatten(1).tolist()))  # noqa: E731  (order-free comparison)
    assert key(got) == key(want)
    for shape, expect in [((20, 3, 6, 6), (3, 6, 6)), ((20, 6, 6, 3), (3, 6, 6)), ((20, 1, 4, 4), (1, 4, 4)),
                          ((20, 4, 4, 1), (1, 4, 4)), ((20, 2, 7, 7), (2, 7, 7)), ((20, 7, 7, 2), (2, 7, 7))]:
        assert _all(_npz(tmp_path, "s.npz", x=rng.random(shape).astype(np.float32))).shape[1:] == expect, shape
    for shape in [(20, 8, 8, 8), (20, 3, 3, 3), (20, 4, 6, 3)]:
        with pytest.raises(DataError, match="channel axis"):
            data.load(_npz(tmp_path, "amb.npz", x=rng.random(shape).astype(np.float32)))


def test_empty_and_damaged_npz(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DataError, match="cannot read as .npz"):
        data.load(str(tmp_path / "empty.npz"))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="cannot read as .npz"):
        data.load(str(tmp_path / "junk.npz"))


def _idx(path, head, body=b"", gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(head + body)
    return str(path)


@pytest.mark.parametrize("name, head, body, match", [
    ("trunc-images-idx3-ubyte", bytes([0, 0, 8, 3]) + struct.pack(">I", 4), b"", "truncated IDX header"),
    ("short-images-idx3-ubyte", bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 3, 3), b"\x00" * 10, "holds 10 bytes"),
    ("long-images-idx3-ubyte", bytes([0, 0, 8, 3]) + struct.pack(">3I", 1, 2, 2), b"\x00" * 9, "holds more"),
    ("zero-images-idx3-ubyte", bytes([0, 0, 8, 0]), b"", "bad magic"),
    ("huge-images-idx3-ubyte", bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31), b"", "holds 0 bytes"),
])
def test_malformed_idx(tmp_path, name, head, body, match):
    with pytest.raises(DataError, match=match):
        data.load(_idx(tmp_path / name, head, body))


def test_broken_gzip_idx(tmp_path):
    good = gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 4, 2, 2) + b"\x01" * 16)
    path = tmp_path / "x-images-idx3-ubyte.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="cannot read as an IDX file"):
        data.load(str(path))
    path.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="IDX"):
        data.load(str(path))
