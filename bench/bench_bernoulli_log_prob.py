"""Benchmark fastgen.ops.bernoulli_log_prob (forward and forward+backward).

Providers: the eager reference (-F.binary_cross_entropy_with_logits(..., reduction="none")
.sum(-1), what every binary model's likelihood runs), torch.compile(reference) (first-call
compile time reported) and each built fastgen impl (the Triton interpreter is a correctness
vehicle only, not timed). Cases: a binarized-MNIST batch (64 x 784: an autoregressive model's
loss), a VAE's IWAE-bound batch (k = 50 samples of 100 images, 5000 x 784, x broadcast over the
samples) and a bandwidth-bound size (16384 x 1024) with achieved GB/s of the minimal traffic as
a fraction of a STREAM triad measured in the same run: the forward without grad reads logits
and x (2n); forward+backward also writes the gradient (3n; the incoming gradient of a
.sum() is scaled in one more pass, 2n, which the reference pays too).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastgen  # noqa: E402
from bench._harness import compile_timed, report, time_interleaved, triad_gbs  # noqa: E402
from fastgen import _ext  # noqa: E402
from fastgen.ops import bernoulli_log_prob  # noqa: E402
from fastgen.reference.bernoulli_log_prob import bernoulli_log_prob as reference  # noqa: E402


def _with_impl(fn, impl):
    def run(l, x):
        with fastgen.use_impl(impl):
            return fn(l, x)
    return run


def _case(label, shape, x_shape, repeats, triad, with_compile=True):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(shape, generator=g)).requires_grad_()
    x = torch.bernoulli(torch.full(x_shape, 0.15), generator=g)
    ref_fn = lambda l, xx: reference(l, xx.expand(l.shape))  # noqa: E731
    providers = {"eager reference": ref_fn}
    if with_compile:
        providers["torch.compile(reference)"], compile_s = compile_timed(ref_fn, logits, x, backward=True)
    if _ext.AVAILABLE:
        providers["fastgen cpp"] = _with_impl(bernoulli_log_prob, "cpp")

    def forward(fn):
        def run():
            with torch.no_grad():
                fn(logits, x)
        return run

    def forward_backward(fn):
        def run():
            fn(logits, x).sum().backward()
            logits.grad = None
        return run

    n = logits.numel()
    rows = []
    for mode, wrap, traffic in (("fwd", forward, 2 * n), ("fwd+bwd", forward_backward, 3 * n)):
        times = time_interleaved({k: wrap(f) for k, f in providers.items()}, repeats=repeats)
        base = times["eager reference"]
        for name, t in times.items():
            row = {"op": "bernoulli_log_prob", "case": f"{label} {mode}", "provider": name, "ms": t * 1e3,
                   "speedup": base / t}
            notes = []
            if triad is not None:
                gbs = traffic * logits.element_size() / t / 1e9
                row["gbs"] = gbs
                notes.append(f"{gbs:.1f} GB/s = {gbs / triad:.0%} of triad")
            if name.startswith("torch.compile") and mode == "fwd":
                notes.append(f"first call {compile_s:.1f} s")
            if notes:
                row["note"] = "; ".join(notes)
            rows.append(row)
    return rows


def run(quick=False):
    if quick:
        return _case("8x16", (8, 16), (8, 16), repeats=2, triad=None, with_compile=False)
    triad = triad_gbs()
    rows = _case("MNIST batch 64x784", (64, 784), (64, 784), repeats=9, triad=None)
    rows += _case("IWAE k=50 x 100 images x 784", (50, 100, 784), (100, 784), repeats=7, triad=None)
    rows += _case("16384x1024", (16384, 1024), (16384, 1024), repeats=5, triad=triad)
    rows.append({"op": "stream", "case": "triad 3x128 MiB", "provider": "torch.add(out=)",
                 "ms": None, "note": f"{triad:.1f} GB/s"})
    return rows


if __name__ == "__main__":
    report("bernoulli_log_prob", run(quick="--quick" in sys.argv))
