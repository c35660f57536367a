"""Model-level benchmarks: the user's job, a training step and a test-set likelihood pass.

Every model at its binarized-MNIST recipe configuration (bench/recipes.py; DCGAN at
fastgen.models.DCGAN((1, 28, 28), latent_dim=32)), 28x28 binary images, batch 64:
  train  forward, backward and the step of torch.optim.Adam(fused=True) (the optimiser
         fastgen.train uses: one pass over the parameters; torch's default CPU Adam makes about
         seven, which at MADE's 12.5M weights costs more than the masked layers themselves);
         DCGAN: its train_step (one D and one G update)
  eval   log_prob on the batch under torch.no_grad (VAE: the IWAE bound, k = 64), per image
Four providers, each with its own copy of the same initial weights and its own Adam, timed
interleaved in one run (median of 7 repeats):
  fastgen             the model on fastgen's kernels (impl "auto": cpp on the CPU)
  reference ops       the same model under fastgen.use_impl("reference")
  torch.compile       torch.compile(model.log_prob) on reference ops (DCGAN: its generator and
                      discriminator compiled); the first call's compile time is in the note
  plain PyTorch       the architecture as public code writes it (bench/plain_models.py)
Before timing, the bench checks that the four compute the same log-likelihood (ELBO for the
VAE, losses for DCGAN) from the same weights, to float32 rounding, and stops if not.
The speedup column is against reference ops (the suite's convention); the fastgen row's note
gives its ratio to every other provider, the ones the floors are about. The floors (issue 13): every
autoregressive model >= 1.5x reference ops and >= 1.0x torch.compile; MADE and PixelCNN >=
1.5x plain PyTorch. For VAE and DCGAN, whose steps are mostly nn.Linear / nn.Conv layers, the
note gives the share of the fastgen step spent in fastgen's ops (torch.profiler).
The data are random binary images with 15 % of the pixels on, about binarized MNIST's share:
NADE's kernel skips the unlit pixels' updates, so its time depends on that share; the other
models' does not.
Quick mode: 8x8 images, tiny widths, batch 8, no torch.compile.
"""
import contextlib
import copy
import datetime
import json
import os
import signal
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastgen  # noqa: E402
import fastgen.ops as fops  # noqa: E402
from bench._harness import RESULTS, environment, format_table, report, time_interleaved  # noqa: E402
from bench.plain_models import plain_from  # noqa: E402
from bench.recipes import RECIPES  # noqa: E402

AUTOREGRESSIVE = ("fvsbn", "nade", "made", "pixelcnn", "pixelrnn-row", "pixelrnn-diagonal")
MODELS = AUTOREGRESSIVE + ("vae", "dcgan")
PLAIN_FLOOR = ("made", "pixelcnn")
QUICK_KWARGS = {"nade": {"hidden_size": 16}, "made": {"hidden_sizes": [64]},
                "pixelcnn": {"hidden_channels": 8, "num_layers": 3},
                "pixelrnn-row": {"kind": "row", "hidden_channels": 4, "num_layers": 2},
                "pixelrnn-diagonal": {"kind": "diagonal", "hidden_channels": 4, "num_layers": 2},
                "vae": {"latent_dim": 4, "hidden": 16, "arch": "mlp", "decoder": "bernoulli"}}
PROVIDERS = ("fastgen", "reference ops", "torch.compile", "plain PyTorch")


