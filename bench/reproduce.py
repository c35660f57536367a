"""Reproduce the published binarized-MNIST table, one model at a time, resumably.

    python bench/reproduce.py MODEL [--resume] [--hours H] [--threads T]
    python bench/reproduce.py --report          # rewrite the curves from bench/results/reproduce.json

MODEL is a row of bench/recipes.py (fvsbn, nade, made, made-ensemble, vae, iwae, pixelcnn,
pixelrnn-row, pixelrnn-diagonal). Data: fastgen.data.load("mnist"): train 50k / val 10k / test 10k.
Training images are binarised afresh each epoch (dynamic binarisation); validation and test use
the static binarisation (binarize="stochastic", seed=0), one fixed Bernoulli draw per image, the
same distribution as the benchmark's binarised file, not its exact bits.

The run folder (bench/runs/MODEL) holds checkpoint.pt, written atomically every few minutes and
at every epoch end, with everything needed to go on exactly (weights, Adam state, epoch, batch,
learning rate, plateau counters, best weights, history, the noise generator). --hours H stops
after H hours of training in this invocation (checkpoint written); --resume goes on from it.
SIGTERM or Ctrl-C stops the same way: after the current minibatch, checkpoint and report.
Early stopping on the validation NLL, the learning rate decayed on a plateau (the recipe's); a
plateau is an epoch that gains less than MIN_GAIN = 0.01 nats.

Every stop (finished or not) evaluates the best weights on the test set (exact NLL for the
autoregressive models, the 32-mask ensemble for made-ensemble, IWAE with k = 5000 for the VAEs)
and writes bench/results/reproduce.json and a learning curve bench/results/reproduce_MODEL.png.
"""
import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from recipes import RECIPES, build  # noqa: E402

from fastgen import data as fdata  # noqa: E402
from fastgen.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

RESULTS = os.path.join(HERE, "results", "reproduce.json")
RUNS = os.path.join(HERE, "runs")
TEST_IWAE_K = 5000
SAVE_EVERY = 600.0  # seconds between mid-epoch checkpoints
MIN_GAIN = 0.01  # nats of validation NLL an epoch must gain to restart the plateau counters


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def free_parameters(model):
    """Free parameters (masked-out weights excluded where the model says so)."""
    if hasattr(model, "num_parameters"):
        return model.num_parameters()
    return sum(p.numel() for p in model.parameters())


def per_example_loss(model, recipe, x, generator):
    """(N,) training loss in nats: exact NLL, -ELBO or -IWAE_k."""
    if recipe["objective"] == "nll":
        return -model.log_prob(x)
    if recipe["objective"] == "elbo":
        return -model.elbo(x, generator=generator)
    return -model.iwae(x, k=recipe["iwae_k"], generator=generator)


@torch.no_grad()
def validation_nll(model, recipe, x, batch=500):
    """Mean validation loss in nats (the early-stopping criterion): exact NLL (for a mask
    ensemble the mean single-mask NLL over its first 4 masks, a cheap proxy), -ELBO or -IWAE_k."""
    model.eval()
    gen = torch.Generator().manual_seed(1)
    masks = range(min(getattr(model, "num_masks", 1), 4)) if recipe.get("ensemble") else [None]
    total, current = 0.0, getattr(model, "mask_index", None)
    for m in masks:
        if m is not None:
            model.set_mask(m)
        for i in range(0, len(x), batch):
            total += float(per_example_loss(model, recipe, x[i:i + batch], gen).sum())
    if current is not None:
        model.set_mask(current)
    model.train()
    return total / (len(x) * len(masks))


@torch.no_grad()
def test_nll(model, recipe, x, batch=100):
    """Test NLL in nats: exact (AR; the ensemble's log-mean-exp for MADE masks) or the IWAE
    bound with k = 5000 (VAEs; batched, at most ~4M decoder outputs in memory at once)."""
    model.eval()
    gen = torch.Generator().manual_seed(2)
    total = 0.0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        if recipe["model"] == "VAE":
            total -= float(model.iwae(xb, k=TEST_IWAE_K, generator=gen).sum())
        elif recipe.get("ensemble"):
            total -= float(model.log_prob(xb, ensemble=recipe["ensemble"]).sum())
        else:
            total -= float(model.log_prob(xb).sum())
    return total / len(x)


