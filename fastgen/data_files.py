"""Local data files for fastgen.data: IDX (MNIST's own format, gzipped or not), .npz archives
and image class folders, read into {split-or-"all": (images, labels)}; the value scale that maps
a dataset's pixel values to [0, 1] (or refuses an ambiguous range); and DataError, the one error
of fastgen's data layer (fastgen.data and fastgen.mnist raise it too)."""
import gzip
import math
import os
import struct
import zipfile
import zlib

import numpy as np

LEVELS_MAX = 31       # integer data up to this value: levels 0..top (e.g. binary 0/1, digits' 0..16)
GREY8_MIN = 128       # integer data from this value up (to 255): 8-bit grey 0..255
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff")


class DataError(ValueError):
    """The data cannot be found, read, or has an unusable shape."""


def _need(module, pip_name, what):
    try:
        return __import__(module)
    except ImportError as exc:
        raise DataError(f"{what} needs the optional package {pip_name!r}, which is not installed: "
                        f"pip install {pip_name}") from exc


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
