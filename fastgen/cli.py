"""The fastgen command line: train, sample, score, features, bench, info.

    fastgen train made --data digits --out runs/made           (defaults: a useful model in minutes)
    fastgen sample runs/made -n 64 -o grid.png
    fastgen score runs/made --data digits [--anomaly-classes 5-9]   (JSON on stdout)
    fastgen features runs/vae --data digits -o feats.npy            (+ linear-probe accuracy)
    fastgen bench [--quick] [--quality]      fastgen info
    fastgen --threads 1 train ...   (on a busy machine one thread per process avoids oversubscription)
    torchrun --nproc_per_node=2 -m fastgen train ...                (DistributedDataParallel)

Expected failures (bad data, unknown model, corrupt checkpoint, a diverged run) print one line
`fastgen: error: ...` on stderr (under torchrun: once, from rank 0) and exit with status 1; usage
errors exit with 2. JSON output never holds NaN or infinity.

A run of your own class (`fastgen train mypkg.mod:MyModel`, a subclass of fastgen's
AutoregressiveModel, VAE or DCGAN) is loaded again only with `--model mypkg.mod:MyModel`: a
checkpoint never makes fastgen import anything.
"""
import argparse
import ast
import json
import os
import sys


def _parse_set(items):
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise ValueError(f"--set expects key=value; got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare string such as arch=conv
    return out


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return v


WEIGHTS_HELP = "best: the epoch with the lowest validation loss (default); last: the final weights"
MODEL_HELP = ("for a run of your own class: its package.module:ClassName again (a checkpoint never "
              "names code to import)")


def build_parser():
    from fastgen.data import BINARIZE_CHOICES
    from fastgen.train.registry import MODELS

    p = argparse.ArgumentParser(prog="fastgen", description="Deep generative models: train, sample, score.")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model", description=f"models: {', '.join(MODELS)} "
                       "(or package.module:ClassName)")
    t.add_argument("model", help="model name, or package.module:ClassName (a subclass of fastgen's model bases)")
    t.add_argument("--data", help="digits (default) | mnist | mnist5k | a path (IDX, .npz, image folder)")
    t.add_argument("--out", required=True, help="run folder (checkpoint.pt, history.json)")
    t.add_argument("--epochs", type=_positive_int, help="total epochs (default: per model)")
    t.add_argument("--batch-size", type=_positive_int, help="global minibatch size")
    t.add_argument("--lr", type=float, help="Adam learning rate (default: per model; 0 is allowed)")
    t.add_argument("--binarize", choices=BINARIZE_CHOICES, help="default: threshold (GAN: none)")
    t.add_argument("--levels", type=_positive_int, help="quantise to K levels instead of binarising")
    t.add_argument("--classes", help="train on these labels only, e.g. 0-4")
    t.add_argument("--limit", type=_positive_int, help="use only the first N training images")
    t.add_argument("--max-steps", type=_positive_int, help="stop after N optimiser steps in total")
    t.add_argument("--seed", type=int, help="default 0")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="model option, e.g. --set arch=conv")
    t.add_argument("--resume", action="store_true", help="continue the run in --out with its own settings "
                   "(only --epochs, --max-steps and --device may change)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (none anyway when stderr "
                   "is not a terminal)")
    t.add_argument("--device", help="cpu | cuda (default: cuda if available)")

    s = sub.add_parser("sample", help="draw samples into a PNG grid")
    s.add_argument("run", help="run folder or checkpoint file")
    s.add_argument("-n", type=_positive_int, default=64)
    s.add_argument("-o", "--output", default="samples.png")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--nrow", type=_positive_int)
    s.add_argument("--scale", type=_positive_int, help="pixel zoom (default: images ~64 px wide)")
    s.add_argument("--mean", action="store_true", help="VAE: the decoder mean instead of a draw")
    s.add_argument("--weights", choices=("best", "last"), default="best", help=WEIGHTS_HELP)
    s.add_argument("--model", help=MODEL_HELP)

    sc = sub.add_parser("score", help="NLL (and anomaly AUROC) as JSON on stdout")
    sc.add_argument("run")
    sc.add_argument("--data", help="default: the training data")
    sc.add_argument("--split", default="test", choices=("train", "val", "test"))
    sc.add_argument("--k", type=_positive_int, help="VAE importance samples (default: the model's)")
    sc.add_argument("--anomaly-classes", help="labels treated as out-of-distribution, e.g. 5-9")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--weights", choices=("best", "last"), default="best", help=WEIGHTS_HELP)
    sc.add_argument("--model", help=MODEL_HELP)

    f = sub.add_parser("features", help="save features (.npy) and report a linear-probe accuracy")
    f.add_argument("run")
    f.add_argument("--data", help="default: the training data")
    f.add_argument("--split", default="test", choices=("train", "val", "test"))
    f.add_argument("-o", "--output", default="features.npy")
    f.add_argument("--weights", choices=("best", "last"), default="best", help=WEIGHTS_HELP)
    f.add_argument("--model", help=MODEL_HELP)

    b = sub.add_parser("bench", help="run the benchmark suite (bench/bench_*.py)")
    b.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    b.add_argument("--only", action="append", help="run only these ops (stems)")
    b.add_argument("--quality", action="store_true", help="run bench/quality.py instead (minutes)")

    sub.add_parser("info", help="build, implementations, versions, devices (JSON)")
    return p


