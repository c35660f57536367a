"""Training loops for every model family (see registry), 1 process or many under torchrun.

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
from torch import nn

from fastgen import data as fdata
from fastgen.train import distributed
from fastgen.train.checkpoint import (CheckpointError, check_resumable, load_checkpoint,
                                      remove_stale_temps, save_checkpoint, write_atomic)
from fastgen.train.lock import run_lock
from fastgen.train.options import check_hp, check_out, check_resume_options
from fastgen.train.registry import build_model, check_overrides, resolve_spec, user_spec

BINARIZE_CHOICES = ("threshold", "stochastic", "dynamic", "none")


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
    binarize: str = None          # None: "threshold" for likelihood models, "none" for GANs
    levels: int = None            # K-level quantisation instead of binarisation
    classes: str = None           # e.g. "0-4": train on these labels only
    limit: int = None             # use only the first `limit` training images (quick runs)
    max_steps: int = None         # stop after this many optimiser steps in total
    seed: int = None              # None: 0 (a resumed run: the checkpoint's)
    model_kwargs: dict = field(default_factory=dict)
    progress: bool = True
    resume: bool = False
    device: str = None


# --- data ------------------------------------------------------------------------------------
def data_config(cfg, family):
    binarize = cfg.binarize
    if binarize is None:
        binarize = "none" if (family == "gan" or cfg.levels) else "threshold"
    if binarize not in BINARIZE_CHOICES:
        raise fdata.DataError(f"binarize must be one of {', '.join(BINARIZE_CHOICES)}; got {binarize!r}")
    if binarize != "none" and cfg.levels not in (None, 2):
        raise fdata.DataError("--binarize and --levels > 2 cannot be combined")
    if family == "ar" and binarize == "none" and not cfg.levels:
        raise fdata.DataError("autoregressive models need discrete data: use --binarize or --levels K")
    if cfg.limit is not None and cfg.limit <= 0:
        raise fdata.DataError(f"limit must be positive; got {cfg.limit}")
    return {"name": cfg.data or "digits", "binarize": binarize, "levels": cfg.levels, "classes": cfg.classes,
            "seed": cfg.seed or 0, "limit": cfg.limit}


def num_levels(data_cfg):
    if data_cfg["binarize"] != "none":
        return 2
    return data_cfg["levels"]  # None: grey values in [0, 1]


def load_split(data_cfg, split, classes="config"):
    """Images, labels of a split under a checkpoint's data config. Dynamic binarisation: grey
    training images (binarised per epoch by the loop), a fixed stochastic draw for val/test."""
    b = data_cfg["binarize"]
    if b == "dynamic":
        b = False if split == "train" else "stochastic"
    elif b == "none":
        b = False
    x, y = fdata.load(data_cfg["name"], split, binarize=b, seed=data_cfg["seed"], levels=data_cfg["levels"],
                      classes=data_cfg["classes"] if classes == "config" else classes)
    if split == "train" and data_cfg.get("limit"):
        x, y = x[:data_cfg["limit"]], y[:data_cfg["limit"]]
    if len(x) == 0:
        raise fdata.DataError(f"{data_cfg['name']}: the {split} split is empty (classes={data_cfg['classes']})")
    return x, y


# --- objectives ------------------------------------------------------------------------------
class PerExampleLoss(nn.Module):
    """forward(x, generator) -> (N,) training loss per example (DDP wraps this module)."""

    def __init__(self, model, family):
        super().__init__()
        self.model, self.family = model, family

    def forward(self, x, generator=None):
        if self.family == "vae":
            return -self.model.elbo(x, generator=generator)
        return -self.model.log_prob(x)


@torch.no_grad()
def validation_loss(model, family, x, batch=256, seed=0):
    """Mean validation loss in nats (AR: NLL; VAE: -ELBO); None for GANs."""
    if family == "gan":
        return None
    gen = torch.Generator(device=x.device).manual_seed(seed)
    was = model.training
    model.eval()
    try:
        total = sum(float(PerExampleLoss(model, family)(x[i:i + batch], gen).sum())
                    for i in range(0, len(x), batch))
    finally:
        model.train(was)
    return total / len(x)


# --- the loop --------------------------------------------------------------------------------
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


def _adam(params, **kw):
    """Adam with the fused kernel (one pass over parameters, gradients and both moments) where
    torch has it: on the CPU the default for-loop Adam makes about seven passes, which for MADE's
    12.5M weights took longer than the forward and backward of its masked layers."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, fused=fused or None, **kw)


def _optimizers(model, family, lr):
    if family == "gan":
        betas = (0.5, 0.999)  # the DCGAN paper's Adam setting
        return {"d": _adam(model.discriminator.parameters(), lr=lr, betas=betas),
                "g": _adam(model.generator.parameters(), lr=lr, betas=betas)}
    return {"model": _adam(model.parameters(), lr=lr)}


