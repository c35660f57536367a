"""Checkpoints: written atomically (temp file in the same folder + os.replace, so a crash never
leaves a half-written checkpoint under the real name) and read with torch.load(weights_only=True)
(no arbitrary code runs on load). A SHA-256 over the whole payload (tensors' bytes, dtypes and
shapes, and every plain value, in a fixed order) is stored with it, so flipped bits are refused
instead of loading silently. Every way a file can be unusable becomes one CheckpointError."""
import errno
import glob
import hashlib
import os
import tempfile
import warnings

import torch

FORMAT, VERSION = "fastgen-checkpoint", 2
LEGACY_VERSION = 1  # before checksums: loaded with a warning
FILENAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or not a fastgen checkpoint."""


def checkpoint_path(path):
    """DIR -> DIR/checkpoint.pt; a file path stays as is."""
    path = os.fspath(path)
    return os.path.join(path, FILENAME) if os.path.isdir(path) or not path.endswith(".pt") else path


def checksum(payload):
    """SHA-256 hex digest of a payload of dicts, lists, tensors and plain values: a depth-first
    walk with dict keys sorted, hashing each value's type tag, and for a tensor its dtype, shape
    and raw bytes (any device, any dtype, non-contiguous included)."""
    h = hashlib.sha256()

    def walk(v):
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy
        elif isinstance(v, dict):
            h.update(f"D{len(v)}".encode())
            for k in sorted(v, key=repr):
                h.update(f"K{k!r}".encode())
                walk(v[k])
        elif isinstance(v, (list, tuple)):
            h.update(f"{'L' if isinstance(v, list) else 'U'}{len(v)}".encode())
            for item in v:
                walk(item)
        else:
            h.update(f"V{type(v).__name__}:{v!r};".encode())

    walk(payload)
    return h.hexdigest()


def _write_error(path, exc):
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on device"
    else:
        text = str(exc).strip()
        why = text.splitlines()[0][:200] if text else type(exc).__name__
    return CheckpointError(f"cannot write the checkpoint {path}: {why} (an earlier checkpoint there is intact)")


def save_checkpoint(path, payload):
    path = checkpoint_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    body = {"format": FORMAT, "version": VERSION, **payload}
    body.pop("checksum", None)
    body["checksum"] = checksum(body)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            torch.save(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, (OSError, RuntimeError)):
            raise _write_error(path, exc) from None
        raise
    return path


def write_atomic(path, text):
    """Write a small text file atomically (temp + os.replace)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise


def remove_stale_temps(folder):
    """Delete `.checkpoint-*.tmp` left by a process killed mid-save (call with the run lock held).
    Returns the names removed."""
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(folder), ".checkpoint-*.tmp")):
        try:
            os.unlink(tmp)
            removed.append(os.path.basename(tmp))
        except FileNotFoundError:
            pass
    return removed


def _fail(path, what):
    raise CheckpointError(f"{path}: {what}")


def _check_structure(path, payload):
    """The parts every use reads: a model description, the data settings and the weights."""
    model = payload.get("model")
    if not isinstance(model, dict):
        _fail(path, "'model' is missing or not a dict")
    if not isinstance(model.get("name"), str):
        _fail(path, "the model name is missing or not a string")
    if not isinstance(model.get("kwargs"), dict) or not all(isinstance(k, str) for k in model["kwargs"]):
        _fail(path, "the model kwargs are missing or not a dict of named options")
    shape = model.get("input_shape")
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        _fail(path, f"the model input_shape must be 3 positive ints; got {shape!r}")
    if not isinstance(payload.get("data"), dict) or not isinstance(payload["data"].get("name"), str):
        _fail(path, "'data' is missing or not a dict with a name")
    for key in ("model_state",):
        state = payload.get(key)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            _fail(path, f"{key!r} is missing or not a dict of tensors")
    best = payload.get("best")
    if best is not None and (not isinstance(best, dict) or not isinstance(best.get("model_state"), dict)):
        _fail(path, "'best' is not a dict with a model_state")


def check_resumable(path, payload):
    """The parts --resume reads in addition: training state, hyperparameters, optimiser state."""
    state = payload.get("state")
    if not isinstance(state, dict):
        _fail(path, "'state' is missing or not a dict: the run cannot be resumed")
    for key in ("epoch", "step", "batch_in_epoch"):
        if not isinstance(state.get(key), int) or isinstance(state.get(key), bool) or state[key] < 0:
            _fail(path, f"state.{key} must be a non-negative int; got {state.get(key)!r}")
    if not isinstance(state.get("history"), list):
        _fail(path, "state.history must be a list")
    train = payload.get("train")
    if not isinstance(train, dict) or not all(k in train for k in ("epochs", "batch_size", "lr", "seed")):
        _fail(path, "'train' is missing or lacks epochs, batch_size, lr or seed")
    if not isinstance(payload.get("optim_state"), dict):
        _fail(path, "'optim_state' is missing or not a dict")


def load_checkpoint(path):
    path = checkpoint_path(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (zip, pickle, EOF, unsafe-global errors all mean "unusable")
        text = str(exc).strip()
        if "weights_only" in text or "Unsupported global" in text:
            why = "it holds objects other than tensors and plain containers"
        else:
            why = f"{type(exc).__name__}: {text.splitlines()[0][:160] if text else 'unreadable'}"
        raise CheckpointError(f"{path} is not a readable fastgen checkpoint ({why})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastgen checkpoint")
    version = payload.get("version")
    if version not in (LEGACY_VERSION, VERSION):
        raise CheckpointError(f"{path} has checkpoint version {version!r}; "
                              f"this fastgen reads versions {LEGACY_VERSION} and {VERSION}")
    stored = payload.pop("checksum", None)
    if version == LEGACY_VERSION:
        # written before checksums existed: still loaded (the same restricted torch.load and
        # structure checks), with a warning that its bytes cannot be verified
        if stored is not None:
            raise CheckpointError(f"{path}: a version-{LEGACY_VERSION} checkpoint cannot carry a checksum")
        warnings.warn(f"{path} was written by an older fastgen (checkpoint version {LEGACY_VERSION}, no "
                      "checksum): its contents cannot be verified; the next save adds a checksum", stacklevel=2)
    elif not isinstance(stored, str):
        raise CheckpointError(f"{path} has no checksum")
    elif checksum(payload) != stored:
        raise CheckpointError(f"{path} is corrupt: its contents do not match the checksum stored with them")
    _check_structure(path, payload)
    return payload