# --- commands ----------------------------------------------------------------------------------
def cmd_train(args):
    from fastgen.train.loop import TrainConfig, train

    cfg = TrainConfig(model=args.model, out=args.out, data=args.data, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, binarize=args.binarize, levels=args.levels,
                      classes=args.classes, limit=args.limit, max_steps=args.max_steps, seed=args.seed,
                      model_kwargs=_parse_set(args.set), progress=not args.no_progress,
                      resume=args.resume, device=args.device)
    result = train(cfg)
    if result["rank"] == 0:
        last = result["history"][-1] if result["history"] else {}
        print(_dumps({"checkpoint": result["checkpoint"], "epoch": result["epoch"], "step": result["step"],
                      **{k: v for k, v in last.items() if k.startswith(("train_", "val_"))}}))
    return 0


def _data_for(payload, name):
    cfg = dict(payload["data"])
    if name:
        cfg["name"] = name
    return cfg


def cmd_sample(args):
    import torch

    from fastgen.data import num_levels
    from fastgen.train.evaluate import load_trained
    from fastgen.train.images import image_grid, write_png

    model, payload, spec = load_trained(args.run, weights=args.weights, model=args.model)
    gen = torch.Generator().manual_seed(args.seed)
    x = model.sample(args.n, generator=gen, **spec.family.sample_kwargs(mean=args.mean))
    k = num_levels(payload["data"])
    if k:
        x = x / (k - 1)
    h = x.shape[-2]
    write_png(args.output, image_grid(x, nrow=args.nrow, scale=args.scale or max(1, 64 // h)))
    print(_dumps({"output": os.path.abspath(args.output), "n": args.n}))
    return 0


def _dumps(obj):
    """JSON for stdout: standard JSON only (NaN/inf are refused, never printed)."""
    return json.dumps(obj, allow_nan=False)


def cmd_score(args):
    import torch

    from fastgen.data import DataError, check_shape, load_split, parse_classes
    from fastgen.train.evaluate import auroc, bits_per_dim, load_trained, nll

    model, payload, spec = load_trained(args.run, weights=args.weights, model=args.model)
    data_cfg = _data_for(payload, args.data)
    anomaly = parse_classes(args.anomaly_classes)
    x, y = load_split(data_cfg, args.split, classes=None if anomaly is not None else "config")
    check_shape(x, model.input_shape)
    scores = nll(model, spec.family, x, k=args.k, seed=args.seed)
    d = x[0].numel()
    # A Gaussian VAE's -log p is a density of grey values: not comparable with the discrete NLLs
    # (probabilities of pixel levels) of every other model, so it has its own key names.
    density = spec.family.is_density(model)
    nll_key, bpd_key = ("neg_log_density_nats", "neg_log_density_bits_per_dim") if density else ("nll_nats", "bits_per_dim")
    out = {"model": spec.name, "data": data_cfg["name"], "split": args.split,
           "units": {nll_key: "nats per example (mean)", bpd_key: "bits per dimension (mean)",
                     "dims": d} | ({"note": "negative log density of grey values in [0, 1] (continuous): "
                                            "not comparable with discrete NLLs"} if density else {})}
    if anomaly is None:
        mean = float(scores.mean())
        out.update({"n": len(x), nll_key: mean, bpd_key: bits_per_dim(mean, d)})
    else:
        is_out = torch.isin(y, torch.tensor(anomaly))
        if not is_out.any() or is_out.all():
            raise DataError(f"--anomaly-classes {args.anomaly_classes}: the {args.split} split needs examples "
                            "both inside and outside these classes")
        s_in, s_out = scores[~is_out], scores[is_out]
        m_in, m_out = float(s_in.mean()), float(s_out.mean())
        out.update({"n_in": int((~is_out).sum()), "n_out": int(is_out.sum()),
                    f"{nll_key}_in": m_in, f"{nll_key}_out": m_out,
                    f"{bpd_key}_in": bits_per_dim(m_in, d), f"{bpd_key}_out": bits_per_dim(m_out, d),
                    "out_classes": anomaly, "auroc": auroc(s_in, s_out)})
        out["units"]["auroc"] = "P(NLL of an out-class example > NLL of an in-class one)"
    out.update(spec.family.score_notes(model, args.k))
    print(_dumps(out))
    return 0


def cmd_features(args):
    import numpy as np

    from fastgen.data import load_split
    from fastgen.train.evaluate import features, linear_probe, load_trained

    model, payload, spec = load_trained(args.run, weights=args.weights, model=args.model)
    data_cfg = _data_for(payload, args.data)
    data_cfg["classes"] = None
    x, y = load_split(data_cfg, args.split)
    feats = features(model, spec.family, x)
    path = args.output if args.output.endswith(".npy") else args.output + ".npy"  # what np.save writes
    np.save(path, feats.numpy())
    out = {"output": os.path.abspath(path), "shape": list(feats.shape)}
    if (y >= 0).all() and len(y.unique()) > 1:
        xt, yt = load_split(data_cfg, "train")
        out["linear_probe_accuracy"] = linear_probe(features(model, spec.family, xt), yt, feats, y)
        out["probe"] = f"logistic regression on {data_cfg['name']} train features, scored on {args.split}"
    print(_dumps(out))
    return 0


def _bench_dir():
    import fastgen

    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(fastgen.__file__))), "bench")