def cpu_info():
    """The CPU model (lscpu) and the vector ISA fastgen's kernels were built for."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), "?")
    except (OSError, subprocess.SubprocessError):
        model = "?"
    return {"cpu": model, "cpu_capability": fastgen.build_info()["cpu_capability"],
            "threads": torch.get_num_threads(), "loadavg": os.getloadavg()}


def build(name, quick):
    import fastgen.models as models

    shape = (1, 8, 8) if quick else (1, 28, 28)
    if name == "dcgan":
        return models.DCGAN(shape, latent_dim=8 if quick else 32, width=4 if quick else 32)
    r = RECIPES[name]
    kwargs = dict(QUICK_KWARGS.get(name, r["kwargs"]) if quick else r["kwargs"])
    if "hidden_sizes" in kwargs:
        kwargs["hidden_sizes"] = tuple(kwargs["hidden_sizes"])
    return getattr(models, r["model"])(input_shape=shape, **kwargs)


class _Provider:
    """One model copy with its own optimiser(s); train() and eval() run under `impl`."""

    def __init__(self, name, model, impl, log_prob=None, loss=None):
        self.name, self.model, self.impl = name, model, impl
        self.log_prob = log_prob or model.log_prob
        self.loss = loss or (lambda x: -self.log_prob(x).mean())
        if name == "dcgan":
            betas = (0.5, 0.999)
            self.opts = (torch.optim.Adam(model.discriminator.parameters(), lr=2e-4, betas=betas, fused=True),
                         torch.optim.Adam(model.generator.parameters(), lr=2e-4, betas=betas, fused=True))
        else:
            self.opts = (torch.optim.Adam(model.parameters(), lr=1e-4, fused=True),)

    def train(self, x):
        with fastgen.use_impl(self.impl):
            self.opts[0].zero_grad(set_to_none=True)
            self.loss(x).backward()
            self.opts[0].step()

    def eval(self, x):
        with fastgen.use_impl(self.impl), torch.no_grad():
            return self.log_prob(x)


class _GanProvider(_Provider):
    def __init__(self, model, impl, g_net=None, d_net=None, plain=False):
        super().__init__("dcgan", model, impl, log_prob=lambda x: None, loss=lambda x: None)
        self.nets, self.plain = dict(g_net=g_net, d_net=d_net), plain

    def train(self, x):
        with fastgen.use_impl(self.impl):
            if self.plain:
                self.model.train_step(x, *self.opts)
            else:
                self.model.train_step(x, *self.opts, **self.nets)


def _close(name, what, a, b, scale):
    err = (a.double() - b.double()).abs().max().item()
    if not err <= 1e-5 * scale + 1e-4:
        raise AssertionError(f"bench_models {name}: {what} differs from fastgen's by {err:.3g} nats "
                             f"(scale {scale:.3g}): the providers do not compute the same model")
    return err


# torch.compile's first calls (both graphs) may take this long; past it the provider is dropped
# and the fastgen row says so (the diagonal BiLSTM's unrolled graph compiled for over 40 minutes)
COMPILE_BUDGET_S = float(os.environ.get("FASTGEN_BENCH_COMPILE_BUDGET", 1200))


class _OutOfTime(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds):
    """Raise _OutOfTime in the main thread after `seconds` (SIGALRM: Dynamo and Inductor are Python,
    interrupted between bytecodes), and at the end if the alarm went off but something inside
    caught what it raised; no limit where SIGALRM does not exist."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return
    fired = []

    def alarm(signum, frame):
        fired.append(True)
        raise _OutOfTime()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if fired:
        raise _OutOfTime()


def _out_of_time(e):
    while e is not None:
        if isinstance(e, _OutOfTime):
            return True
        e = e.__cause__ or e.__context__
    return False


