"""Checkpoints: written atomically (temp file in the same folder + os.replace, so a crash never
leaves a half-written checkpoint under the real name) and read with torch.load(weights_only=True)
(no arbitrary code runs on load). Every way a file can be unusable becomes one CheckpointError."""
import os
import tempfile

import torch

FORMAT, VERSION = "fastgen-checkpoint", 1
FILENAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or not a fastgen checkpoint."""


def checkpoint_path(path):
    """DIR -> DIR/checkpoint.pt; a file path stays as is."""
    path = os.fspath(path)
    return os.path.join(path, FILENAME) if os.path.isdir(path) or not path.endswith(".pt") else path


def save_checkpoint(path, payload):
    path = checkpoint_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path):
    path = checkpoint_path(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
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
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')!r}; "
                              f"this fastgen reads version {VERSION}")
    for key in ("model", "data", "model_state"):
        if key not in payload:
            raise CheckpointError(f"{path} is missing {key!r}")
    return payload
