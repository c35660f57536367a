"""The user's job: training loops, checkpoints, multi-process runs, scoring (used by fastgen.cli)."""
from fastgen.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fastgen.train.evaluate import NonFiniteError, auroc, features, linear_probe, load_trained, nll
from fastgen.train.loop import DivergedError, TrainConfig, train
from fastgen.train.registry import MODELS, ModelError, get_spec, user_spec

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "NonFiniteError", "auroc", "features",
           "linear_probe", "load_trained", "nll", "DivergedError", "TrainConfig", "train", "MODELS", "ModelError",
           "get_spec", "user_spec"]