def _providers(name, model, x, quick, compile=True):
    """The four providers of one model, checked to agree; returns (providers, notes)."""
    ref = copy.deepcopy(model)
    plain = plain_from(name, model)
    notes = {}
    if name == "dcgan":
        provs = {"fastgen": _GanProvider(model, "auto"), "reference ops": _GanProvider(ref, "reference"),
                 "plain PyTorch": _GanProvider(plain, "auto", plain=True)}
        logits = torch.randn(2, x.shape[0])
        errs = [_close(name, "plain d_loss", plain.d_loss(logits[0], logits[1]),
                       fops.discriminator_loss(logits[0], logits[1], model.d_kind), 1.0),
                _close(name, "plain g_loss", plain.g_loss(logits[1]), fops.generator_loss(logits[1], model.g_kind), 1.0)]
        if compile:
            comp = copy.deepcopy(model)
            g_net, d_net = torch.compile(comp.generator), torch.compile(comp.discriminator)
            provs["torch.compile"] = _GanProvider(comp, "reference", g_net=g_net, d_net=d_net)
            t0 = time.perf_counter()
            provs["torch.compile"].train(x)
            notes["compile"] = time.perf_counter() - t0
        notes["check"] = f"plain losses agree to {max(errs):.1e}"
        return provs, notes
    if name == "vae":
        elbo = lambda m, impl: _with_impl(impl, lambda: m.elbo(x, generator=torch.Generator().manual_seed(1)))  # noqa: E731
        base = elbo(model, "auto")
        scale = base.abs().max().item()
        errs = [_close(name, "reference-op ELBO", elbo(ref, "reference"), base, scale),
                _close(name, "plain ELBO", plain.elbo(x, generator=torch.Generator().manual_seed(1)), base, scale)]
        provs = {"fastgen": _Provider(name, model, "auto", loss=model.loss),
                 "reference ops": _Provider(name, ref, "reference", loss=ref.loss),
                 "plain PyTorch": _Provider(name, plain, "auto", log_prob=plain.log_prob, loss=plain.loss)}
        if compile:
            comp = copy.deepcopy(model)
            closs = torch.compile(comp.loss)
            provs["torch.compile"] = _Provider(name, comp, "reference", log_prob=torch.compile(comp.log_prob), loss=closs)
    else:
        base = _with_impl("auto", lambda: model.log_prob(x))
        scale = base.abs().max().item()
        errs = [_close(name, "reference-op log-likelihood", _with_impl("reference", lambda: ref.log_prob(x)), base, scale),
                _close(name, "plain log-likelihood", plain.log_prob(x), base, scale)]
        provs = {"fastgen": _Provider(name, model, "auto"), "reference ops": _Provider(name, ref, "reference"),
                 "plain PyTorch": _Provider(name, plain, "auto", log_prob=plain.log_prob)}
        if compile:
            comp = copy.deepcopy(model)
            provs["torch.compile"] = _Provider(name, comp, "reference", log_prob=torch.compile(comp.log_prob))
    if "torch.compile" in provs:   # first calls: compilation (the check before any Adam step)
        t0 = time.perf_counter()
        try:
            with _time_limit(COMPILE_BUDGET_S):
                out = provs["torch.compile"].eval(x)   # the no_grad graph
                notes["compile eval"] = time.perf_counter() - t0
                t1 = time.perf_counter()
                provs["torch.compile"].train(x)        # the training graph, forward and backward
                notes["compile"] = time.perf_counter() - t1
        except Exception as e:  # noqa: BLE001  (Dynamo wraps what the alarm raised)
            if not _out_of_time(e):
                raise
            del provs["torch.compile"]
            notes["no compile"] = f"torch.compile still compiling after {COMPILE_BUDGET_S:.0f} s: not timed"
        else:
            if name != "vae":   # the VAE's compiled loss is the ELBO; its log_prob is the IWAE bound
                errs.append(_close(name, "torch.compile log-likelihood", out, base, scale))
    notes["check"] = f"same log-likelihood to {max(errs):.1e} nats"
    return provs, notes


def _with_impl(impl, fn):
    with fastgen.use_impl(impl), torch.no_grad():
        return fn()


