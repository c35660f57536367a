"""The reproducible quality benchmark (numbers for the README).

    python bench/quality.py [--quick] [--models vae,made,...] [--threads 1] [--out bench/results/quality.json]

On binarised digits (threshold 0.5; seeded 70/10/20 split), each model at the epoch of its lowest
validation loss (registry default budgets): test NLL in nats for every model of the
registry that this build has (the VAE as ELBO and IWAE), checks of the expected order
IndependentBernoulli > MarkovChain > FVSBN > NADE ~ MADE > PixelCNN ~ PixelRNN and IWAE >= ELBO;
anomaly AUROC of models trained on digits 0-4 scoring held-out 0-4 against 5-9; linear-probe
accuracy on VAE (and DCGAN discriminator) features against raw pixels; the 1-D GAN toy's value
against -log 4. Writes the JSON, a 64-sample grid per model, and prints a table. Every number comes from a fixed seed.
--quick: tiny budgets (a smoke test of the script, numbers meaningless).
"""
import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench.gan_toy import run_toy  # noqa: E402
from fastgen import data as fdata  # noqa: E402
from fastgen.train import evaluate  # noqa: E402
from fastgen.train.families import VAEFamily  # noqa: E402
from fastgen.train.loop import TrainConfig, train  # noqa: E402
from fastgen.train.registry import MODELS, ModelError, model_class  # noqa: E402

ORDER = ["independent-bernoulli", "markov-chain", "fvsbn", ("nade", "made"), ("pixelcnn", "gated-pixelcnn",
         "pixelrnn-row", "pixelrnn-diagonal")]
ANOMALY_MODELS = ("vae", "made", "pixelcnn")
APPROX = 0.05  # "~": within 5 % of each other


def available(names):
    have, missing = [], []
    for name in names:
        try:
            model_class(MODELS[name])
            have.append(name)
        except ModelError:
            missing.append(name)
    return have, missing


def _train(name, workdir, quick, **extra):
    cfg = TrainConfig(model=name, out=os.path.join(workdir, name + extra.get("tag", "")), data="digits",
                      progress=False, epochs=1 if quick else None, limit=128 if quick else None,
                      classes=extra.get("classes"), seed=0)
    t0 = time.time()
    result = train(cfg)
    return result, time.time() - t0


def nll_rows(names, workdir, quick, samples_dir=None):
    rows, models, gan_rows = [], {}, []
    x_test, _ = fdata.load("digits", "test", binarize="threshold")
    k = 16 if quick else 1000
    for name in names:
        result, seconds = _train(name, workdir, quick)
        model, family = result["model"].eval(), result["family"]
        if result["best"]:  # the epoch with the lowest validation loss (digits is small: models overfit)
            model.load_state_dict(result["best"]["model_state"])
        row = {"model": name, "epochs": result["epoch"], "best_epoch": (result["best"] or {}).get("epoch"),
               "steps": result["step"], "train_seconds": round(seconds, 1),
               "parameters": sum(p.numel() for p in model.parameters())}
        if samples_dir:  # a picture of what each model learned (seeded)
            from fastgen.train.images import image_grid, write_png

            os.makedirs(samples_dir, exist_ok=True)
            with torch.no_grad():
                grid = model.sample(64, generator=torch.Generator().manual_seed(0))
            write_png(os.path.join(samples_dir, f"{name}.png"), image_grid(grid, nrow=8, scale=4))
        if not family.has_likelihood:  # a GAN
            models[name] = (model, family)
            gan_rows.append(row)
            continue
        nll = evaluate.nll(model, family, x_test, k=k, seed=0)
        row.update(nll_nats=float(nll.mean()), bits_per_dim=evaluate.bits_per_dim(float(nll.mean()), 64))
        if family is VAEFamily:
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():  # the ELBO averaged over 10 draws per image (less noise, same bound)
                elbo = torch.stack([model.elbo(x_test, generator=gen) for _ in range(10)]).mean(0)
            row.update(bound=f"iwae k={k}", iwae_nats=row["nll_nats"], neg_elbo_nats=float(-elbo.mean()))
        rows.append(row)
        models[name] = (model, family)
        print(f"  {name}: {row}", file=sys.stderr, flush=True)
    return rows, models, gan_rows


def order_checks(rows):
    nll = {r["model"]: r["nll_nats"] for r in rows}
    groups = [[m for m in (g if isinstance(g, tuple) else (g,)) if m in nll] for g in ORDER]
    groups = [g for g in groups if g]
    checks = []
    for g in groups:  # "~" inside a group
        for a, b in zip(g, g[1:]):
            rel = abs(nll[a] - nll[b]) / max(nll[a], nll[b])
            checks.append({"check": f"{a} ~ {b}", "holds": rel <= APPROX, "detail": f"relative gap {rel:.3f}"})
    for g, h in zip(groups, groups[1:]):  # ">" between consecutive groups: every member
        worst_a, best_b = min(g, key=nll.get), max(h, key=nll.get)
        checks.append({"check": f"{'/'.join(g)} > {'/'.join(h)}", "holds": nll[worst_a] > nll[best_b],
                       "detail": f"{worst_a} {nll[worst_a]:.2f} vs {best_b} {nll[best_b]:.2f}"})
    for r in rows:
        if "neg_elbo_nats" in r:
            checks.append({"check": f"{r['model']} IWAE >= ELBO", "holds": r["iwae_nats"] <= r["neg_elbo_nats"],
                           "detail": f"-IWAE {r['iwae_nats']:.3f} vs -ELBO {r['neg_elbo_nats']:.3f} nats"})
    return checks