def train(cfg):
    """Train (or resume) per `cfg`; writes OUT/checkpoint.pt each epoch; returns a summary dict."""
    info = distributed.setup(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        distributed.cleanup(info)


def _finite_weights(model):
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.is_floating_point())


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
            return _prepare(cfg, info, ckpt)

        try:
            run = distributed.collective(prepare, info)
        except BaseException:
            stack.close()  # release the lock, then drop a folder this call created and left empty
            if info.is_main and created and os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
            raise
        return _loop(cfg, info, ckpt, run)


def _prepare(cfg, info, ckpt):
    payload = None
    if cfg.resume:
        payload = load_checkpoint(ckpt)
        check_resumable(ckpt, payload)
        spec = resolve_spec(payload["model"]["name"], cfg.model)
        check_resume_options(cfg, payload, ckpt)
        data_cfg, hp = payload["data"], dict(payload["train"])
        if cfg.epochs is not None:
            hp["epochs"] = cfg.epochs
        hp["max_steps"] = cfg.max_steps  # a step limit applies to one invocation only
        overrides = payload["model"]["kwargs"]
    else:
        if os.path.exists(ckpt):
            raise CheckpointError(f"{ckpt} exists: pass --resume to continue it, or choose another --out")
        spec = user_spec(cfg.model)
        check_overrides(spec, cfg.model_kwargs or {})
        data_cfg = data_config(cfg, spec.family)
        hp = {"epochs": spec.epochs if cfg.epochs is None else cfg.epochs,
              "batch_size": spec.batch_size if cfg.batch_size is None else cfg.batch_size,
              "lr": spec.lr if cfg.lr is None else cfg.lr, "seed": cfg.seed or 0, "max_steps": cfg.max_steps}
        overrides = cfg.model_kwargs
    check_hp(hp)
    x_train, _ = load_split(data_cfg, "train")
    x_val, _ = load_split(data_cfg, "val")
    torch.manual_seed(hp["seed"])  # the same initial weights on every rank (DDP also broadcasts)
    shape = payload["model"]["input_shape"] if payload else x_train.shape[1:]
    model, kwargs = build_model(spec, shape, num_levels(data_cfg), overrides)
    if payload:
        try:
            model.load_state_dict(payload["model_state"])
        except (RuntimeError, KeyError) as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])[:200]
            raise CheckpointError(f"{ckpt}: weights do not fit model {spec.name!r} ({detail})") from None
    if tuple(x_train.shape[1:]) != tuple(model.input_shape):
        raise fdata.DataError(f"data shape {tuple(x_train.shape[1:])} does not match the model's "
                              f"input_shape {tuple(model.input_shape)}")
    model.to(info.device)
    opts = _optimizers(model, spec.family, hp["lr"])
    noise = torch.Generator(device=info.device).manual_seed(hp["seed"] * 7919 + info.rank)
    state = {"epoch": 0, "step": 0, "skip": 0, "history": [], "best": None}
    if payload:
        try:
            for k, o in opts.items():
                o.load_state_dict(payload["optim_state"][k])
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{ckpt}: the optimiser state does not fit ({type(exc).__name__})") from None
        st = payload["state"]
        state.update(epoch=st["epoch"], step=st["step"], skip=st["batch_in_epoch"], history=list(st["history"]),
                     best=payload.get("best"))
        if st.get("world") == info.world and "noise_state" in payload:
            noise.set_state(payload["noise_state"])
    return {"spec": spec, "data_cfg": data_cfg, "hp": hp, "model": model, "kwargs": kwargs, "opts": opts,
            "noise": noise, "x_train": x_train, "x_val": x_val, **state}


