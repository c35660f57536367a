"""The training loop for every model family (see families), 1 process or many under torchrun.

A run goes: resolve (the options -> model, data, optimisers), restore (--resume: the checkpoint's
weights, optimiser and counters), then epochs (one pass over the data each, the family's step per
minibatch) each followed by the end of epoch (validation, the best weights, history, checkpoint).

Model selection: the checkpoint keeps the last weights (to resume) and, for likelihood models, the
weights of the epoch with the lowest validation loss ("best"; small datasets such as digits
overfit), which sample/score/features use by default.

Determinism: epoch e reads the permutation (and, with dynamic binarisation, the binary draw) of a
generator seeded by (seed, e); the model's own noise (VAE z, GAN z) comes from a generator whose
state is checkpointed. So --resume continues exactly where the run stopped (same world size).

Safety: one training per run folder (an exclusive lock file); a resumed run keeps its settings
(options that contradict the checkpoint are refused); a non-finite loss, validation loss or
weight stops the run with a "diverged" error and leaves the last finite checkpoint in place;
history.json is rewritten with every checkpoint. Setup errors are collective under torchrun:
every rank stops, and rank 0 reports.
"""
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch

from fastgen import data as fdata
from fastgen.train import distributed
from fastgen.train.checkpoint import (CheckpointError, check_resumable, load_checkpoint,
                                      remove_stale_temps, save_checkpoint, write_atomic)
from fastgen.train.lock import run_lock
from fastgen.train.options import check_hp, check_out, check_resume_options
from fastgen.train.registry import ModelSpec, build_model, check_overrides, resolve_spec, user_spec


class DivergedError(ValueError):
    """The loss, the validation loss or the weights became NaN or infinite."""


@dataclass
class TrainConfig:
    model: str
    out: str
    data: str = None              # None: "digits" (a resumed run: the checkpoint's)
    epochs: int = None            # None: the model's default
    batch_size: int = None
    lr: float = None
    binarize: str = None          # None: the family's default (threshold; GAN: none; --levels K: none)
    levels: int = None            # K-level quantisation instead of binarisation
    classes: str = None           # e.g. "0-4": train on these labels only
    limit: int = None             # use only the first `limit` training images (quick runs)
    max_steps: int = None         # stop after this many optimiser steps in total
    seed: int = None              # None: 0 (a resumed run: the checkpoint's)
    model_kwargs: dict = field(default_factory=dict)
    progress: bool = True
    resume: bool = False
    device: str = None


@dataclass
class Run:
    """A training run in memory: what resolve builds and restore fills in, what epochs advance."""
    spec: ModelSpec
    data_cfg: dict
    hp: dict
    model: torch.nn.Module
    kwargs: dict                  # the model's constructor options (stored in the checkpoint)
    opts: dict
    noise: torch.Generator
    x_train: torch.Tensor
    x_val: torch.Tensor
    epoch: int = 0                # epochs finished
    step: int = 0                 # optimiser steps taken
    skip: int = 0                 # minibatches of the current epoch already done (a mid-epoch stop)
    history: list = field(default_factory=list)
    best: dict = None

    @property
    def family(self):
        return self.spec.family


def data_config(cfg, family):
    """The run's data settings (the checkpoint's "data") from the options and the family's defaults."""
    binarize = family.default_binarize(cfg.levels) if cfg.binarize is None else cfg.binarize
    if binarize not in fdata.BINARIZE_CHOICES:
        raise fdata.DataError(f"binarize must be one of {', '.join(fdata.BINARIZE_CHOICES)}; got {binarize!r}")
    if binarize != "none" and cfg.levels not in (None, 2):
        raise fdata.DataError("--binarize and --levels > 2 cannot be combined")
    family.check_data(binarize, cfg.levels)
    if cfg.limit is not None and cfg.limit <= 0:
        raise fdata.DataError(f"limit must be positive; got {cfg.limit}")
    return {"name": cfg.data or "digits", "binarize": binarize, "levels": cfg.levels, "classes": cfg.classes,
            "seed": cfg.seed or 0, "limit": cfg.limit}


def validation_loss(model, family, x, seed=0):
    """The end of an epoch's validation loss (None for a family without one); a name of this
    module so that a test can stop a run here."""
    return family.validation_loss(model, x, seed=seed)


# --- the run ---------------------------------------------------------------------------------
def _log(info, msg):
    if info.is_main:
        print(msg, file=sys.stderr, flush=True)


def _progress(info, enabled, total, desc):
    # No bar unless a person watches: tqdm's \r frames would fill a piped or redirected log.
    if not (enabled and info.is_main) or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