def _atomic_json(path, obj):
    fd, tmp = tempfile.mkstemp(prefix=".reproduce-", suffix=".json.tmp", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def write_result(name, entry):
    results = {"models": {}}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            results = json.load(f)
    results.setdefault("models", {})[name] = entry
    results["models"] = dict(sorted(results["models"].items(), key=lambda kv: list(RECIPES).index(kv[0])))
    _atomic_json(RESULTS, results)


def plot_curve(name, entry):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no learning curve", file=sys.stderr)
        return
    hist = entry.get("history", [])
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot([h["epoch"] for h in hist], [h["val_nll"] for h in hist], label="validation")
    ax.plot([h["epoch"] for h in hist], [h["train_loss"] for h in hist], label="train", alpha=0.6)
    ax.axhline(entry["paper"], color="k", ls="--", lw=0.8, label=f"published {entry['paper']}")
    ax.axhline(entry["target"], color="r", ls=":", lw=0.8, label=f"target {entry['target']}")
    if hist:
        lo = min(min(h["val_nll"] for h in hist), entry["paper"]) - 1
        ax.set_ylim(lo, lo + 25)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.set_title(f"{name}: binarized MNIST")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "results", f"reproduce_{name}.png"))
    plt.close(fig)


def train(name, args):
    recipe = RECIPES[name]
    run = os.path.join(args.runs, name)
    ckpt = os.path.join(run, "checkpoint.pt")
    if os.path.exists(ckpt) and not args.resume:
        raise SystemExit(f"{ckpt} exists: pass --resume to continue it")
    torch.set_num_threads(args.threads)
    x_grey, _ = fdata.load("mnist", "train")
    x_val, _ = fdata.load("mnist", "val", binarize="stochastic", seed=0)
    torch.manual_seed(0)
    model = build(name)
    opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    noise = torch.Generator().manual_seed(12345)
    st = {"epoch": 0, "batch": 0, "lr": recipe["lr"], "history": [], "best": None, "since_best": 0,
          "since_decay": 0, "hours": 0.0, "cpus": [], "finished": False, "sessions": 0}
    if args.resume:
        payload = load_checkpoint(ckpt)
        model.load_state_dict(payload["model_state"])
        opt.load_state_dict(payload["optim_state"])
        noise.set_state(payload["noise_state"])
        st = payload["state"]
        if getattr(model, "num_masks", 1) > 1:
            model.set_mask(int(st.get("mask_index", 0)))
    st["sessions"] += 1
    if cpu_name() not in st["cpus"]:
        st["cpus"].append(cpu_name())
    for group in opt.param_groups:
        group["lr"] = st["lr"]

    def save():
        st["mask_index"] = getattr(model, "mask_index", 0)
        save_checkpoint(ckpt, {"model": {"name": name, "kwargs": dict(recipe["kwargs"]), "input_shape": [1, 28, 28]},
                               "data": {"name": "mnist", "binarize": "dynamic"},
                               "model_state": model.state_dict(), "optim_state": opt.state_dict(),
                               "noise_state": noise.get_state(), "state": st})

    n, bs = len(x_grey), recipe["batch_size"]
    per_epoch = math.ceil(n / bs)
    start = last_save = time.time()
    out_of_time = False
    stop = []  # SIGTERM / SIGINT: finish the batch, save, report the best weights, exit

    def on_signal(signum, frame):
        stop.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    print(f"{name}: {free_parameters(model):,} free parameters, epoch {st['epoch']} batch {st['batch']}, "
          f"lr {st['lr']:.2e}, {args.threads} thread(s)", file=sys.stderr, flush=True)
    while not st["finished"] and not out_of_time:
        t0, e = time.time(), st["epoch"]
        gen = torch.Generator().manual_seed(100003 * (e + 1))
        perm = torch.randperm(n, generator=gen)
        x_epoch = fdata.stochastic_binarize(x_grey, gen)   # dynamic binarisation
        sums = st.setdefault("epoch_sums", [0.0, 0])
        for b in range(st["batch"], per_epoch):
            xb = x_epoch[perm[b * bs:(b + 1) * bs]]
            loss = per_example_loss(model, recipe, xb, noise).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if getattr(model, "num_masks", 1) > 1:
                model.next_mask()                           # connectivity-agnostic training
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise SystemExit(f"{name}: the training loss diverged ({loss_value}) at epoch {e} batch {b}")
            sums[0] += loss_value * len(xb)
            sums[1] += len(xb)
            st["batch"] = b + 1
            now = time.time()
            if now - start > args.hours * 3600 or stop:
                out_of_time = True
                break
            if now - last_save > SAVE_EVERY:
                st["hours"] += (now - last_save) / 3600
                last_save = now
                save()
        if out_of_time:
            break
        val = validation_nll(model, recipe, x_val)
        row = {"epoch": e + 1, "train_loss": sums[0] / max(sums[1], 1), "val_nll": val, "lr": st["lr"],
               "seconds": round(time.time() - t0, 1)}
        st["history"].append(row)
        st.update(epoch=e + 1, batch=0, epoch_sums=[0.0, 0])
        # the best weights are the lowest validation NLL; the plateau counters restart only on a
        # gain of at least MIN_GAIN nats (at a learning rate of 1e-7 NADE still gained 0.001 nats
        # an epoch, and never stopped)
        gain = math.inf if st["best"] is None else st["best"]["val_nll"] - val
        if gain > 0:
            st["best"] = {"epoch": e + 1, "val_nll": val,
                          "model_state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        if gain >= MIN_GAIN:
            st["since_best"] = st["since_decay"] = 0
        else:
            st["since_best"] += 1
            st["since_decay"] += 1
            if st["since_decay"] >= recipe["decay_patience"]:
                st["lr"] *= recipe["decay"]
                st["since_decay"] = 0
                for group in opt.param_groups:
                    group["lr"] = st["lr"]
        if st["since_best"] >= recipe["patience"] or st["epoch"] >= recipe["max_epochs"]:
            st["finished"] = True
        print(f"{name} epoch {row['epoch']}: train {row['train_loss']:.3f} val {val:.3f} "
              f"(best {st['best']['val_nll']:.3f} @ {st['best']['epoch']}) lr {st['lr']:.1e} "
              f"{row['seconds']:.0f}s", file=sys.stderr, flush=True)
        now = time.time()
        st["hours"] += (now - last_save) / 3600
        last_save = now
        save()
    now = time.time()
    st["hours"] += (now - last_save) / 3600
    save()
    report(name, model, recipe, st, args)


def report(name, model, recipe, st, args):
    """Test NLL of the best weights so far -> reproduce.json + learning curve."""
    if st["best"] is None:
        print(f"{name}: no finished epoch yet; nothing to report", file=sys.stderr)
        return
    model.load_state_dict(st["best"]["model_state"])
    x_test, _ = fdata.load("mnist", "test", binarize="stochastic", seed=0)
    t0 = time.time()
    nll = test_nll(model, recipe, x_test)
    entry = {"test_nll": round(nll, 3), "paper": recipe["paper"], "target": recipe["target"],
             "met": nll <= recipe["target"], "finished": st["finished"], "source": recipe["source"],
             "epochs": st["epoch"], "best_epoch": st["best"]["epoch"],
             "best_val_nll": round(st["best"]["val_nll"], 3), "hours": round(st["hours"], 2),
             "sessions": st["sessions"], "cpu": "; ".join(st["cpus"]), "threads": args.threads,
             "parameters": free_parameters(model),
             "test_eval": "exact" if recipe["model"] != "VAE" else f"IWAE k={TEST_IWAE_K}",
             "command": f"python bench/reproduce.py {name} --resume --hours H --threads {args.threads}",
             "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()}
                         for h in st["history"]]}
    write_result(name, entry)
    plot_curve(name, entry)
    print(f"{name}: test NLL {nll:.3f} nats (published {recipe['paper']}, target {recipe['target']}; "
          f"{'finished' if st['finished'] else 'still training'}; test pass {time.time() - t0:.0f}s)",
          file=sys.stderr, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", choices=list(RECIPES))
    p.add_argument("--resume", action="store_true", help="continue bench/runs/MODEL/checkpoint.pt")
    p.add_argument("--hours", type=float, default=float("inf"), help="stop after this many hours")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--runs", default=RUNS, help="folder of the run folders")
    p.add_argument("--report", action="store_true", help="only redraw the curves of reproduce.json")
    args = p.parse_args(argv)
    if args.report:
        with open(RESULTS) as f:
            for name, entry in json.load(f)["models"].items():
                plot_curve(name, entry)
        return
    if args.model is None:
        p.error("MODEL is required (or --report)")
    if not args.hours > 0 or args.threads < 1:
        p.error("--hours must be positive and --threads at least 1")
    train(args.model, args)


if __name__ == "__main__":
    main()
