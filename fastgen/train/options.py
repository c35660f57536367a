"""Checks of the training options before anything runs: where the run goes (--out), that the
hyperparameters are usable, and that options given with --resume agree with the run."""
import math
import os

from fastgen import data as fdata
from fastgen.train.checkpoint import CheckpointError, checkpoint_path


def check_out(out):
    """The checkpoint path of --out; refuses an existing file that is not a checkpoint path."""
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out) and not out.endswith(".pt"):
        raise fdata.DataError(f"--out {out} is an existing file; --out names a run folder")
    ckpt = checkpoint_path(out)
    folder = os.path.dirname(os.path.abspath(ckpt))
    parent = folder
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise fdata.DataError(f"--out {out}: {parent} is a file, not a folder")
    return ckpt


def _same(given, stored):
    if isinstance(given, str) and isinstance(stored, str) and os.path.exists(given) and os.path.exists(stored):
        return os.path.realpath(given) == os.path.realpath(stored)
    return given == stored


def check_resume_options(cfg, payload, ckpt):
    """Options given with --resume must agree with the run: it keeps its data, hyperparameters
    and model (only --epochs, --max-steps, --device and --no-progress may change)."""
    data, hp, kwargs = payload["data"], payload["train"], payload["model"]["kwargs"]
    missing = object()
    given = [("--data", cfg.data, data.get("name")), ("--binarize", cfg.binarize, data.get("binarize")),
             ("--levels", cfg.levels, data.get("levels")), ("--limit", cfg.limit, data.get("limit")),
             ("--seed", cfg.seed, hp.get("seed")), ("--lr", cfg.lr, hp.get("lr")),
             ("--batch-size", cfg.batch_size, hp.get("batch_size"))]
    if cfg.classes is not None:
        given.append(("--classes", fdata.parse_classes(cfg.classes), fdata.parse_classes(data.get("classes"))))
    given += [(f"--set {k}", v, kwargs.get(k, missing)) for k, v in (cfg.model_kwargs or {}).items()]
    bad = [f"{flag} {value!r} (the run has {'no such option' if stored is missing else repr(stored)})"
           for flag, value, stored in given if value is not None and not _same(value, stored)]
    if bad:
        raise CheckpointError(f"--resume continues {ckpt} with its own settings; {', '.join(bad)} "
                              "contradicts them: start a new --out to change them")


def check_hp(hp):
    for key in ("epochs", "batch_size"):
        if not isinstance(hp[key], int) or isinstance(hp[key], bool) or hp[key] <= 0:
            raise ValueError(f"{key} must be a positive int; got {hp[key]!r}")
    lr = hp["lr"]
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a finite number >= 0; got {lr!r}")