def train(cfg):
    """Train (or resume) per `cfg`; writes OUT/checkpoint.pt each epoch; returns a summary dict."""
    info = distributed.setup(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        distributed.cleanup(info)


def _train(cfg, info):
    ckpt = check_out(cfg.out)
    folder = os.path.dirname(os.path.abspath(ckpt))
    created = not os.path.exists(folder)
    with contextlib.ExitStack() as stack:
        def prepare():
            if info.is_main:
                os.makedirs(folder, exist_ok=True)
                stack.enter_context(run_lock(ckpt))
                removed = remove_stale_temps(folder)
                if removed:
                    _log(info, f"removed {len(removed)} temp file(s) left by an interrupted save: {', '.join(removed)}")
            payload = _resume_payload(cfg, ckpt) if cfg.resume else None
            if payload is None and os.path.exists(ckpt):
                raise CheckpointError(f"{ckpt} exists: pass --resume to continue it, or choose another --out")
            run = _resolve(cfg, info, ckpt, payload)
            if payload is not None:
                _restore(run, payload, ckpt, info)
            return run

        try:
            run = distributed.collective(prepare, info)
        except BaseException:
            stack.close()  # release the lock, then drop a folder this call created and left empty
            if info.is_main and created and os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
            raise
        return _epochs(cfg, info, ckpt, run)


def _resume_payload(cfg, ckpt):
    payload = load_checkpoint(ckpt)
    check_resumable(ckpt, payload)
    return payload


def _resolve(cfg, info, ckpt, payload=None):
    """Options (and, resuming, the checkpoint's settings) -> a Run: the model on its device, the
    data, the optimisers and the noise generator, at epoch 0."""
    if payload is not None:
        spec = resolve_spec(payload["model"]["name"], cfg.model)
        check_resume_options(cfg, payload, ckpt)
        data_cfg, hp = payload["data"], dict(payload["train"])
        if cfg.epochs is not None:
            hp["epochs"] = cfg.epochs
        hp["max_steps"] = cfg.max_steps  # a step limit applies to one invocation only
        overrides, shape = payload["model"]["kwargs"], payload["model"]["input_shape"]
    else:
        spec = user_spec(cfg.model)
        check_overrides(spec, cfg.model_kwargs or {})
        data_cfg = data_config(cfg, spec.family)
        hp = {"epochs": spec.epochs if cfg.epochs is None else cfg.epochs,
              "batch_size": spec.batch_size if cfg.batch_size is None else cfg.batch_size,
              "lr": spec.lr if cfg.lr is None else cfg.lr, "seed": cfg.seed or 0, "max_steps": cfg.max_steps}
        overrides, shape = cfg.model_kwargs, None
    check_hp(hp)
    x_train, _ = fdata.load_split(data_cfg, "train")
    x_val, _ = fdata.load_split(data_cfg, "val")
    torch.manual_seed(hp["seed"])  # the same initial weights on every rank (DDP also broadcasts)
    model, kwargs = build_model(spec, x_train.shape[1:] if shape is None else shape, fdata.num_levels(data_cfg),
                                overrides)
    fdata.check_shape(x_train, model.input_shape)
    model.to(info.device)
    return Run(spec=spec, data_cfg=data_cfg, hp=hp, model=model, kwargs=kwargs,
               opts=spec.family.optimizers(model, hp["lr"]),
               noise=torch.Generator(device=info.device).manual_seed(hp["seed"] * 7919 + info.rank),
               x_train=x_train, x_val=x_val)


def _restore(run, payload, ckpt, info):
    """--resume: the checkpoint's weights, optimiser states, counters, history, best weights and
    (same world size) noise generator state into `run`."""
    try:
        run.model.load_state_dict(payload["model_state"])
    except (RuntimeError, KeyError) as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])[:200]
        raise CheckpointError(f"{ckpt}: weights do not fit model {run.spec.name!r} ({detail})") from None
    try:
        for k, o in run.opts.items():
            o.load_state_dict(payload["optim_state"][k])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{ckpt}: the optimiser state does not fit ({type(exc).__name__})") from None
    st = payload["state"]
    run.epoch, run.step, run.skip = st["epoch"], st["step"], st["batch_in_epoch"]
    run.history, run.best = list(st["history"]), payload.get("best")
    if st.get("world") == info.world and "noise_state" in payload:
        run.noise.set_state(payload["noise_state"])


def _epochs(cfg, info, ckpt, run):
    """Epochs until hp["epochs"] (or --max-steps); returns the summary dict of train()."""
    hp, max_steps = run.hp, run.hp.get("max_steps")
    if run.epoch >= hp["epochs"] or (max_steps is not None and run.step >= max_steps):
        why = (f"--max-steps {max_steps} already reached (step {run.step})" if run.epoch < hp["epochs"] else
               f"it finished epoch {run.epoch} of {hp['epochs']}; pass --epochs N > {run.epoch} to train further")
        _log(info, f"nothing left to train in {ckpt}: {why}")
        return _summary(ckpt, run, info)
    nets = run.family.wrap(run.model, info)
    run.model.train()
    _log(info, f"training {run.spec.name} ({sum(p.numel() for p in run.model.parameters()):,} parameters) on "
               f"{run.data_cfg['name']}: {len(run.x_train)} images {tuple(run.x_train.shape[1:])}, {hp['epochs']} "
               f"epochs, batch {hp['batch_size']}, {info.world} process(es) -> {ckpt}")
    while run.epoch < hp["epochs"]:
        t0 = time.time()
        sums, count, stopped_at = _epoch(cfg, info, ckpt, run, nets)
        if stopped_at is not None:  # mid-epoch stop: the checkpoint resumes at the next minibatch
            _save(ckpt, run, info, stopped_at)
            break
        _end_of_epoch(info, ckpt, run, sums, count, t0)
        if max_steps is not None and run.step >= max_steps:
            break
    distributed.barrier(info)
    return _summary(ckpt, run, info)


