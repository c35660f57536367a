"""The user's job: training loops, checkpoints, multi-process runs, scoring (used by fastgen.cli).

The loop's names (DivergedError, TrainConfig, train) load on first use: sampling and scoring a
trained model never import the training loop."""
from fastgen.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fastgen.train.evaluate import NonFiniteError, auroc, features, linear_probe, load_trained, nll
from fastgen.train.families import FAMILIES
from fastgen.train.registry import MODELS, ModelError, get_spec, user_spec

_LOOP = ("DivergedError", "TrainConfig", "train")

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "NonFiniteError", "auroc", "features",
           "linear_probe", "load_trained", "nll", *_LOOP, "FAMILIES", "MODELS", "ModelError", "get_spec",
           "user_spec"]


def __getattr__(name):
    if name in _LOOP:
        from fastgen.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