def cmd_bench(args):
    """Runs the source tree's suite runner (bench/run.py) or quality script in a child process
    (the runner re-executes itself with allocator settings)."""
    import glob
    import subprocess

    folder = _bench_dir()
    runner = os.path.join(folder, "quality.py" if args.quality else "run.py")
    if not os.path.exists(runner):
        raise FileNotFoundError(f"the benchmark suite is not here ({folder}): it ships with the source "
                                "tree, run fastgen bench from a checkout")
    stems = sorted(os.path.basename(f)[len("bench_"):-3] for f in glob.glob(os.path.join(folder, "bench_*.py")))
    unknown = sorted(set(args.only or []) - set(stems))
    if unknown:
        raise ValueError(f"no benchmark named {', '.join(unknown)}; available: {', '.join(stems)}")
    argv = [sys.executable, runner] + (["--quick"] if args.quick else [])
    if args.only and not args.quality:
        argv += ["--only", *args.only]
    return subprocess.call(argv)


def cmd_info(args):
    import importlib.metadata
    import platform

    import torch

    import fastgen
    from fastgen import _impl
    from fastgen.train.registry import MODELS, ModelError, model_class

    def version(pkg):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    models = {}
    for name, spec in MODELS.items():
        try:
            model_class(spec)
            models[name] = "available"
        except ModelError:
            models[name] = "not in this build"
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    runnable = {d: [i for i in ("reference", "cpp", "cuda", "triton") if _impl.can_serve(i, d)[0]] for d in devices}
    info = {**fastgen.build_info(), "python": platform.python_version(), "impl": fastgen.get_impl(),
            "runnable_impls": runnable, "triton": version("triton"), "numpy": version("numpy"),
            "optional": {p: version(p) for p in ("scikit-learn", "mlxtend", "tqdm", "pillow")},
            "devices": ["cpu"] + [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())],
            "threads": torch.get_num_threads(), "models": models}
    print(json.dumps(info, indent=1))
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "score": cmd_score, "features": cmd_features,
            "bench": cmd_bench, "info": cmd_info}


def _is_out_of_memory(exc):
    import torch

    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc)))


def main(argv=None):
    args = build_parser().parse_args(argv)
    from fastgen.data import DataError
    from fastgen.train.checkpoint import CheckpointError
    from fastgen.train.distributed import RankFailed
    from fastgen.train.registry import ModelError
    from fastgen._impl import ImplUnavailableError

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    # under torchrun every rank meets the same error: rank 0 alone reports it
    report = os.environ.get("RANK", "0") == "0"
    try:
        return COMMANDS[args.command](args)
    except (DataError, CheckpointError, ModelError, ImplUnavailableError, RankFailed, ValueError, OSError,
            RuntimeError, MemoryError) as exc:
        if isinstance(exc, (RuntimeError, MemoryError)) and not isinstance(exc, (ImplUnavailableError, RankFailed)):
            if not _is_out_of_memory(exc):
                raise  # a bug: keep the traceback
            exc = f"out of memory ({str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__}); "\
                  "try a smaller --batch-size or model (--set)"
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if report:
            print(f"fastgen: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if report:
            print("fastgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