def _epoch(cfg, info, ckpt, run, nets):
    """One pass over the training data from minibatch run.skip, a family step per minibatch:
    (sums of the step stats, minibatches done, the next minibatch if --max-steps stopped the pass
    before its end else None)."""
    n, bs, max_steps = len(run.x_train), run.hp["batch_size"], run.hp.get("max_steps")
    per_epoch = math.ceil(n / bs)
    gen_e = torch.Generator().manual_seed(run.hp["seed"] * 100003 + run.epoch)
    perm = torch.randperm(n, generator=gen_e)
    x_epoch = fdata.stochastic_binarize(run.x_train, gen_e) if run.data_cfg["binarize"] == "dynamic" else run.x_train

    def check(stats):  # decided on all ranks together, so no rank waits in a collective another has left
        if not distributed.all_ok(all(math.isfinite(v) for v in stats.values()), info):
            bad = ", ".join(f"{k} {v}" for k, v in stats.items() if not math.isfinite(v)) or "another rank's loss"
            raise _diverged(ckpt, run, f"{bad} is not finite")

    bar = _progress(info, cfg.progress, per_epoch - run.skip, f"epoch {run.epoch + 1}/{run.hp['epochs']}")
    sums, count = {}, 0
    try:
        for b in range(run.skip, per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            xb = x_epoch[idx[info.rank::info.world]].to(info.device)
            try:  # the loss: this shard's part of the global batch mean (DDP averages over ranks)
                stats = run.family.step(run.model, nets, run.opts, xb, run.noise, info.world / len(idx), check)
            except RuntimeError as exc:  # Adam's step size lr/(1-beta1^t) beyond the float range
                if "overflow" not in str(exc):
                    raise
                raise _diverged(ckpt, run, "the update overflows the weights' float range") from None
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            count, run.step = count + 1, run.step + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()})
            if max_steps is not None and run.step >= max_steps:
                return sums, count, (b + 1 if b + 1 < per_epoch else None)
        return sums, count, None
    finally:
        if bar is not None:
            bar.close()


def _end_of_epoch(info, ckpt, run, sums, count, t0):
    """Validation, the best weights so far, the history row and the checkpoint."""
    sums = distributed.mean_over_ranks(sums, info)  # log the mean over all ranks' shards
    row = {"epoch": run.epoch + 1, "step": run.step, "seconds": round(time.time() - t0, 3),
           **{f"train_{k}": v / max(count, 1) for k, v in sums.items()}}
    val = validation_loss(run.model, run.family, run.x_val.to(info.device), seed=run.hp["seed"])
    if val is not None and not math.isfinite(val):
        raise _diverged(ckpt, run, f"the validation loss is {val}")
    run.epoch, run.skip = run.epoch + 1, 0
    if val is not None:
        row["val_loss"] = val
        if run.best is None or val < run.best["val_loss"]:
            run.best = {"epoch": run.epoch, "val_loss": val,
                        "model_state": {k: v.detach().clone() for k, v in run.model.state_dict().items()}}
    run.history.append(row)
    _log(info, "epoch {epoch}: ".format(**row) + ", ".join(
        f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("train_", "val_"))))
    _save(ckpt, run, info, 0)


def _diverged(ckpt, run, what):
    last = f"{ckpt} keeps the last finite weights" if os.path.exists(ckpt) else "no checkpoint was written"
    return DivergedError(f"training diverged: {what} (after {run.step} steps); {last}; try a smaller --lr")


def _save(ckpt, run, info, batch_in_epoch):
    """The checkpoint (rank 0) and history.json next to it; refuses non-finite weights."""
    if not all(bool(torch.isfinite(p).all()) for p in run.model.parameters() if p.is_floating_point()):
        raise _diverged(ckpt, run, "the weights are not finite")
    if not info.is_main:
        return
    save_checkpoint(ckpt, {
        "model": {"name": run.spec.name, "kwargs": run.kwargs, "input_shape": list(run.model.input_shape),
                  "family": run.family.name},  # for people: loading goes by the registry name
        "data": run.data_cfg, "train": run.hp, "model_state": run.model.state_dict(),
        "optim_state": {k: o.state_dict() for k, o in run.opts.items()},
        "state": {"epoch": run.epoch, "step": run.step, "batch_in_epoch": batch_in_epoch, "history": run.history,
                  "world": info.world},
        "noise_state": run.noise.get_state(), **({"best": run.best} if run.best else {})})
    # history.json follows every checkpoint (a killed run leaves both consistent)
    write_atomic(os.path.join(os.path.dirname(ckpt), "history.json"),
                 json.dumps(run.history, indent=1, allow_nan=False))


def _summary(ckpt, run, info):
    return {"checkpoint": ckpt, "epoch": run.epoch, "step": run.step, "history": run.history, "model": run.model,
            "best": run.best, "family": run.family, "rank": info.rank, "world": info.world}