def ops_share(provider, x, steps=3):
    """Fraction of the fastgen train step's time inside fastgen's ops (torch.profiler), and the
    step's wall time under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    provider.train(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            provider.train(x)
        wall = time.perf_counter() - t0
    # self times (disjoint) of every event of ours: the ops, and the autograd nodes that
    # torch.library.register_autograd wraps them in (GeneratedBackwardFor_fastgen_<op>_default,
    # where a Python-registered op's kernel time is recorded), and C++ autograd nodes
    ours = sum(e.self_cpu_time_total for e in prof.key_averages() if "fastgen" in e.key) / 1e6
    names = sorted({e.key for e in prof.key_averages() if e.key.startswith("fastgen::")})
    return ours / wall, names


def _bench_model(name, quick, repeats, compile=True):
    torch.manual_seed(0)
    model = build(name, quick)
    n = 8 if quick else 64
    shape = model.input_shape
    x = torch.bernoulli(torch.full((n,) + tuple(shape), 0.15))
    provs, notes = _providers(name, model, x, quick, compile=compile and not quick)
    rows = []
    phases = [("train step", "train")] + ([] if name == "dcgan" else [("eval log_prob", "eval")])
    for label, phase in phases:
        fns = {k: (lambda p=p, phase=phase: getattr(p, phase)(x)) for k, p in provs.items()}
        times = time_interleaved(fns, repeats=repeats, min_time=0.01 if quick else 0.2)
        ours, base = times["fastgen"], times["reference ops"]
        for prov in PROVIDERS:
            if prov not in times:
                continue
            t = times[prov]
            if prov == "fastgen":
                note = ", ".join(f"{times[p] / ours:.2f}x vs {p}" for p in PROVIDERS[1:] if p in times)
                if "no compile" in notes:
                    note += f"; {notes['no compile']}"
                if phase == "train" and name in ("vae", "dcgan"):
                    share, ops = ops_share(provs["fastgen"], x)
                    note += f"; fastgen ops take {100 * share:.0f}% of the step ({', '.join(ops) or 'none seen'})"
            elif prov == "torch.compile":
                note = f"first call {notes['compile' if phase == 'train' else 'compile eval']:.1f}s"
            elif prov == "plain PyTorch":
                note = notes["check"]
            else:
                note = ""
            if phase == "eval":
                note = (note + "; " if note else "") + f"{t / n * 1e6:.0f} us/image"
            rows.append({"op": "model", "case": f"{name} {label} N={n}", "provider": prov, "ms": t * 1e3,
                         "speedup": base / t, "note": note})
    return rows


def _model_of(row):
    return row["case"].split(" ", 1)[0]


def merge(model_rows, name):
    """Put one model's rows into bench/results/models.json, replacing that model's earlier rows
    and keeping the others' (each row names its CPU, threads, load and date): how a table is
    filled one quiet window at a time on a shared machine."""
    path = os.path.join(RESULTS, "models.json")
    res = json.load(open(path)) if os.path.exists(path) else {"name": "models", "rows": []}
    rows = [r for r in res["rows"] if _model_of(r) != name] + model_rows
    order = {m: i for i, m in enumerate(MODELS)}
    rows.sort(key=lambda r: order.get(_model_of(r), len(order)))
    have = {_model_of(r) for r in rows}
    dates = sorted({f"{_model_of(r)} {r.get('date', '?')[:16]}" for r in rows})
    res.update(environment=environment(), rows=rows, partial=not have >= set(MODELS),
               missing_models=[m for m in MODELS if m not in have],
               how="each model timed in its own quiet window, background training paused, by "
                   "`python bench/bench_models.py MODEL --merge` (2 threads; the bench's allocator "
                   "settings): " + ", ".join(dates))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, path)


def run(quick=False, models=None, compile=True, merge_each=False):
    repeats = 1 if quick else 7  # samples per provider (medians): this host swings by 20% between minutes
    env = cpu_info()
    print(f"bench_models: {env}")
    rows = []
    for name in models or MODELS:
        t0 = time.perf_counter()
        model_rows = _bench_model(name, quick, repeats, compile)
        date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        for r in model_rows:
            r.update(env, date=date)
        rows += model_rows
        print(f"\n{name}: {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()}")
        print(format_table(model_rows), flush=True)   # as it goes: a full run takes a while
        if merge_each:
            merge(model_rows, name)
    return rows


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    # python bench/bench_models.py [--quick] [--no-compile] [--merge] [MODEL ...]: a partial run
    # writes models.partial.json, leaving the full run's models.json alone; with --merge each
    # model's rows go into models.json as soon as it is done, replacing that model's rows only
    merge_each = "--merge" in sys.argv and not quick and "--no-compile" not in sys.argv
    partial = bool(only) or "--no-compile" in sys.argv
    rows = run(quick=quick, models=only or None, compile="--no-compile" not in sys.argv, merge_each=merge_each)
    if not merge_each:
        report("models.quick" if quick else "models.partial" if partial else "models", rows)