def _loop(cfg, info, ckpt, run):
    spec, data_cfg, hp, model, kwargs = run["spec"], run["data_cfg"], run["hp"], run["model"], run["kwargs"]
    opts, noise, x_train, x_val = run["opts"], run["noise"], run["x_train"], run["x_val"]
    epoch, step, skip, history, best = run["epoch"], run["step"], run["skip"], run["history"], run["best"]
    n, bs = len(x_train), hp["batch_size"]
    per_epoch = math.ceil(n / bs)
    max_steps = hp.get("max_steps")

    def summary():
        return {"checkpoint": ckpt, "epoch": epoch, "step": step, "history": history, "model": model,
                "best": best, "family": spec.family, "rank": info.rank, "world": info.world}

    if epoch >= hp["epochs"] or (max_steps is not None and step >= max_steps):
        why = (f"--max-steps {max_steps} already reached (step {step})" if epoch < hp["epochs"] else
               f"it finished epoch {epoch} of {hp['epochs']}; pass --epochs N > {epoch} to train further")
        _log(info, f"nothing left to train in {ckpt}: {why}")
        return summary()
    if spec.family == "gan":
        g_net, d_net = distributed.wrap(model.generator, info), distributed.wrap(model.discriminator, info)
    else:
        loss_net = distributed.wrap(PerExampleLoss(model, spec.family), info)

    def diverged(what):
        last = (f"{ckpt} keeps the last finite weights" if os.path.exists(ckpt) else "no checkpoint was written")
        return DivergedError(f"training diverged: {what} (after {step} steps); {last}; try a smaller --lr")

    def save(batch_in_epoch):
        if not _finite_weights(model):
            raise diverged("the weights are not finite")
        if not info.is_main:
            return
        save_checkpoint(ckpt, {
            "model": {"name": spec.name, "kwargs": kwargs, "input_shape": list(model.input_shape),
                      "family": spec.family},
            "data": data_cfg, "train": hp, "model_state": model.state_dict(),
            "optim_state": {k: o.state_dict() for k, o in opts.items()},
            "state": {"epoch": epoch, "step": step, "batch_in_epoch": batch_in_epoch, "history": history,
                      "world": info.world},
            "noise_state": noise.get_state(), **({"best": best} if best else {})})
        # history.json follows every checkpoint (a killed run leaves both consistent)
        write_atomic(os.path.join(os.path.dirname(ckpt), "history.json"),
                     json.dumps(history, indent=1, allow_nan=False))

    model.train()
    _log(info, f"training {spec.name} ({sum(p.numel() for p in model.parameters()):,} parameters) on "
               f"{data_cfg['name']}: {n} images {tuple(x_train.shape[1:])}, {hp['epochs']} epochs, batch "
               f"{bs}, {info.world} process(es) -> {ckpt}")
    stopped = False
    while epoch < hp["epochs"] and not stopped:
        t0 = time.time()
        gen_e = torch.Generator().manual_seed(hp["seed"] * 100003 + epoch)
        perm = torch.randperm(n, generator=gen_e)
        x_epoch = fdata.stochastic_binarize(x_train, gen_e) if data_cfg["binarize"] == "dynamic" else x_train
        bar = _progress(info, cfg.progress, per_epoch - skip, f"epoch {epoch + 1}/{hp['epochs']}")
        sums, count = {}, 0
        try:
            for b in range(skip, per_epoch):
                idx = perm[b * bs:(b + 1) * bs]
                xb = x_epoch[idx[info.rank::info.world]].to(info.device)
                try:
                    if spec.family == "gan":
                        stats = model.train_step(xb, opts["d"], opts["g"], generator=noise, g_net=g_net,
                                                 d_net=d_net)
                    else:
                        per = loss_net(xb, noise)
                        loss = per.sum() * (info.world / len(idx))  # DDP averages: the global batch mean
                        stats = {"loss": float(per.detach().mean())}
                except RuntimeError as exc:  # Adam's step size lr/(1-beta1^t) beyond the float range
                    if "overflow" not in str(exc):
                        raise
                    raise diverged("the update overflows the weights' float range") from None
                # decided on all ranks together, so no rank waits in a collective another has left
                if not distributed.all_ok(all(math.isfinite(v) for v in stats.values()), info):
                    bad = ", ".join(f"{k} {v}" for k, v in stats.items() if not math.isfinite(v)) or "another rank's loss"
                    raise diverged(f"{bad} is not finite")
                if spec.family != "gan":
                    opts["model"].zero_grad(set_to_none=True)
                    loss.backward()
                    try:
                        opts["model"].step()
                    except RuntimeError as exc:
                        if "overflow" not in str(exc):
                            raise
                        raise diverged("the update overflows the weights' float range") from None
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count, step = count + 1, step + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()})
                if max_steps is not None and step >= max_steps:
                    stopped = b + 1 < per_epoch
                    skip_next = b + 1
                    break
            else:
                skip_next = per_epoch
        finally:
            if bar is not None:
                bar.close()
        if stopped:  # mid-epoch stop: the checkpoint resumes at the next minibatch
            save(skip_next)
            break
        sums = distributed.mean_over_ranks(sums, info)  # log the mean over all ranks' shards
        row = {"epoch": epoch + 1, "step": step, "seconds": round(time.time() - t0, 3),
               **{f"train_{k}": v / max(count, 1) for k, v in sums.items()}}
        val = validation_loss(model, spec.family, x_val.to(info.device), seed=hp["seed"])
        if val is not None and not math.isfinite(val):
            raise diverged(f"the validation loss is {val}")
        epoch, skip = epoch + 1, 0
        if val is not None:
            row["val_loss"] = val
            if best is None or val < best["val_loss"]:
                best = {"epoch": epoch, "val_loss": val,
                        "model_state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        history.append(row)
        _log(info, "epoch {epoch}: ".format(**row) + ", ".join(
            f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("train_", "val_"))))
        save(0)
        if max_steps is not None and step >= max_steps:
            break
    distributed.barrier(info)
    return summary()