def anomaly_rows(names, workdir, quick):
    x, y = fdata.load("digits", "test", binarize="threshold")
    out_mask = y >= 5
    rows = []
    for name in names:
        result, seconds = _train(name, workdir, quick, classes="0-4", tag="-0to4")
        if result["best"]:
            result["model"].load_state_dict(result["best"]["model_state"])
        scores = evaluate.nll(result["model"].eval(), result["family"], x, k=16 if quick else 200, seed=0)
        rows.append({"model": name, "train_classes": "0-4", "auroc": evaluate.auroc(scores[~out_mask], scores[out_mask]),
                     "nll_in": float(scores[~out_mask].mean()), "nll_out": float(scores[out_mask].mean()),
                     "train_seconds": round(seconds, 1)})
        print(f"  anomaly {name}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def probe_rows(models):
    data_cfg = {"name": "digits", "binarize": "threshold", "levels": None, "classes": None, "seed": 0, "limit": None}
    xa, ya = fdata.load_split(data_cfg, "train")
    xb, yb = fdata.load_split(data_cfg, "test")
    rows = [{"features": "raw pixels (64)", "accuracy": evaluate.linear_probe(xa.flatten(1), ya, xb.flatten(1), yb)}]
    for name, (model, family) in models.items():
        if family.feature_fn(model) is not None:  # the VAE and the DCGAN
            fa, fb = evaluate.features(model, family, xa), evaluate.features(model, family, xb)
            rows.append({"features": f"{name} ({fa.shape[1]})", "accuracy": evaluate.linear_probe(fa, ya, fb, yb)})
    return rows


def toy_rows(quick):
    steps, batch = (100, 512) if quick else (1500, 4096)
    return [run_toy(0.0, 1.0, steps=steps, batch=batch), run_toy(1.0, 0.7, steps=steps, batch=batch),
            run_toy(0.0, 1.0, discriminator="mlp", steps=steps, batch=batch, lr=0.005)]


def table(results):
    lines = ["test NLL on binarised digits (nats per image; lower is better)",
             f"{'model':24s} {'NLL':>8s} {'bits/dim':>9s} {'-ELBO':>8s} {'params':>9s} {'epochs':>6s} {'best':>5s} {'train s':>8s}"]
    for r in results["nll"]:
        lines.append(f"{r['model']:24s} {r['nll_nats']:8.3f} {r['bits_per_dim']:9.4f} "
                     f"{(format(r['neg_elbo_nats'], '8.3f') if 'neg_elbo_nats' in r else '-'):>8s} {r['parameters']:9,d} {r['epochs']:6d} {str(r['best_epoch']):>5s} {r['train_seconds']:8.1f}")
    for r in results["gan"]:
        lines.append(f"{r['model']:24s} {'(no likelihood)':>27s} {r['parameters']:9,d} {r['epochs']:6d} {'-':>5s} {r['train_seconds']:8.1f}")
    if results["missing_models"]:
        lines.append(f"not in this build: {', '.join(results['missing_models'])}")
    lines.append("expected order:")
    lines += [f"  [{'ok' if c['holds'] else 'MISS'}] {c['check']}: {c['detail']}" for c in results["checks"]]
    lines.append("anomaly detection (trained on 0-4; held-out 0-4 vs 5-9 by NLL)")
    lines += [f"  {r['model']:22s} AUROC {r['auroc']:.3f}  (NLL in {r['nll_in']:.2f}, out {r['nll_out']:.2f})"
              for r in results["anomaly"]]
    lines.append("linear probe (logistic regression; train split -> test accuracy)")
    lines += [f"  {r['features']:22s} {r['accuracy']:.3f}" for r in results["probe"]]
    lines.append(f"GAN toy (-log 4 = {-math.log(4):.5f})")
    lines += [f"  p_g=N({t['mu_g']}, {t['sigma_g']}^2) D={t['discriminator']:9s} V={t['value']:.5f} "
              f"V*={t['optimal_value']:.5f} max|D-D*|={t['max_abs_D_minus_Dstar']:.4f}" for t in results["gan_toy"]]
    return "\n".join(lines)


def run(quick=False, models=None, anomaly=ANOMALY_MODELS, samples_dir=None):
    names, missing = available(models or list(MODELS))
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="fastgen-quality-") as workdir:
        nll, trained, gans = nll_rows(names, workdir, quick, samples_dir)
        anomaly_names = [m for m in anomaly if m in names]
        results = {
            "meta": {"quick": quick, "torch": torch.__version__, "python": platform.python_version(),
                     "threads": torch.get_num_threads(), "data": "digits, threshold-binarised, seed 0",
                     "command": "python bench/quality.py " + " ".join(sys.argv[1:])},
            "nll": nll, "gan": gans, "missing_models": missing, "checks": order_checks(nll),
            "anomaly": anomaly_rows(anomaly_names, workdir, quick), "probe": probe_rows(trained),
            "gan_toy": toy_rows(quick)}
    results["meta"]["seconds"] = round(time.time() - t0, 1)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", help="comma-separated registry names (default: all in this build)")
    p.add_argument("--anomaly-models", default=",".join(ANOMALY_MODELS))
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default=os.path.join(HERE, "results", "quality.json"))
    p.add_argument("--samples", default=os.path.join(HERE, "results", "quality_samples"),
                   help="folder for a 64-sample PNG grid per model ('' for none)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models.split(",") if args.models else None
    unknown = [m for m in (models or []) if m not in MODELS]
    if unknown:
        p.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    results = run(args.quick, models, tuple(a for a in args.anomaly_models.split(",") if a), args.samples or None)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, args.out)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
